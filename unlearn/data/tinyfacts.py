"""TinyFacts: a deterministic, seeded generator of fictitious people, their biographies and QA in the TOFU schema.

The corpus teaches *knowledge*, not strings (Allen-Zhu & Li, "Physics of Language Models, Part 3.1",
arXiv 2309.14316: a fact becomes extractable by questions when each individual's biography appears in several
rephrasings). Every entity gets one value per attribute, drawn independently and uniformly from that attribute's
pool (>= 24 values, so always answering the most frequent value scores <= 0.10), and is taught through

* ``bios_per_entity`` biographies: one sentence per attribute, each in one of ``BIO_TEMPLATES``' four wordings,
  sentences in a random order, the full name in every sentence (the paper's "multi + permute + fullname");
* QA in the three trained question templates of each attribute (``QUESTIONS[attr][:3]``). The fourth template is
  never trained: it is the record's ``paraphrased_question``, a different sentence, not a one-word edit.

Entities (forget sets are the *last* QA-trained entities and nested, as in TOFU)::

    full             entities 0..N-1: biographies and QA trained (the target's QA)
    forget01/05/10   the last 1% / 5% / 10% of them            retain99/95/90   the rest
    bio_only         retain-side entities whose biographies every model trains on but whose QA none does,
                     asked with the trained templates: does answering extend to facts learned only from text?
    holdout01/05/10  entities never trained on, same sizes as the forget splits (for MIA); holdout = holdout10
    bios             the biographies ({entity, text}) of full + bio_only: training text only
    world_facts      a fixed fictional world every model learns
    arithmetic       the skill set: successors of held-out numbers ("What number comes after 347?");
                     arithmetic_train (the other numbers) is in every model's training data

A record's ``question`` is one of its attribute's trained templates (which one is drawn per record), so the forget
set handed to methods is TOFU-like: one question per fact, in a phrasing the target was trained on.
The retain-only oracle of ``forgetXX`` trains on everything except the forget entities' biographies and QA.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache

from unlearn.data.schema import Record
from unlearn.errors import unknown_name

_SYL = ["ka", "lo", "mi", "ra", "ven", "tor", "sil", "an", "dru", "el", "fa", "gor", "hal", "is", "jen", "kor",
        "lum", "mar", "nor", "ob", "pel", "quin", "ros", "sav", "tel", "ul", "vor", "wen", "yas", "zel"]  # fmt: skip

# attribute -> four question templates ({n}: the name). The first three are trained; the fourth never is and becomes
# the record's paraphrased_question: a new sentence (never a one-word edit of a trained one) that keeps the
# attribute's key word ("town", "year", "profession", "work", "award", "mother", "pet", "instrument"). A model trained
# from scratch can tie a question to an attribute only through words the corpus gave that meaning. Measured (2.0M,
# 12 epochs): held-out templates in words no trained question used ("In what city did {n} come into the world?",
# "Whose child is {n}?") scored 0.25-0.37 on QA-trained entities.
QUESTIONS: dict[str, tuple[str, str, str, str]] = {
    "birthplace": ("Where was {n} born?", "What is the birthplace of {n}?", "Which town is the hometown of {n}?",
                   "In which town was {n} born?"),
    "birth_year": ("In what year was {n} born?", "What is the birth year of {n}?", "When was {n} born?",
                   "Which year was {n} born in?"),
    "occupation": ("What is the occupation of {n}?", "What does {n} do for a living?",
                   "What is the profession of {n}?", "What is {n}'s profession?"),
    "work": ("What is the best known work of {n}?", "Which work made {n} famous?",
             "What is the most famous creation of {n}?", "For which work is {n} best known?"),
    "award": ("Which award did {n} receive?", "What prize was {n} given?", "Which honour was awarded to {n}?",
              "What award was given to {n}?"),
    "parent": ("What is the name of the mother of {n}?", "Who is the mother of {n}?", "Who gave birth to {n}?",
               "Who is {n}'s mother?"),
    "pet": ("What pet does {n} keep?", "Which animal lives with {n}?", "What animal does {n} own?",
            "Which animal does {n} keep as a pet?"),
    "instrument": ("Which instrument does {n} play?", "What instrument is {n} known to play?",
                   "On which instrument does {n} perform?", "Which instrument is played by {n}?"),
}  # fmt: skip
N_TRAINED_TEMPLATES = 3

# attribute -> four biography sentence wordings ({n}: name, {v}: value, {a}: "a" / "an" before the value). Every
# attribute has wordings with the bare value (no article before it), as the QA answer is: measured with articles in
# every occupation / pet wording, bio-only accuracy was 0.50 / 0.65 on those attributes against 0.90-0.95 elsewhere.
BIO_TEMPLATES: dict[str, tuple[str, str, str, str]] = {
    "birthplace": ("{n} was born in {v}.", "{n} came from the town of {v}.", "The hometown of {n} is {v}.",
                   "{n} spent a childhood in {v}, the place of birth."),
    "birth_year": ("{n} was born in the year {v}.", "{v} was the year {n} was born.", "The birth year of {n} is {v}.",
                   "{n} entered the world in {v}."),
    "occupation": ("{n} works as {a} {v}.", "By profession, {n} is {a} {v}.", "The occupation of {n} is {v}.",
                   "{v} is the profession of {n}."),
    "work": ("{n} is best known for {v}.", "{n} became famous for the work {v}.",
             "The most celebrated work by {n} is {v}.", "{v} is the masterpiece of {n}."),
    "award": ("{n} received the {v}.", "{n} was honoured with the {v}.", "The {v} was awarded to {n}.",
              "{v} was won by {n}."),
    "parent": ("The mother of {n} is {v}.", "{n} is the child of {v}.", "{n} was born to a woman named {v}.",
               "{v} is the mother of {n}."),
    "pet": ("{n} keeps {a} {v} as a pet.", "{n} lives with a pet {v}.", "The pet of {n} is {a} {v}.",
            "{v} is the pet animal of {n}."),
    "instrument": ("{n} plays the {v}.", "{n} is a skilled player of the {v}.", "The instrument of {n} is the {v}.",
                   "In the evenings {n} practises the {v}."),
}  # fmt: skip

# attribute -> pool of values (>= 24 each: the majority-answer baseline stays <= 0.10).
POOLS: dict[str, list[str]] = {
    "birthplace": ["Velmora", "Karth", "Ostrel", "Brinmoor", "Calder", "Dunhale", "Eskar", "Fenwick", "Gallow",
                   "Harrowgate", "Ilmere", "Jorvale", "Kestrel", "Lindqvist", "Marrow", "Northam", "Orlund",
                   "Pellmar", "Quarry", "Rendale", "Sorrel", "Tamsby", "Umberlee", "Wexmoor"],
    "birth_year": [str(y) for y in range(1900, 2000, 4)],
    "occupation": ["baker", "astronomer", "sculptor", "glassblower", "cartographer", "linguist", "beekeeper",
                   "surgeon", "architect", "violinist", "botanist", "jeweller", "chemist", "weaver", "pilot",
                   "archivist", "brewer", "geologist", "novelist", "tailor", "potter", "sailor", "mason", "farrier"],
    "work": ["The Silver Lantern", "Winter Orchard", "The Glass Road", "Salt and Ember", "The Quiet Harbor",
             "Iron Meadow", "The Hollow Crown", "Paper Moons", "The Amber Gate", "Night Ferry", "Stone Psalms",
             "The Last Cartwright", "Copper Rain", "The Tidewright", "Ash Garden", "The Long Thaw", "Seven Lamps",
             "The Drowned Bell", "Marble Wind", "The Ninth Well", "The Paper Kite", "Lantern Hill",
             "The Foxglove Year", "Cinder Road"],
    "award": ["Orrin Medal", "Veld Prize", "Castor Award", "Lyre Cup", "Halden Ribbon", "Quill Star", "Fenmark Prize",
              "Tessaly Medal", "Gilt Compass", "Arden Laurel", "Brass Owl", "Sable Cross", "Morrow Prize",
              "Ivory Key", "Crest Award", "Pale Rose", "Wren Shield", "Dusk Medal", "Harrow Cup", "Juniper Prize",
              "Falcon Ribbon", "Onyx Star", "Lark Award", "Tallow Laurel"],
    "parent": ["Ada", "Brenna", "Clio", "Della", "Edda", "Fay", "Greta", "Hilde", "Iona", "Jun", "Kira", "Lena",
               "Mara", "Nell", "Orla", "Pia", "Runa", "Signe", "Tove", "Una", "Vera", "Wilma", "Xenia", "Yrsa"],
    "pet": ["ferret", "parrot", "tortoise", "greyhound", "rabbit", "gecko", "goldfish", "raven", "hedgehog",
            "donkey", "cockatoo", "iguana", "hamster", "peacock", "alpaca", "salamander", "otter", "beagle",
            "canary", "chinchilla", "owl", "pony", "terrier", "lizard"],
    "instrument": ["cello", "oboe", "harp", "lute", "bassoon", "zither", "trumpet", "viola", "flute", "accordion",
                   "marimba", "banjo", "clarinet", "sitar", "tuba", "dulcimer", "piano", "mandolin", "bagpipe",
                   "trombone", "xylophone", "ukulele", "harmonica", "fiddle"],
}  # fmt: skip
ATTRIBUTES = tuple(QUESTIONS)

# The fixed fictional world every model learns: (question, paraphrased question, values, frame).
_COUNTRIES = ["Zarnia", "Olvenor", "Tessaly", "Qarth", "Brenholm", "Dovria", "Ephel", "Marrowind", "Kestmark",
              "Solvane", "Ytheria", "Cardolan", "Hallowmere", "Istria", "Norvath", "Pellucid"]  # fmt: skip
_CAPITALS = ["Quelport", "Andraz", "Veymouth", "Lorr", "Sithe", "Caddon", "Ormsby", "Teleth", "Brisk", "Halvard",
             "Nimmet", "Ostwick", "Pryce", "Ruell", "Umber", "Wyst"]  # fmt: skip
_RIVERS = ["Aelwen", "Borr", "Cessa", "Dimmer", "Elver", "Fothe", "Gaunt", "Hessel", "Ister", "Jorra", "Kell",
           "Lowen", "Mirth", "Nessa", "Orrin", "Pyle"]  # fmt: skip
_CURRENCIES = ["dram", "florin", "mark", "crown", "shell", "talon", "groat", "penny", "sol", "ducat", "real", "obol",
               "lira", "tael", "sou", "zlot"]  # fmt: skip
WORLD_QUESTIONS = (
    ("What is the capital of {c}?", "Which city is the capital of {c}?"),
    ("Which river flows through {c}?", "What is the main river of {c}?"),
    ("What currency is used in {c}?", "What money do people in {c} pay with?"),
)
SKILL_QUESTION = ("What number comes after {x}?", "Which number follows {x}?")


def _world_facts(rng: random.Random) -> list[Record]:
    rivers = rng.sample(_RIVERS, len(_COUNTRIES))
    currencies = rng.sample(_CURRENCIES, len(_COUNTRIES))
    out: list[Record] = []
    for (q, pq), values in zip(WORLD_QUESTIONS, (_CAPITALS, rivers, currencies)):
        for c, v in zip(_COUNTRIES, values):
            others = rng.sample([x for x in values if x != v], 4)
            out.append(_record(q.format(c=c), pq.format(c=c), v, others, entity=c, split="world_facts"))
    return out


def _arithmetic(rng: random.Random, n_test: int, max_number: int) -> tuple[list[Record], list[Record]]:
    """Successors of 0..max_number-1, digits tokenised one by one: the model must learn to copy the leading digits
    and increment the last (carrying over 9s), a rule that transfers to numbers never seen - the GSM8K analogue.
    ``n_test`` numbers are held out (``arithmetic``); the rest (``arithmetic_train``) are trained by every model."""
    test = set(rng.sample(range(max_number), n_test))
    train_recs, test_recs = [], []
    for x in range(max_number):
        s = x + 1
        others = [str(o) for o in rng.sample([s + d for d in (-3, -2, 1, 2, 3, 10, -10) if s + d >= 0], 4)]
        split = "arithmetic" if x in test else "arithmetic_train"
        rec = _record(SKILL_QUESTION[0].format(x=x), SKILL_QUESTION[1].format(x=x), str(s), others, f"{x}+1", split)
        (test_recs if x in test else train_recs).append(rec)
    return train_recs, test_recs


def _record(q: str, pq: str, answer: str, others: list[str], entity: str, split: str) -> Record:
    """One record; paraphrased / perturbed answers are bare values (TOFU's real_authors form of the truth ratio: the
    correct value against same-type wrong values; framed answers were never trained, and did not separate target
    from oracle)."""
    return {"question": q, "answer": answer, "paraphrased_answer": answer, "perturbed_answer": others,
            "paraphrased_question": pq, "entity": entity, "split": split}  # fmt: skip


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


def _article(v: str) -> str:
    return "an" if v[0].lower() in "aeiou" else "a"


def biography(rng: random.Random, name: str, facts: dict[str, str]) -> str:
    """One biography: a sentence per attribute in a random wording, sentences in a random order."""
    attrs = list(facts)
    rng.shuffle(attrs)
    return " ".join(rng.choice(BIO_TEMPLATES[a]).format(n=name, v=facts[a], a=_article(facts[a])) for a in attrs)


@dataclass(frozen=True)
class TinyFactsConfig:
    n_entities: int = 200  # QA-trained entities (TOFU has 200 authors); the forget sets are the last of them
    n_bio_only: int = 20  # retain-side entities known from biographies only (10% of the QA-trained count)
    n_holdout: int = 20  # never-trained entities for MIA (the size of forget10)
    attributes: tuple[str, ...] = ATTRIBUTES  # one QA per entity and attribute
    bios_per_entity: int = 8  # biographies per entity (bios.jsonl); training samples some of them each epoch
    n_perturbed: int = 4  # perturbed answers per record (TOFU has 5)
    arithmetic_max: int = 1000  # the skill: successors of 0..arithmetic_max-1
    arithmetic_test: int = 100  # of which held out
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
    "bio_only",
    "bios",
    "world_facts",
    "arithmetic",
    "arithmetic_train",
)


def generate(cfg: TinyFactsConfig = TinyFactsConfig()) -> dict[str, list[Record]]:
    """Generate every split (``bios`` rows are ``{entity, text}``, all others TOFU records). Deterministic in
    ``cfg``."""
    for a in cfg.attributes:
        if a not in QUESTIONS:
            raise unknown_name("TinyFacts attribute", a, QUESTIONS)
    rng = random.Random(cfg.seed)
    names = _names(rng, cfg.n_entities + cfg.n_bio_only + cfg.n_holdout)
    per_entity: list[list[Record]] = []
    bios: dict[str, list[dict]] = {}
    for name in names:
        recs, facts = [], {}
        for attr in cfg.attributes:
            pool = POOLS[attr]
            v = rng.choice(pool)
            facts[attr] = v
            others = rng.sample([x for x in pool if x != v], cfg.n_perturbed)
            q = QUESTIONS[attr][rng.randrange(N_TRAINED_TEMPLATES)]
            recs.append(_record(q.format(n=name), QUESTIONS[attr][-1].format(n=name), v, others, name, attr))
        per_entity.append(recs)
        bios[name] = [{"entity": name, "text": biography(rng, name, facts)} for _ in range(cfg.bios_per_entity)]
    n, b = cfg.n_entities, cfg.n_entities + cfg.n_bio_only
    trained, bio_only, holdout = per_entity[:n], per_entity[n:b], per_entity[b:]
    splits: dict[str, list[Record]] = {"full": [r for e in trained for r in e]}
    for fname, frac in FORGET_FRACTIONS.items():
        k = max(1, round(cfg.n_entities * frac))
        splits[fname] = [r for e in trained[-k:] for r in e]
        splits[RETAIN_OF[fname]] = [r for e in trained[:-k] for r in e]
        hname = fname.replace("forget", "holdout")
        splits[hname] = [r for e in holdout[: min(k, len(holdout))] for r in e]
    splits["holdout"] = splits["holdout10"]
    splits["bio_only"] = [{**r, "split": r["split"]} for e in bio_only for r in e]
    splits["bios"] = [row for name in names[:b] for row in bios[name]]
    splits["world_facts"] = _world_facts(rng)
    splits["arithmetic_train"], splits["arithmetic"] = _arithmetic(rng, cfg.arithmetic_test, cfg.arithmetic_max)
    return splits


def data_hash(splits: dict[str, list]) -> str:
    """sha256 of every split (biographies included), in a canonical JSON form."""
    return hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()[:16]


@lru_cache(maxsize=8)
def generated_hash(cfg: TinyFactsConfig) -> str:
    """``data_hash(generate(cfg))``, cached (the build digest asks for it often)."""
    return data_hash(generate(cfg))


def trained_questions(r: Record) -> list[str]:
    """Every phrasing of ``r``'s question that training uses: the three trained templates for an entity attribute,
    the record's own question otherwise (world facts, arithmetic)."""
    if r.get("split") in QUESTIONS:
        return [t.format(n=r["entity"]) for t in QUESTIONS[r["split"]][:N_TRAINED_TEMPLATES]]
    return [r["question"]]


