"""A tree of runs -> leaderboard CSVs, a markdown table and a forget-quality vs model-utility plot.

Input: ``runs/<benchmark>/<model>/<method>/<split>/seed<k>/`` (see `unlearn.store`). A run counts when it has a
``metrics.json`` and its ``status.json`` does not say ``failed``; every other run directory (crashed, killed,
still running, failed) is listed as incomplete in ``leaderboard_incomplete.csv`` and in the markdown, never dropped.

Outputs (in ``out``):
    leaderboard.csv             one row per finished run: benchmark, model, method, split, seed, every metric
                                (cost_steps / cost_tokens / cost_seconds included)
    leaderboard_summary.csv     mean and sample standard deviation (ddof=1; empty for one seed) of every metric
                                across seeds, per benchmark / model / method / split, with ``n_seeds``
    leaderboard_references.csv  the target (before unlearning) and the retain-only oracle, per benchmark / model /
                                split, from the cached evaluations (`unlearn.runner.compare_table`)
    leaderboard_incomplete.csv  runs without usable metrics, with their state and reason
    leaderboard.md              headline metrics as mean ± std, direction arrows from the metric registry
    leaderboard.png             forget quality (log scale) vs model utility, one point per method and split, with
                                the target and the oracle as reference points

Diffusion runs (``unlearn erase``, and ``unlearn eval`` of a diffusion checkpoint) are kept apart from the LLM
runs — their metrics are another vocabulary — and written beside them, with the concept as the split and the run
directory's method name (``esd-x``, ``uce-phrases``) as the method (an LLM run's method is its run label, so a
hyper-parameter variant ``npo+lr1e-4`` or ``npo+3f2a`` is a row of its own):
    leaderboard_diffusion.csv          one row per finished diffusion run, every metric
    leaderboard_diffusion_summary.csv  mean and sample std over seeds, as leaderboard_summary.csv
    leaderboard_diffusion.md           `DIFFUSION_HEADLINE` as mean ± std
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from unlearn.errors import UnlearnError
from unlearn.metrics import all_metrics
from unlearn.runner import compare_table
from unlearn.store import atomic_write_text, read_json, read_status
from unlearn.workflow import read_resolved

KEYS = ["benchmark", "model", "method", "split"]
# the markdown's columns, when present (every metric is in the CSVs)
HEADLINE = [
    "forget_quality",
    "model_utility",
    "forget_acc",
    "forget_rougeL_recall",
    "forget_truth_ratio",
    "retain_acc",
    "retain_rougeL_recall",
    "world_facts_acc",
    "arithmetic_acc",
    "forget_verbmem_rouge",  # MUSE
    "forget_knowmem_rouge",
    "retain_knowmem_rouge",
    "privleak",
    "mia_min_k_auc",
    "forget_cka_original",  # internal suite: hidden states still the original's on forget inputs?
    "forget_probe_acc",  # internal suite: forget answers still linearly recoverable?
    "cost_seconds",
]
# the diffusion markdown's columns (unlearn/metrics/diffusion.py, cka_* in representation.py)
DIFFUSION_HEADLINE = [
    "erasure_rate",
    "in_domain_retention",
    "cross_domain_retention",
    "paraphrase_attack_success",
    "adversarial_attack_success",
    "cka_forget",
    "cka_retain",
    "edit_seconds",
]
ARROWS = {"higher": "↑", "lower": "↓", "oracle": "≈oracle"}
REF_COLOURS = {"target": "black", "oracle": "gold"}
FQ_FLOOR = 1e-30  # forget quality is a p-value that can underflow to 0: plotted at this floor on the log axis


# ----------------------------------------------------------------------------------------------- collection
def find_run_dirs(runs: Path) -> list[Path]:
    """Every ``seed<k>`` directory under ``runs`` (at any depth, so a tree with one benchmark level works too)."""
    return sorted(p for p in Path(runs).rglob("seed*") if p.is_dir() and re.fullmatch(r"seed\d+", p.name))


def _identity(rdir: Path, runs: Path) -> dict:
    """benchmark / model / method / split / seed of a run: from its config.json, else from its path."""
    parts = rdir.relative_to(runs).parts
    ident = dict(zip(KEYS, (["?"] * 4 + list(parts[:-1]))[-4:]))
    ident["seed"] = int(rdir.name[4:])
    cfg = read_resolved(rdir)  # the lifecycle's ``resolved`` part, or a pre-lifecycle flat config read whole
    ident["kind"] = "llm"
    if cfg:
        ident.update({k: str(cfg[k]) for k in KEYS if k in cfg})
        if "split" not in cfg and "concept" in cfg:  # erase runs: the concept plays the split's role
            ident["split"] = str(cfg["concept"])
        ident["seed"] = int(cfg.get("seed", ident["seed"]))
        if cfg.get("run_label"):  # an LLM variant (npo+lr1e-4, npo+3f2a) is its own row, not one of npo's seeds
            ident["method"] = str(cfg["run_label"])
        if cfg.get("workflow") == "erase" or cfg.get("kind") == "diffusion":
            ident["kind"] = "diffusion"
            # the run directory's name tells variants apart (esd-x / esd-u, uce / uce-phrases); config "method" not
            ident["method"] = parts[-3] if len(parts) >= 3 else ident["method"]
    return ident


def collect(runs: str | Path) -> tuple[list[dict], list[dict]]:
    """Read a run tree.

    Returns:
        (rows, incomplete): one dict per finished run (identity + every metric), and one per other run directory
        with ``state`` (failed | running | interrupted | unreadable) and ``reason``.
    """
    runs = Path(runs)
    if not runs.is_dir():
        raise UnlearnError(f"runs directory not found: {runs}")
    rows, incomplete = [], []
    for rdir in find_run_dirs(runs):
        ident = _identity(rdir, runs)
        status = read_status(rdir) if (rdir / "status.json").exists() else {}
        state = status.get("state", "")
        mpath = rdir / "metrics.json"
        reason = ""
        if state == "failed":
            reason = str(status.get("reason") or status.get("error") or "status.json says failed")
        elif not mpath.exists():
            state = state if state and state != "finished" else "interrupted"
            reason = "no metrics.json" + (f" (status: {status['state']})" if status.get("state") else "")
        else:
            try:
                metrics = read_json(mpath)
            except (ValueError, OSError) as e:
                state, reason = "unreadable", f"metrics.json: {e}"
            else:
                metrics.pop("schema_version", None)
                rows.append({**ident, **{k: _num(v) for k, v in metrics.items() if k not in ident}})
                continue
        incomplete.append({**ident, "state": state, "reason": reason, "path": str(rdir)})
    return rows, incomplete


def _num(v):
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return v
    return math.nan if v is None else v


def metric_columns(rows: list[dict]) -> list[str]:
    """Numeric metric columns in first-seen order, costs last."""
    cols = list(
        dict.fromkeys(
            k for r in rows for k, v in r.items() if k not in KEYS and k != "seed" and isinstance(v, (int, float))
        )
    )
    return [c for c in cols if not c.startswith("cost_")] + [c for c in cols if c.startswith("cost_")]


def summarize(rows: list[dict]):
    """Mean and sample std (ddof=1) of every metric across seeds per benchmark / model / method / split.

    Returns:
        a pandas DataFrame: the four keys, ``n_seeds``, ``seeds``, then ``<metric>_mean`` and ``<metric>_std`` pairs.
    """
    import pandas as pd

    cols = metric_columns(rows)
    df = pd.DataFrame(rows, columns=[*KEYS, "seed", *cols])
    out = []
    for key, g in df.groupby(KEYS, sort=True):
        rec = dict(zip(KEYS, key))
        rec["n_seeds"] = len(g)
        rec["seeds"] = " ".join(str(s) for s in sorted(g["seed"]))
        for c in cols:
            v = pd.to_numeric(g[c], errors="coerce").dropna()
            rec[f"{c}_mean"] = float(v.mean()) if len(v) else math.nan
            rec[f"{c}_std"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        out.append(rec)
    return pd.DataFrame(out, columns=[*KEYS, "n_seeds", "seeds", *[f"{c}_{s}" for c in cols for s in ("mean", "std")]])


# ----------------------------------------------------------------------------------------------- references
def compute_references(runs: str | Path, log=print) -> list[dict]:
    """Target and oracle metrics per benchmark / model / split, from the cached evaluations of one finished run each.

    `unlearn.runner.compare_table` reads the run's config, and evaluates the target / oracle when their cached
    evaluation is missing. A group whose references cannot be computed is logged and left out of the plot.
    """
    runs = Path(runs)
    by_group: dict[tuple, Path] = {}
    for rdir in find_run_dirs(runs):
        if (rdir / "metrics.json").exists() and (rdir / "config.json").exists():
            ident = _identity(rdir, runs)
            if ident["kind"] == "diffusion":  # judged against the original inside the run; no target / oracle
                continue
            by_group.setdefault((ident["benchmark"], ident["model"], ident["split"]), rdir)
    refs = []
    for (bench, model, split), rdir in sorted(by_group.items()):
        try:
            cols = compare_table(rdir, log=log)
        except Exception as e:  # a reference missing is reported, it never hides the runs
            log(f"references for {bench}/{model}/{split} unavailable: {type(e).__name__}: {e}")
            continue
        for which in ("target", "oracle"):
            if which in cols:
                refs.append(
                    {
                        "benchmark": bench,
                        "model": model,
                        "split": split,
                        "which": which,
                        **{k: _num(v) for k, v in cols[which].items() if k != "schema_version"},
                    }
                )
    return refs


# what the oracle scores against itself by definition (it is evaluated without a reference, so these are missing)
ORACLE_SELF = {"forget_quality": 1.0, "privleak": 0.0}


def _ref(m: dict, key: str):
    """A reference's metric; the oracle's forget quality against itself is 1 (KS p-value of equal samples) and its
    privleak 0."""
    v = m.get(key)
    if (v is None or (isinstance(v, float) and math.isnan(v))) and m.get("which") == "oracle":
        return ORACLE_SELF.get(key, v)
    return v


# ----------------------------------------------------------------------------------------------- outputs
def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    av = abs(v)
    if av < 1e-12:  # float noise of a std over equal values
        return "0"
    if av < 1e-2 or av >= 1e5:
        return f"{v:.2e}"
    return f"{v:.3f}" if av < 10 else f"{v:.1f}"


def _summary_rows(summary, cols) -> list[str]:
    """Markdown rows of a mean/std summary: the key columns, the seed count, ``mean ± std`` per metric."""
    rows = []
    for _, r in summary.iterrows():
        cells = [str(r[k]) for k in KEYS] + [str(r["n_seeds"])]
        for c in cols:
            m, sd = r[f"{c}_mean"], r[f"{c}_std"]
            cells.append(_fmt(m) + (f" ± {_fmt(sd)}" if _fmt(sd) else ""))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def markdown(summary, refs: list[dict], incomplete: list[dict], command: str | None = None) -> str:
    """The headline table (mean ± std over seeds, arrows = better direction), the references and incomplete runs."""
    reg = all_metrics()
    present = {c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")}
    cols = [c for c in HEADLINE if c in present]

    def head(c):
        d = reg[c].direction if c in reg else ("lower" if c.startswith("cost_") else "")
        return f"{c} {ARROWS.get(d, '')}".strip()

    lines = ["# Leaderboard", ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    lines += [
        "Mean ± sample std across seeds. Arrows: ↑ higher is better, ↓ lower is better, ≈oracle closest to the "
        "retain-only oracle is best. Every metric of every run is in `leaderboard.csv` (per run) and "
        "`leaderboard_summary.csv` (mean/std).",
        "",
    ]
    lines.append("| " + " | ".join([*KEYS, "seeds", *map(head, cols)]) + " |")
    lines.append("|" + " --- |" * (len(KEYS) + 1 + len(cols)))
    lines += _summary_rows(summary, cols)
    if refs:
        lines += [
            "",
            "## Reference points",
            "",
            "The target before unlearning and the retain-only oracle "
            "(the oracle against itself: forget quality 1 and privleak 0 by definition).",
            "",
        ]
        rcols = [c for c in HEADLINE if any(c in r for r in refs) and not c.startswith("cost_")]
        lines.append("| " + " | ".join(["benchmark", "model", "split", "model evaluated", *map(head, rcols)]) + " |")
        lines.append("|" + " --- |" * (4 + len(rcols)))
        for r in refs:
            vals = [_fmt(_ref(r, c)) for c in rcols]
            lines.append("| " + " | ".join([r["benchmark"], r["model"], r["split"], r["which"], *vals]) + " |")
    lines += ["", "## Incomplete or failed runs", ""]
    if incomplete:
        lines += ["| benchmark | model | method | split | seed | state | reason |", "|" + " --- |" * 7]
        for r in incomplete:
            reason = str(r["reason"]).replace("|", "/").replace("\n", " ")[:200]
            lines.append(
                f"| {r['benchmark']} | {r['model']} | {r['method']} | {r['split']} | {r['seed']} | "
                f"{r['state']} | {reason} |"
            )
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def diffusion_markdown(summary, command: str | None = None) -> str:
    """The diffusion erasure table: `DIFFUSION_HEADLINE` as mean ± std over seeds, arrows from the registry."""
    reg = all_metrics()
    present = {c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")}
    cols = [c for c in DIFFUSION_HEADLINE if c in present]

    def head(c):
        return f"{c} {ARROWS.get(reg[c].direction, '') if c in reg else ''}".strip()

    lines = ["# Diffusion erasure leaderboard", ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    lines += ["Mean ± sample std across seeds; split = the erased concept. Every metric is in "
              "`leaderboard_diffusion.csv` / `leaderboard_diffusion_summary.csv`.", ""]  # fmt: skip
    lines.append("| " + " | ".join(["benchmark", "model", "method", "concept", "seeds", *map(head, cols)]) + " |")
    lines.append("|" + " --- |" * (5 + len(cols)))
    lines += _summary_rows(summary, cols)
    return "\n".join(lines) + "\n"


def plot(summary, refs: list[dict], path: Path) -> None:
    """Forget quality (log) vs model utility: one panel per benchmark/model, a point per method and split (mean, with
    std error bars), colour = method, marker = split; the target (black) and the oracle (gold) as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["benchmark"], r["model"]) for _, r in summary.iterrows()})
    if not groups:
        groups = sorted({(r["benchmark"], r["model"]) for r in refs}) or [("", "")]
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 5), squeeze=False)
    methods = sorted(set(summary["method"])) if len(summary) else []
    palette = [plt.get_cmap("tab10")(i) for i in (0, 1, 3, 4, 5, 6, 9, 2, 7, 8)]  # gold/black are the references
    colour = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    markers = {"forget01": "o", "forget05": "s", "forget10": "^"}
    for ax, (bench, model) in zip(axes[0], groups):
        sub = summary[(summary["benchmark"] == bench) & (summary["model"] == model)] if len(summary) else summary
        for _, r in sub.iterrows():
            x, y = r.get("model_utility_mean", math.nan), r.get("forget_quality_mean", math.nan)
            if x is None or y is None or math.isnan(x) or math.isnan(y):
                continue
            xe, ye = r.get("model_utility_std", math.nan), r.get("forget_quality_std", math.nan)
            ax.errorbar(
                x,
                max(y, FQ_FLOOR),
                xerr=None if math.isnan(xe) else xe,
                yerr=None if math.isnan(ye) else [[min(ye, max(y, FQ_FLOOR) - FQ_FLOOR)], [ye]],
                fmt=markers.get(r["split"], "D"),
                color=colour[r["method"]],
                ms=7,
                capsize=2,
                alpha=0.9,
            )
        ref_splits = sorted({r["split"] for r in refs})
        for ref in refs:
            if (ref["benchmark"], ref["model"]) != (bench, model):
                continue
            x, y = ref.get("model_utility"), _ref(ref, "forget_quality")
            if x is None or y is None or math.isnan(x) or math.isnan(y):
                continue
            c = REF_COLOURS[ref["which"]]
            ax.scatter([x], [max(y, FQ_FLOOR)], marker="*", s=240, color=c, edgecolor="black", linewidth=0.6, zorder=5)
            k = ref_splits.index(ref["split"])  # stagger the labels of the splits' references
            ax.annotate(
                f"{ref['which']} ({ref['split']})",
                (x, max(y, FQ_FLOOR)),
                textcoords="offset points",
                xytext=(-8, -14 - 9 * k if ref["which"] == "target" else 8 + 9 * k),
                fontsize=7,
                ha="right",
            )
        ax.margins(x=0.12, y=0.15)
        ax.set_yscale("log")
        ax.set_xlabel("model utility  (higher is better)")
        ax.set_ylabel("forget quality, KS p-value vs oracle  (log; higher is better)")
        ax.set_title(f"{bench} / {model}".strip(" /"))
        ax.grid(True, which="both", alpha=0.25)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour[m], marker="o", ls="", label=m) for m in methods]
    splits = sorted(set(summary["split"])) if len(summary) else []
    handles += [Line2D([], [], color="grey", marker=markers.get(s, "D"), ls="", label=s) for s in splits]
    handles += [
        Line2D(
            [],
            [],
            color=REF_COLOURS["target"],
            marker="*",
            ls="",
            ms=13,
            mec="black",
            label="target (before unlearning)",
        ),
        Line2D([], [], color=REF_COLOURS["oracle"], marker="*", ls="", ms=13, mec="black", label="retain-only oracle"),
    ]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="best", framealpha=0.8)
    fig.suptitle(
        f"Forget quality vs model utility (mean ± std over seeds; forget quality < {FQ_FLOOR:g} drawn at it)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)


def _write_csv(df, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))


