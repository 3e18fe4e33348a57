"""The erase workflow: load a diffusion target, erase a concept with one method, evaluate, write the run dir.

``runs/tinyshapes/<model>/<method>/<concept>/seed<k>/``: config.json, metrics.json (flat, ``schema_version`` 1),
examples.jsonl (one row per generated image: prompt, asked labels, classifier reading, set), grid.png (the
same prompts and noise before / after), rounds.jsonl for RECE (metrics after UCE = round 0 and every round).
Composes targets/, methods/ and metrics/; the edit is timed apart from sampling and evaluation.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unlearn.errors import UnlearnError, unknown_name
from unlearn.store import SCHEMA_VERSION, atomic_write_json, atomic_write_jsonl, is_finished, run_dir, write_status

ERASE_METHODS = ("none", "uce", "rece", "ga", "npo")


@dataclass
class EraseConfig:
    model: str = "tinyshapes"  # embedded name or a diffusers pipeline directory
    method: str = "rece"  # none | uce | rece | ga | npo
    concept: str = "circle"  # TinyShapes: a shape, colour or background name
    seed: int = 0  # sampling noise and gradient-method seed
    out: str = "runs"  # runs root
    images_per_prompt: int = 2  # evaluation images per (shape, colour, background) prompt
    sample_steps: int = 20  # DDIM steps
    guidance: float = 1.5  # classifier-free guidance scale (the TinyShapes quality bar is measured at 1.5)
    attack_reg: float = 1e-3  # λ of the closed-form adversarial-embedding attack
    erase_set: str = "concept"  # closed-form edits: "concept" = the word alone (UCE/RECE papers); "phrases" = the
    #                             word in short caption phrases (data.tinyshapes.erase_phrases), never the eval prompts
    overrides: dict = field(default_factory=dict)  # method config fields, from `--set key=value`
    force: bool = False  # re-run a finished run
    progress: bool = True


def method_config(method: str, overrides: dict):
    """The method's config dataclass with ``overrides`` applied (values cast to the field's type)."""
    from unlearn.methods.diffusion_grad import DiffusionGradConfig
    from unlearn.methods.rece import RECEConfig
    from unlearn.methods.uce import UCEConfig

    if method not in ERASE_METHODS:
        raise unknown_name("erase method", method, ERASE_METHODS)
    cfg = {
        "uce": UCEConfig(),
        "rece": RECEConfig(),
        "ga": DiffusionGradConfig("ga"),
        "npo": DiffusionGradConfig("npo"),
    }
    cfg = cfg.get(method)
    for key, raw in overrides.items():
        names = [f.name for f in dataclasses.fields(cfg)] if cfg is not None else []
        if key not in names:
            raise unknown_name(f"{method} option", key, names)
        cur = getattr(cfg, key)
        kind = type(cur) if cur is not None else float
        try:
            val = (str(raw).lower() in ("1", "true", "yes")) if kind is bool else kind(raw)
        except ValueError:
            raise UnlearnError(f"{method} option {key}={raw!r}: expected {kind.__name__}") from None
        setattr(cfg, key, val)
    return cfg


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _prompt_sets(concept: str, images_per_prompt: int) -> dict[str, list[dict]]:
    from unlearn.data.tinyshapes import eval_prompts

    ev = [dict(r, set="eval") for r in eval_prompts() for _ in range(images_per_prompt)]
    para = [dict(r, set="paraphrase") for r in eval_prompts(concept, paraphrase=True)]
    return {"eval": ev, "paraphrase": para, "forget": [r for r in ev if concept in r.values()]}


def evaluate(target, orig_unet, W0, concept: str, cfg: EraseConfig) -> tuple[dict, list[dict]]:
    """All erasure metrics of the current ``target`` (original layers W0, original UNet for CKA)."""
    from unlearn.data.tinyshapes import BACKGROUNDS, COLOURS, SHAPES, concept_kind
    from unlearn.methods.rece import kv_weights
    from unlearn.metrics.diffusion import adversarial_attack, classify, erasure_metrics, score, unet_activations
    from unlearn.metrics.representation import linear_cka
    from unlearn.targets.diffusion import encode_prompts, sample

    names = {"shape": list(SHAPES), "colour": list(COLOURS), "background": list(BACKGROUNDS)}
    sets = _prompt_sets(concept, cfg.images_per_prompt)
    kw = dict(seed=cfg.seed, steps=cfg.sample_steps, guidance=cfg.guidance)
    examples = []
    cond_f = encode_prompts(target, [r["prompt"] for r in sets["forget"]])
    adv = adversarial_attack(kv_weights(target.unet), W0, cond_f, cfg.attack_reg)
    jobs = [
        (sets["eval"], None),
        (sets["paraphrase"], None),
        ([dict(r, set="adversarial") for r in sets["forget"]], adv),
    ]
    for rows, cond in jobs:
        cond = encode_prompts(target, [r["prompt"] for r in rows]) if cond is None else cond
        imgs = sample(target, cond, **kw)
        examples += score(rows, classify(target.classifier, imgs, names))
    metrics = erasure_metrics(examples, concept, concept_kind(concept))
    cond_r = encode_prompts(target, [r["prompt"] for r in sets["eval"] if concept not in r.values()])
    for key, cond in (("cka_forget", cond_f), ("cka_retain", cond_r)):
        metrics[key] = linear_cka(
            unet_activations(orig_unet, cond, cfg.seed), unet_activations(target.unet, cond, cfg.seed)
        )
    return metrics, examples


def apply_method(target, method: str, mcfg, concept: str, cfg: EraseConfig, on_round=None) -> dict:
    """Run one erase method in place on ``target``; returns its info dict (``edit_seconds`` always set)."""
    from unlearn.data.tinyshapes import erase_phrases, eval_prompts, preserve_prompts

    preserve = preserve_prompts(concept, phrases=cfg.erase_set == "phrases")
    if cfg.erase_set not in ("concept", "phrases"):
        raise unknown_name("erase set", cfg.erase_set, ("concept", "phrases"))
    erase = [concept] if cfg.erase_set == "concept" else erase_phrases(concept)
    if method == "none":
        return {"edit_seconds": 0.0}
    if method == "uce":
        from unlearn.methods import uce

        return uce.apply(target, erase, mcfg, preserve)
    if method == "rece":
        from unlearn.methods import rece

        return rece.apply(target, erase, mcfg, preserve, on_round=on_round)
    from unlearn.methods import diffusion_grad
    from unlearn.targets.diffusion import encode_prompts, sample

    def pairs(rows):  # (x0 drawn by the original model, its prompt's embedding), 4 per prompt
        cond = encode_prompts(target, [r["prompt"] for r in rows for _ in range(4)])
        return sample(
            target, cond, seed=cfg.seed + 1, steps=cfg.sample_steps, guidance=cfg.guidance, latents=True
        ), cond

    forget = pairs(eval_prompts(concept))
    retain = pairs([r for r in eval_prompts() if concept not in r.values()])
    return diffusion_grad.apply(target, forget, retain, mcfg, progress=cfg.progress)


def grid_prompts(concept: str) -> list[str]:
    from unlearn.data.tinyshapes import COLOURS, SHAPES

    return [f"a {c} {s} on a black background" for s in SHAPES for c in list(COLOURS)[:2]]


def run_erase(cfg: EraseConfig, log=print) -> Path:
    """Erase ``cfg.concept`` from ``cfg.model`` with ``cfg.method``, evaluate, write the run dir; returns it."""
    from unlearn.data.tinyshapes import concept_kind
    from unlearn.methods.rece import kv_weights
    from unlearn.targets.diffusion import EMBEDDED, encode_prompts, load_target, sample, save_grid

    mcfg = method_config(cfg.method, cfg.overrides)
    concept_kind(cfg.concept)
    target = load_target(cfg.model)
    if target.classifier is None:
        raise UnlearnError(f"{cfg.model}: erasure metrics need a concept classifier (TinyShapes ships one); "
                           "Stable Diffusion pipelines can be edited through unlearn.methods directly")  # fmt: skip
    model_name = cfg.model if cfg.model in EMBEDDED else str(target.path)
    method_name = cfg.method if cfg.erase_set == "concept" else f"{cfg.method}-{cfg.erase_set}"
    rdir = run_dir(cfg.out, "tinyshapes", model_name, method_name, cfg.concept, cfg.seed)
    if is_finished(rdir) and not cfg.force:
        log(f"already finished: {rdir} (use --force to re-run)")
        return rdir
    write_status(rdir, "running", started=time.time())
    torch.manual_seed(cfg.seed)
    orig_unet, W0 = copy.deepcopy(target.unet), kv_weights(target.unet)
    rounds = []

    def on_round(r, info):
        m, _ = evaluate(target, orig_unet, W0, cfg.concept, cfg)
        edit_s = info["uce"]["edit_seconds"] + sum(x["edit_seconds"] for x in info.get("rounds", []))
        rounds.append({"round": r, **m, "edit_seconds": edit_s})
        log(f"round {r}: erasure {m['erasure_rate']:.3f}, adversarial ASR {m['adversarial_attack_success']:.3f}")

    info = apply_method(target, cfg.method, mcfg, cfg.concept, cfg, on_round=on_round)
    metrics, examples = evaluate(target, orig_unet, W0, cfg.concept, cfg)
    metrics = {"schema_version": SCHEMA_VERSION, **metrics, "edit_seconds": info["edit_seconds"]}
    cond = encode_prompts(target, grid_prompts(cfg.concept))
    kw = dict(seed=cfg.seed, steps=cfg.sample_steps, guidance=cfg.guidance)
    after = sample(target, cond, **kw)
    before = sample(dataclasses.replace(target, unet=orig_unet), cond, **kw)
    save_grid(torch.cat([before, after]), rdir / "grid.png", nrow=len(cond), labels=["original", cfg.method])
    atomic_write_json(rdir / "config.json", {
        "benchmark": "tinyshapes", "model": cfg.model, "model_path": target.path, "method": cfg.method,
        "concept": cfg.concept, "seed": cfg.seed, "erase": dataclasses.asdict(cfg),
        "method_config": dataclasses.asdict(mcfg) if mcfg is not None else {}, "model_meta": target.meta,
        "versions": {"torch": torch.__version__}, "git_sha": _git_sha(),
    })  # fmt: skip
    if rounds:
        atomic_write_jsonl(rdir / "rounds.jsonl", rounds)
    if "trace" in info:
        atomic_write_jsonl(rdir / "trace.jsonl", info["trace"])
    atomic_write_jsonl(rdir / "examples.jsonl", examples)
    atomic_write_json(rdir / "metrics.json", metrics)
    write_status(rdir, "finished", finished=time.time())
    return rdir