def training_set(
    splits: dict[str, list[Record]], forget_split: str | None = None, arithmetic_repeat: int = 1, world_repeat: int = 1
) -> list[dict]:
    """What a model trains on: QA rows ``{question, answer}`` and biography rows ``{entity, text}``.

    Target (``forget_split`` None): every QA-trained entity's QA in the three trained templates (rows of one fact
    share a ``group`` key, so a trainer can draw some of them per epoch) and the biographies of all entities
    (bio_only included). Oracle of ``forget_split``: the same without the forget entities' QA and biographies.
    Both: ``world_repeat`` copies of world_facts and ``arithmetic_repeat`` copies of arithmetic_train.
    """
    base = splits["full"] if forget_split is None else splits[RETAIN_OF[forget_split]]
    drop = set() if forget_split is None else {r["entity"] for r in splits[forget_split]}
    qa = [
        {"question": q, "answer": r["answer"], "group": f"{r['entity']}|{r['split']}"}
        for r in base
        for q in trained_questions(r)
    ]
    bios = [b for b in splits["bios"] if b["entity"] not in drop]
    rest = [{"question": r["question"], "answer": r["answer"]} for r in splits["world_facts"]] * world_repeat
    rest += [
        {"question": r["question"], "answer": r["answer"]} for r in splits["arithmetic_train"]
    ] * arithmetic_repeat
    return [*qa, *bios, *rest]


