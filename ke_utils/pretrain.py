"""The built-in subject: a tokenizer and a tiny Llama family pretrained offline on the fictional world.

``python -m ke_utils.pretrain`` builds the default family (a few minutes on 2 cores) into the
git-ignored cache and prints where it went; ``builtin_family()`` does the same on first use.
Checkpoints are saved in the Hugging Face layout (safetensors, config, tokenizer) as ``step{N}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from filelock import FileLock, Timeout
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging

from .cache import atomic_write_text, cache_dir, config_key
from .checkpoints import Checkpoint, load_training_state, local_checkpoints, trainer_state
from .cpu_kernels import cpu_capability, environment, kernels_pinned
from .training import lr_at, lr_schedule, optimizer, pack, train_step
from .world import TEMPLATES, WorldConfig, generate_world, pretraining_corpus

EOS, PAD = "<|endoftext|>", "<|pad|>"
# Bump when the world generator or the training code changes what a configuration produces
# (2: transformers' schedules, optimizer state and learning rate kept with each checkpoint).
BUILD_VERSION = 2


@dataclass(frozen=True)
class FamilyConfig:
    """Everything that determines a built-in family; its hash names the cache folder."""

    world: WorldConfig = field(default_factory=WorldConfig)
    n_train_docs: int = 20_000
    n_heldout_docs: int = 1_000
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 512
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 1200
    lr: float = 3e-3
    warmup: int = 50
    schedule: str = "constant"  # "constant" (after warmup), "cosine" (to 0.1 x lr) or "wsd" (constant, then linear to 0.1 x)
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 0
    checkpoint_steps: tuple[int, ...] = (0, 15, 30, 60, 120, 200, 300, 450, 600, 800, 1000, 1200)
    decay_steps: int = 0  # "wsd" only: the last updates, over which the LR decays

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine", "wsd"):
            raise ValueError(f"schedule must be 'constant', 'cosine' or 'wsd', not {self.schedule!r}")
        if (self.schedule == "wsd") != (self.decay_steps > 0):
            raise ValueError(f"decay_steps ({self.decay_steps}) must be positive with schedule 'wsd' and 0 otherwise")
        if self.schedule == "wsd" and self.steps - self.decay_steps not in self.checkpoint_steps:
            raise ValueError(f"a 'wsd' family branches from its constant-LR twin at step {self.steps - self.decay_steps}, "
                             f"which must be one of checkpoint_steps {self.checkpoint_steps}")
        bad = [s for s in self.checkpoint_steps if not 0 <= s <= self.steps]
        if bad or list(self.checkpoint_steps) != sorted(set(self.checkpoint_steps)):
            raise ValueError(f"checkpoint_steps must be increasing and within [0, {self.steps}]: {self.checkpoint_steps}")

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        if not self.decay_steps:  # added later: families without a decay keep their keys (and cached folders)
            del fields["decay_steps"]
        return config_key({"version": BUILD_VERSION, **fields})

    def branch_point(self) -> tuple[FamilyConfig, int] | None:
        """A ``"wsd"`` family's constant-LR twin and the step where they part (the start of the
        decay): the twin's updates up to that step are this family's, number for number. None
        for the other schedules."""
        if self.schedule != "wsd":
            return None
        return dataclasses.replace(self, schedule="constant", decay_steps=0), self.steps - self.decay_steps


FAMILIES: dict[str, FamilyConfig] = {
    # Over-trained: few facts, long training after they are stored, constant LR -> KE declines.
    "overtrained": FamilyConfig(),
    # Capacity-bound: many facts for the parameters, mild decay, cosine LR -> KE rises while storing.
    "capacity": FamilyConfig(world=WorldConfig(n_people=300), weight_decay=0.1, schedule="cosine"),
    # The over-trained family with the shape of OLMo's schedule (warmup, cosine to 0.1 x over the
    # whole run): its checkpoints sit at different learning rates, as the study's did.
    "decayed": FamilyConfig(schedule="cosine"),
    # The over-trained family annealed: constant LR to step 1,000, then linear to 0.1 x by 1,200
    # (warmup-stable-decay). Its last checkpoint has about the constant family's knowledge entropy
    # and a tenth of its LR: notebook 05 compares the two (built from the constant family's step 1,000).
    "annealed": FamilyConfig(schedule="wsd", decay_steps=200),
}
# Reference digests of the families the notebooks use, built with the pinned CPU kernels.
FINGERPRINTS = Path(__file__).resolve().parents[1] / "data" / "family_fingerprints.json"
# The families the notebooks use by default (built before they run by the main job and the tests).
NOTEBOOK_FAMILIES = ("overtrained", "decayed")


def family_config(name_or_config: str | FamilyConfig) -> FamilyConfig:
    """A family's configuration from its name in ``FAMILIES``; ``"<name>-seed<N>"`` is the same
    family pretrained with seed N (initialisation and data order; the world, and so the facts and
    probes, stay the same). ``"<name>-seed0"`` is ``"<name>"``."""
    if isinstance(name_or_config, FamilyConfig):
        return name_or_config
    seeded = "-seed" in name_or_config
    name, _, seed = name_or_config.rpartition("-seed") if seeded else (name_or_config, "", "")
    if name not in FAMILIES or (seeded and not seed.isdigit()):
        raise ValueError(f"unknown built-in family {name_or_config!r}; choose one of {sorted(FAMILIES)}, "
                         "optionally with a pretraining seed, e.g. 'decayed-seed1'")
    return dataclasses.replace(FAMILIES[name], seed=int(seed)) if seed else FAMILIES[name]


def family_dir(config: FamilyConfig, root: Path | None = None) -> Path:
    return Path(root or cache_dir()) / f"family-{config.key()}"


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on ``texts``, as a transformers fast tokenizer with pad and eos."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=EOS)


def make_model(config: FamilyConfig, tokenizer):
    """A fresh Llama (SwiGLU MLP, tied embeddings) of the family's shape, seeded."""
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.n_layers,
            num_attention_heads=config.n_heads,
            num_key_value_heads=config.n_heads,
            max_position_embeddings=config.seq_len,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def scheduler(opt: torch.optim.Optimizer, config: FamilyConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The family's schedule (:func:`~ke_utils.training.lr_schedule`): linear warmup over
    ``warmup`` steps, then constant, or cosine to ``0.1 x lr`` at ``steps`` (the shape of OLMo's),
    or constant and linear to ``0.1 x lr`` over the last ``decay_steps``."""
    return lr_schedule(opt, config.warmup, config.steps, config.schedule, final_ratio=0.1, decay_steps=config.decay_steps)


def pretraining_lr(config: FamilyConfig, step: int) -> float:
    """The learning rate the schedule gives after ``step`` updates (the one update ``step + 1`` uses)."""
    return lr_at(step, config.lr, config.warmup, config.steps, config.schedule, final_ratio=0.1,
                 decay_steps=config.decay_steps)


def _save(model, tokenizer, folder: Path, opt, sched, gen: torch.Generator, step: int) -> None:
    """Weights and tokenizer in the Hugging Face layout, plus what resuming needs, named as
    transformers' Trainer names it: ``optimizer.pt`` (AdamW state), ``scheduler.pt``,
    ``rng_state.pth`` (the data-order generator) and ``trainer_state.json`` (step, learning rate)."""
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # one "Writing model shards" bar per 5 MB checkpoint is noise
    try:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    finally:
        if bars:
            logging.enable_progress_bar()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(sched.state_dict(), folder / "scheduler.pt")
    torch.save({"data_order": gen.get_state()}, folder / "rng_state.pth")
    atomic_write_text(folder / "trainer_state.json",
                      json.dumps({"global_step": step, "learning_rate": sched.get_last_lr()[0]}))


def _pretrain(model, tokenizer, data: torch.Tensor, config: FamilyConfig, opt, sched, gen: torch.Generator,
              steps: range, folder: Path, progress: bool) -> dict:
    """Updates ``steps`` (1-based) with batches drawn by ``gen``; saves the checkpoints among them.
    Returns the log: step, loss and the learning rate each update used."""
    log = {"step": [], "loss": [], "lr": []}
    model.train()
    bar = tqdm(steps, desc="pretraining", disable=not progress)
    for step in bar:
        batch = data[torch.randint(len(data), (config.batch_size,), generator=gen)]
        lr = sched.get_last_lr()[0]
        loss = train_step(model, batch, opt, sched)
        log["step"].append(step), log["loss"].append(loss), log["lr"].append(lr)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step in config.checkpoint_steps:
            _save(model, tokenizer, folder / f"step{step}", opt, sched, gen, step)
    return log


def build_family(config: FamilyConfig, root: Path | None = None, progress: bool = True, force: bool = False) -> Path:
    """World -> corpus -> tokenizer -> pretraining with checkpoints. One builder at a time per family
    (a file lock: a second process waits, then finds the family built); written to a temporary
    folder and renamed when complete, so an interrupted build never looks finished. Where this
    process's CPU kernels are not the pinned ones (:mod:`~ke_utils.cpu_kernels`), the build runs
    in a fresh process that has them. The finished family is compared with its reference digest."""
    final = _build_locked(config, root, progress, force)
    check_fingerprint(config, root)
    return final


def _build_locked(config: FamilyConfig, root: Path | None, progress: bool, force: bool = False) -> Path:
    """:func:`build_family` without the comparison with the reference digest."""
    final = family_dir(config, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(final) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process that is building {final.name} ...", flush=True)
        lock.acquire()
    try:
        if force or not _is_complete(config, final):
            if kernels_pinned():
                _build(config, final, progress)
            else:
                _build_in_fresh_process(config, final, progress)
    finally:
        lock.release()
    return final


def _in_fresh_process(function: str, args: tuple, what: str, threads: int | None = None) -> None:
    """``pretrain.<function>(*args)`` in a fresh Python process (``threads`` CPU threads if given).
    It imports ``ke_utils`` first, so it runs the pinned CPU kernels, and, unlike ``spawn``, it
    does not re-run the caller's ``__main__``. ``what``: the family, for the error message."""
    set_threads = f"pretrain.torch.set_num_threads({threads}); " if threads else ""
    code = (f"import pickle, sys; from ke_utils import pretrain; {set_threads}"
            f"pretrain.{function}(*pickle.load(sys.stdin.buffer))")
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    process = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(args), env=env)
    if process.returncode != 0:
        raise RuntimeError(f"building {what} in a separate process failed (exit code {process.returncode})")


def _build_on_one_thread(config: FamilyConfig, root: Path | None) -> None:
    """:func:`_build_locked` in a fresh process with one CPU thread (:func:`_in_fresh_process`)."""
    _in_fresh_process("_build_locked", (config, root, False), family_dir(config, root).name, threads=1)


def _build(config: FamilyConfig, final: Path, progress: bool) -> None:
    """The build itself (callers hold the family's lock)."""
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    if config.branch_point():
        log, tokens, parameters = _branch_from_twin(config, tmp, final.parent, progress)
    else:
        corpus = pretraining_corpus(generate_world(config.world), config.n_train_docs, config.n_heldout_docs)
        atomic_write_text(tmp / "texts.json", json.dumps(corpus))
        tokenizer = train_tokenizer(corpus["train"], config.vocab_size)
        data = pack(tokenizer, corpus["train"], config.seq_len)
        model = make_model(config, tokenizer)
        opt = optimizer(model, config.lr, config.weight_decay, config.betas)
        sched = scheduler(opt, config)
        gen = torch.Generator().manual_seed(config.seed)
        if 0 in config.checkpoint_steps:
            _save(model, tokenizer, tmp / "step0", opt, sched, gen, 0)
        log = _pretrain(model, tokenizer, data, config, opt, sched, gen, range(1, config.steps + 1), tmp, progress)
        tokens, parameters = int(data.numel()), sum(p.numel() for p in model.parameters())
    info = {
        "config": dataclasses.asdict(config),
        "key": config.key(),
        "build_seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "train_tokens": tokens,
        "parameters": parameters,
        "environment": environment(),
        "log": log,
    }
    atomic_write_text(tmp / "family.json", json.dumps(info))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _branch_from_twin(config: FamilyConfig, tmp: Path, root: Path, progress: bool) -> tuple[dict, int, int]:
    """A ``"wsd"`` family in ``tmp``: its constant-LR twin (built first if missing) copied up to the
    branch step, then pretrained on from there with the decay (:func:`resume_pretraining`: the
    same updates as a build from scratch, which the twin's first steps are). Returns the whole
    log, the corpus's token count and the parameter count, as the twin recorded them."""
    twin, step = config.branch_point()
    source = _build_locked(twin, root, progress)
    shutil.copy2(source / "texts.json", tmp / "texts.json")
    for s in config.checkpoint_steps:
        if s <= step:
            shutil.copytree(source / f"step{s}", tmp / f"step{s}")
    twin_info = json.loads((source / "family.json").read_text())
    branch = next(c for c in local_checkpoints(tmp) if c.step == step)
    tail = resume_pretraining(branch, config, config.steps, tmp, progress=progress)
    log = {k: [v for s, v in zip(twin_info["log"]["step"], values) if s <= step] + tail[k]
           for k, values in twin_info["log"].items()}
    return log, twin_info["train_tokens"], twin_info["parameters"]


def _build_in_fresh_process(config: FamilyConfig, final: Path, progress: bool) -> None:
    """:func:`_build` in a fresh process (:func:`_in_fresh_process`), which pins its CPU kernels on import."""
    print(f"this process already chose {cpu_capability()} CPU kernels: building {final.name} in a fresh "
          "process with the pinned ones (its progress goes to the terminal)", flush=True)
    _in_fresh_process("_build", (config, final, progress), final.name)


def resume_pretraining(checkpoint: Checkpoint, config: FamilyConfig, until: int, folder: Path,
                       progress: bool = False) -> dict:
    """Continue the family's pretraining from a built-in ``checkpoint`` (its weights, AdamW state,
    schedule position and data order; the corpus of the family folder it sits in) up to step
    ``until`` under ``config``'s schedule, saving the family's checkpoints on the way into
    ``folder``. Under the schedule it was built with, these are the same updates as the
    uninterrupted run. Returns the log of the new updates (step, loss, lr)."""
    step = trainer_state(checkpoint)["global_step"]
    if not step < until <= config.steps:
        raise ValueError(f"until must be in ({step}, {config.steps}], got {until}")
    texts = json.loads((Path(checkpoint.path).parent / "texts.json").read_text())["train"]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoint.path)
    model = LlamaForCausalLM.from_pretrained(checkpoint.path, use_safetensors=True)
    opt = optimizer(model, config.lr, config.weight_decay, config.betas)
    sched = scheduler(opt, config)
    gen = torch.Generator()
    load_training_state(checkpoint, opt, sched, gen)
    return _pretrain(model, tokenizer, pack(tokenizer, texts, config.seq_len), config, opt, sched, gen,
                     range(step + 1, until + 1), Path(folder), progress)


