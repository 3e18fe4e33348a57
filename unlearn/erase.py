"""The erase and diffusion-eval workflows: erase a concept from a diffusion target with one registered method (or
judge any checkpoint without erasing), evaluate, write the run directory through the run lifecycle.

``unlearn erase`` -> ``<out>/<kind>/<model>/<method>/<concept>/seed<k>/`` where kind is ``tinyshapes`` for a
TinyShapes pipeline and ``sd`` for any other diffusers directory (`unlearn.targets.diffusion.target_kind`):

* config.json (resolved config + provenance) and status.json ``running`` first (`unlearn.workflow`);
* trace.jsonl and checkpoint/ while a gradient method trains (the loop core, `unlearn/diffusion_train.py`);
* examples.jsonl (one row per generated image: prompt, asked labels, classifier reading, set), grid.png (the same
  prompts and noise before / after), rounds.jsonl for RECE (metrics after UCE = round 0 and after every round),
  model/ with ``--save-model`` (the edited pipeline, safetensors, loadable by ``unlearn eval``);
* metrics.json last (``schema_version`` + registered scalars), then status ``finished``.

``unlearn eval --model DIR|tinyshapes --concept C`` (`eval_diffusion`) writes config.json, examples.jsonl, grid.png
and metrics.json directly into ``--out``. Both evaluate with `unlearn.metrics.diffusion.evaluate_diffusion`, so
evaluating an erase run's saved model reproduces its metrics. The edit is timed apart from sampling and evaluation.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from unlearn.config import check_ranges, set_field
from unlearn.data.tinyshapes import (
    COLOURS,
    LABELS,
    SHAPES,
    concept_kind,
    erase_phrases,
    eval_prompts,
    preserve_prompts,
)
from unlearn.diffusion_train import DiffusionTrainConfig, unlearn_diffusion
from unlearn.errors import UnlearnError, unknown_name
from unlearn.loop import clear_checkpoint
from unlearn.methods import get_method
from unlearn.metrics.diffusion import DiffusionEvalConfig, classify, evaluate_diffusion, score
from unlearn.store import atomic_write_jsonl, read_json, run_dir
from unlearn.targets.diffusion import (
    EMBEDDED,
    cross_attention_kv,
    encode_prompts,
    kv_weights,
    load_target,
    sample,
    save_grid,
    save_target,
    target_kind,
)
from unlearn.targets.tinyshapes_build import resolve
from unlearn.workflow import claim_run, files_hash

ERASE_SETS = ("concept", "phrases")


@dataclass
class EraseConfig:
    model: str = "tinyshapes"  # embedded name or a diffusers pipeline directory
    method: str = "rece"  # a diffusion method: uce | rece | ga | npo | esd | all_but_one | doco
    concept: str = "circle"  # TinyShapes: a shape, colour or background name
    seed: int = 0  # sampling noise, the gradient methods' training pairs and (t, ε) stream
    out: str = "runs"  # runs root
    images_per_prompt: int = 2  # evaluation images per (shape, colour, background) prompt
    sample_steps: int = 20  # DDIM steps (evaluation, grid and the gradient methods' training pairs)
    guidance: float = 1.5  # classifier-free guidance scale (the TinyShapes quality bar is measured at 1.5)
    attack_reg: float = 1e-3  # λ of the closed-form adversarial-embedding attack
    erase_set: str = "concept"  # closed-form edits: "concept" = the word alone (UCE/RECE papers); "phrases" = the
    #                             word in short caption phrases (data.tinyshapes.erase_phrases), never the eval prompts
    overrides: list = field(default_factory=list)  # (key, value) pairs from --config then --set
    force: bool = False  # re-run a finished run
    reuse: bool = False  # show a finished run with the same resolved config
    save_model: bool = False  # keep the edited pipeline in <run>/model/
    progress: bool = True


def apply_erase_overrides(method: str, groups: dict, overrides: list[tuple[str, str]]) -> None:
    """Route each ``key=value`` to the first group (method, train, eval) that has the key, through `set_field`;
    ``method.key`` / ``train.key`` / ``eval.key`` name the group explicitly."""
    live = {g: obj for g, obj in groups.items() if obj is not None}
    for key, value in overrides:
        head, _, rest = key.partition(".")
        if head in live and rest:
            set_field(live[head], rest, value, key)
            continue
        if head == "seed":
            raise UnlearnError("--set seed: the seed is --seed (it seeds sampling and training alike)")
        owner = next((obj for obj in live.values() if head in {f.name for f in dataclasses.fields(obj)}), None)
        if owner is None:
            valid = {f.name for obj in live.values() for f in dataclasses.fields(obj)} - {"seed"}
            raise unknown_name(f"{method} option", head, valid)
        set_field(owner, key, value, key)


def erase_configs(cfg: EraseConfig):
    """(method spec, method config, train config or None for closed-form edits, eval config), overrides applied."""
    spec = get_method(cfg.method, "diffusion")
    mcfg = spec.config_cls()
    tcfg = None if spec.closed_form else DiffusionTrainConfig(**(spec.train_defaults or {}))
    ecfg = DiffusionEvalConfig(seed=cfg.seed, images_per_prompt=cfg.images_per_prompt, sample_steps=cfg.sample_steps,
                               guidance=cfg.guidance, attack_reg=cfg.attack_reg)  # fmt: skip
    check_ranges(ecfg)  # --images-per-prompt / --sample-steps arrive as flags, not through set_field
    apply_erase_overrides(cfg.method, {"method": mcfg, "train": tcfg, "eval": ecfg}, cfg.overrides)
    return spec, mcfg, tcfg, ecfg


def training_pairs(target, concept: str, ecfg: DiffusionEvalConfig, per_prompt: int = 4):
    """Forget / retain (x0 (N, C, H, W), cond (N, T, d), prompts [N]) pairs for gradient methods: ``per_prompt``
    images the *original* model draws for every eval prompt with (forget) and without (retain) the concept."""

    def pairs(rows):
        prompts = [r["prompt"] for r in rows for _ in range(per_prompt)]
        cond = encode_prompts(target, prompts)
        x0 = sample(target, cond, seed=ecfg.seed + 1, steps=ecfg.sample_steps, guidance=ecfg.guidance, latents=True)
        return x0, cond, prompts

    return pairs(eval_prompts(concept)), pairs([r for r in eval_prompts() if concept not in r.values()])


def validation_rows(concept: str) -> list[dict]:
    """RECE's round-selection split: prompts of another training template than the evaluation grid's (``a {colour}
    {shape}``; ``a {shape} on a {background} background`` for a background concept), with the labels they name."""
    rows = {}
    for r in eval_prompts():
        if concept_kind(concept) == "background":
            rows.setdefault(
                f"a {r['shape']} on a {r['background']} background",
                {"shape": r["shape"], "background": r["background"]},
            )
        else:
            rows.setdefault(f"a {r['colour']} {r['shape']}", {"shape": r["shape"], "colour": r["colour"]})
    return [{"prompt": p, **labels} for p, labels in rows.items()]


def validation_scores(target, concept: str, ecfg: DiffusionEvalConfig, per_prompt: int = 2) -> dict[str, float]:
    """``val_target_acc`` (share of the concept's validation images read as it) and ``val_other_acc`` (the other
    concepts of its domain read right): the two numbers RECE's ``train_object.py`` selects a round by. Noise seeded
    apart from the evaluation's (``seed + 7919``)."""
    domain = concept_kind(concept)
    rows = [r for r in validation_rows(concept) for _ in range(per_prompt)]
    imgs = sample(target, encode_prompts(target, [r["prompt"] for r in rows]), seed=ecfg.seed + 7919,
                  steps=ecfg.sample_steps, guidance=ecfg.guidance)  # fmt: skip
    ex = score(rows, classify(target.classifier, imgs, LABELS))
    hit = [e[f"pred_{domain}"] == concept for e in ex if e[domain] == concept]
    ok = [e[f"ok_{domain}"] for e in ex if e[domain] != concept]
    return {"val_target_acc": sum(hit) / len(hit), "val_other_acc": sum(ok) / len(ok)}


