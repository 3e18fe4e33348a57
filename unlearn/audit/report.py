"""Audit reports written directly into ``--out``: report.json (the schema below), report.md, a self-contained
report.html (figures inlined as PNG data URIs, no script, no external resource) and the figures as PNG files.

report.json (``schema_version`` 1), validated by `validate`:

* ``verdict``: ``not_forgotten`` | ``suppressed`` | ``forgotten`` — the minimum over claims;
* ``claims``: [{``name``, ``verdict``, ``reason``, ``evidence``: [{``metric``, ``candidate``, ``control``,
  ``threshold``, ``n``, ``role``, ``sign``, ``excess``, ``note``}], ``details``}];
* ``control``: {``kind``: ``oracle`` | ``original``, ``path``, ``why``};
* ``provenance``: versions, sha256 of every weight / config / tokenizer file of each model, prompt format, seeds,
  data hash, the inputs as given;
* ``warnings``, ``stages`` (seconds per stage), ``settings``, ``margins``, ``metrics`` and ``attacks`` (summaries
  for the candidate and the control), ``kind`` (``llm`` | ``diffusion``).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from unlearn.audit.verdict import ROLES, VERDICTS
from unlearn.store import atomic_write_json, atomic_write_text

REPORT_FILES = ("report.json", "report.md", "report.html", "recovery.png")
_REQUIRED = {"schema_version": int, "kind": str, "verdict": str, "claims": list, "control": dict, "provenance": dict}
_EVIDENCE = ("metric", "candidate", "control", "threshold", "n")


def validate(report: dict) -> None:
    """Raise ValueError naming the first field that breaks the documented schema."""
    for k, tp in _REQUIRED.items():
        if k not in report:
            raise ValueError(f"report.json: missing {k!r}")
        if not isinstance(report[k], tp):
            raise ValueError(f"report.json: {k!r} must be {tp.__name__}")
    if report["verdict"] not in VERDICTS:
        raise ValueError(f"report.json: verdict {report['verdict']!r} not in {VERDICTS}")
    if not report["claims"]:
        raise ValueError("report.json: no claims")
    for c in report["claims"]:
        for k in ("name", "verdict", "evidence", "reason"):
            if k not in c:
                raise ValueError(f"report.json: claim without {k!r}")
        if c["verdict"] not in VERDICTS:
            raise ValueError(f"report.json: claim {c['name']}: verdict {c['verdict']!r}")
        for e in c["evidence"]:
            for k in _EVIDENCE:
                if k not in e:
                    raise ValueError(f"report.json: claim {c['name']}: evidence without {k!r}")
            if e.get("role", "recovery") not in ROLES:
                raise ValueError(f"report.json: claim {c['name']}: role {e.get('role')!r}")
    order = [VERDICTS.index(c["verdict"]) for c in report["claims"]]
    if VERDICTS.index(report["verdict"]) != min(order):
        raise ValueError("report.json: the verdict is not the minimum over claims")
    if report["control"].get("kind") not in ("oracle", "original"):
        raise ValueError("report.json: control.kind must be oracle or original")


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _rows(claim: dict, seen: set) -> list[dict]:
    """A claim's evidence without the behaviour rows already shown under an earlier claim."""
    out = []
    for e in claim["evidence"]:
        key = (e["metric"], e.get("role"))
        if e.get("role") == "behaviour" and claim["name"] != "behaviour" and key in seen:
            continue
        seen.add(key)
        out.append(e)
    return out


