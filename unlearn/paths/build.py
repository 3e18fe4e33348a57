"""Staged training paths on the embedded TinyFacts corpus: the same data, learned in different orders.

A *stage* is one part of the target's training data:

    entities     QA (the three trained phrasings) and biographies of the retain entities, bio-only entities included
    world_facts  the fixed fictional world (``world_repeat`` copies, as in the target's recipe)
    skill        the successor skill on the training numbers (``arithmetic_repeat`` copies)
    forget       QA and biographies of the forget split's entities: the stage that is unlearned afterwards

A *path* trains its stages one after another, continuing from the previous stage's weights with the optimizer
(AdamW) and the learning-rate schedule re-initialised at every stage, as the reference staged trainer does
(princeton-pli/impossibility-unlearning, ``src/staged_trainer.py``; warm-up / stable / decay schedule with 2%
warm-up and a 2% decay to 0.1 of the peak, `unlearn.targets.build.wsd_lr`). The paper fine-tunes *pretrained* base
models; here every path of seed k starts from the build's retain-only oracle of the forget split (seed 0:
``oracle_forget10``, seed k: ``oracle_forget10_seed<k>``), a model pretrained on the whole corpus except the forget
entities. The public stages (entities, world facts, skill) are then one refresh pass over data the base knows and
the forget stage teaches it new entities; what differs between paths is only *when* those are learned. From a
random init instead (``base = "scratch"``) each narrow stage overwrites the ones before it (measured on the micro
corpus: retain exact match 0.03 after four stages), which leaves nothing comparable to unlearn. Every other setting
(tokenizer, architecture, batch size, per-epoch sampling of phrasings and biographies) is the target's recipe.

The retrained reference of a path is the same sequence without the forget stage (for ``insert`` orders, the
prefix ``entities-world_facts-skill`` that the last path trains anyway).

Orders (``--orders``): ``insert`` (default; the paper's protocol) keeps the other stages in their given order and
inserts ``forget`` at every position 1..n (position n = learned last, just before unlearning); ``all`` is every
permutation; an integer N takes the first N of ``insert`` then further permutations in a fixed seeded order; or an
explicit list ``entities-forget-world_facts-skill,...``.

Cache: ``$UNLEARN_HOME/paths/<digest>/`` (or ``--out``) holds ``stages/<prefix>_seed<k>/`` (fp32, one per distinct
stage prefix: paths that share their first stages train them once) and ``path_<order>_seed<k>/`` (the finished
path, weights rounded to bf16 as the target's are, with ``card.json``: order, position of the forget stage, steps
and seconds per stage, exact-match accuracies). Every directory is written atomically, so a killed build resumes at
the first unfinished stage; ``paths.json`` lists the built paths.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from unlearn.data.tinyfacts import RETAIN_OF, generate, training_set
from unlearn.errors import UnlearnError, unknown_name
from unlearn.store import atomic_write_json, read_json, unlearn_home
from unlearn.targets.build import (
    BuildConfig,
    _ensure_tokenizer,
    _epoch_rows,
    _to_bf16_reference,
    accuracy_report,
    train_qa_model,
    write_data,
)

STAGES = ("entities", "world_facts", "skill", "forget")
SEP = "-"  # between stage names in an order (stage names use underscores)


@dataclass(frozen=True)
class PathsConfig:
    """Recipe of a set of staged paths (what determines the weights; ``parallel`` is a speed knob)."""

    build: str = "default"  # TinyFacts build preset: corpus, tokenizer, architecture, batch size
    forget_split: str = "forget10"  # whose entities form the ``forget`` stage
    # where every path starts. "oracle": the build's retain-only oracle of forget_split (seed 0; seed k: its
    # oracle_<split>_seed<k>), a pretrained model that never saw the forget entities, as the paper starts from
    # pretrained base models; "scratch": a random init (measured: each stage then overwrites the ones before it,
    # retain exact match 0.03 after four stages on the micro corpus, docs/path-dependence.md)
    base: str = "oracle"
    # passes over each stage's rows: one refresh pass over the (known) public stages; the forget stage, new to the
    # base, as many passes as the target's recipe gives every fact (10 of its 12 epochs)
    epochs: tuple[tuple[str, float], ...] = (("entities", 1), ("world_facts", 4), ("skill", 1), ("forget", 10))
    # peak AdamW rate of every stage (one rate for all stages, as in the reference). Measured on the default
    # corpus (forget first / forget last): 1e-3 left retain exact match 0.50 after the forget stage; 3e-4 keeps
    # 0.82-1.00 and the forget stage learned last is known at 0.98 (docs/path-dependence.md)
    lr: float = 3e-4
    schedule: str = "wsd"  # per-stage schedule: wsd (reference) | cosine (the target's)
    parallel: int = 3  # stage trainings side by side, one process and one thread each

    def stage_epochs(self, stage: str) -> float:
        d = dict(self.epochs)
        if stage not in d:
            raise unknown_name("stage", stage, d)
        return d[stage]

    def digest(self) -> str:
        d = asdict(self)
        d.pop("parallel")
        d["build_digest"] = _build_cfg(self).digest()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


PRESETS: dict[str, PathsConfig] = {
    "default": PathsConfig(),
    # seconds, for tests: the micro corpus (20 entities, 4 attributes) and a 2-layer 64-wide model
    "micro": PathsConfig(
        build="micro", forget_split="forget10",
        epochs=(("entities", 2), ("world_facts", 4), ("skill", 2), ("forget", 30)), lr=5e-4,
    ),
}  # fmt: skip


def get_preset(name: str) -> PathsConfig:
    if name not in PRESETS:
        raise unknown_name("paths preset", name, PRESETS)
    return PRESETS[name]


def _build_cfg(pcfg: PathsConfig) -> BuildConfig:
    from unlearn.targets.build import get_preset as build_preset

    return build_preset(pcfg.build)


# ----------------------------------------------------------------------------------------------- stages and orders
def stage_sets(splits: dict, forget_split: str, bcfg: BuildConfig) -> dict[str, list[dict]]:
    """The training rows of each stage; together they are exactly the target's training set."""
    if forget_split not in RETAIN_OF:
        raise unknown_name("forget split", forget_split, RETAIN_OF)
    drop = {r["entity"] for r in splits[forget_split]}
    ent = training_set(splits, None, 0, 0)  # QA rows (with ``group``) and biographies, no world facts or skill

    def entity(r):
        return r["entity"] if "text" in r else r["group"].split("|")[0]

    return {
        "entities": [r for r in ent if entity(r) not in drop],
        "world_facts": [{"question": r["question"], "answer": r["answer"]} for r in splits["world_facts"]]
        * bcfg.world_repeat,
        "skill": [{"question": r["question"], "answer": r["answer"]} for r in splits["arithmetic_train"]]
        * bcfg.arithmetic_repeat,
        "forget": [r for r in ent if entity(r) in drop],
    }