def best_round(rows: list[dict], slack: float = 0.1) -> int:
    """The round RECE keeps (reference ``train_object.py``): among rounds r > 0 whose validation target accuracy is
    below UCE's (round 0) while the others' accuracy stays within ``slack`` of UCE's, the lowest target accuracy
    (ties: higher other accuracy, then the earlier round); none -> 0 (the UCE edit)."""
    base = next(r for r in rows if r["round"] == 0)
    ok = [r for r in rows if r["round"] > 0 and r["val_target_acc"] < base["val_target_acc"]
          and r["val_other_acc"] >= base["val_other_acc"] - slack]  # fmt: skip
    if not ok:
        return 0
    return min(ok, key=lambda r: (r["val_target_acc"], -r["val_other_acc"], r["round"]))["round"]


def grid_prompts(concept: str) -> list[str]:
    """The before / after grid: every shape in the first two colours, on black (``concept`` does not change it)."""
    return [f"a {c} {s} on a black background" for s in SHAPES for c in list(COLOURS)[:2]]


def _save_grid(target, original, concept: str, ecfg: DiffusionEvalConfig, path: Path, label: str) -> None:
    cond = encode_prompts(target, grid_prompts(concept))
    kw = dict(seed=ecfg.seed, steps=ecfg.sample_steps, guidance=ecfg.guidance)
    imgs = torch.cat([sample(original, cond, **kw), sample(target, cond, **kw)])
    save_grid(imgs, path, nrow=len(cond), labels=["original", label])