# ----------------------------------------------------------------------------------------------- figures
def recovery_figure(report: dict, path: Path) -> None:
    """Per claim, candidate vs control (or chance level) for each statistic, the threshold as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    seen: set = set()
    for c in report["claims"]:
        for e in _rows(c, seen):
            if e["candidate"] is None or e["control"] is None:
                continue
            rows.append((c["name"], e))
    if not rows:
        rows = []
    h = max(2.5, 0.32 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(8.5, h))
    colour = {"not_forgotten": "#c0392b", "suppressed": "#e67e22", "forgotten": "#27ae60"}
    verdict_of = {c["name"]: c["verdict"] for c in report["claims"]}
    for i, (name, e) in enumerate(rows):
        y = len(rows) - 1 - i
        ax.barh(y + 0.18, e["candidate"], height=0.34, color=colour[verdict_of[name]], label=None)
        ax.barh(y - 0.18, e["control"], height=0.34, color="#7f8c8d")
        if e.get("role") != "behaviour" or report["control"]["kind"] == "oracle":
            edge = e["control"] + e.get("sign", 1) * e["threshold"]
            ax.plot([edge, edge], [y - 0.4, y + 0.4], color="black", lw=1)
    ax.set_yticks(range(len(rows)))
    labels = [f"{n}: {e['metric']}" + (" (level)" if e.get("role") == "control_free" else "") for n, e in rows]
    ax.set_yticklabels(labels[::-1], fontsize=7)
    ax.set_xlabel("value (coloured: candidate, by its claim's verdict; grey: control or chance level; "
                  "tick: control + margin)", fontsize=7)  # fmt: skip
    ax.set_title(f"Audit evidence - verdict: {report['verdict']} (control: {report['control']['kind']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _data_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


# ----------------------------------------------------------------------------------------------- text
HOW_TO_READ = """\
**How to read this report.** The audit asks one question: does the candidate still hold the facts it was asked to
forget? It compares the candidate with a *control*: a model that never learned those facts (the retain-only
oracle), or, when none exists, the original model before unlearning. Each *claim* below is one family of evidence:

* **behaviour**: does the candidate answer the forget questions more often than the control?
* **mia**: can a membership-inference attack still tell the forget data from data never trained on?
* **internal**: do the candidate's hidden states still encode the answers (a linear probe, nearest neighbours) or
  look like the original's (CKA)?
* **relearn**: after a short fine-tune on half of each forgotten person's facts, does it recall the *other*
  half, which it was never shown again? A model that truly forgot cannot; a model that only hid the answers can.
* **in_context**: given the person's other facts in the prompt (never the answer), does it fill in the answer?
* **quantization**: after rounding its weights to 8 or 4 bits, do the answers come back?
* **prompts**: paraphrased questions, adversarial framings and reverse questions.

