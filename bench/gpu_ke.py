#!/usr/bin/env python
"""Knowledge entropy and continued training at OLMo-1B's shape (random weights), every figure
measured side by side in this one process, one run (docs/method.md section 2):

(a) throughput of ``coefficient_means`` (trunk + one forward pre-hook per layer) in real tokens/s,
    against a plain forward of the same trunk over the same batches (target: at least 90 %), and
    against the original study's approach on the same documents (bench/ke_overhead.py's
    ``original``: pad to ``--max-len``, fixed batches, no mask, logits, every layer's coefficient
    tensor kept);
(b) continued training with :func:`ke_utils.continual.continue_training` (bf16
    autocast on fp32 master weights, AdamW, gradient accumulation to ``--global-batch`` rows of
    ``--seq-len`` tokens), without and with gradient checkpointing: tokens/s, model FLOP
    utilisation (MFU: 6 x matmul parameters + 12 x layers x width x context FLOPs per token,
    PaLM's count, over the card's dense bf16 peak; target: at least 40 %) and peak GPU memory.

    python bench/gpu_ke.py                      # CUDA: OLMo-1B shape, bf16 (about 3 min on an H100)
    python bench/gpu_ke.py --device cpu --quick # tiny shape, float32 (the tests run this)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

# The package from this checkout, whatever the working directory (the script lives in bench/).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import interleaved, median_ratio, parse_with_quick, print_table, sync, torch_setup, write_json  # noqa: E402
from ke_overhead import PAD, full_forward, make_docs, original, trunk_forward  # noqa: E402

TARGETS = {"ke_over_forward_throughput": ">= 0.90", "mfu": ">= 0.40"}
# Dense bf16 peak of the card, TFLOP/s (vendor data sheets, SXM parts); MFU needs it.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}
OLMO_1B = dict(hidden=2048, layers=16, intermediate=8192, heads=16, vocab=50304)
QUICK = dict(hidden=64, layers=2, intermediate=256, heads=4, vocab=512, n_docs=24, max_len=128, median_len=40,
             batch_tokens=1024, orig_batch_size=4, seq_len=32, global_batch=8, micro_batch=4, train_steps=1,
             repeats=2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="weights for (a) and as loaded for (b) (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (for the tests)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: looked up by name)")
    model = p.add_argument_group("model (random-initialised OlmoForCausalLM; default: OLMo-1B's shape)")
    for name, value in OLMO_1B.items():
        model.add_argument(f"--{name}", type=int, default=value)
    data = p.add_argument_group("(a) documents (lognormal lengths, random token ids)")
    data.add_argument("--n-docs", type=int, default=256)
    data.add_argument("--max-len", type=int, default=2048, help="cap on document length; the original pads to it")
    data.add_argument("--median-len", type=float, default=600.0)
    data.add_argument("--sigma", type=float, default=0.8)
    data.add_argument("--batch-tokens", type=int, default=32768, help="ours: max_batch_tokens")
    data.add_argument("--orig-batch-size", type=int, default=8, help="original: fixed batch size")
    data.add_argument("--repeats", type=int, default=3)
    train = p.add_argument_group("(b) continued training")
    train.add_argument("--seq-len", type=int, default=1024)
    train.add_argument("--global-batch", type=int, default=128, help="rows per optimizer step (the study's 128)")
    train.add_argument("--micro-batch", type=int, default=16, help="rows per forward/backward")
    train.add_argument("--train-steps", type=int, default=3, help="timed optimizer steps (after one warm-up step)")
    train.add_argument("--skip-training", action="store_true", help="(a) only (e.g. a 7B shape on one GPU)")
    args = parse_with_quick(p, argv, QUICK)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return args


def olmo(args, device, dtype):
    """A random-initialised OlmoForCausalLM of the requested shape, built on ``device``."""
    import transformers as tf

    torch.manual_seed(args.seed)
    config = tf.OlmoConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                           num_hidden_layers=args.layers, num_attention_heads=args.heads,
                           num_key_value_heads=args.heads, max_position_embeddings=max(args.max_len, args.seq_len),
                           tie_word_embeddings=True, pad_token_id=PAD,
                           bos_token_id=None, eos_token_id=args.vocab - 1, use_cache=False)
    with torch.device(device):
        model = tf.OlmoForCausalLM(config)
    return model.to(dtype).eval()


def flops_per_token(model, args) -> float:
    """Training FLOPs per token: 6 x the parameters of every matrix product (the tied output layer
    included, the embedding lookup not) + 12 x layers x width x context (attention)."""
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6.0 * matmul + 12.0 * args.layers * args.hidden * args.seq_len


def peak_tflops(args, device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def measure_ke(model, args, device):
    """(a): seconds per pass over the documents for KE, trunk, full forward and the original."""
    from ke_utils import coefficient_means, length_bucketed_batches

    docs = make_docs(args.n_docs, args)
    batches = length_bucketed_batches(docs, PAD, max_batch_tokens=args.batch_tokens)
    with torch.inference_mode():  # warm-up on every batch shape: kernels and their tuning, allocator
        coefficient_means(model, batches)
        trunk_forward(model, batches, device)
        full_forward(model, batches, device)
        original(model, docs[: args.orig_batch_size], args)
    times = interleaved({"ke": lambda: coefficient_means(model, batches),
                         "trunk": lambda: trunk_forward(model, batches, device),
                         "full": lambda: full_forward(model, batches, device),
                         "original": lambda: original(model, docs, args)}, args.repeats, device)
    return times, sum(len(d) for d in docs), len(batches)


def measure_training(model, args, device, checkpointing: bool) -> dict:
    """(b): seconds per optimizer step, tokens/s and peak memory of continued training."""
    import pandas as pd

    from ke_utils.continual import ScaleConfig, continue_training
    from ke_utils.continual import TrainConfig
    from ke_utils.stream import Stream

    generator = torch.Generator().manual_seed(args.seed)
    batches = torch.randint(1, args.vocab, (args.train_steps, args.global_batch, args.seq_len), generator=generator)
    config = TrainConfig(lr=4e-4, warmup=1, precision="bf16-mixed" if device.type == "cuda" else "fp32")
    scale = ScaleConfig(micro_batch=args.micro_batch, gradient_checkpointing=checkpointing)
    continue_training(model, Stream(batches[:1], pd.DataFrame()), config, progress=False, scale=scale)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    log = continue_training(model, Stream(batches, pd.DataFrame()), config, progress=False, scale=scale)
    sync(device)
    seconds = (time.perf_counter() - start) / args.train_steps
    return {"step_s": seconds, "tokens_per_s": args.global_batch * args.seq_len / seconds,
            "peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "loss": float(log["train_loss"].iloc[-1])}


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device, dtype = torch_setup(args)
    model = olmo(args, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    times, real, n_batches = measure_ke(model, args, device)
    per_s = {k: real / statistics.median(v) for k, v in times.items()}
    ke_over_forward = 1 / median_ratio(times["ke"], times["trunk"])  # throughput ratio
    ours_over_original = median_ratio(times["original"], times["ke"])

    fpt = flops_per_token(model, args)
    peak = peak_tflops(args, device)
    runs = () if args.skip_training else (("plain", False), ("checkpointing", True))
    training = {name: measure_training(model, args, device, flag) for name, flag in runs}
    for t in training.values():
        t["tflops"] = fpt * t["tokens_per_s"] / 1e12
        t["mfu"] = t["tflops"] / peak if peak else None
    wall = time.perf_counter() - t_start

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (f"torch {torch.__version__}, {card}, {args.dtype}; OlmoForCausalLM {args.layers} layers, hidden "
              f"{args.hidden}, d_ff {args.intermediate}, vocab {args.vocab} ({n_params / 1e9:.2f}B params); "
              f"(a) {args.n_docs} docs, {real} real tokens in {n_batches} batches, {args.repeats} repeats; "
              + ("(b) skipped" if args.skip_training else
                 f"(b) {args.global_batch} x {args.seq_len} tokens per step, micro-batch {args.micro_batch}, "
                 f"{args.train_steps} timed steps")
              + f"; peak {peak or 'unknown'} TFLOP/s")
    mfu = lambda t: f"{t['mfu']:.3f}" if t["mfu"] is not None else "n/a (no peak for this device)"  # noqa: E731
    memory = lambda t: f", peak {t['peak_gb']:.1f} GB" if t["peak_gb"] is not None else ""  # noqa: E731
    rows = [
        ("(a) KE throughput / plain trunk forward throughput", f"{ke_over_forward:.3f}",
         TARGETS["ke_over_forward_throughput"],
         f"{per_s['ke']:,.0f} vs {per_s['trunk']:,.0f} real tokens/s (full forward with logits {per_s['full']:,.0f})"),
        ("(a) KE throughput / original approach's", f"{ours_over_original:.2f}", "-",
         f"original {per_s['original']:,.0f} real tokens/s (pads to {args.max_len}, batch {args.orig_batch_size})"),
        *[(f"(b) training MFU, {name}", mfu(t), TARGETS["mfu"],
           f"{t['tokens_per_s']:,.0f} tokens/s, {t['tflops']:.1f} TFLOP/s, {t['step_s']:.2f} s/step{memory(t)}")
          for name, t in training.items()],
    ]
    print_table(header, rows, args.quick)
    print(f"Wall time {wall:.1f} s.")
    result = {"ke_over_forward_throughput": ke_over_forward, "ke_over_original_throughput": ours_over_original,
              "tokens_per_s": per_s, "training": training, "flops_per_token": fpt, "peak_tflops": peak,
              "card": card, "params": n_params, "targets": TARGETS,
              "seconds": {k: v for k, v in times.items()}}
    write_json(result, args, device, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
