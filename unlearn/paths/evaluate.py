"""``unlearn paths eval``: one unlearning procedure with fixed hyper-parameters along every path, a trajectory
probe logged every ``--log-every`` steps, and the cross-path statistics of `unlearn.metrics.path`.

Each (method, path, seed) is one ordinary `unlearn run` (`unlearn.runner.run`: the same loop, method registry,
presets and run lifecycle; its run directory lies under ``<out>/path_runs/``), with ``eval_every`` set to the log
interval and the trajectory probe (`TrajectoryProbe`) as the trace evaluation. The probe only reads the model, so
the unlearning itself is exactly what ``unlearn run --model <path dir> --set eval_every=K`` does (a test checks
that both give the same metrics.json). Finished runs are reused, so an interrupted ``paths eval`` resumes.

Outputs in ``--out`` (itself a run directory of the lifecycle): ``path_dependence.csv`` (one row per path, seed,
method and logged step), ``path_dependence_summary.json`` (per-path scores and cross-path statistics),
``path_dependence.png`` (trajectories, one panel per metric and a row per method), ``metrics.json``.

Paths: a build root of `unlearn.paths.build` (its ``paths.json`` gives every path's order, forget position and
seed; ``--seeds`` selects the path seeds and each path is unlearned with its own seed), or a comma-separated list
of model directories that saw the same data in different orders (``--positions`` gives the forget data's position
in each, for the recency statistics; ``--seeds`` are then unlearning seeds).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unlearn.data.benchmarks import DataFiles, check_split
from unlearn.errors import UnlearnError
from unlearn.store import atomic_write_json, read_json, read_jsonl
from unlearn.workflow import claim_run, files_hash

PROBE_KEYS = ("forget_ll", "para_ll", "retain_ll", "forget_acc", "retain_acc", "arith_acc", "world_acc")
UTILITIES = ("retain_ll", "retain_acc", "arith_acc")  # utility columns the statistics score (those present)
UNITS = {
    "forget_ll": "forget answers: mean log-prob per token (nats)",
    "para_ll": "paraphrased forget questions: log-prob per token (nats)",
    "retain_ll": "retain answers: mean log-prob per token (nats)",
    "forget_acc": "forget exact match (fraction)",
    "retain_acc": "retain exact match (fraction)",
    "arith_acc": "held-out arithmetic exact match (fraction)",
    "world_acc": "world facts exact match (fraction)",
}


@dataclass
class TrajectoryProbe:
    """What is logged along a trajectory (spec of Yu et al. 2025 §4, adapted to QA): mean per-token answer
    log-likelihood of the forget set (trained phrasing), of its paraphrased questions and of the retain evaluation
    set, greedy exact match on forget, retain, held-out arithmetic and world facts, and ``pred``: the per-example
    per-token log-likelihoods (forget, paraphrase, retain concatenated) whose squared distance between two paths is
    the retrain-equivalence distance of the paper's Theorem 3.1."""

    tokenizer: object
    fmt: object
    sets: dict  # forget, retain (+ arithmetic, world_facts when the benchmark has them)
    batch_size: int = 128

    def __call__(self, model) -> dict:
        from unlearn.evaluate import generate_answers, score_answers
        from unlearn.metrics.logit import exact_match_acc

        out, pred = {}, []

        def ll(recs, key):
            rows = score_answers(model, self.tokenizer, self.fmt, [r[key] for r in recs], [r["answer"] for r in recs],
                                 batch_size=self.batch_size)  # fmt: skip
            per = [r["logp"] / max(r["n"], 1) for r in rows]  # per-token mean of each answer
            pred.extend(round(v, 6) for v in per)
            return sum(per) / len(per)

        def acc(recs):
            ans = generate_answers(model, self.tokenizer, self.fmt, [r["question"] for r in recs],
                                   batch_size=self.batch_size, max_new_tokens=12)  # fmt: skip
            return sum(exact_match_acc(a, r["answer"]) for a, r in zip(ans, recs)) / len(recs)

        forget, retain = self.sets["forget"], self.sets.get("retain") or []
        out["forget_ll"] = ll(forget, "question")
        if all(r.get("paraphrased_question") for r in forget):
            out["para_ll"] = ll(forget, "paraphrased_question")
        if retain:
            out["retain_ll"] = ll(retain, "question")
        out["forget_acc"] = acc(forget)
        if retain:
            out["retain_acc"] = acc(retain)
        if self.sets.get("arithmetic"):
            out["arith_acc"] = acc(self.sets["arithmetic"])
        if self.sets.get("world_facts"):
            out["world_acc"] = acc(self.sets["world_facts"])
        out["pred"] = pred
        return out


