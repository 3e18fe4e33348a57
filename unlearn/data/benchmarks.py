"""Benchmarks: one registry of the names ``--benchmark`` accepts, and the assembly of their evaluation sets.

A benchmark turns (split, the user's own files) into the sets the evaluator reads and the two training sets a
method sees:

* ``forget``: the forget split's records (what a method unlearns and what forget metrics are computed on);
* ``retain``: an evaluation subset of the retain split (TOFU's ``retain_perturbed``: 10% of the entities);
* utility sets (``world_facts``, ``arithmetic``, ``real_authors``), ``holdout`` (never trained on, for MIA) and,
  for TinyFacts v2, ``bio_only`` (entities learned from biographies only);
* the retain *training* set (the whole retain split).

Knows nothing of models: the embedded target's data config is passed in, not its builder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from unlearn.data import muse
from unlearn.data.schema import load_records
from unlearn.data.tinyfacts import RETAIN_OF, TinyFactsConfig, generate
from unlearn.data.tofu import load_tofu
from unlearn.data.wmdp import SPLITS as WMDP_SPLITS
from unlearn.data.wmdp import load_wmdp
from unlearn.errors import UnlearnError, unknown_name


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # llm | diffusion
    splits: tuple[str, ...]  # forget splits (LLM) or "" for concept-keyed diffusion benchmarks
    description: str
    evaluation: str = "suite"  # suite: the QA metric suite (unlearn.evaluate) | lm_eval: lm-eval tasks + text NLL
    #                            | muse: MUSE's VerbMem / KnowMem / PrivLeak (unlearn.metrics.muse)

    @property
    def default_split(self) -> str:
        """The split a run uses when none is given: forget10 where there is one, else the first."""
        return "forget10" if "forget10" in self.splits else self.splits[0]


BENCHMARKS: dict[str, Benchmark] = {
    "tinyfacts": Benchmark("tinyfacts", "llm", ("forget01", "forget05", "forget10"),
                           "embedded fictitious entities (TOFU-like), exact retrain oracles"),
    "tofu": Benchmark("tofu", "llm", ("forget01", "forget05", "forget10"),
                      "TOFU (locuslab/TOFU): 200 fictitious authors, open-unlearning's fine-tunes and oracles"),
    "wmdp": Benchmark("wmdp", "llm", WMDP_SPLITS,
                      "WMDP (cais/wmdp): raw-text forget/retain corpora, lm-eval wmdp_* accuracy + held-out text NLL",
                      evaluation="lm_eval"),
    "muse_news": Benchmark("muse_news", "llm", muse.SPLITS,
                           "MUSE-News (muse-bench/MUSE-News): BBC news, raw-text unlearning, VerbMem, KnowMem, "
                           "PrivLeak against the retrained model", evaluation="muse"),
    "muse_books": Benchmark("muse_books", "llm", muse.SPLITS,
                            "MUSE-Books (muse-bench/MUSE-Books): Harry Potter, raw-text unlearning, VerbMem, KnowMem, "
                            "PrivLeak against the retrained model", evaluation="muse"),
    "tinyshapes": Benchmark("tinyshapes", "diffusion", (), "embedded text-to-image shapes, classifier judge"),
    "sd": Benchmark("sd", "diffusion", (), "a Stable Diffusion 1.x/2.x diffusers directory"),
}  # fmt: skip


def get_benchmark(name: str, kind: str | None = None) -> Benchmark:
    """The benchmark ``name`` (of ``kind`` when given); an unknown name lists the valid ones."""
    valid = {n: b for n, b in BENCHMARKS.items() if kind is None or b.kind == kind}
    if name not in valid:
        raise unknown_name(f"{kind + ' ' if kind else ''}benchmark", name, valid)
    return valid[name]


def check_split(benchmark: str, split: str) -> None:
    b = get_benchmark(benchmark, "llm")
    if split not in b.splits:
        raise unknown_name(f"{benchmark} split", split, b.splits)


@dataclass
class DataFiles:
    """The user's own sets (JSONL in the TOFU schema), replacing the benchmark's."""

    forget: str | None = None
    retain: str | None = None
    holdout: str | None = None


TOFU_RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


def load_sets(benchmark: str, split: str, files: DataFiles, tinyfacts: TinyFactsConfig | None = None):
    """(evaluation sets, forget training records, retain training records) of ``benchmark`` / ``split``.

    WMDP's sets are text (``{"text"}`` records; held-out ``forget`` / ``retain``) plus its multiple-choice test
    sets (``wmdp_bio`` ...), see `unlearn.data.wmdp.load_wmdp`; ``--holdout`` does not apply to it. MUSE's sets
    are its VerbMem / KnowMem / PrivLeak sets and ``{"text"}`` training documents, see `unlearn.data.muse.load_muse`.
    """
    check_split(benchmark, split)
    if benchmark in muse.HUB:
        if files.holdout:
            raise UnlearnError(f"--holdout does not apply to --benchmark {benchmark} (its privleak holdout is used)")
        return muse.load_muse(benchmark, split, files.forget, files.retain)
    if benchmark == "wmdp":
        if files.holdout:
            raise UnlearnError(
                "--holdout does not apply to --benchmark wmdp (held-out text is taken from the corpora)"
            )
        return load_wmdp(split, files.forget, files.retain)
    if benchmark == "tinyfacts":
        splits = generate(tinyfacts or TinyFactsConfig())
        retain_train = splits[RETAIN_OF[split]]
        # evaluation retain set: the first 10% of entities, in every retain split (like TOFU's retain_perturbed)
        n_eval_ent = max(1, round(len({r["entity"] for r in splits["full"]}) * 0.1))
        ents = set(list(dict.fromkeys(r["entity"] for r in splits["full"]))[:n_eval_ent])
        sets = {
            "forget": splits[split],
            "retain": [r for r in retain_train if r["entity"] in ents],
            "world_facts": splits["world_facts"],
            "arithmetic": splits["arithmetic"],
            "holdout": splits[split.replace("forget", "holdout")],
        }
        if splits.get("bio_only"):
            sets["bio_only"] = splits["bio_only"]
    else:  # tofu

        def get(cfg_name, override):
            return load_records(override, require_perturbed=False) if override else load_tofu(cfg_name)

        sets = {
            "forget": get(f"{split}_perturbed", files.forget),
            "retain": get("retain_perturbed", None),
            "world_facts": load_tofu("world_facts_perturbed"),
            "real_authors": load_tofu("real_authors_perturbed"),
            "holdout": get(split.replace("forget", "holdout"), files.holdout),
        }
        retain_train = get(TOFU_RETAIN[split], None)
    if files.forget:
        sets["forget"] = load_records(files.forget)
    if files.retain:
        retain_train = load_records(files.retain)
        sets["retain"] = retain_train[: max(len(sets["forget"]), 1)]
    if files.holdout:
        sets["holdout"] = load_records(files.holdout)
    return sets, sets["forget"], retain_train


def data_hash(sets: dict) -> str:
    """A short hash of evaluation sets (records in order), for provenance and cache keys."""
    return hashlib.sha256(json.dumps(sets, sort_keys=True).encode()).hexdigest()[:16]