def write_leaderboard(
    runs: str | Path,
    out: str | Path,
    references: list[dict] | None = None,
    with_references: bool = True,
    command: str | None = None,
    log=print,
) -> dict[str, Path]:
    """Collect ``runs`` and write every leaderboard output into ``out``.

    Args:
        references: target / oracle rows to use (``{"benchmark", "model", "split", "which", <metrics>}``); None
            computes them from the cached evaluations when ``with_references``.
        command: the command line that produced the results, recorded in the markdown.

    Returns:
        ``{"csv", "summary", "references", "incomplete", "md", "png"}`` -> paths written, plus
        ``{"diffusion_csv", "diffusion_summary", "diffusion_md"}`` when the tree holds finished diffusion runs.
    """
    import pandas as pd

    rows, incomplete = collect(runs)
    diffusion = [r for r in rows if r.get("kind") == "diffusion"]
    rows = [r for r in rows if r.get("kind") != "diffusion"]
    if not rows and not incomplete and not diffusion:
        raise UnlearnError(f"no runs found under {runs} (expected <benchmark>/<model>/<method>/<split>/seed<k>/)")
    if references is None:
        references = compute_references(runs, log=log) if (with_references and rows) else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cols = metric_columns(rows)
    rows = sorted(rows, key=lambda r: tuple(str(r[k]) for k in KEYS) + (r["seed"],))
    runs_df = pd.DataFrame(rows, columns=[*KEYS, "seed", *cols])
    summary = summarize(rows)
    rcols = metric_columns(references)
    refs_df = pd.DataFrame(references, columns=["benchmark", "model", "split", "which", *rcols])
    inc_df = pd.DataFrame(incomplete, columns=[*KEYS, "seed", "state", "reason", "path"])
    paths = {
        "csv": out / "leaderboard.csv",
        "summary": out / "leaderboard_summary.csv",
        "references": out / "leaderboard_references.csv",
        "incomplete": out / "leaderboard_incomplete.csv",
        "md": out / "leaderboard.md",
        "png": out / "leaderboard.png",
    }
    _write_csv(runs_df, paths["csv"])
    _write_csv(summary, paths["summary"])
    _write_csv(refs_df, paths["references"])
    _write_csv(inc_df, paths["incomplete"])
    atomic_write_text(paths["md"], markdown(summary, references, incomplete, command))
    plot(summary, references, paths["png"])
    if diffusion:
        dcols = metric_columns(diffusion)
        diffusion = sorted(diffusion, key=lambda r: tuple(str(r[k]) for k in KEYS) + (r["seed"],))
        dsum = summarize(diffusion)
        paths |= {"diffusion_csv": out / "leaderboard_diffusion.csv",
                  "diffusion_summary": out / "leaderboard_diffusion_summary.csv",
                  "diffusion_md": out / "leaderboard_diffusion.md"}  # fmt: skip
        _write_csv(pd.DataFrame(diffusion, columns=[*KEYS, "seed", *dcols]), paths["diffusion_csv"])
        _write_csv(dsum, paths["diffusion_summary"])
        atomic_write_text(paths["diffusion_md"], diffusion_markdown(dsum, command))
    return paths
