"""Continued training of one checkpoint with injected knowledge, from the command line, at the
study's scale (:data:`ke_utils.continual.STUDY_RECIPE` unless options say otherwise):

    ke-train MODEL --revision REV --records fictional_knowledge.json \\
        --texts BACKGROUND --out DIR

MODEL is a local folder or a hub id; ``--records`` the study's knowledge file (Chang et al. 2024:
the first ``--n-paraphrase`` records are injected every round, the rest once); ``--texts`` the
background text (a text file with one document per line, a ``datasets`` folder, or a hub dataset
id) of which the last ``--n-heldout`` documents measure the held-out loss; retention is measured
on the study's six downstream tasks (``--tasks none`` skips it). Under ``accelerate launch`` or
``torchrun`` each global batch is split over the processes (:func:`ke_utils.continual.continue_training`).

DIR gets ``log.csv`` (the evaluations before, after every ``--eval-every``-th round and at the
end) and ``outcome.json`` (acquisition, gains, retention: :func:`ke_utils.outcomes.outcome`);
``--save-model`` also writes the trained weights (safetensors) there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from ..cache import atomic_write_text
from ..checkpoints import DTYPES, load_checkpoint, named_checkpoint
from ..continual import STUDY_RECIPE, ScaleConfig, train_and_evaluate
from ..downstream import STUDY_TASKS
from ..memory.distributed import finish, process_state
from ..outcomes import outcome
from ..records import load_records
from ..setups import hub_setup
from .inputs import BadInput, loading, looks_like_path, model_source, one_line_errors, output_folder, text_lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    stream, train, scale = STUDY_RECIPE.stream, STUDY_RECIPE.train, STUDY_RECIPE.scale
    p = argparse.ArgumentParser(prog="ke-train", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="local folder or hub id")
    p.add_argument("--revision", help="hub branch, tag or commit")
    p.add_argument("--records", required=True, type=Path, help="knowledge records (JSON list, the study's format)")
    p.add_argument("--texts", required=True, help="background text: file (one document per line), folder or hub id")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n-paraphrase", type=int, default=70, help="records injected every round (the rest: once)")
    p.add_argument("--n-background", type=int, default=200_000)
    p.add_argument("--n-heldout", type=int, default=500)
    p.add_argument("--tasks", default=",".join(STUDY_TASKS), help='retention tasks, comma-separated, or "none"')
    p.add_argument("--n-items", type=int, default=500, help="items per retention task")
    recipe = p.add_argument_group("recipe (default: the study's)")
    recipe.add_argument("--rounds", type=int, default=stream.rounds)
    recipe.add_argument("--interval", type=int, default=stream.interval, help="steps per round")
    recipe.add_argument("--batch-size", type=int, default=stream.batch_size, help="global batch (rows)")
    recipe.add_argument("--seq-len", type=int, default=stream.seq_len)
    recipe.add_argument("--max-injected-rows", type=int, default=stream.max_injected_rows)
    recipe.add_argument("--lr", type=float, default=train.lr)
    recipe.add_argument("--warmup", type=int, default=train.warmup)
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--micro-batch", type=int, default=scale.micro_batch, help="rows per forward/backward per process")
    recipe.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate after every N-th round too (0: before and after only)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="as loaded; training keeps fp32 master weights")
    p.add_argument("--save-model", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train, evaluate and write; a bad input raises :class:`~ke_utils.commands.inputs.BadInput`
    before any work (:func:`cli` turns it into one line)."""
    args = parse_args(argv)
    model_source(args.model)
    output_folder(args.out)
    if Path(args.texts).is_file():
        text_lines(Path(args.texts), "--texts")  # UTF-8 with at least one document
    elif looks_like_path(args.texts) and not Path(args.texts).exists():
        raise BadInput(f"--texts {args.texts}: no such file or folder; give a text file (one document per line), "
                       "a datasets folder or a hub dataset id")
    with loading(str(args.records), "--records", "give the study's knowledge file, a JSON list of records"):
        records = load_records(args.records)
    state = process_state()
    is_main = state is None or state.is_main_process
    stream_config = dataclasses.replace(STUDY_RECIPE.stream, rounds=args.rounds, interval=args.interval,
                                        batch_size=args.batch_size, seq_len=args.seq_len,
                                        max_injected_rows=args.max_injected_rows, seed=args.seed)
    train_config = dataclasses.replace(STUDY_RECIPE.train, lr=args.lr, warmup=args.warmup, seed=args.seed)
    scale = ScaleConfig(micro_batch=args.micro_batch, gradient_checkpointing=not args.no_gradient_checkpointing)
    tasks = () if args.tasks == "none" else tuple(args.tasks.split(","))
    setup = hub_setup({"paraphrase": records[: args.n_paraphrase], "once": records[args.n_paraphrase :]},
                      args.n_background, args.n_heldout, tasks, args.n_items, texts=args.texts)
    checkpoint = named_checkpoint(args.model, args.revision)
    with loading(args.model + (f" at revision {args.revision}" if args.revision else ""), "MODEL",
                 "check the hub id and --revision, or give a local checkpoint folder"):
        tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision, trust_remote_code=args.trust_remote_code)
        model = load_checkpoint(checkpoint, dtype=DTYPES[args.dtype], trust_remote_code=args.trust_remote_code)
    log = train_and_evaluate(model, tokenizer, setup, stream_config, train_config, args.eval_every, is_main,
                             checkpoint, scale)
    result = {"model": args.model, "revision": args.revision, "steps": stream_config.steps,
              "processes": 1 if state is None else state.num_processes, **outcome(log)}
    if is_main:
        atomic_write_text(args.out / "log.csv", log.to_csv(index=False))
        atomic_write_text(args.out / "outcome.json", json.dumps(result, indent=1))
        if args.save_model:
            model.save_pretrained(args.out / "model")
            tokenizer.save_pretrained(args.out / "model")
        print(json.dumps(result), flush=True)
    return result


def cli() -> None:
    """The console script ``ke-train`` (and ``python -m ke_utils.train``): :func:`main`, then the
    distributed process group, if any, is closed."""
    with one_line_errors("ke-train"):
        main(sys.argv[1:])
    finish()


if __name__ == "__main__":
    cli()
