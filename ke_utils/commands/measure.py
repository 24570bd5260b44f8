"""Knowledge entropy of one model from the command line, for cluster jobs.

    ke-measure MODEL --texts FILE --out OUT.safetensors [--revision REV] ...

MODEL is a local folder or a hub id (``--revision`` a branch, tag or commit); FILE holds one
document per line. OUT gets the float64 coefficient means ``[n_layers, d_ff]`` under the key
``means`` (the settings and results in its metadata), and the last line printed is a JSON object
with ``ke``, ``normalized``, ``processes`` and ``documents_per_process``.

The same command under a distributed launcher splits the documents over the processes and adds
their sums once at the end (:func:`ke_utils.memory.entropy.measure_means`), e.g.::

    torchrun --nproc_per_node 2 -m ke_utils.measure ...            # 2 CPU processes (gloo)
    accelerate launch --num_processes 8 -m ke_utils.measure ...    # 8 GPUs (NCCL)

``--device-map auto`` instead splits one model's layers over the GPUs of a single process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from ..cache import atomic_path
from ..checkpoints import DTYPES, load_checkpoint, named_checkpoint
from ..memory.distributed import finish, local_device, process_state
from ..memory.entropy import WEIGHTINGS, knowledge_entropy, measure_means
from .inputs import loading, model_source, one_line_errors, output_file, text_lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ke-measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="local folder or hub id")
    parser.add_argument("--texts", required=True, type=Path, help="text file, one document per line")
    parser.add_argument("--out", required=True, type=Path, help="where to write the means (.safetensors)")
    parser.add_argument("--revision", help="hub branch, tag or commit (e.g. step20000-tokens84B)")
    parser.add_argument("--weighting", choices=WEIGHTINGS, default="token",
                        help="token: mean over real tokens; document: mean of per-document means (default: token)")
    parser.add_argument("--max-tokens-per-doc", type=int, default=512, help="documents are truncated to this (default 512)")
    parser.add_argument("--max-batch-tokens", type=int, default=8192, help="padded tokens per batch (default 8192)")
    parser.add_argument("--max-docs", type=int, help="measure only the first N documents")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="weights' dtype (default float32; bfloat16 halves memory on GPUs)")
    parser.add_argument("--device-map", help='e.g. "auto": split the layers over the visible GPUs (one process)')
    parser.add_argument("--trust-remote-code", action="store_true", help="run the repository's own model code")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.device_map and process_state() is not None:
        parser.error("--device-map splits one model over the GPUs of one process; do not combine it with a "
                     "multi-process launch")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Measure and write; a bad input raises :class:`~ke_utils.commands.inputs.BadInput` before any
    work (:func:`cli` turns it into one line)."""
    args = parse_args(argv)
    model_source(args.model)
    output_file(args.out)
    texts = text_lines(args.texts, "--texts")
    state = process_state()
    checkpoint = named_checkpoint(args.model, args.revision)
    device = local_device("cuda" if torch.cuda.is_available() else "cpu")
    options = {"device_map": args.device_map} if args.device_map else {"device": device}
    with loading(args.model + (f" at revision {args.revision}" if args.revision else ""), "MODEL",
                 "check the hub id and --revision, or give a local checkpoint folder"):
        model = load_checkpoint(checkpoint, dtype=DTYPES[args.dtype], trust_remote_code=args.trust_remote_code, **options)
        tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision,
                                                  trust_remote_code=args.trust_remote_code)
    is_main = state is None or state.is_main_process
    means, documents = measure_means(model, tokenizer, texts, max_docs=args.max_docs,
                                     max_tokens_per_doc=args.max_tokens_per_doc,
                                     max_batch_tokens=args.max_batch_tokens, weighting=args.weighting,
                                     progress=is_main and not args.quiet)
    ke = knowledge_entropy(means, args.weighting)
    result = {"ke": ke.total, "normalized": ke.normalized, "processes": len(documents),
              "documents_per_process": documents, "n_layers": ke.n_layers, "d_ff": ke.d_ff,
              "model": args.model, "revision": args.revision, "weighting": args.weighting,
              "dtype": args.dtype, "max_tokens_per_doc": args.max_tokens_per_doc}
    if is_main:
        with atomic_path(args.out) as partial:
            save_file({"means": means.contiguous()}, str(partial), metadata={"result": json.dumps(result)})
        print(json.dumps(result), flush=True)
    return result


def cli() -> None:
    """The console script ``ke-measure`` (and ``python -m ke_utils.measure``): :func:`main`, then the
    distributed process group, if any, is closed."""
    with one_line_errors("ke-measure"):
        main(sys.argv[1:])
    finish()


if __name__ == "__main__":
    cli()
