#!/usr/bin/env python
"""Probe scoring (``ke_utils.probes.score_pairs``) with only the target tokens' positions through
the output layer, against the full ``[batch, length, vocab]`` logits (the path a model takes when
``ke_utils.probes.head_on_hidden`` is False for it), side by side in one process: seconds (median
of alternating repeats, after a warm-up of every batch shape), peak memory added (CUDA) and the
largest difference in log-probability. Random weights at OLMo-1B's shape (vocabulary 50,304) and
synthetic probes.

    python bench/probe_scoring.py               # CUDA, OLMo-1B shape, bf16
    python bench/probe_scoring.py --quick       # a small shape on the CPU (seconds only)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # the package, and the tests' tokenizer helper
import ke_utils.probes as probes  # noqa: E402
from helpers import sentencepiece_tokenizer  # noqa: E402

OLMO_1B = dict(hidden=2048, layers=16, intermediate=8192, heads=16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="hidden 64, one layer, 100 probes")
    p.add_argument("--probes", type=int, default=1200)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256], help="the first is timed")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    shape = dict(hidden=64, layers=1, intermediate=128, heads=4) if args.quick else OLMO_1B
    n = 100 if args.quick else args.probes
    import transformers as tf

    words = [f"word{k}" for k in range(300)]
    inputs = [" ".join(words[(i * 13 + j) % 300] for j in range(60 + i % 40)) for i in range(n)]
    targets = [" ".join(words[(i * 7 + j) % 300] for j in range(3)) for i in range(n)]
    tokenizer = sentencepiece_tokenizer(inputs[:200] + targets[:200], 1000)
    config = tf.OlmoConfig(vocab_size=50304, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                           num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                           max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=1,
                           bos_token_id=None, eos_token_id=0)
    torch.manual_seed(0)
    with device:
        model = tf.OlmoForCausalLM(config).to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    heads = {"scored positions": probes.head_on_hidden, "full logits": lambda model: False}

    def score(name: str, batch_size: int):
        probes.head_on_hidden = heads[name]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        start = time.perf_counter()
        scores = probes.score_pairs(model, tokenizer, inputs, targets, batch_size=batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else float("nan")
        return time.perf_counter() - start, peak, scores["logprob"]

    timed = args.batch_sizes[0]
    for name in heads:  # warm-up: every batch shape once, both paths
        score(name, timed)
    seconds, peaks, logprobs = {k: [] for k in heads}, {}, {}
    for repeat in range(3):
        for name in (list(heads) if repeat % 2 == 0 else list(heads)[::-1]):
            s, peaks[(name, timed)], logprobs[name] = score(name, timed)
            seconds[name].append(s)
    for batch_size in args.batch_sizes[1:]:
        for name in heads:
            peaks[(name, batch_size)] = score(name, batch_size)[1]
    diff = float((logprobs["scored positions"] - logprobs["full logits"]).abs().max())
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{card}; OlmoForCausalLM hidden {shape['hidden']}, {shape['layers']} layers, vocab 50304; {n} probes; "
          f"largest log-probability difference {diff:.1e}")
    print("\n| path | seconds (median of 3, batch %d) | peak GB added, by batch size |\n|---|---|---|" % timed)
    for name in heads:
        memory = ", ".join(f"{peaks[(name, b)]:.2f} ({b})" for b in args.batch_sizes)
        print(f"| {name} | {statistics.median(seconds[name]):.3f} | {memory} |")
    ratio = statistics.median(seconds["full logits"]) / statistics.median(seconds["scored positions"])
    print(f"\nfull logits / scored positions, time: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