_CHECKED: set[Path] = set()  # cached families compared with their reference digest in this process


def _is_complete(config: FamilyConfig, folder: Path) -> bool:
    """Whether ``folder`` holds the whole family: its record, texts and every checkpoint's weights."""
    return all((folder / name).is_file() for name in
               ["family.json", "texts.json", *(f"step{s}/model.safetensors" for s in config.checkpoint_steps)])


def _ensure_built(config: FamilyConfig, root: Path | None, progress: bool = True) -> Path:
    """The family's folder, built first if missing (see :func:`_ensure_built_all`)."""
    return _ensure_built_all([config], root, progress)[0]


def _cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _ensure_built_all(configs: list[FamilyConfig], root: Path | None, progress: bool = True) -> list[Path]:
    """The families' folders, each built first if missing; a cached folder that lacks part of a
    family (an older interrupted or raced build) is rebuilt with a warning. Where two or more are
    missing and the machine has two or more cores, they are built side by side, one process with
    one thread each (a family's weights do not depend on the thread count, and two one-thread
    builds on two cores finish sooner than two two-thread builds one after the other)."""
    folders = [family_dir(config, root) for config in configs]
    missing = list({config.key(): config for config, folder in zip(configs, folders)
                    if not _is_complete(config, folder)}.values())
    for config in missing:
        if family_dir(config, root).exists():
            warnings.warn(f"the cached built-in family {family_dir(config, root)} is incomplete (a checkpoint or "
                          "its record is missing); rebuilding it")
    workers = min(len(missing), _cores())
    if workers >= 2:
        print(f"building {len(missing)} built-in families side by side ({workers} processes, one thread each) ...",
              flush=True)
        with ThreadPoolExecutor(workers) as pool:  # each thread waits on its build's process
            list(pool.map(_build_on_one_thread, missing, [root] * len(missing)))
    for config, folder in zip(configs, folders):
        if config in missing:
            build_family(config, root, progress)  # built above where side by side; compares it with its reference
        elif folder not in _CHECKED:
            check_fingerprint(config, root)
        _CHECKED.add(folder)
    return folders


