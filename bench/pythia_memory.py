#!/usr/bin/env python
"""Memory of one continued-training step at pythia-160m's shape (random weights built from its
config, nothing downloaded), measured on the CPU, for the GPU memory estimate in README "Run on
Colab": the parameters, and the peak resident memory a step adds (forward with labels, backward,
AdamW step) at ``rows`` x ``--seq-len`` tokens, in fp32 and under bf16 autocast on fp32 weights
(what ``TrainConfig(precision="auto")`` picks for pythia's fp16 checkpoints). Each setting runs in
a fresh process; the peak is Linux's ``VmHWM``, reset to the current size just before the step.

    OMP_NUM_THREADS=1 python bench/pythia_memory.py            # rows 1, 2, 4 (about 5 min on 1 core)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

# pythia-160m's config.json (EleutherAI/pythia-160m), the sizes that set memory
PYTHIA_160M = dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, max_position_embeddings=2048, rotary_pct=0.25,
                   use_parallel_residual=True, tie_word_embeddings=False)


def _rss_mb(field: str) -> float:
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def one_step(rows: int, seq_len: int, precision: str) -> dict:
    """Build the model, then measure one training step; MB throughout."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_160M)).float().train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, betas=(0.9, 0.95), weight_decay=0.1)
    batch = torch.randint(0, PYTHIA_160M["vocab_size"], (rows, seq_len))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
    before = _rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    with autocast:
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    after_backward = _rss_mb("VmHWM")
    optimizer.step()
    return {"rows": rows, "seq_len": seq_len, "precision": precision, "params": params,
            "param_mb": params * 4 / 2**20, "rss_before_mb": before,
            "forward_backward_peak_mb": after_backward - before, "step_peak_mb": _rss_mb("VmHWM") - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16-mixed"])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one setting
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_step(args.rows[0], args.seq_len, args.precision[0])))
        return
    for precision in args.precision:
        for rows in args.rows:
            out = subprocess.run([sys.executable, __file__, "--one", "--rows", str(rows), "--seq-len", str(args.seq_len),
                                  "--precision", precision], check=True, capture_output=True, text=True).stdout
            print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