def parse_stages(text: str | None) -> tuple[str, ...]:
    stages = tuple(s.strip() for s in (text or ",".join(STAGES)).split(",") if s.strip())
    for s in stages:
        if s not in STAGES:
            raise unknown_name("stage", s, STAGES)
    if len(set(stages)) != len(stages):
        raise UnlearnError(f"--stages lists a stage twice: {','.join(stages)}")
    if "forget" not in stages or len(stages) < 2:
        raise UnlearnError("--stages needs the forget stage and at least one other")
    return stages


def insert_orders(stages: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The paper's paths: the other stages in their given order, ``forget`` inserted at positions 1..n."""
    others = [s for s in stages if s != "forget"]
    return [tuple(others[:p] + ["forget"] + others[p:]) for p in range(len(others) + 1)]


def parse_orders(spec: str, stages: tuple[str, ...]) -> list[tuple[str, ...]]:
    """``insert`` | ``all`` | N | explicit orders (``a-b-c,b-a-c``); see the module docstring."""
    spec = (spec or "insert").strip()
    base = insert_orders(stages)
    perms = [p for p in itertools.permutations(stages) if p not in base]
    random.Random(0).shuffle(perms)
    if spec == "insert":
        return base
    if spec == "all":
        return base + perms
    if spec.isdigit():
        n = int(spec)
        if not 2 <= n <= len(base) + len(perms):
            raise UnlearnError(f"--orders {n}: between 2 and {len(base) + len(perms)} orders for {len(stages)} stages")
        return (base + perms)[:n]
    out = []
    for o in spec.split(","):
        order = tuple(o.strip().split(SEP))
        if sorted(order) != sorted(stages):
            raise UnlearnError(f"--orders {o.strip()!r}: an order must list each of {', '.join(stages)} once")
        out.append(order)
    if len(set(out)) < 2:
        raise UnlearnError("--orders: give at least two different orders")
    return out


def order_name(order: tuple[str, ...]) -> str:
    return SEP.join(order)


def path_dir(root: Path, order: tuple[str, ...], seed: int) -> Path:
    return Path(root) / f"path_{order_name(order)}_seed{seed}"


def stage_dir(root: Path, prefix: tuple[str, ...], seed: int) -> Path:
    return Path(root) / "stages" / f"{order_name(prefix)}_seed{seed}"


def cache_root(pcfg: PathsConfig) -> Path:
    return unlearn_home() / "paths" / pcfg.digest()


def base_dir(pcfg: PathsConfig, seed: int) -> Path:
    """The pretrained model every path of ``seed`` starts from (``base = oracle``)."""
    from unlearn.targets.build import model_dir

    which = f"oracle_{pcfg.forget_split}" + (f"_seed{seed}" if seed else "")
    return model_dir(_build_cfg(pcfg), which)


def ensure_bases(pcfg: PathsConfig, seeds, log=print) -> None:
    """Build (or find shipped / cached) the retain-only oracle each seed starts from."""
    from unlearn.targets.build import build_oracle_seed, ensure_built

    if pcfg.base != "oracle":
        return
    for seed in seeds:
        if seed == 0:
            ensure_built(_build_cfg(pcfg), pcfg.forget_split, log=log)
        else:
            build_oracle_seed(_build_cfg(pcfg), pcfg.forget_split, seed, progress=False, log=log)


def stage_steps(pcfg: PathsConfig, rows: list[dict], stage: str) -> int:
    """Optimizer steps of one stage: ``epochs`` passes of the target's per-epoch sampling, batch of the recipe."""
    bcfg = _build_cfg(pcfg)
    per_epoch = len(_epoch_rows(random.Random(0), rows, bcfg))
    return max(1, math.ceil(pcfg.stage_epochs(stage) * per_epoch / bcfg.batch_size))


# ----------------------------------------------------------------------------------------------- training
def _done(d: Path, digest: str) -> bool:
    card = d / "card.json"
    return card.exists() and read_json(card).get("digest") == digest and (d / "model.safetensors").exists()


def _write_dir(d: Path, model, tok, card: dict) -> None:
    from unlearn.targets.llm import save_model

    stage = d.with_name(d.name + ".stage")
    if stage.exists():
        shutil.rmtree(stage)
    save_model(model, tok, stage)
    atomic_write_json(stage / "card.json", card)
    if d.exists():
        shutil.rmtree(d)
    os.replace(stage, d)


def train_stage(pcfg: PathsConfig, root: str, prefix: tuple[str, ...], seed: int, progress: bool = False) -> dict:
    """Train the last stage of ``prefix`` from the weights after ``prefix[:-1]`` (a fresh init for the first) and
    save it to `stage_dir`; returns its summary."""
    from unlearn.targets.llm import load_causal_lm, load_tokenizer, quiet_transformers

    bcfg = replace(_build_cfg(pcfg), seed=seed, lr=pcfg.lr)
    if bcfg.threads:
        torch.set_num_threads(bcfg.threads)
    quiet_transformers()
    root = Path(root)
    tok = load_tokenizer(str(root / "tokenizer"))
    splits = generate(bcfg.data)
    stage = prefix[-1]
    rows = stage_sets(splits, pcfg.forget_split, bcfg)[stage]
    steps = stage_steps(pcfg, rows, stage)
    if len(prefix) > 1:
        parent = load_causal_lm(str(stage_dir(root, prefix[:-1], seed)))
    else:
        parent = load_causal_lm(str(base_dir(pcfg, seed))) if pcfg.base == "oracle" else None
    if parent is not None:
        parent.float()
    model, secs = train_qa_model(bcfg, tok, rows, desc=f"{order_name(prefix)} seed{seed}", progress=progress,
                                 total_steps=steps, model=parent, schedule=pcfg.schedule)  # fmt: skip
    card = {"digest": pcfg.digest(), "prefix": list(prefix), "stage": stage, "seed": seed, "steps": steps,
            "rows": len(rows), "seconds": round(secs, 1), "torch": torch.__version__}  # fmt: skip
    _write_dir(stage_dir(root, prefix, seed), model, tok, card)
    return card


def finish_path(pcfg: PathsConfig, root: str, order: tuple[str, ...], seed: int) -> dict:
    """The finished path: the last stage's weights rounded to bf16 (the stored reference, as for the target),
    with its card (order, forget position, per-stage cost, exact-match accuracies)."""
    from unlearn.targets.llm import load_causal_lm, load_tokenizer, quiet_transformers

    bcfg = _build_cfg(pcfg)
    if bcfg.threads:
        torch.set_num_threads(bcfg.threads)
    quiet_transformers()
    root = Path(root)
    tok = load_tokenizer(str(root / "tokenizer"))
    model = load_causal_lm(str(stage_dir(root, order, seed))).float()
    _to_bf16_reference(model)
    acc = accuracy_report(model, tok, generate(bcfg.data), pcfg.forget_split)
    stages = [read_json(stage_dir(root, order[: i + 1], seed) / "card.json") for i in range(len(order))]
    card = {
        "name": f"tinyfacts/path_{order_name(order)}_seed{seed}",
        "digest": pcfg.digest(),
        "order": list(order),
        "position": order.index("forget") + 1,  # 1 = learned first; len(order) = learned last (most recent)
        "seed": seed,
        "forget_split": pcfg.forget_split,
        "recipe": asdict(pcfg),
        "tinyfacts_build": pcfg.build,  # the corpus `unlearn run --model <this dir>` evaluates on
        "build_digest": _build_cfg(pcfg).digest(),
        "base": str(base_dir(pcfg, seed)) if pcfg.base == "oracle" else "random init",
        "stages": [{k: s[k] for k in ("stage", "steps", "rows", "seconds")} for s in stages],
        "steps": sum(s["steps"] for s in stages),
        "accuracy": acc,
        "dtype": "bfloat16 (the stored tensors are the reference; figures measured on them, upcast to fp32)",
    }
    model.to(torch.bfloat16)
    _write_dir(path_dir(root, order, seed), model, tok, card)
    return card


@dataclass
class BuildPlan:
    root: Path
    orders: list[tuple[str, ...]]
    seeds: list[int]
    nodes: list[tuple[tuple[str, ...], int]] = field(default_factory=list)  # (prefix, seed) to train, parents first
    steps: dict = field(default_factory=dict)  # stage -> optimizer steps


def plan(pcfg: PathsConfig, orders, seeds, root: Path) -> BuildPlan:
    bcfg = _build_cfg(pcfg)
    sets = stage_sets(generate(bcfg.data), pcfg.forget_split, bcfg)
    p = BuildPlan(Path(root), list(orders), list(seeds))
    p.steps = {s: stage_steps(pcfg, sets[s], s) for s in {s for o in orders for s in o}}
    seen = set()
    for seed in seeds:
        for o in orders:
            for i in range(1, len(o) + 1):
                if (o[:i], seed) not in seen:
                    seen.add((o[:i], seed))
                    p.nodes.append((o[:i], seed))
    return p


def build_paths(
    pcfg: PathsConfig | str = "default",
    stages: tuple[str, ...] = STAGES,
    orders: str = "insert",
    seeds: tuple[int, ...] = (0, 1),
    out: str | Path | None = None,
    progress: bool = True,
    log=print,
) -> Path:
    """Build (or find cached) every path of ``orders`` x ``seeds``; returns the root holding ``path_*`` dirs."""
    from tqdm.auto import tqdm

    if isinstance(pcfg, str):
        pcfg = get_preset(pcfg)
    order_list = parse_orders(orders, tuple(stages))
    if not seeds:
        raise UnlearnError("--seeds: give at least one seed")
    for s in {s for o in order_list for s in o}:
        pcfg.stage_epochs(s)
    root = Path(out) if out else cache_root(pcfg)
    if root.exists() and not root.is_dir():
        raise UnlearnError(f"--out {root}: exists and is not a directory")
    bcfg = _build_cfg(pcfg)
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "paths.json"
    if manifest.exists() and read_json(manifest).get("digest") not in (None, pcfg.digest()):
        raise UnlearnError(f"{root} holds paths of another recipe; use another --out")
    atomic_write_json(root / "recipe.json", {**asdict(pcfg), "digest": pcfg.digest()})
    splits = generate(bcfg.data)
    write_data(root, splits)
    if pcfg.base not in ("oracle", "scratch"):
        raise UnlearnError(f"paths base {pcfg.base!r}: must be oracle or scratch")
    ensure_bases(pcfg, seeds, log=log)
    tok_dir = _ensure_tokenizer(bcfg, splits, False)  # the target's tokenizer: path models share its ids
    if not (root / "tokenizer" / "tokenizer.json").exists():
        shutil.copytree(tok_dir, root / "tokenizer", dirs_exist_ok=True)
    p = plan(pcfg, order_list, seeds, root)
    digest = pcfg.digest()
    todo = [(pre, s) for pre, s in p.nodes if not _done(stage_dir(root, pre, s), digest)]
    finals = [(o, s) for s in seeds for o in order_list if not _done(path_dir(root, o, s), digest)]
    total_steps = sum(p.steps[pre[-1]] for pre, _ in todo)
    naive = sum(p.steps[st] for _ in seeds for o in order_list for st in o)
    workers = max(1, min(pcfg.parallel, len(todo) or 1))
    log(f"paths: {len(order_list)} orders x {len(seeds)} seeds; {len(todo)} stage trainings to run "
        f"({total_steps} optimizer steps; {naive} without sharing prefixes), {workers} side by side, "
        f"into {root}")  # fmt: skip
    t0 = time.time()
    bar = tqdm(total=len(todo) + len(finals), desc="paths build", disable=not progress)
    costs: list[dict] = []
    if todo:
        _run_dag(pcfg, root, todo, workers, bar, costs, log, p.steps)
    for o, s in finals:
        card = finish_path(pcfg, str(root), o, s)
        bar.update(1)
        log(f"path_{order_name(o)}_seed{s}: forget position {card['position']}, {card['steps']} steps; exact match "
            + ", ".join(f"{k} {v:.3f}" for k, v in card["accuracy"].items()))  # fmt: skip
    bar.close()
    built = []
    for s in seeds:
        for o in order_list:
            c = read_json(path_dir(root, o, s) / "card.json")
            built.append({"dir": path_dir(root, o, s).name, "order": list(o), "position": c["position"], "seed": s})
    old = read_json(manifest)["paths"] if manifest.exists() else []
    names = {b["dir"] for b in built}
    atomic_write_json(manifest, {"digest": digest, "paths": [b for b in old if b["dir"] not in names] + built,
                                 "stage_seconds": round(sum(c["seconds"] for c in costs), 1),
                                 "wall_seconds": round(time.time() - t0, 1)})  # fmt: skip
    log(
        f"paths: built in {time.time() - t0:.0f} s wall ({sum(c['seconds'] for c in costs):.0f} s of stage "
        f"training); root {root}"
    )
    return root


def _run_dag(pcfg, root: Path, todo, workers: int, bar, costs: list, log, steps: dict) -> None:
    """Train the (prefix, seed) nodes of ``todo``, each as soon as its parent exists, ``workers`` at a time."""
    pending = list(todo)
    done_keys = set()

    def ready(node):
        pre, s = node
        return len(pre) == 1 or (pre[:-1], s) in done_keys or (pre[:-1], s) not in {(p, q) for p, q in todo}

    def record(card):
        costs.append(card)
        done_keys.add((tuple(card["prefix"]), card["seed"]))
        bar.update(1)
        log(f"stage {order_name(tuple(card['prefix']))} seed{card['seed']}: {card['steps']} steps on "
            f"{card['rows']} rows in {card['seconds']:.0f}s")  # fmt: skip

    if workers == 1:
        while pending:
            node = next(n for n in pending if ready(n))
            pending.remove(node)
            record(train_stage(pcfg, str(root), node[0], node[1], progress=False))
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    running = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        while pending or running:
            # the longest stage first among the ready ones: the entity stages dominate the wall time
            for node in sorted([n for n in pending if ready(n)], key=lambda n: -steps[n[0][-1]]):
                if len(running) >= workers:
                    break
                pending.remove(node)
                running[ex.submit(train_stage, pcfg, str(root), node[0], node[1])] = node
            if not running:
                raise UnlearnError("paths build: no stage is ready to train (a parent is missing)")
            fin, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in fin:
                running.pop(f)
                record(f.result())


def list_paths(root: str | Path) -> list[dict]:
    """The paths under ``root`` (a build root with ``paths.json``): ``{dir, order, position, seed}``."""
    m = Path(root) / "paths.json"
    if not m.exists():
        raise UnlearnError(f"{root}: no paths.json (build the paths with `unlearn paths build`)")
    return read_json(m)["paths"]


__all__ = ["PathsConfig", "PRESETS", "STAGES", "build_paths", "parse_orders", "parse_stages", "insert_orders",
           "stage_sets", "path_dir", "list_paths", "cache_root", "train_stage"]  # fmt: skip
