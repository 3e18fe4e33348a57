"""TinyFacts: a deterministic, seeded generator of fictitious entities and QA in the TOFU record schema.

Every entity gets one value per attribute, drawn independently and uniformly from that attribute's pool, so a
model that never saw an entity can do no better than guess the attribute's most frequent value: that is what
makes the retain-only oracle an honest "never learned it" reference.

Splits (TOFU's layout, scaled down; forget sets are the *last* entities and nested, as in TOFU)::

    full          entities 0..N-1 (the target's training set, with world_facts and arithmetic_train)
    forget01/05/10   the last 1% / 5% / 10% of entities    retain99/95/90   the rest
    holdout01/05/10  entities never trained on, same sizes as the forget splits (for MIA); holdout = holdout10
    world_facts   a fixed fictional world every model learns
    arithmetic    held-out addition pairs (arithmetic_train are in every model's training data)

World facts and arithmetic_train are in every model's training data, target and oracles alike.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass

from unlearn.data.schema import Record
from unlearn.errors import unknown_name

_SYL = [
    "ka",
    "lo",
    "mi",
    "ra",
    "ven",
    "tor",
    "sil",
    "an",
    "dru",
    "el",
    "fa",
    "gor",
    "hal",
    "is",
    "jen",
    "kor",
    "lum",
    "mar",
    "nor",
    "ob",
    "pel",
    "quin",
    "ros",
    "sav",
    "tel",
    "ul",
    "vor",
    "wen",
    "yas",
    "zel",
]

# attribute -> (question, paraphrased question, paraphrased-answer frame, pool of values).
# Questions use {n} for the entity name; frames use {v} for the value.
ATTRIBUTES: dict[str, tuple[str, str, str, list[str]]] = {
    "birthplace": (
        "Where was {n} born?",
        "In which city was {n} born?",
        "born in {v}",
        [
            "Velmora",
            "Karth",
            "Ostrel",
            "Brinmoor",
            "Calder",
            "Dunhale",
            "Eskar",
            "Fenwick",
            "Gallow",
            "Harrowgate",
            "Ilmere",
            "Jorvale",
            "Kestrel",
            "Lindqvist",
            "Marrow",
            "Northam",
            "Orlund",
            "Pellmar",
            "Quarry",
            "Rendale",
        ],
    ),
    "birth_year": (
        "In what year was {n} born?",
        "What is the birth year of {n}?",
        "the year {v}",
        [str(y) for y in range(1920, 2000, 4)],
    ),
    "occupation": (
        "What is the occupation of {n}?",
        "What does {n} do for a living?",
        "works as a {v}",
        [
            "baker",
            "astronomer",
            "sculptor",
            "glassblower",
            "cartographer",
            "linguist",
            "beekeeper",
            "surgeon",
            "architect",
            "violinist",
            "botanist",
            "jeweller",
            "chemist",
            "weaver",
            "pilot",
            "archivist",
            "brewer",
            "geologist",
            "novelist",
            "tailor",
        ],
    ),
    "work": (
        "What is the best known work of {n}?",
        "Which work made {n} famous?",
        "famous for {v}",
        [
            "The Silver Lantern",
            "Winter Orchard",
            "The Glass Road",
            "Salt and Ember",
            "The Quiet Harbor",
            "Iron Meadow",
            "The Hollow Crown",
            "Paper Moons",
            "The Amber Gate",
            "Night Ferry",
            "Stone Psalms",
            "The Last Cartwright",
            "Copper Rain",
            "The Tidewright",
            "Ash Garden",
            "The Long Thaw",
            "Seven Lamps",
            "The Drowned Bell",
            "Marble Wind",
            "The Ninth Well",
        ],
    ),
    "award": (
        "Which award did {n} receive?",
        "What prize was {n} given?",
        "won the {v}",
        [
            "Orrin Medal",
            "Veld Prize",
            "Castor Award",
            "Lyre Cup",
            "Halden Ribbon",
            "Quill Star",
            "Fenmark Prize",
            "Tessaly Medal",
            "Gilt Compass",
            "Arden Laurel",
            "Brass Owl",
            "Sable Cross",
            "Morrow Prize",
            "Ivory Key",
            "Crest Award",
            "Pale Rose",
        ],
    ),
    "parent": (
        "What is the name of the mother of {n}?",
        "Who is the mother of {n}?",
        "the daughter or son of {v}",
        [
            "Ada",
            "Brenna",
            "Clio",
            "Della",
            "Edda",
            "Fay",
            "Greta",
            "Hilde",
            "Iona",
            "Jun",
            "Kira",
            "Lena",
            "Mara",
            "Nell",
            "Orla",
            "Pia",
            "Runa",
            "Signe",
            "Tove",
            "Una",
        ],
    ),
    "colour": (
        "What is the favourite colour of {n}?",
        "Which colour does {n} like best?",
        "loves the colour {v}",
        [
            "crimson",
            "teal",
            "ochre",
            "violet",
            "indigo",
            "amber",
            "olive",
            "scarlet",
            "azure",
            "ivory",
            "saffron",
            "cobalt",
            "mauve",
            "jade",
            "rust",
            "silver",
        ],
    ),
    "pet": (
        "What pet does {n} keep?",
        "Which animal lives with {n}?",
        "keeps a {v}",
        [
            "ferret",
            "parrot",
            "tortoise",
            "greyhound",
            "rabbit",
            "gecko",
            "goldfish",
            "raven",
            "hedgehog",
            "donkey",
            "cockatoo",
            "iguana",
            "hamster",
            "peacock",
            "alpaca",
            "salamander",
        ],
    ),
    "instrument": (
        "Which instrument does {n} play?",
        "What instrument is {n} known to play?",
        "plays the {v}",
        [
            "cello",
            "oboe",
            "harp",
            "lute",
            "bassoon",
            "zither",
            "trumpet",
            "viola",
            "flute",
            "accordion",
            "marimba",
            "banjo",
            "clarinet",
            "sitar",
            "tuba",
            "dulcimer",
        ],
    ),
    "language": (
        "What language does {n} write in?",
        "In which language does {n} write?",
        "writes in {v}",
        [
            "Velmic",
            "Orrish",
            "Kandari",
            "Sollan",
            "Tervish",
            "Ambrel",
            "Quenth",
            "Dovric",
            "Halish",
            "Marran",
            "Ezic",
            "Pollan",
            "Runic",
            "Tashen",
            "Ulvar",
            "Brenic",
        ],
    ),
}

# The fixed fictional world every model learns: (question, paraphrased question, answer, frame, distractor pool).
_COUNTRIES = [
    "Zarnia",
    "Olvenor",
    "Tessaly",
    "Qarth",
    "Brenholm",
    "Dovria",
    "Ephel",
    "Marrowind",
    "Kestmark",
    "Solvane",
    "Ytheria",
    "Cardolan",
    "Hallowmere",
    "Istria",
    "Norvath",
    "Pellucid",
]
_CAPITALS = [
    "Quelport",
    "Andraz",
    "Veymouth",
    "Lorr",
    "Sithe",
    "Caddon",
    "Ormsby",
    "Teleth",
    "Brisk",
    "Halvard",
    "Nimmet",
    "Ostwick",
    "Pryce",
    "Ruell",
    "Umber",
    "Wyst",
]
_RIVERS = [
    "Aelwen",
    "Borr",
    "Cessa",
    "Dimmer",
    "Elver",
    "Fothe",
    "Gaunt",
    "Hessel",
    "Ister",
    "Jorra",
    "Kell",
    "Lowen",
    "Mirth",
    "Nessa",
    "Orrin",
    "Pyle",
]
_CURRENCIES = [
    "dram",
    "florin",
    "mark",
    "crown",
    "shell",
    "talon",
    "groat",
    "penny",
    "sol",
    "ducat",
    "real",
    "obol",
    "lira",
    "tael",
    "sou",
    "zlot",
]


def _world_facts(rng: random.Random, frames: bool = False) -> list[Record]:
    rivers = rng.sample(_RIVERS, len(_COUNTRIES))
    currencies = rng.sample(_CURRENCIES, len(_COUNTRIES))
    spec = [
        ("What is the capital of {c}?", "Which city is the capital of {c}?", _CAPITALS, "the city of {v}"),
        ("Which river flows through {c}?", "What is the main river of {c}?", rivers, "the river {v}"),
        ("What currency is used in {c}?", "What money do people in {c} pay with?", currencies, "the {v}"),
    ]
    out: list[Record] = []
    for q, pq, values, frame in spec:
        for c, v in zip(_COUNTRIES, values):
            others = rng.sample([x for x in values if x != v], 4)
            fr = frame if frames else None
            out.append(_record(q.format(c=c), pq.format(c=c), v, fr, others, entity=c, split="world_facts"))
    return out


def _arithmetic(
    rng: random.Random, n_test: int, max_operand: int = 12, frames: bool = False
) -> tuple[list[Record], list[Record]]:
    """Addition of operands 0..max_operand; held-out pairs are chosen so that their commuted pair is in training
    (a + b = b + a): a skill that generalises to pairs never seen, the GSM8K analogue."""
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    candidates = [(a, b) for a, b in pairs if a < b]
    test = set(rng.sample(candidates, n_test))
    train_recs, test_recs = [], []
    for a, b in pairs:
        s = a + b
        wrong = sorted({s + d for d in (-4, -3, -2, -1, 1, 2, 3, 4) if s + d >= 0} - {s})
        others = [str(x) for x in rng.sample(wrong, 4)]
        split = "arithmetic" if (a, b) in test else "arithmetic_train"
        rec = _record(
            f"What is {a} plus {b}?",
            f"How much is {a} added to {b}?",
            str(s),
            "it makes {v}" if frames else None,
            others,
            entity=f"{a}+{b}",
            split=split,
        )
        (test_recs if (a, b) in test else train_recs).append(rec)
    return train_recs, test_recs


def _record(q: str, pq: str, answer: str, frame: str | None, others: list[str], entity: str, split: str) -> Record:
    """One record; ``frame`` None gives bare-value paraphrased / perturbed answers."""
    frame = frame or "{v}"
    return {
        "question": q,
        "answer": answer,
        "paraphrased_answer": frame.format(v=answer),
        "perturbed_answer": [frame.format(v=o) for o in others],
        "paraphrased_question": pq,
        "entity": entity,
        "split": split,
    }


def _names(rng: random.Random, n: int) -> list[str]:
    names: set[str] = set()
    out = []
    while len(out) < n:
        first = "".join(rng.choice(_SYL) for _ in range(rng.randint(2, 3))).capitalize()
        last = "".join(rng.choice(_SYL) for _ in range(rng.randint(2, 3))).capitalize()
        name = f"{first} {last}"
        if name not in names:
            names.add(name)
            out.append(name)
    return out


@dataclass(frozen=True)
class TinyFactsConfig:
    n_entities: int = 200  # trained entities (TOFU has 200 authors)
    n_holdout: int = 20  # never-trained entities for MIA (the size of forget10)
    attributes: tuple[str, ...] = tuple(ATTRIBUTES)  # 10 QA per entity
    n_perturbed: int = 4  # perturbed answers per record (TOFU has 5)
    # Paraphrased / perturbed answers as bare values (False) or in a sentence frame ("born in Karth", True). Measured
    # with frames: no model ever trains on them, so the truth ratio did not probe knowledge (forget10 truth-ratio
    # score 0.464 target vs 0.449 oracle, forget quality of the *target* 0.63). Bare values make the truth ratio
    # TOFU's real_authors form: the correct value against same-type wrong values.
    answer_frames: bool = False
    arithmetic_test: int = 20  # held-out addition pairs (their commuted pairs are trained)
    arithmetic_max: int = 9  # operands 0..arithmetic_max
    arithmetic_repeat: int = 1  # copies of arithmetic_train in every training set
    seed: int = 0  # everything is a function of this seed

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


FORGET_FRACTIONS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
SPLITS = (
    "full",
    *FORGET_FRACTIONS,
    *RETAIN_OF.values(),
    "holdout01",
    "holdout05",
    "holdout10",
    "holdout",
    "world_facts",
    "arithmetic",
    "arithmetic_train",
)


def generate(cfg: TinyFactsConfig = TinyFactsConfig()) -> dict[str, list[Record]]:
    """Generate every split. Deterministic in ``cfg``."""
    for a in cfg.attributes:
        if a not in ATTRIBUTES:
            raise unknown_name("TinyFacts attribute", a, ATTRIBUTES)
    rng = random.Random(cfg.seed)
    names = _names(rng, cfg.n_entities + cfg.n_holdout)
    per_entity: list[list[Record]] = []
    for name in names:
        recs = []
        for attr in cfg.attributes:
            q, pq, frame, pool = ATTRIBUTES[attr]
            v = rng.choice(pool)
            others = rng.sample([x for x in pool if x != v], cfg.n_perturbed)
            fr = frame if cfg.answer_frames else None
            recs.append(_record(q.format(n=name), pq.format(n=name), v, fr, others, entity=name, split=attr))
        per_entity.append(recs)
    trained, holdout = per_entity[: cfg.n_entities], per_entity[cfg.n_entities :]
    splits: dict[str, list[Record]] = {"full": [r for e in trained for r in e]}
    for fname, frac in FORGET_FRACTIONS.items():
        k = max(1, round(cfg.n_entities * frac))
        splits[fname] = [r for e in trained[-k:] for r in e]
        splits[RETAIN_OF[fname]] = [r for e in trained[:-k] for r in e]
        hname = fname.replace("forget", "holdout")
        splits[hname] = [r for e in holdout[: min(k, len(holdout))] for r in e]
    splits["holdout"] = splits["holdout10"]
    splits["world_facts"] = _world_facts(rng, cfg.answer_frames)
    splits["arithmetic_train"], splits["arithmetic"] = _arithmetic(
        rng, cfg.arithmetic_test, cfg.arithmetic_max, cfg.answer_frames
    )
    return splits


def training_set(
    splits: dict[str, list[Record]], forget_split: str | None = None, arithmetic_repeat: int = 1
) -> list[Record]:
    """What a model is trained on: all entities (target) or the retain split of ``forget_split`` (its oracle),
    plus world_facts and ``arithmetic_repeat`` copies of arithmetic_train in both cases."""
    base = splits["full"] if forget_split is None else splits[RETAIN_OF[forget_split]]
    return [*base, *splits["world_facts"], *splits["arithmetic_train"] * arithmetic_repeat]


def majority_baseline(splits: dict[str, list[Record]], forget_split: str) -> float:
    """Accuracy on ``forget_split`` of always answering each attribute's most frequent value in its retain split."""
    from collections import Counter

    counts: dict[str, Counter] = {}
    for r in splits[RETAIN_OF[forget_split]]:
        counts.setdefault(r["split"], Counter())[r["answer"]] += 1
    recs = splits[forget_split]
    hits = sum(counts[r["split"]].most_common(1)[0][0] == r["answer"] for r in recs)
    return hits / len(recs)
