#!/usr/bin/env python
"""How much does measuring knowledge entropy cost? Every figure is a ratio measured side by side
in this one process, one run (docs/method.md section 2):

(a) ``coefficient_means`` (trunk + one forward pre-hook per layer) / a plain forward of the same
    trunk over the same batches: the hook overhead. Also vs the full forward with logits.
(b) the original study's approach / ours on documents of varied length: the original pads every
    document to a fixed length, runs fixed-size batches without an attention mask, keeps every
    layer's full coefficient tensor of the batch (its fork of the model returned them all) and
    sums ``|c|`` over positions afterwards. Ours: ``length_bucketed_batches`` + ``coefficient_means``.
(c) peak memory added while measuring N and 4N documents with our method (flat = ~1), and the
    original approach's peak for N next to ours.

Timings: warm-up first, then ``--repeats`` (a) / ``--repeats-b`` (b) repeats in which the sides of
each ratio run back to back in rotating order; a figure is the median over repeats of the
per-repeat ratio, so that load from other jobs on the machine hits both sides alike.

    python bench/ke_overhead.py                  # ~30 s on 2 CPU cores
    python bench/ke_overhead.py --json out.json  # also write the figures
    python bench/ke_overhead.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import statistics
import sys
import threading
import time

import torch

# The package from this checkout, whatever the working directory (the script lives in bench/).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import (add_model_arguments, interleaved, median_ratio, parse_with_quick, print_table,  # noqa: E402
                    random_llama, sync, torch_setup, write_json)

PAD = 0
TARGETS = {"ke_over_forward": "<= 1.10", "original_over_ours": ">= 3", "peak_mem_4n_over_n": "~1 (flat)"}

# --quick: tiny sizes for the test suite (a few seconds).
QUICK = dict(hidden=64, layers=2, intermediate=256, heads=4, vocab=512, n_docs=32, max_len=256,
             median_len=30, orig_batch_size=8, batch_tokens=1024, repeats=3, repeats_b=3)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--n-docs", type=int, default=48, help="N documents (c also uses 4N)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats for (a) (the median is reported)")
    p.add_argument("--repeats-b", type=int, default=3,
                   help="timed repeats for (b) (its sides are slow and its ratio far from its target)")
    p.add_argument("--mem-repeats", type=int, default=2, help="peak-memory runs per side in (c) (the minimum is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for the tests)")
    p.add_argument("--seed", type=int, default=0)
    add_model_arguments(p)
    data = p.add_argument_group("documents (lognormal lengths, random token ids)")
    data.add_argument("--max-len", type=int, default=512, help="cap on document length; the original pads to it")
    data.add_argument("--median-len", type=float, default=120.0)
    data.add_argument("--sigma", type=float, default=0.8, help="sigma of log length")
    data.add_argument("--batch-tokens", type=int, default=2048,
                      help="ours: max_batch_tokens. The library's default is 8192; bucketing wastes "
                           "padding in proportion to documents per batch / documents in the set, so a "
                           "small benchmark set needs a smaller budget to pad as little as a real "
                           "dataset of thousands of documents does with 8192")
    data.add_argument("--orig-batch-size", type=int, default=8, help="original: fixed batch size")
    return parse_with_quick(p, argv, QUICK)


# ----------------------------------------------------------------------------- setup

def make_model(args, device, dtype):
    return random_llama(args, device, dtype, args.max_len, pad_token_id=PAD).eval()


def make_docs(n: int, args) -> list[list[int]]:
    """n documents with lognormal lengths (median ``--median-len``, capped at ``--max-len``) and
    random token ids. The lengths are the n quantiles of the distribution, in shuffled order, so
    that even a small set has the distribution's mean length instead of a random draw's."""
    g = torch.Generator().manual_seed(args.seed + n)
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    log_len = math.log(args.median_len) + args.sigma * torch.special.ndtri(q)
    lengths = log_len.exp().round().clamp(2, args.max_len).long()[torch.randperm(n, generator=g)].tolist()
    return [torch.randint(1, args.vocab, (length,), generator=g).tolist() for length in lengths]


# ----------------------------------------------------------------------------- the two methods

def ours(model, docs, args):
    from ke_utils import coefficient_means, length_bucketed_batches

    return coefficient_means(model, length_bucketed_batches(docs, PAD, max_batch_tokens=args.batch_tokens))


def original(model, docs, args):
    """The study's layout: documents padded to ``--max-len``, fixed batch size, no attention mask,
    logits computed (full model), every layer's coefficient tensor of the batch kept (no copy:
    the study's fork returned them with the outputs), ``|c|`` summed over positions afterwards
    (padding included), divided by the number of documents."""
    from ke_utils import pad_batch
    from ke_utils.memory.hooks import find_coefficient_modules

    named = dict(model.named_modules())
    modules = [named[n] for n in find_coefficient_modules(model)]
    device = next(model.parameters()).device
    kept: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, a, i=i: kept.__setitem__(i, a[0]))
               for i, m in enumerate(modules)]
    sums = torch.zeros(len(modules), modules[0].in_features, dtype=torch.float64, device=device)
    try:
        with torch.inference_mode():
            for start in range(0, len(docs), args.orig_batch_size):
                batch = pad_batch(docs[start:start + args.orig_batch_size], PAD, pad_to=args.max_len)
                out = model(input_ids=batch["input_ids"].to(device), use_cache=False)
                for i in range(len(modules)):  # all L tensors [B, max_len, d_ff] are alive here
                    sums[i] += kept[i].abs().sum(dim=(0, 1)).double()
                kept.clear()
                del out
    finally:
        for h in handles:
            h.remove()
    return (sums / len(docs)).cpu()


def trunk_forward(model, batches, device):
    runner = model.base_model
    with torch.inference_mode():
        for b in batches:
            runner(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device), use_cache=False)


def full_forward(model, batches, device):
    with torch.inference_mode():
        for b in batches:
            model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device), use_cache=False)



# ----------------------------------------------------------------------------- memory

class PeakMemory:
    """Peak memory added while a function runs, in bytes.

    CUDA: ``max_memory_allocated`` minus the allocation before. CPU: peak RSS minus RSS before; the
    kernel's high-water mark (VmHWM) is reset by writing 5 to /proc/self/clear_refs, else a thread
    samples /proc/self/statm every millisecond. On glibc the allocator is told to serve large
    blocks with mmap (fixed threshold) and freed memory is trimmed before each run, so memory
    freed by an earlier run cannot hide this run's growth.
    """

    def __init__(self, device):
        self.device = device
        self.method = "cuda max_memory_allocated"
        self._libc = None
        if device.type == "cuda":
            return
        try:
            self._libc = ctypes.CDLL("libc.so.6")
            M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
            self._libc.mallopt(M_MMAP_THRESHOLD, 256 * 1024)
            self._libc.mallopt(M_TRIM_THRESHOLD, 1024 * 1024)
        except (OSError, AttributeError):
            self._libc = None
        self.method = "VmHWM via clear_refs" if self._clear_refs() else "statm sampled every 1 ms"

    @staticmethod
    def _clear_refs() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status_kb(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"{field} not in /proc/self/status")

    @staticmethod
    def _statm_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __call__(self, fn) -> int:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - base
        if self._libc is not None:
            self._libc.malloc_trim(0)
        base = self._status_kb("VmRSS") * 1024
        if self.method.startswith("VmHWM"):
            self._clear_refs()  # VmHWM := current RSS
            fn()
            return self._status_kb("VmHWM") * 1024 - base
        peak, stop = [base], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], self._statm_bytes())
                time.sleep(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            fn()
        finally:
            stop.set()
            thread.join()
        return max(peak[0], self._statm_bytes()) - base


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device, dtype = torch_setup(args)
    from ke_utils import coefficient_means, length_bucketed_batches

    model = make_model(args, device, dtype)
    docs, docs_4n = make_docs(args.n_docs, args), make_docs(4 * args.n_docs, args)
    batches = length_bucketed_batches(docs, PAD, max_batch_tokens=args.batch_tokens)
    real = sum(len(d) for d in docs)
    ours_padded = sum(b["input_ids"].numel() for b in batches)
    orig_padded = len(docs) * args.max_len
    n_params = sum(p.numel() for p in model.parameters())

    # warm-up: every code path once (thread pools, kernels, allocator)
    with torch.inference_mode():
        coefficient_means(model, batches[:2])
        trunk_forward(model, batches[:2], device)
        full_forward(model, batches[:2], device)
        original(model, docs[: args.orig_batch_size], args)

    # (a) hook overhead over the same batches
    ta = interleaved({"ke": lambda: coefficient_means(model, batches),
                      "trunk": lambda: trunk_forward(model, batches, device),
                      "full": lambda: full_forward(model, batches, device)}, args.repeats, device)
    ke_over_forward = median_ratio(ta["ke"], ta["trunk"])
    ke_over_full = median_ratio(ta["ke"], ta["full"])

    # (b) original approach / ours (each includes its own batching)
    tb = interleaved({"original": lambda: original(model, docs, args),
                      "ours": lambda: ours(model, docs, args)}, args.repeats_b, device)
    original_over_ours = median_ratio(tb["original"], tb["ours"])

    # The baseline does the real work: on one batch it gives the same means as our
    # weighting="original" mode (padding to max_len, no mask, every position counted).
    one = docs[: args.orig_batch_size]
    ref = coefficient_means(model, length_bucketed_batches(
        one, PAD, max_batch_tokens=len(one) * args.max_len, pad_to=args.max_len), weighting="original")
    check = float(((original(model, one, args) - ref).abs() / ref.abs().clamp(min=1e-12)).max())
    if not check < (1e-3 if dtype == torch.float32 else 5e-2):
        print(f"check failed: the original approach differs from weighting='original' by {check:.2e}",
              file=sys.stderr)
        return 1

    # (c) peak memory added (last: it changes the allocator's settings)
    peak = PeakMemory(device)
    # Alternate N and 4N and keep each side's smallest peak: a one-off allocation (allocator or
    # page-cache state left by the timings) can only add to a peak, never hide the method's own.
    mem_n, mem_4n = math.inf, math.inf
    for _ in range(args.mem_repeats):
        mem_n = min(mem_n, peak(lambda: ours(model, docs, args)))
        mem_4n = min(mem_4n, peak(lambda: ours(model, docs_4n, args)))
    mem_orig_n = peak(lambda: original(model, docs, args))
    floor = 64 * 1024  # below this the figure is allocator noise, not activations
    peak_mem_4n_over_n = max(mem_4n, floor) / max(mem_n, floor)

    elem = torch.finfo(dtype).bits // 8
    kept_mb = args.layers * args.orig_batch_size * args.max_len * args.intermediate * elem / 2**20
    mb = lambda x: x / 2**20  # noqa: E731
    wall = time.perf_counter() - t_start

    header = (
        f"torch {torch.__version__}, device {device.type}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", {torch.get_num_threads()} threads, {args.dtype}; LlamaForCausalLM {args.layers} layers, "
        f"hidden {args.hidden}, d_ff {args.intermediate}, {args.heads} heads, vocab {args.vocab} "
        f"({n_params / 1e6:.1f}M params); N = {args.n_docs} docs, {real} real tokens "
        f"(median {statistics.median(len(d) for d in docs):.0f}, max {max(len(d) for d in docs)}); "
        f"ours computes {ours_padded} positions in {len(batches)} batches, the original "
        f"{orig_padded} ({orig_padded / real:.1f}x the real tokens); {args.repeats} + {args.repeats_b} repeats"
    )
    rows = [
        ("(a) KE measurement / trunk forward, same batches", f"{ke_over_forward:.3f}", TARGETS["ke_over_forward"],
         f"hook overhead; median s {statistics.median(ta['ke']):.3f} vs {statistics.median(ta['trunk']):.3f}"),
        ("(a) KE measurement / full forward with logits", f"{ke_over_full:.3f}", "-",
         f"informative: KE skips the LM head; full forward median s {statistics.median(ta['full']):.3f}"),
        ("(b) original approach / ours", f"{original_over_ours:.2f}", TARGETS["original_over_ours"],
         f"original: pad to {args.max_len}, batch {args.orig_batch_size}, no mask, logits, all L activations "
         f"kept; median s {statistics.median(tb['original']):.3f} vs {statistics.median(tb['ours']):.3f}"),
        ("(c) peak memory added, ours, 4N / N docs", f"{peak_mem_4n_over_n:.2f}", TARGETS["peak_mem_4n_over_n"],
         f"{mb(mem_n):.0f} MB for N, {mb(mem_4n):.0f} MB for 4N ({peak.method}, least of {args.mem_repeats})"),
        ("(c) peak memory added, original / ours, N docs", f"{mem_orig_n / max(mem_n, floor):.2f}", "-",
         f"original {mb(mem_orig_n):.0f} MB for N (its kept activations alone: {kept_mb:.0f} MB per batch)"),
    ]
    print_table(header, rows, args.quick)
    print(f"Wall time {wall:.1f} s. Check: the original approach matches coefficient_means(weighting='original') "
          f"to {check:.1e} (max relative difference).")

    result = {
        "ke_over_forward": ke_over_forward,
        "original_over_ours": original_over_ours,
        "peak_mem_4n_over_n": peak_mem_4n_over_n,
        "ke_over_full_forward": ke_over_full,
        "peak_mem_mb": {"ours_n": mb(mem_n), "ours_4n": mb(mem_4n), "original_n": mb(mem_orig_n)},
        "targets": TARGETS,
        "seconds": {**{f"a_{k}": v for k, v in ta.items()}, **{f"b_{k}": v for k, v in tb.items()}},
        "memory_method": peak.method,
        "tokens": {"real": real, "ours_positions": ours_padded, "original_positions": orig_padded},
        "check_max_rel_diff": check,
    }
    write_json(result, args, device, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