def _jsonable(info: dict) -> dict:
    """The method's info without tensors (UCE's d x d transform), for status.json."""
    return {k: v for k, v in info.items() if not torch.is_tensor(v)}


def _model_name(model: str, path: Path) -> str:  # run paths and grid labels: the embedded name or the directory
    return model if model in EMBEDDED else str(path)


# ----------------------------------------------------------------------------------------------- erase
def run_erase(cfg: EraseConfig, log=print) -> Path:
    """Erase ``cfg.concept`` from ``cfg.model`` with ``cfg.method``, evaluate, write the run dir; returns it."""
    spec, mcfg, tcfg, ecfg = erase_configs(cfg)
    concept_kind(cfg.concept)
    if cfg.erase_set not in ERASE_SETS:
        raise unknown_name("erase set", cfg.erase_set, ERASE_SETS)
    path = resolve(cfg.model)
    kind = target_kind(path)
    if kind != "tinyshapes":
        raise UnlearnError(f"{cfg.model}: erasure metrics need a concept classifier (TinyShapes pipelines ship one); "
                           "Stable Diffusion pipelines can be edited through unlearn.methods directly")  # fmt: skip
    label = spec.run_label(mcfg) if spec.run_label is not None else cfg.method  # esd -> esd-x / esd-u
    method_name = label if cfg.erase_set == "concept" else f"{label}-{cfg.erase_set}"
    rdir = run_dir(cfg.out, kind, _model_name(cfg.model, path), method_name, cfg.concept, cfg.seed)
    resolved = {
        "workflow": "erase",
        "model": cfg.model,
        "target_kind": kind,
        "method": cfg.method,
        "concept": cfg.concept,
        "seed": cfg.seed,
        "erase_set": cfg.erase_set,
        "method_config": asdict(mcfg),
        "train_config": asdict(tcfg) if tcfg is not None else None,
        "eval_config": asdict(ecfg),
        "save_model": cfg.save_model,
    }
    meta = json.loads((path / "tinyshapes.json").read_text())
    provenance = {"model_path": str(path), "weights_hash": files_hash(path), "model_meta": meta}
    run = claim_run(rdir, resolved, force=cfg.force, reuse=cfg.reuse, log=log, provenance=provenance)
    if run.reused:
        return rdir
    erase = [cfg.concept] if cfg.erase_set == "concept" else erase_phrases(cfg.concept)
    preserve = preserve_prompts(cfg.concept, phrases=cfg.erase_set == "phrases")
    with run:
        run.start()
        target = load_target(path)
        torch.manual_seed(cfg.seed)
        original = dataclasses.replace(target, unet=copy.deepcopy(target.unet).requires_grad_(False))
        rounds, snapshots = [], {}
        select = getattr(mcfg, "select", "last")  # RECE: keep the best round on the validation split

        def on_round(r, info):
            m, _ = evaluate_diffusion(target, original, cfg.concept, ecfg)
            edit_s = info["uce"]["edit_seconds"] + sum(x["edit_seconds"] for x in info.get("rounds", []))
            val = validation_scores(target, cfg.concept, ecfg) if select == "validation" else {}
            rounds.append({"round": r, **m, **val, "edit_seconds": edit_s})
            if select == "validation":
                snapshots[r] = kv_weights(target.unet)
            log(f"round {r}: erasure {m['erasure_rate']:.3f}, adversarial ASR {m['adversarial_attack_success']:.3f}")

        if spec.closed_form:
            info = spec.apply(target, erase, mcfg, preserve, on_round=on_round)
            if select == "validation" and rounds:
                keep = best_round(rounds)
                with torch.no_grad():
                    for (_, m), w in zip(cross_attention_kv(target.unet), snapshots[keep]):
                        m.weight.copy_(w)
                info["selected_round"] = keep
                info["edit_seconds"] = rounds[keep]["edit_seconds"]  # the edit that produced the kept weights
                log(f"kept round {keep} (best on the validation split)")
        else:
            forget, retain = training_pairs(target, cfg.concept, ecfg, tcfg.pairs_per_prompt)
            info = unlearn_diffusion(target, forget, retain, spec, mcfg, tcfg, cfg.seed, rdir, cfg.progress, log,
                                     concept=cfg.concept)  # fmt: skip
        metrics, examples = evaluate_diffusion(target, original, cfg.concept, ecfg)
        metrics["edit_seconds"] = info["edit_seconds"]
        _save_grid(target, original, cfg.concept, ecfg, rdir / "grid.png", cfg.method)
        if rounds:
            atomic_write_jsonl(rdir / "rounds.jsonl", rounds)
        atomic_write_jsonl(rdir / "examples.jsonl", examples)
        if cfg.save_model:  # the original it was erased from, so `unlearn eval` finds it by default
            erased = {"original": cfg.model, "method": cfg.method, "concept": cfg.concept, "run": str(rdir)}
            save_target(target, rdir / "model", meta={**target.meta, "erased": erased})
        run.finish(metrics, info=_jsonable(info))
        clear_checkpoint(rdir)
    return rdir


