#!/usr/bin/env python
"""What do the pinned CPU kernels cost? ``ke_utils`` runs the AVX2 kernels on every x86-64 machine
(``ke_utils.cpu_kernels``), so that a built-in family is the same model everywhere. On a CPU with
AVX-512 the native kernels could be faster; this measures by how much, on the work that dominates a
family build and the notebooks' continued training: training steps (``ke_utils.training.train_step``:
forward, backward, clipping, AdamW) of the built-in family's shape (4 layers, hidden 128, d_ff 512,
vocabulary 2,048, batches of 16 x 128 tokens).

A process keeps the kernels it started with, so each side runs in its own worker process; the
workers run one after the other in rotating order, ``--repeats`` times, each timing ``--steps``
steps after a warm-up. The figure is the median over repeats of pinned / native seconds per step
(above 1: the pinned kernels are slower). On a CPU without AVX-512 both sides run the same kernels.

    python bench/cpu_kernels.py                  # ~1 min on 2 CPU cores
    python bench/cpu_kernels.py --json out.json  # also write the figures
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import add_model_arguments, median_ratio, parse_with_quick, print_table, write_json  # noqa: E402
from ke_utils.cpu_kernels import PINNED  # noqa: E402

# "native": the best kernels the CPU has (ATen falls back to them where AVX-512 is missing); MKL and
# oneDNN unconstrained. Naming a capability is a user's choice, which ke_utils leaves alone.
SIDES = {"pinned": dict(PINNED), "native": {"ATEN_CPU_CAPABILITY": "avx512"}}


def worker(args: argparse.Namespace) -> None:
    """Time ``args.steps`` training steps (after ``args.warmup``); print capability and s/step as JSON."""
    import ke_utils  # noqa: F401 (pins the kernels unless the environment chose)
    from ke_utils.training import optimizer, train_step
    from transformers import LlamaConfig, LlamaForCausalLM, get_constant_schedule

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                         num_key_value_heads=args.heads, max_position_embeddings=args.seq,
                                         tie_word_embeddings=True))
    opt = optimizer(model, 3e-3, 1.0, (0.9, 0.95))
    sched = get_constant_schedule(opt)
    batches = torch.randint(args.vocab, (args.warmup + args.steps, args.batch, args.seq))
    for batch in batches[:args.warmup]:
        train_step(model, batch, opt, sched)
    start = time.perf_counter()
    for batch in batches[args.warmup:]:
        train_step(model, batch, opt, sched)
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                      "seconds_per_step": (time.perf_counter() - start) / args.steps}))


def run_side(side: str, argv: list[str]) -> dict:
    # The worker must not inherit a kernel choice from this process (importing ke_utils set one here).
    env = {k: v for k, v in os.environ.items() if k not in PINNED} | SIDES[side]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", *argv], env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.set_defaults(hidden=128, intermediate=512, vocab=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parse_with_quick(parser, argv, dict(steps=3, warmup=1, repeats=2, batch=2, seq=32))
    if args.worker:
        return worker(args)
    forwarded = [a for a in argv if a not in ("--json", args.json)]
    start = time.perf_counter()
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    capability = {}
    for r in range(args.repeats):
        for side in (list(SIDES) if r % 2 == 0 else list(SIDES)[::-1]):
            result = run_side(side, forwarded)
            seconds[side].append(result["seconds_per_step"])
            capability[side] = result["capability"]
    ratio = median_ratio(seconds["pinned"], seconds["native"])
    print_table(f"Pinned ({capability['pinned']}) vs native ({capability['native']}) CPU kernels, training steps of "
                f"{args.batch} x {args.seq} tokens, {args.repeats} repeats", [
                    ("(a) pinned / native seconds per training step", f"{ratio:.3f}", "-",
                     f"median s/step {statistics.median(seconds['pinned']):.4f} vs {statistics.median(seconds['native']):.4f}")],
                args.quick)
    args.dtype, args.device = "float32", "cpu"
    write_json({"pinned_over_native": ratio, "capability": capability, "seconds": seconds}, args, torch.device("cpu"),
               time.perf_counter() - start)


if __name__ == "__main__":
    main()