def fingerprint(config: FamilyConfig, root: Path | None = None) -> str:
    """sha256 hex digest of the family's last checkpoint's ``model.safetensors``."""
    path = family_dir(config, root) / f"step{config.checkpoint_steps[-1]}" / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_fingerprint(config: FamilyConfig) -> dict | None:
    """The reference build's entry of ``data/family_fingerprints.json`` for this configuration
    (matched by its key: family name, ``sha256``, and the environment it was made in), or None."""
    if not FINGERPRINTS.exists():
        return None
    table = json.loads(FINGERPRINTS.read_text())
    return next(({"family": name, **entry, "environment": table["environment"]}
                 for name, entry in table["families"].items() if entry["key"] == config.key()), None)


def check_fingerprint(config: FamilyConfig, root: Path | None = None) -> bool | None:
    """Compare a built family with its reference digest: True if equal, None if it has no reference;
    False (with a warning naming the family, both digests and what differs) otherwise."""
    reference = reference_fingerprint(config)
    if reference is None:
        return None
    actual = fingerprint(config, root)
    if actual == reference["sha256"]:
        return True
    built = json.loads((family_dir(config, root) / "family.json").read_text()).get("environment", {})
    differs = {k: (v, built.get(k)) for k, v in reference["environment"].items() if built.get(k) != v}
    warnings.warn(
        f"built-in family {reference['family']!r} is not the reference build: its last checkpoint has sha256 "
        f"{actual}, expected {reference['sha256']}. Reference vs this build: "
        + (", ".join(f"{k} {a} vs {b}" for k, (a, b) in differs.items()) or "same CPU kernels and versions")
        + ". The notebooks' numbers will differ from the README's.", stacklevel=2)
    return False


