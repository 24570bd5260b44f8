#!/usr/bin/env python
"""How much does watching where the updates go cost? Every figure is a ratio measured side by side
in this one process, one run (docs/method.md section 2):

(a) training steps with ``ke_utils.memory.attribution.UpdateTracker`` active / the same plain training
    steps (``ke_utils.training.train_step``: forward, backward, clip to norm 1, AdamW step). Each
    tracked block enters a fresh tracker (snapshot of the MLP weights), runs ``--steps`` steps and
    exits (the final parameter changes are computed there): entry and exit are included, spread
    over the block's steps. Issue 14's budget: at most 1.15.
(b) ``batch_attribution`` on one batch / one plain forward + backward of the same batch
    (``model(input_ids=b, labels=b).loss.backward()``): informative.

Timings: warm-up first, then ``--repeats`` repeats in which the sides of each ratio run back to
back in rotating order; a figure is the median over repeats of the per-repeat ratio, so that load
from other jobs on the machine hits both sides alike.

    python bench/attribution_overhead.py                  # ~30 s on 2 CPU cores
    python bench/attribution_overhead.py --json out.json  # also write the figures
    python bench/attribution_overhead.py --device cuda --dtype bfloat16
    python bench/attribution_overhead.py --device cuda --autocast bfloat16   # fp32 weights, bf16 autocast
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

# The package from this checkout, whatever the working directory (the script lives in bench/).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import (add_model_arguments, interleaved, median_ratio, parse_with_quick, print_table,  # noqa: E402
                    random_llama, sync, torch_setup, write_json)

TARGETS = {"tracked_over_plain": "<= 1.15"}
BUDGET = 1.15

# --quick: tiny sizes for the test suite (a few seconds).
QUICK = dict(hidden=64, layers=2, intermediate=256, heads=4, vocab=512, batch=4, seq=64, steps=3, repeats=3,
             warmup=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the model's weights (AdamW steps them in this dtype)")
    p.add_argument("--autocast", default="none", choices=["none", "bfloat16", "float16"],
                   help="run the forward pass under torch.autocast (continual.py's bf16-mixed: fp32 weights)")
    p.add_argument("--steps", type=int, default=4, help="training steps per timed block")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (the median ratio is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds of every side first")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for the tests)")
    p.add_argument("--seed", type=int, default=0)
    add_model_arguments(p)
    data = p.add_argument_group("batches (random token ids)")
    data.add_argument("--batch", type=int, default=8, help="sequences per batch")
    data.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    return parse_with_quick(p, argv, QUICK)


def make_model(args, device, dtype):
    return random_llama(args, device, dtype, args.seq).train()


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device, dtype = torch_setup(args)
    from ke_utils.memory.attribution import UpdateTracker, batch_attribution
    from ke_utils.training import optimizer, train_step

    model = make_model(args, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    opt = optimizer(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    autocast = (torch.autocast(device.type, dtype=getattr(torch, args.autocast)) if args.autocast != "none"
                else contextlib.nullcontext())
    g = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device) for _ in range(args.steps)]
    steps_seen: list[int] = []

    def plain():
        for b in batches:
            train_step(model, b, opt, sched, autocast)

    def tracked():
        with UpdateTracker(model) as tracker:
            for b in batches:
                train_step(model, b, opt, sched, autocast)
        steps_seen.append(tracker.steps)

    one = batches[0]

    def forward_backward():
        with autocast:
            loss = model(input_ids=one, labels=one).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    def attribution():
        batch_attribution(model, one)

    # Check: the tracker's gradient sums of one backward are batch_attribution's for the same batch
    # (dropout is 0 in this model, so train and eval mode compute the same loss).
    with UpdateTracker(model) as tracker:
        model(input_ids=one, labels=one).loss.backward()
    model.zero_grad(set_to_none=True)
    ref = batch_attribution(model, one)
    check = max(float(((tracker.key_grad.cpu() - ref.key_grad).abs() / ref.key_grad.clamp(min=1e-30)).max()),
                float(((tracker.value_grad.cpu() - ref.value_grad).abs() / ref.value_grad.clamp(min=1e-30)).max()))
    if not (check < (1e-4 if dtype == torch.float32 else 5e-2) and bool((ref.key_grad > 0).all())
            and bool((ref.value_grad > 0).all()) and tracker.steps == 1):
        print(f"check failed: the tracker ({tracker.steps} backward seen) and batch_attribution differ by "
              f"{check:.2e}, or a neuron got no gradient", file=sys.stderr)
        return 1

    # warm-up: every code path (thread pools, kernels, allocator, AdamW state)
    for _ in range(args.warmup):
        train_step(model, one, opt, sched, autocast)
        with UpdateTracker(model):
            train_step(model, one, opt, sched, autocast)
        forward_backward()
        attribution()

    ta = interleaved({"tracked": tracked, "plain": plain}, args.repeats, device)
    tracked_over_plain = median_ratio(ta["tracked"], ta["plain"])
    if steps_seen != [args.steps] * args.repeats:
        print(f"check failed: the tracker saw {steps_seen} backward passes, not {args.steps} each", file=sys.stderr)
        return 1
    tb = interleaved({"attribution": attribution, "forward_backward": forward_backward}, args.repeats, device)
    attribution_over_fb = median_ratio(tb["attribution"], tb["forward_backward"])

    # Entry + exit alone (snapshot, final changes) and the tracker's memory.
    entry_exit = []
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        with UpdateTracker(model) as tracker:
            nbytes = tracker.nbytes
        sync(device)
        entry_exit.append(time.perf_counter() - t0)
    mlp_bytes = sum(p.param.numel() * p.param.element_size() for mem in tracker.layers for p in (*mem.keys, mem.value))
    wall = time.perf_counter() - t_start
    step_plain = statistics.median(ta["plain"]) / args.steps
    meets = tracked_over_plain <= BUDGET

    header = (
        f"torch {torch.__version__}, device {device.type}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", {torch.get_num_threads()} threads, {args.dtype}"
        + (f" under {args.autocast} autocast" if args.autocast != "none" else "")
        + f"; LlamaForCausalLM {args.layers} layers, hidden {args.hidden}, d_ff {args.intermediate}, "
        f"{args.heads} heads, vocab {args.vocab} ({n_params / 1e6:.1f}M params); batches {args.batch} x {args.seq} "
        f"tokens, {args.steps} AdamW steps per block, {args.repeats} repeats"
    )
    rows = [
        ("(a) tracked training steps / plain training steps", f"{tracked_over_plain:.3f}", TARGETS["tracked_over_plain"],
         f"{'meets' if meets else 'MISSES'} the budget; per step median s {statistics.median(ta['tracked']) / args.steps:.4f} "
         f"vs {step_plain:.4f}; entry + exit alone {statistics.median(entry_exit):.4f} s per block"),
        ("(b) batch_attribution / forward + backward, same batch", f"{attribution_over_fb:.3f}", "-",
         f"median s {statistics.median(tb['attribution']):.4f} vs {statistics.median(tb['forward_backward']):.4f}"),
    ]
    print_table(header, rows, args.quick)
    print(f"Tracked / plain = {tracked_over_plain:.3f}: {'meets' if meets else 'does NOT meet'} the budget of "
          f"{BUDGET}. Tracker memory {nbytes / 2**20:.1f} MB (snapshot of {mlp_bytes / 2**20:.1f} MB of MLP weights "
          f"+ accumulators), whatever the number of steps. Wall time {wall:.1f} s. Check: tracker and "
          f"batch_attribution agree to {check:.1e} (max relative difference).")

    result = {
        "tracked_over_plain": tracked_over_plain,
        "meets_budget": meets,
        "attribution_over_forward_backward": attribution_over_fb,
        "targets": TARGETS,
        "budget": BUDGET,
        "seconds": {**{f"a_{k}": v for k, v in ta.items()}, **{f"b_{k}": v for k, v in tb.items()},
                    "entry_exit": entry_exit},
        "step_plain_s": step_plain,
        "tracker_mb": nbytes / 2**20,
        "mlp_weights_mb": mlp_bytes / 2**20,
        "check_max_rel_diff": check,
        "autocast": args.autocast,
    }
    write_json(result, args, device, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