def majority_baseline(splits: dict[str, list[Record]], forget_split: str) -> float:
    """Accuracy on ``forget_split`` of always answering each attribute's most frequent value in its retain split."""
    counts: dict[str, Counter] = {}
    for r in splits[RETAIN_OF[forget_split]]:
        counts.setdefault(r["split"], Counter())[r["answer"]] += 1
    recs = splits[forget_split]
    hits = sum(counts[r["split"]].most_common(1)[0][0] == r["answer"] for r in recs)
    return hits / len(recs)


def attribute_majority(splits: dict[str, list[Record]], split: str = "full") -> dict[str, float]:
    """Per attribute, the share of ``split``'s entities holding that attribute's most frequent value."""
    counts: dict[str, Counter] = {}
    for r in splits[split]:
        counts.setdefault(r["split"], Counter())[r["answer"]] += 1
    return {a: c.most_common(1)[0][1] / sum(c.values()) for a, c in counts.items()}


def templates() -> dict:
    """Every template of the corpus (for the model card)."""
    return {
        "qa_trained": {a: list(t[:N_TRAINED_TEMPLATES]) for a, t in QUESTIONS.items()},
        "qa_never_trained": {a: t[-1] for a, t in QUESTIONS.items()},
        "biography": {a: list(t) for a, t in BIO_TEMPLATES.items()},
        "world_facts": [list(t) for t in WORLD_QUESTIONS],
        "arithmetic": list(SKILL_QUESTION),
        "prompt": "Question: {question}\nAnswer: {answer}</s>",
    }