# ----------------------------------------------------------------------------------------------- eval
def default_original(path: Path) -> str:
    """The model a TinyShapes pipeline is judged against: the one it was erased from (``tinyshapes.json``, written by
    ``--save-model``), else the embedded target of its build preset, else ``tinyshapes``."""
    meta = json.loads((path / "tinyshapes.json").read_text()) if (path / "tinyshapes.json").exists() else {}
    by_preset = {preset: name for name, preset in EMBEDDED.items()}
    return meta.get("erased", {}).get("original") or by_preset.get(meta.get("preset"), "tinyshapes")


def eval_diffusion(
    model: str,
    concept: str,
    original: str | None = None,
    out: str | Path | None = None,
    *,
    seed: int = 0,
    images_per_prompt: int = 2,
    sample_steps: int = 20,
    guidance: float = 1.5,
    attack_reg: float = 1e-3,
    force: bool = False,
    reuse: bool = False,
    progress: bool = True,
    log=print,
) -> tuple[Path | None, dict]:
    """Judge the diffusion checkpoint ``model`` (embedded name or pipeline directory) for ``concept`` against
    ``original`` (default: `default_original`) without changing it; returns (run dir or None, metrics).

    With ``out`` (the run directory itself) config.json, examples.jsonl, grid.png and metrics.json are written there
    through the run lifecycle (a finished one is refused without ``force`` / ``reuse``). ``progress`` is accepted
    for symmetry with the other workflows; sampling shows no bar.
    """
    concept_kind(concept)
    path = resolve(model)
    if target_kind(path) != "tinyshapes":
        raise UnlearnError(f"{model}: erasure metrics need a concept classifier (TinyShapes pipelines ship one)")
    original = original or default_original(path)
    opath = resolve(original)
    ecfg = DiffusionEvalConfig(seed=seed, images_per_prompt=images_per_prompt, sample_steps=sample_steps,
                               guidance=guidance, attack_reg=attack_reg)  # fmt: skip
    check_ranges(ecfg)
    run = None
    if out is not None:
        resolved = {"workflow": "eval", "kind": "diffusion", "model": model, "original": original, "concept": concept,
                    "eval_config": asdict(ecfg)}  # fmt: skip
        prov = {"model_path": str(path), "weights_hash": files_hash(path), "original_path": str(opath),
                "original_hash": files_hash(opath)}  # fmt: skip
        run = claim_run(out, resolved, force=force, reuse=reuse, log=log, provenance=prov)
        if run.reused:
            return Path(out), {k: v for k, v in read_json(Path(out) / "metrics.json").items() if k != "schema_version"}
    with run if run is not None else contextlib.nullcontext():
        if run is not None:
            run.start()
        target, orig = load_target(path), load_target(opath)
        metrics, examples = evaluate_diffusion(target, orig, concept, ecfg)
        if run is not None:
            atomic_write_jsonl(Path(out) / "examples.jsonl", examples)
            _save_grid(target, orig, concept, ecfg, Path(out) / "grid.png", Path(_model_name(model, path)).name)
            run.finish(metrics)
    return (Path(out) if out is not None else None), metrics


__all__ = ["EraseConfig", "run_erase", "eval_diffusion", "erase_configs", "training_pairs", "grid_prompts"]
