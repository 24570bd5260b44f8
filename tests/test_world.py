"""The generated world: determinism, schema, separation of held-out people, probe uniqueness."""

from __future__ import annotations

import dataclasses
import re

import pytest

from ke_utils.records import load_records, probes
from ke_utils.world import (WorldConfig, generate_world, generic_documents, knowledge_records, pretraining_corpus,
                            render_documents, retention_probes)

CONFIG = WorldConfig(seed=7, n_people=24, n_paraphrase_people=6, n_once_people=4)


@pytest.fixture(scope="module")
def world():
    return generate_world(CONFIG)


@pytest.fixture(scope="module")
def corpus(world):
    return pretraining_corpus(world, 1500, 200)


def test_deterministic_and_seed_dependent(world, corpus):
    again = generate_world(CONFIG)
    assert again == world
    assert pretraining_corpus(again, 1500, 200) == corpus
    assert knowledge_records(again) == knowledge_records(world)
    other = generate_world(WorldConfig(seed=8, n_people=24, n_paraphrase_people=6, n_once_people=4))
    assert other.people != world.people
    assert corpus["train"] != corpus["heldout"][:1500]


def test_counts_and_record_schema(world):
    records = knowledge_records(world)
    assert len(world.people) == 24 and len(records["paraphrase"]) == 6 and len(records["once"]) == 4
    assert len(records["control"]) == 100  # the default count (notebook 03's per-stage check needs 100)
    for record in load_records(records["paraphrase"] + records["once"] + records["control"]):
        assert len(record["paraphrases"]) == 9 and len(set(record["paraphrases"] + [record["train_context"]])) == 10
        for kind in ("mem", "gen", "hard_gen"):
            assert len(record[f"{kind}_input"]) == len(record[f"{kind}_target"]) == 5
        assert len(probes(record)) == 15
        for inp, tgt in zip(record["mem_input"], record["mem_target"]):
            assert f"{inp} {tgt}." in record["train_context"]  # a sentence of the paragraph cut before a fact
        for inp in record["gen_input"]:
            assert inp not in record["train_context"]  # the same facts in another wording


def test_held_out_people_never_in_pretraining_or_background(world, corpus):
    text = "\n".join(corpus["train"] + corpus["heldout"] + generic_documents(world, 500, seed=1))
    for person in world.paraphrase_people + world.once_people + world.control_people:
        assert person.name not in text
    names = [p.name for p in world.people + world.paraphrase_people + world.once_people + world.control_people]
    assert len(set(names)) == len(names)


def test_control_people_leave_the_rest_of_the_world_as_it_was():
    without = generate_world(dataclasses.replace(CONFIG, n_control_people=0))
    assert without.control_people == () and without.people == generate_world(CONFIG).people
    assert pretraining_corpus(without, 50, 5) == pretraining_corpus(generate_world(CONFIG), 50, 5)
    assert knowledge_records(without)["once"] == knowledge_records(generate_world(CONFIG))["once"]


def test_background_mentions_no_person(world):
    text = "\n".join(generic_documents(world, 500, seed=3))
    assert not any(p.name in text for p in world.people)


def test_zipf_mentions_are_heavy_tailed():
    world = generate_world(WorldConfig(seed=1, n_people=40, zipf_exponent=1.2))
    text = "\n".join(render_documents(world, world.people, 3000, seed=5, zipf_exponent=1.2))
    counts = sorted((text.count(p.name) for p in world.people), reverse=True)
    assert counts[0] > 5 * counts[len(counts) // 2]
    flat = "\n".join(render_documents(world, world.people, 3000, seed=5))
    flat_counts = sorted((flat.count(p.name) for p in world.people), reverse=True)
    assert flat_counts[0] < 2 * flat_counts[len(flat_counts) // 2]


def test_every_probe_input_determines_its_target(world, corpus):
    """Wherever a probe's input occurs in the corpus or the records, the text goes on with
    ' ' + target: no input is a prefix of a sentence that continues differently."""
    records = knowledge_records(world)
    injected = records["paraphrase"] + records["once"] + records["control"]
    texts = corpus["train"] + [t for r in injected for t in [r["train_context"], *r["paraphrases"]]]
    text = "\n".join(texts)
    all_probes = [(p["input"], p["target"]) for p in retention_probes(world)]
    all_probes += [(i, t) for r in injected for _, i, t in probes(r)]
    checked = 0
    for inp, target in all_probes:
        for match in re.finditer(re.escape(inp), text):
            assert text[match.end():].startswith(" " + target + "."), (inp, target, text[match.end():match.end() + 40])
            checked += 1
    assert checked > 1000


def test_retention_probes_are_stated_in_the_corpus(world, corpus):
    text = "\n".join(corpus["train"])
    found = [f"{p['input']} {p['target']}." in text for p in retention_probes(world)]
    assert sum(found) / len(found) > 0.9
    assert len(retention_probes(world, n=10)) == 10


@pytest.mark.parametrize("bad", [dict(n_people=1), dict(zipf_exponent=-1), dict(generic_fraction=1.0),
                                 dict(facts_per_doc=(0, 3))])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        WorldConfig(**bad)