def builtin_family(
    name_or_config: str | FamilyConfig = "overtrained", root: Path | None = None, progress: bool = True
) -> list[Checkpoint]:
    """The built-in family's checkpoints sorted by step (built first if not cached).

    Each has ``.step`` and ``.path``, a folder that ``AutoModelForCausalLM.from_pretrained``
    and ``AutoTokenizer.from_pretrained`` load.
    """
    config = family_config(name_or_config)
    return local_checkpoints(_ensure_built(config, root, progress))


def builtin_families(
    names_or_configs: Sequence[str | FamilyConfig], root: Path | None = None, progress: bool = True
) -> list[list[Checkpoint]]:
    """:func:`builtin_family` of each; the missing ones are built side by side where the machine has
    the cores (one process with one thread each), which gives the same weights as one after the other."""
    folders = _ensure_built_all([family_config(name) for name in names_or_configs], root, progress)
    return [local_checkpoints(folder) for folder in folders]


def builtin_texts(
    split: str, n: int | None = None, name_or_config: str | FamilyConfig = "overtrained", root: Path | None = None
) -> list[str]:
    """``n`` documents (all if None) of the built-in corpus; ``split`` is "train" or "heldout"."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    folder = _ensure_built(family_config(name_or_config), root)
    texts = json.loads((folder / "texts.json").read_text())[split]
    if n is not None and n > len(texts):
        raise ValueError(f"asked for {n} {split} documents, the corpus has {len(texts)}")
    return texts[:n]


def family_info(name_or_config: str | FamilyConfig = "overtrained", root: Path | None = None) -> dict:
    """The build record: configuration, build time, token count, training loss per step."""
    folder = _ensure_built(family_config(name_or_config), root)
    return json.loads((folder / "family.json").read_text())


def family_summary(name_or_config: str | FamilyConfig = "overtrained", root: Path | None = None) -> pd.Series:
    """The built-in model and its world in a few numbers: size, pretraining budget and schedule,
    people and facts (builds the family if it is not cached)."""
    config, info = family_config(name_or_config), family_info(name_or_config, root)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(builtin_family(config, root)[0].path)
    n_facts = config.world.n_people * len(TEMPLATES)
    return pd.Series({
        "parameters": info["parameters"],
        "layers x d_model x d_ff": f"{config.n_layers} x {config.hidden_size} x {config.intermediate_size}",
        "vocabulary": len(tokenizer),
        "pretraining": f"{config.steps} steps of {config.batch_size} x {config.seq_len} tokens",
        "tokens seen": config.steps * config.batch_size * config.seq_len,
        "corpus tokens": info["train_tokens"],
        "schedule": f"{config.schedule} LR {config.lr:g}, {config.warmup} warmup, weight decay {config.weight_decay:g}",
        "people in the world (facts)": f"{config.world.n_people} ({n_facts}: {len(TEMPLATES)} attributes each)",
        "new people for notebooks 03-06": (f"{config.world.n_paraphrase_people} paraphrase + {config.world.n_once_people} once "
                                           f"+ {config.world.n_control_people} control"),
    }, name="built-in family")


def record_fingerprint(name: str, root: Path | None = None) -> dict:
    """Write the built family ``name``'s digest into ``data/family_fingerprints.json`` (the
    reference every later build is compared with); all entries share one environment."""
    config = family_config(name)
    folder = _ensure_built(config, root)
    built = json.loads((folder / "family.json").read_text())["environment"]
    table = json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.exists() else {"environment": built, "families": {}}
    if table["environment"] != built:
        raise ValueError(f"{name} was built in {built}, the recorded families in {table['environment']}: "
                         "rebuild it (--force) where they were built")
    table["families"][name] = {"key": config.key(), "sha256": fingerprint(config, root)}
    table["families"] = dict(sorted(table["families"].items()))
    atomic_write_text(FINGERPRINTS, json.dumps(table, indent=2) + "\n")
    return table["families"][name]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="overtrained",
                        help=f"one of {sorted(FAMILIES)}, optionally with a pretraining seed: 'decayed-seed1'")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--record", action="store_true",
                        help=f"write its digest into {FINGERPRINTS.relative_to(FINGERPRINTS.parents[1])} as the reference")
    args = parser.parse_args(argv)
    try:
        config = family_config(args.family)
    except ValueError as error:
        parser.error(str(error))
    build_family(config, force=args.force)
    checkpoints = builtin_family(config)
    info = family_info(config)
    print(f"built-in family {args.family!r}: {len(checkpoints)} checkpoints in {family_dir(config)}")
    print(f"steps: {[c.step for c in checkpoints]}; build took {info['build_seconds']} s")
    if args.record:
        print(f"recorded as the reference: {record_fingerprint(args.family)}")


if __name__ == "__main__":
    main()
