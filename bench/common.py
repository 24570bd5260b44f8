"""What the benchmarks share: the random Llama they time, side-by-side timing with rotating order,
and the median ratio."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the random-initialised LlamaForCausalLM a benchmark times."""
    model = parser.add_argument_group("model (random-initialised LlamaForCausalLM)")
    model.add_argument("--hidden", type=int, default=256)
    model.add_argument("--layers", type=int, default=4)
    model.add_argument("--intermediate", type=int, default=1024, help="d_ff")
    model.add_argument("--heads", type=int, default=4)
    model.add_argument("--vocab", type=int, default=4096)


def parse_with_quick(parser: argparse.ArgumentParser, argv, quick: dict) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick``, the ``quick`` sizes unless given explicitly on the command line."""
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def torch_setup(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Apply ``--threads`` and return the device and dtype that ``add_model_arguments`` named."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device), getattr(torch, args.dtype)


def random_llama(args: argparse.Namespace, device, dtype, context: int, **config):
    """The model of :func:`add_model_arguments` (seeded by ``args.seed``), ``context`` positions."""
    import transformers as tf

    torch.manual_seed(args.seed)
    options = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                   num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                   max_position_embeddings=max(context, 64), tie_word_embeddings=False, **config)
    return tf.LlamaForCausalLM(tf.LlamaConfig(**options)).to(device=device, dtype=dtype)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a timer sees it (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function; in repeat r the order is rotated by r."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over repeats of the per-repeat ratio: load from other jobs hits both sides alike."""
    return statistics.median(a / b for a, b in zip(num, den))


def print_table(header: str, rows: list[tuple[str, str, str, str]], quick: bool) -> None:
    """The header line and the figures as a markdown table (figure, measured ratio, target, note)."""
    print(header + (" (--quick: tiny sizes for the tests, figures not representative)" if quick else ""))
    print()
    print("| figure | measured ratio | target | note |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def write_json(result: dict, args: argparse.Namespace, device: torch.device, wall: float) -> None:
    """``result`` with the environment (torch, device, dtype, threads, options, wall time) added,
    written to ``args.json`` when given."""
    result.update({"torch": torch.__version__, "device": device.type, "dtype": args.dtype,
                   "threads": torch.get_num_threads(), "config": {k: v for k, v in vars(args).items() if k != "json"},
                   "wall_s": wall})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
