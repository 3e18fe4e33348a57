"""The diffusion audit on the run lifecycle: `unlearn.audit.diffusion.diffusion_claims` judged, then the same reports
as the LLM audit (report.json / report.md / report.html / recovery.png) written directly into ``--out``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from unlearn.audit.verdict import overall
from unlearn.errors import UnlearnError
from unlearn.store import read_json
from unlearn.workflow import claim_run, versions


@dataclass
class DiffusionAuditArgs:
    original: str = "tinyshapes"
    candidate: str = ""
    concept: str | None = None
    out: str = "report"
    seed: int = 0  # sampling noise (identical for candidate and control)
    images_per_prompt: int = 2  # the margins are sized at 2 (n = 24 images per concept)
    sample_steps: int = 20
    overrides: list = field(default_factory=list)
    force: bool = False
    reuse: bool = False
    progress: bool = True


def run_diffusion_audit(a: DiffusionAuditArgs, log=print) -> tuple[Path, dict]:
    from unlearn.audit import checks
    from unlearn.audit.diffusion import diffusion_claims
    from unlearn.audit.report import write_reports

    if a.force and a.reuse:
        raise UnlearnError("--force and --reuse contradict each other; pass one")
    if not a.concept:
        raise UnlearnError("a diffusion audit needs --concept (the concept the candidate should have erased)")
    if not a.candidate:
        raise UnlearnError("--candidate is required (a diffusers pipeline directory)")
    if a.overrides:
        raise UnlearnError(f"--set {a.overrides[0][0]}: a diffusion audit has no --set keys (use --seed, "
                           "--images-per-prompt, --sample-steps)")  # fmt: skip
    if a.images_per_prompt < 1 or a.sample_steps < 1:
        raise UnlearnError("--images-per-prompt and --sample-steps must be >= 1")
    cand = Path(a.candidate)
    if not cand.is_dir():
        raise UnlearnError(f"--candidate {a.candidate}: not a diffusers pipeline directory")
    digests = {"candidate": checks.file_digests(cand) if cand.is_dir() else None}
    if Path(a.original).is_dir():
        digests["original"] = checks.file_digests(a.original)
    resolved = {"workflow": "audit", "kind": "diffusion", "original": a.original, "candidate": a.candidate,
                "concept": a.concept, "seed": a.seed, "images_per_prompt": a.images_per_prompt,
                "sample_steps": a.sample_steps, "candidate_files": digests["candidate"]}  # fmt: skip
    t0 = time.time()
    run = claim_run(a.out, resolved, force=a.force, reuse=a.reuse, log=log)
    rdir = Path(a.out)
    if run.reused:
        return rdir, read_json(rdir / "report.json")
    with run:
        run.start()
        res = diffusion_claims(a.original, a.candidate, a.concept, seed=a.seed, images_per_prompt=a.images_per_prompt,
                               sample_steps=a.sample_steps, progress=a.progress)  # fmt: skip
        claims = res["claims"]
        report = {
            "schema_version": 1,
            "kind": "diffusion",
            "verdict": overall(claims),
            "claims": [c.to_json() for c in claims],
            "control": {k: res["control"][k] for k in ("kind", "path", "why")},
            "warnings": [],
            "metrics": res["metrics"],
            "settings": {
                "concept": a.concept,
                "seed": a.seed,
                "images_per_prompt": a.images_per_prompt,
                "sample_steps": a.sample_steps,
            },  # fmt: skip
            "provenance": {
                "versions": versions(),
                "digests": digests,
                "seeds": {"sampling": a.seed},
                "inputs": {"original": a.original, "candidate": a.candidate, "concept": a.concept},
                "control_weights_hash": res["control"].get("weights_hash"),
            },  # fmt: skip
            "stages": {**res["stages"], "total": time.time() - t0},
        }
        if a.images_per_prompt < 2:
            report["warnings"].append("images_per_prompt < 2: the margins were sized at 2 images per prompt (n = 24 "
                                      "per concept); with fewer images the binomial noise exceeds them")  # fmt: skip
        write_reports(rdir, report)
        run.finish({"verdict": report["verdict"], **{f"claim_{c.name}": c.verdict for c in claims}})
    return rdir, report


__all__ = ["DiffusionAuditArgs", "run_diffusion_audit"]