@dataclass
class PathsEvalArgs:
    methods: list  # method names (the LLM registry)
    paths: str  # a build root (paths.json) or comma-separated model directories
    out: str
    seeds: list = field(default_factory=lambda: [0, 1])
    log_every: int = 5  # trace the probe every K unlearning steps (and at step 0 and the last step)
    overrides: list = field(default_factory=list)  # --set key=value for every run (fixed hyper-parameters)
    benchmark: str = "tinyfacts"
    split: str | None = None  # default: the build's forget split
    files: DataFiles = field(default_factory=DataFiles)
    positions: list | None = None  # user directories: the forget data's position in each order
    suite: str = "basic"  # each run's final evaluation (the trajectories are the point here)
    parallel: int = 2  # runs side by side, one process and one thread each
    force: bool = False
    reuse: bool = False
    progress: bool = True


@dataclass(frozen=True)
class PathEntry:
    dir: str
    label: str  # the order (``entities-forget-world_facts-skill``) or the directory name
    position: int | None
    seed: int | None  # the path's own seed (None: a user directory, unlearned under every --seeds seed)


def resolve_entries(a: PathsEvalArgs) -> tuple[list[PathEntry], str]:
    """The paths to unlearn and the forget split they share."""
    from unlearn.paths.build import list_paths

    p = Path(a.paths)
    if "," not in a.paths and (p / "paths.json").exists():
        root = p
        entries = []
        for e in list_paths(root):
            if e["seed"] in a.seeds:
                entries.append(PathEntry(str(root / e["dir"]), "-".join(e["order"]), e["position"], e["seed"]))
        if not entries:
            raise UnlearnError(f"--paths {root}: no path built with seeds {','.join(map(str, a.seeds))}")
        splits = {read_json(Path(e.dir) / "card.json")["forget_split"] for e in entries}
        if len(splits) != 1:
            raise UnlearnError(f"--paths {root}: paths of different forget splits ({', '.join(sorted(splits))})")
        split = splits.pop()
        if a.split and a.split != split:
            raise UnlearnError(f"--split {a.split}: the paths under {root} were built for {split}")
        return entries, split
    dirs = [d.strip() for d in a.paths.split(",") if d.strip()]
    if len(dirs) < 2:
        raise UnlearnError(f"--paths {a.paths}: give a build root (with paths.json) or at least two model directories")
    for d in dirs:
        if not Path(d).is_dir():
            raise UnlearnError(f"--paths: {d} is not a directory")
    if a.positions is not None and len(a.positions) != len(dirs):
        raise UnlearnError(f"--positions: {len(a.positions)} positions for {len(dirs)} paths")
    pos = a.positions or [None] * len(dirs)
    names = [Path(d).name for d in dirs]
    if len(set(names)) != len(names):
        raise UnlearnError("--paths: two directories share a name; the run tree needs distinct names")
    return [PathEntry(d, n, q, None) for d, n, q in zip(dirs, names, pos)], a.split or "forget10"


def _jobs(a: PathsEvalArgs, entries: list[PathEntry]) -> list[tuple[str, PathEntry, int]]:
    return [(m, e, e.seed if e.seed is not None else s) for m in a.methods for e in entries
            for s in ([e.seed] if e.seed is not None else a.seeds)]  # fmt: skip


def run_args(a: PathsEvalArgs, method: str, e: PathEntry, seed: int, split: str, root: Path):
    """The `unlearn run` arguments of one (method, path, seed): the command a user would type, plus the log
    interval."""
    from unlearn.runner import RunArgs

    return RunArgs(method=method, model=e.dir, benchmark=a.benchmark, split=split, seed=seed,
                   out=str(root / "path_runs"), overrides=[("eval_every", str(a.log_every)), *a.overrides],
                   files=a.files, reuse=True, suite=a.suite, progress=False)  # fmt: skip


def _probe_for(ra):
    """The trajectory probe of a run: the benchmark's evaluation sets, the run's tokenizer and prompt format."""
    from unlearn.runner import _sets_for
    from unlearn.targets.llm import load_tokenizer
    from unlearn.targets.resolve import prompt_format, resolve_paths

    spec, tdir, _, _, bcfg = resolve_paths(ra.model, ra.benchmark, ra.split, need_oracle=False, log=lambda *_: None)
    tok = load_tokenizer(tdir)
    fmt = prompt_format(ra.prompt, tok, bool(spec.embedded), ra.model)
    sets, _, _ = _sets_for(bcfg, ra.benchmark, ra.split, ra.files)
    return TrajectoryProbe(tok, fmt, {k: sets[k] for k in ("forget", "retain", "arithmetic", "world_facts")
                                      if k in sets})  # fmt: skip