Each claim reads **not_forgotten** (behaviour above the control's level), **suppressed** (behaviour at the
control's level, but an attack or an internal measure recovers the facts above the control), or **forgotten**
(nothing above the control). The overall verdict is the *worst* claim. A number counts only when it exceeds the
control by the stated margin; the margins were fixed in advance on models known to have forgotten, never tuned on a
candidate. Without an oracle, a claim can only reach *forgotten* when the candidate stays at chance level.
"""

HOW_TO_READ_DIFFUSION = """\
**How to read this report.** The audit asks one question: does the candidate image model still draw the concept it
was asked to erase? There is no model trained without the concept to compare with, so the *control* is the
original, evaluated with the same prompts, noise and classifier (the original's classifier judges both). Each
*claim* below is one family of evidence:

* **behaviour**: on prompts that ask for the concept, how often does the classifier still see it? It must drop
  below the original's rate by the margin, and down to the *chance level* (how often the concept appears when the
  prompt asks for something else of the same kind).
* **paraphrase**: synonyms and reordered prompts for the concept: does it come back?
* **adversarial**: a text embedding optimised in closed form to bring the concept back: does it?

Each claim reads **not_forgotten** (the concept rate did not drop), **suppressed** (it dropped, but the concept
still appears above the chance level, directly or under an attack), or **forgotten** (at chance level everywhere).
The overall verdict is the *worst* claim. Margins were fixed in advance from the binomial noise of the number of
images, never tuned on a candidate.
"""


def _how_to_read(report: dict) -> str:
    return HOW_TO_READ_DIFFUSION if report.get("kind") == "diffusion" else HOW_TO_READ


def markdown(report: dict) -> str:
    L = [f"# Unlearning audit: **{report['verdict']}**", ""]
    ctrl = report["control"]
    L += [f"Control: **{ctrl['kind']}** (`{ctrl.get('path')}`): {ctrl.get('why', '')}", ""]
    for w in report.get("warnings", []):
        L.append(f"> **Warning:** {w}")
    if report.get("warnings"):
        L.append("")
    L += ["| claim | verdict | reason |", "| --- | --- | --- |"]
    L += [f"| {c['name']} | **{c['verdict']}** | {c['reason']} |" for c in report["claims"]]
    L += ["", "## Evidence", "", "| claim | statistic | role | candidate | control / level | margin | n |",
          "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    seen: set = set()
    for c in report["claims"]:
        for e in _rows(c, seen):
            L.append(f"| {c['name']} | {e['metric']} | {e.get('role', '')} | {_fmt(e['candidate'])} | "
                     f"{_fmt(e['control'])} | {_fmt(e['threshold'])} | {e['n']} |")  # fmt: skip
    L += ["", "![evidence](recovery.png)", ""]
    if (report.get("figures") or {}).get("layers"):
        L += ["![per-layer CKA and probe accuracy](layers.png)", ""]
    L += ["## How to read this report", "", _how_to_read(report), "## Provenance", ""]
    prov = report["provenance"]
    for k, v in (prov.get("inputs") or {}).items():
        L.append(f"- {k}: `{v}`")
    if prov.get("prompt_format"):
        L.append(f"- prompt format: `{prov.get('prompt_format')}`")
    L.append(f"- seeds: `{prov.get('seeds')}`; data hash `{prov.get('data_hash')}`")
    L.append(f"- versions: `{prov.get('versions')}`")
    for who, files in (prov.get("digests") or {}).items():
        if files:
            L.append(f"- {who}: " + ", ".join(f"`{f}` sha256 `{h[:16]}`" for f, h in sorted(files.items())))
    if prov.get("ignored_pickles"):
        L.append(f"- ignored pickle files (never loaded): {', '.join(prov['ignored_pickles'])}")
    L += ["", "## Time by stage (s)", ""]
    L += [f"- {k}: {v:.1f}" for k, v in (report.get("stages") or {}).items()]
    return "\n".join(L) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
.v{font-weight:bold;padding:2px 8px;border-radius:4px;color:#fff}.not_forgotten{background:#c0392b}
.suppressed{background:#e67e22}.forgotten{background:#27ae60}
.warn{background:#fff3cd;padding:8px;border:1px solid #e0c36a}
img{max-width:100%}code{font-size:12px}.how{background:#f4f6f8;padding:1em;border-radius:6px}"""


def _md_inline(text: str) -> str:
    """The few markdown marks HOW_TO_READ uses (bold, italics), escaped first."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"\*(.+?)\*", r"<i>\1</i>", t)


def html_report(report: dict, rdir: Path) -> str:
    e = html.escape
    v = report["verdict"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Unlearning audit: {e(v)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Unlearning audit: <span class='v {e(v)}'>{e(v)}</span></h1>"]  # fmt: skip
    ctrl = report["control"]
    parts.append(f"<p>Control: <b>{e(ctrl['kind'])}</b> (<code>{e(str(ctrl.get('path')))}</code>): "
                 f"{e(ctrl.get('why', ''))}</p>")  # fmt: skip
    for w in report.get("warnings", []):
        parts.append(f"<p class='warn'>Warning: {e(w)}</p>")
    parts.append("<h2>Claims</h2><table><tr><th>claim</th><th>verdict</th><th>reason</th></tr>")
    for c in report["claims"]:
        parts.append(f"<tr><td>{e(c['name'])}</td><td><span class='v {e(c['verdict'])}'>{e(c['verdict'])}</span>"
                     f"</td><td>{e(c['reason'])}</td></tr>")  # fmt: skip
    parts.append("</table>")
    fig = _data_uri(rdir / "recovery.png")
    if fig:
        parts.append(f"<h2>Evidence against the control</h2><img alt='evidence' src='{fig}'>")
    parts.append("<table><tr><th>claim</th><th>statistic</th><th>role</th><th>candidate</th><th>control / level"
                 "</th><th>margin</th><th>n</th></tr>")  # fmt: skip
    seen: set = set()
    for c in report["claims"]:
        for ev in _rows(c, seen):
            parts.append(f"<tr><td>{e(c['name'])}</td><td>{e(ev['metric'])}</td><td>{e(str(ev.get('role', '')))}"
                         f"</td><td>{_fmt(ev['candidate'])}</td><td>{_fmt(ev['control'])}</td>"
                         f"<td>{_fmt(ev['threshold'])}</td><td>{ev['n']}</td></tr>")  # fmt: skip
    parts.append("</table>")
    lay = _data_uri(rdir / "layers.png")
    if lay:
        parts.append(f"<h2>Per-layer representation similarity and probe accuracy</h2><img alt='layers' src='{lay}'>")
    parts.append("<h2>How to read this report</h2><div class='how'>")
    for para in _how_to_read(report).split("\n\n"):
        lines = para.strip().splitlines()
        if lines and lines[0].startswith("* "):
            items: list[str] = []
            for ln in lines:  # a bullet starts a line with "* "; indented lines continue it
                if ln.startswith("* "):
                    items.append(ln[2:].strip())
                else:
                    items[-1] += " " + ln.strip()
            parts.append("<ul>" + "".join(f"<li>{_md_inline(i)}</li>" for i in items) + "</ul>")
        else:
            parts.append(f"<p>{_md_inline(' '.join(lines))}</p>")
    parts.append("</div><h2>Provenance</h2><ul>")
    prov = report["provenance"]
    for k, val in (prov.get("inputs") or {}).items():
        parts.append(f"<li>{e(k)}: <code>{e(str(val))}</code></li>")
    if prov.get("prompt_format"):
        parts.append(f"<li>prompt format: <code>{e(str(prov.get('prompt_format')))}</code></li>")
    parts.append(f"<li>versions: <code>{e(str(prov.get('versions')))}</code></li>")
    for who, files in (prov.get("digests") or {}).items():
        if files:
            fl = ", ".join(f"{e(f)} <code>{e(h[:16])}</code>" for f, h in sorted(files.items()))
            parts.append(f"<li>{e(who)} (sha256): {fl}</li>")
    if prov.get("ignored_pickles"):
        parts.append(f"<li>ignored pickle files (never loaded): {e(', '.join(prov['ignored_pickles']))}</li>")
    parts.append("</ul><h2>Time by stage</h2><ul>")
    parts += [f"<li>{e(k)}: {v:.1f} s</li>" for k, v in (report.get("stages") or {}).items()]
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def write_reports(rdir: Path, report: dict) -> None:
    """report.json (validated first), recovery.png, report.md, report.html: all atomic."""
    rdir = Path(rdir)
    report.setdefault("figures", {})
    if (rdir / "layers.png").is_file():
        report["figures"]["layers"] = "layers.png"
    report["figures"]["recovery"] = "recovery.png"
    validate(report)
    buf = rdir / ".recovery.png.tmp"
    recovery_figure(report, buf)
    buf.replace(rdir / "recovery.png")
    atomic_write_json(rdir / "report.json", report)
    atomic_write_text(rdir / "report.md", markdown(report))
    atomic_write_text(rdir / "report.html", html_report(report, rdir))


__all__ = [
    "REPORT_FILES",
    "validate",
    "write_reports",
    "markdown",
    "html_report",
    "recovery_figure",
    "HOW_TO_READ",
    "HOW_TO_READ_DIFFUSION",
]
