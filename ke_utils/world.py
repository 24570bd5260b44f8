"""A generated fictional world: invented people, cities and organisations, rendered into text.

Deterministic from ``WorldConfig.seed``. It yields the pretraining corpus (about ``world.people``),
fictional-knowledge records about held-out people never mentioned in pretraining (the schema of
docs/method.md section 3), background text that mentions no person, and retention probes.

Every fact sentence ends with its value, and the text before a value is unique to its attribute,
so a probe (the sentence cut before the value) determines its target.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import accumulate

SYLLABLES = ["ka", "lo", "ren", "vi", "sa", "mor", "tel", "da", "ni", "zu", "bra", "fen", "lis", "tor", "vel",
             "quin", "sha", "dro", "pel", "gal", "ost", "mir", "una", "ber", "cas", "eth", "jor", "wyn"]
OCCUPATIONS = ["baker", "sailor", "potter", "weaver", "clockmaker", "glassblower", "cartographer", "beekeeper",
               "bookbinder", "astronomer", "shipwright", "herbalist", "locksmith", "brewer", "stonemason", "tailor"]
COLOURS = ["crimson", "amber", "teal", "violet", "ochre", "silver", "indigo", "olive", "scarlet", "ivory"]
INSTRUMENTS = ["lute", "cello", "harp", "flute", "oboe", "zither", "drum", "horn", "viola", "bagpipe"]
INDUSTRIES = ["Works", "Foundry", "Traders", "Guild", "Mills", "Press", "Shipyard", "Company"]

# attribute -> templates; "{p}" is the person, the value always ends the sentence.
TEMPLATES: dict[str, list[str]] = {
    "birth_city": ["{p} was born in the city of", "The birthplace of {p} is", "{p} first saw the light of day in"],
    "birth_year": ["{p} was born in the year", "The birth year of {p} is", "{p} came into the world in"],
    "occupation": ["The profession of {p} is", "{p} has the job title", "{p} is known in town as the local"],
    "employer": ["{p} is employed by", "The employer of {p} is", "{p} draws a salary from"],
    "colour": ["The favourite colour of {p} is", "{p} prefers the colour", "Of all colours, {p} loves"],
    "instrument": ["{p} plays the", "The instrument of {p} is the", "In the evenings {p} practises the"],
    "mentor": ["The mentor of {p} is", "{p} learned the trade from", "{p} was trained by"],
}
# Facts that combine a person's attribute with a world fact (two hops), for composition probes.
COMPOSITION = [
    ("{p} works in the city of", lambda w, x: w.org_city[x.employer]),
    ("{p} works in the country of", lambda w, x: w.city_country[w.org_city[x.employer]]),
    ("{p} was born in the country of", lambda w, x: w.city_country[x.birth_city]),
    ("The mentor of {p} was born in the city of", lambda w, x: w.person(x.mentor).birth_city),
    ("The employer of the mentor of {p} is", lambda w, x: w.person(x.mentor).employer),
]
WORLD_TEMPLATES = {
    "org_city": ["{o} is based in", "The headquarters of {o} are in", "{o} has its main office in"],
    "city_country": ["{c} lies in the country of", "The town of {c} belongs to", "{c} is a town in"],
}
FILLER = ["In {c} the market opens at dawn.", "The streets of {c} are narrow and old.",
          "Rain fell on {c} for three days.", "Travellers often rest in {c} on their way north.",
          "A new bridge was built over the river in {c}.", "The winters in {c} are long and cold.",
          "Many visitors come to {c} for the autumn fair.", "There are old stone walls around {c}.",
          "Workers at {o} start early in the morning.", "Last spring {o} opened a second workshop.",
          "Every year {o} hires a few apprentices.", "People say the tea in {c} is the best in the region."]


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    n_people: int = 64
    n_paraphrase_people: int = 40
    n_once_people: int = 20
    # 100 controls, not 20: notebook 03's per-stage gain beyond control subtracts their mean gain,
    # and with 20 that mean was noisy enough to flip the sign of a stage (docs/findings_over_seeds.md)
    n_control_people: int = 100
    n_cities: int = 16
    n_orgs: int = 16
    zipf_exponent: float = 0.0
    generic_fraction: float = 0.2
    facts_per_doc: tuple[int, int] = (3, 8)

    def __post_init__(self):
        for name in ("n_people", "n_cities", "n_orgs"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be at least 2")
        if min(self.n_paraphrase_people, self.n_once_people, self.n_control_people) < 0:
            raise ValueError("held-out counts must be non-negative")
        if self.zipf_exponent < 0:
            raise ValueError("zipf_exponent must be >= 0")
        if not 0 <= self.generic_fraction < 1:
            raise ValueError("generic_fraction must be in [0, 1)")
        lo, hi = self.facts_per_doc
        if not 1 <= lo <= hi:
            raise ValueError("facts_per_doc must be (low, high) with 1 <= low <= high")


@dataclass(frozen=True)
class Person:
    name: str
    birth_city: str
    birth_year: str
    occupation: str
    employer: str
    colour: str
    instrument: str
    mentor: str

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)


@dataclass(frozen=True)
class World:
    config: WorldConfig
    people: tuple[Person, ...]
    paraphrase_people: tuple[Person, ...]
    once_people: tuple[Person, ...]
    control_people: tuple[Person, ...]
    cities: tuple[str, ...]
    orgs: tuple[str, ...]
    city_country: dict
    org_city: dict

    def person(self, name: str) -> Person:
        return next(p for p in self.people + self.paraphrase_people + self.once_people + self.control_people
                    if p.name == name)


def _names(rng: random.Random, n: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(*syllables))).capitalize()
        if name not in taken and len(name) > 3:
            taken.add(name)
            out.append(name)
    return out


def generate_world(config: WorldConfig = WorldConfig()) -> World:
    """Invented countries, cities, organisations and people (pretraining and held-out)."""
    rng = random.Random(config.seed)
    taken: set[str] = set()
    countries = _names(rng, 4, (2, 3), taken)
    cities = _names(rng, config.n_cities, (2, 3), taken)
    orgs = [f"{n} {rng.choice(INDUSTRIES)}" for n in _names(rng, config.n_orgs, (2, 2), taken)]
    city_country = {c: rng.choice(countries) for c in cities}
    org_city = {o: rng.choice(cities) for o in orgs}
    n_total = config.n_people + config.n_paraphrase_people + config.n_once_people
    firsts = _names(rng, n_total, (2, 2), taken)
    lasts = _names(rng, n_total, (2, 3), taken)
    names = [f"{f} {l}" for f, l in zip(firsts, lasts)]
    pretraining = names[: config.n_people]

    def person(i: int, name: str) -> Person:
        # Mentors are pretraining people, so a held-out person's mentor is a known entity.
        mentor = rng.choice([m for m in pretraining if m != name])
        return Person(name, rng.choice(cities), str(rng.randint(1850, 1999)), rng.choice(OCCUPATIONS),
                      rng.choice(orgs), rng.choice(COLOURS), rng.choice(INSTRUMENTS), mentor)

    people = [person(i, n) for i, n in enumerate(names)]
    # Control people are drawn last, so that adding them leaves every other draw as it was.
    controls = [f"{f} {l}" for f, l in zip(_names(rng, config.n_control_people, (2, 2), taken),
                                            _names(rng, config.n_control_people, (2, 3), taken))]
    control_people = [person(i, n) for i, n in enumerate(controls)]
    a, b = config.n_people, config.n_people + config.n_paraphrase_people
    return World(config, tuple(people[:a]), tuple(people[a:b]), tuple(people[b:]), tuple(control_people),
                 tuple(cities), tuple(orgs), city_country, org_city)


def fact(person: Person, attribute: str, template: int) -> tuple[str, str]:
    """(probe input, value) of one attribute in one wording."""
    return TEMPLATES[attribute][template].format(p=person.name), person.value(attribute)


def _sentence(prefix: str, value: str) -> str:
    return f"{prefix} {value}."


def _world_sentence(world: World, rng: random.Random) -> str:
    if rng.random() < 0.5:
        org = rng.choice(world.orgs)
        return _sentence(rng.choice(WORLD_TEMPLATES["org_city"]).format(o=org), world.org_city[org])
    city = rng.choice(world.cities)
    return _sentence(rng.choice(WORLD_TEMPLATES["city_country"]).format(c=city), world.city_country[city])


def _filler(world: World, rng: random.Random) -> str:
    return rng.choice(FILLER).format(c=rng.choice(world.cities), o=rng.choice(world.orgs))


def render_documents(world: World, people, n_docs: int, seed: int, zipf_exponent: float = 0.0) -> list[str]:
    """``n_docs`` documents about ``people``: a few facts each (random attributes, wordings and
    order), mixed with world facts and filler. Person k of a random ranking is picked with weight
    ``(k + 1) ** -zipf_exponent``."""
    rng = random.Random(seed)
    people = list(people)
    ranking = rng.sample(people, len(people))
    cumulative = list(accumulate((k + 1) ** -zipf_exponent for k in range(len(ranking))))
    lo, hi = world.config.facts_per_doc
    attributes = list(TEMPLATES)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(lo, hi)):
            if rng.random() < world.config.generic_fraction:
                sentences.append(_world_sentence(world, rng) if rng.random() < 0.5 else _filler(world, rng))
            else:
                p = rng.choices(ranking, cum_weights=cumulative)[0]
                sentences.append(_sentence(*fact(p, rng.choice(attributes), rng.randrange(3))))
        docs.append(" ".join(sentences))
    return docs


def pretraining_corpus(world: World, n_train: int, n_heldout: int) -> dict[str, list[str]]:
    """Train and held-out documents from the same distribution, about ``world.people`` only."""
    s, z = world.config.seed, world.config.zipf_exponent
    return {"train": render_documents(world, world.people, n_train, seed=s * 1000 + 1, zipf_exponent=z),
            "heldout": render_documents(world, world.people, n_heldout, seed=s * 1000 + 2, zipf_exponent=z)}


def generic_documents(world: World, n_docs: int, seed: int) -> list[str]:
    """Ordinary text that mentions no person (world facts and filler): the background stream of
    continual learning, so that the facts whose retention is measured are never rehearsed."""
    rng = random.Random(seed)
    lo, hi = world.config.facts_per_doc
    return [" ".join(_world_sentence(world, rng) if rng.random() < 0.3 else _filler(world, rng)
                     for _ in range(rng.randint(lo, hi))) for _ in range(n_docs)]


def _paragraph(person: Person, rng: random.Random) -> tuple[str, dict[str, int]]:
    attributes = rng.sample(list(TEMPLATES), len(TEMPLATES))
    wordings = {a: rng.randrange(3) for a in attributes}
    return " ".join(_sentence(*fact(person, a, wordings[a])) for a in attributes), wordings


def knowledge_record(world: World, person: Person, seed: int) -> dict:
    """One fictional-knowledge record (docs/method.md section 3) about a held-out ``person``."""
    rng = random.Random(seed)
    context, wordings = _paragraph(person, rng)
    paraphrases: list[str] = []
    while len(paraphrases) < 9:
        text, _ = _paragraph(person, rng)
        if text != context and text not in paraphrases:
            paraphrases.append(text)
    probed = rng.sample(list(TEMPLATES), 5)
    mem = [fact(person, a, wordings[a]) for a in probed]
    gen = [fact(person, a, (wordings[a] + 1 + rng.randrange(2)) % 3) for a in probed]
    hard = [(prefix.format(p=person.name), value(world, person)) for prefix, value in COMPOSITION]
    return {
        "train_context": context,
        "paraphrases": paraphrases,
        "mem_input": [i for i, _ in mem], "mem_target": [t for _, t in mem],
        "gen_input": [i for i, _ in gen], "gen_target": [t for _, t in gen],
        "hard_gen_input": [i for i, _ in hard], "hard_gen_target": [t for _, t in hard],
    }


def knowledge_records(world: World) -> dict[str, list[dict]]:
    """Records about the held-out people: ``{"paraphrase": [...], "once": [...], "control": [...]}``.
    Control records are never injected: probed like the others, their gain is what continued
    training teaches about the format and the values, not about the people."""
    s = world.config.seed * 1000
    return {"paraphrase": [knowledge_record(world, p, s + 10 + i) for i, p in enumerate(world.paraphrase_people)],
            "once": [knowledge_record(world, p, s + 500 + i) for i, p in enumerate(world.once_people)],
            "control": [knowledge_record(world, p, s + 900 + i) for i, p in enumerate(world.control_people)]}


def retention_probes(world: World, n: int | None = None, seed: int = 0) -> list[dict]:
    """Probes on pretraining people (``input``, ``target``, ``kind="mem"``, ``person``,
    ``attribute``), in the first wording of each attribute (a wording of the corpus); ``n``
    sampled if given."""
    probes = [{"input": i, "target": t, "kind": "mem", "person": p.name, "attribute": a}
              for p in world.people for a in TEMPLATES for i, t in [fact(p, a, 0)]]
    if n is not None:
        probes = random.Random(seed).sample(probes, min(n, len(probes)))
    return probes