def one_run(ra) -> str:
    """Run one path's unlearning (in a worker process: one thread)."""
    import torch

    from unlearn.runner import run
    from unlearn.targets.llm import quiet_transformers

    torch.set_num_threads(1)
    quiet_transformers()
    return str(run(ra, log=lambda *_: None, trace_eval=_probe_for(ra)))


def trajectory_rows(rdir: Path, method: str, e: PathEntry, seed: int) -> tuple[list[dict], list[list[float]]]:
    """The long rows of one run's trace (step 0 .. last) and the prediction vectors per logged step."""
    rows, preds = [], []
    evals = {r["step"]: r["eval"] for r in read_jsonl(Path(rdir) / "trace.jsonl", tolerant=True) if "eval" in r}
    for step in sorted(evals):  # one row per logged step (the last one written wins)
        r, ev = {"step": step}, evals[step]
        rows.append({"path": e.label, "position": e.position, "seed": seed, "method": method, "step": r["step"],
                     **{k: ev[k] for k in PROBE_KEYS if k in ev}})  # fmt: skip
        preds.append(ev.get("pred", []))
    return rows, preds


def paths_eval(a: PathsEvalArgs, log=print) -> Path:
    """Run every (method, path, seed), then write the long CSV, the summary and the figure into ``a.out``."""
    import numpy as np
    import pandas as pd

    from unlearn.methods import get_method
    from unlearn.metrics.path import summarize

    if a.force and a.reuse:
        raise UnlearnError("--force and --reuse contradict each other; pass one")
    if not a.methods:
        raise UnlearnError("--method: name at least one method")
    for m in a.methods:
        get_method(m, "llm")  # unknown names fail here, listing the valid ones
    if a.log_every < 1:
        raise UnlearnError(f"--log-every {a.log_every}: must be >= 1")
    if not a.seeds:
        raise UnlearnError("--seeds: give at least one seed")
    entries, split = resolve_entries(a)
    check_split(a.benchmark, split)
    out = Path(a.out)
    jobs = _jobs(a, entries)
    resolved = {"workflow": "paths-eval", "methods": list(a.methods), "paths": [asdict(e) for e in entries],
                "seeds": list(a.seeds), "log_every": a.log_every, "overrides": [list(o) for o in a.overrides],
                "benchmark": a.benchmark, "split": split, "data_files": asdict(a.files), "suite": a.suite}  # fmt: skip
    prov = {"weights_hash": {e.label + (f"_seed{e.seed}" if e.seed is not None else ""): files_hash(e.dir)
                             for e in entries}}  # fmt: skip
    claim = claim_run(out, resolved, force=a.force, reuse=a.reuse, log=log, provenance=prov)
    if claim.reused:
        return out
    t0 = time.time()
    with claim:
        claim.start()
        args = [run_args(a, m, e, s, split, out) for m, e, s in jobs]
        if a.force:
            for ra in args:
                ra.reuse, ra.force = False, True
        log(f"paths eval: {len(entries)} paths x {len(a.methods)} methods -> {len(jobs)} unlearning runs, "
            f"{min(a.parallel, len(jobs))} side by side, logged every {a.log_every} steps")  # fmt: skip
        rdirs = _run_all(args, a.parallel, a.progress)
        rows, preds, steps = [], {}, None
        for (m, e, s), rdir in zip(jobs, rdirs):
            r, p = trajectory_rows(Path(rdir), m, e, s)
            rows += r
            preds.setdefault(m, {}).setdefault(s, {})[e.label] = np.asarray(p, dtype=float)  # (n_steps, m)
            st = [x["step"] for x in r]
            if steps is not None and st != steps:  # one method, one forget set: every run logs the same steps
                raise UnlearnError(f"{rdir}: logged steps {st} differ from the other runs' {steps}")
            steps = st
        df = pd.DataFrame(rows).sort_values(["method", "seed", "position", "path", "step"], na_position="last")
        df.to_csv(out / "path_dependence.csv", index=False, float_format="%.6g")
        utilities = tuple(u for u in UTILITIES if u in df.columns)
        retrain = retrain_preds(a, entries, split)
        summary = summarize(
            df,
            preds=preds,
            pred_steps=steps,
            utilities=utilities,
            retrain_pred={s: p for s, (_, p) in retrain.items()} or None,
        )
        summary["retrain_reference"] = {s: d for s, (d, _) in retrain.items()}
        summary["runs"] = [str(Path(r).relative_to(out)) for r in rdirs]
        summary["seconds"] = round(time.time() - t0, 1)
        atomic_write_json(out / "path_dependence_summary.json", summary)
        plot_trajectories(df, out / "path_dependence.png")
        claim.finish(headline_metrics(summary))
    log(f"paths eval: {len(jobs)} runs in {time.time() - t0:.0f} s; {out / 'path_dependence.csv'}")
    return out


def retrain_preds(a: PathsEvalArgs, entries: list[PathEntry], split: str) -> dict:
    """seed -> (directory, probe predictions) of the retrained reference of a build root's paths: the base trained
    on the same stages in the same order *without* the forget stage (a prefix every ``insert`` build has), i.e.
    the model these paths would be had the forget data never been in the sequence. Empty for user directories."""
    import numpy as np

    from unlearn.paths.build import stage_dir
    from unlearn.targets.llm import load_causal_lm

    out = {}
    root = Path(a.paths)
    for e in entries:
        if e.seed is None or e.seed in out:
            continue
        others = tuple(s for s in e.label.split("-") if s != "forget")
        d = stage_dir(root, others, e.seed)
        if not (d / "model.safetensors").exists():
            continue
        ra = run_args(a, a.methods[0], PathEntry(e.dir, e.label, e.position, e.seed), e.seed, split, root)
        probe = _probe_for(ra)
        out[e.seed] = (str(d.relative_to(root)), np.asarray(probe(load_causal_lm(str(d)))["pred"], dtype=float))
    return out


def _run_all(args: list, parallel: int, progress: bool) -> list[str]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(args), desc="paths eval", disable=not progress)
    if parallel <= 1 or len(args) == 1:
        out = []
        for ra in args:
            out.append(one_run(ra))
            bar.update(1)
        bar.close()
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(parallel, len(args)), mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(one_run, ra) for ra in args]
        res = []
        for f in futs:
            res.append(f.result())
            bar.update(1)
    bar.close()
    return res


def headline_metrics(summary: dict) -> dict:
    """metrics.json: the summary's overall scalars and each method's cross-path scalars as ``<method>_<stat>``
    (registered templates of `unlearn.metrics.path`); the nested details stay in the summary JSON."""
    from unlearn.metrics import check_keys

    flat = dict(summary.get("overall", {}))
    for m, res in summary.get("per_method", {}).items():
        flat.update({f"{m}_{k}": v for k, v in res.items()})
    flat = {k: v for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}  # fmt: skip
    bad = check_keys(flat)
    return {k: v for k, v in flat.items() if k not in bad}


def plot_trajectories(df, path: Path) -> None:
    """One panel per probe metric (columns) and method (rows); a line per path (mean over seeds, band = min-max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in ("forget_ll", "para_ll", "retain_ll", "arith_acc") if k in df.columns]
    methods = list(dict.fromkeys(df["method"]))
    paths = list(dict.fromkeys(df.sort_values(["position", "path"], na_position="last")["path"]))
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(len(methods), len(metrics), figsize=(4.2 * len(metrics), 3.2 * len(methods)),
                             squeeze=False)  # fmt: skip
    for i, m in enumerate(methods):
        for j, k in enumerate(metrics):
            ax = axes[i][j]
            for c, p in enumerate(paths):
                sub = df[(df["method"] == m) & (df["path"] == p)].groupby("step")[k]
                mean, lo, hi = sub.mean(), sub.min(), sub.max()
                pos = df.loc[df["path"] == p, "position"].iloc[0]
                label = f"forget at {int(pos)}: {p}" if pos == pos and pos is not None else p
                col = cmap(c / max(1, len(paths) - 1))
                ax.plot(mean.index, mean.values, color=col, label=label, lw=1.6)
                ax.fill_between(mean.index, lo.values, hi.values, color=col, alpha=0.15, lw=0)
            ax.set_xlabel("unlearning step")
            ax.set_ylabel(UNITS[k], fontsize=8)
            ax.set_title(f"{m}: {k}", fontsize=10)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best", title="path (band: min-max over seeds)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["PathsEvalArgs", "TrajectoryProbe", "paths_eval", "run_args", "resolve_entries", "plot_trajectories"]
