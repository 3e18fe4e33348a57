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
from tqdm.auto import tqdm

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
from unlearn.store import atomic_write_json, atomic_write_jsonl, read_json, run_dir
from unlearn.targets.diffusion import (
    EMBEDDED,
    cross_attention_kv,
    encode_prompts,
    hub_pipeline_dir,
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
TINYSHAPES_GUIDANCE = 1.5  # the TinyShapes quality bar is measured at 1.5
SD_GUIDANCE = 7.5  # diffusers' StableDiffusionPipeline default


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
    # Stable Diffusion pipelines only (`run_erase_sd`): the prompts CSV, the CLIP judge, the FID Inception weights
    prompts: str | None = None  # None: the default object prompt set (unlearn/assets/sd_prompts/objects.csv)
    judge: str | None = None  # a CLIP directory or hub id
    fid_weights: str | None = None  # FID Inception-v3 weights (safetensors / weights_only); None: no fid
    sd_guidance: float = SD_GUIDANCE  # guidance on Stable Diffusion (the CLI's --guidance sets both)


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
    path = resolve_model(cfg.model)
    kind = target_kind(path)
    if kind != "tinyshapes":
        return run_erase_sd(cfg, path, log)
    if cfg.prompts or cfg.judge or cfg.fid_weights:
        raise UnlearnError("--prompts / --judge / --fid-weights are for Stable Diffusion pipelines; a TinyShapes "
                           "target is judged by its own classifier")  # fmt: skip
    spec, mcfg, tcfg, ecfg = erase_configs(cfg)
    concept_kind(cfg.concept)
    if cfg.erase_set not in ERASE_SETS:
        raise unknown_name("erase set", cfg.erase_set, ERASE_SETS)
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
def _finished_metrics(out) -> dict:
    """The metrics of a finished (reused) evaluation directory, without ``schema_version``."""
    return {k: v for k, v in read_json(Path(out) / "metrics.json").items() if k != "schema_version"}


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
    guidance: float | None = None,
    attack_reg: float = 1e-3,
    force: bool = False,
    reuse: bool = False,
    progress: bool = True,
    log=print,
    prompts: str | None = None,
    judge: str | None = None,
    fid_weights: str | None = None,
) -> tuple[Path | None, dict]:
    """Judge the diffusion checkpoint ``model`` (embedded name or pipeline directory) for ``concept`` against
    ``original`` (default: `default_original`) without changing it; returns (run dir or None, metrics).

    With ``out`` (the run directory itself) config.json, examples.jsonl, grid.png and metrics.json are written there
    through the run lifecycle (a finished one is refused without ``force`` / ``reuse``). ``progress`` is accepted
    for symmetry with the other workflows; sampling shows no bar.
    """
    path = resolve_model(model)
    if target_kind(path) != "tinyshapes":
        sd = SDEvalArgs(prompts, judge, fid_weights)
        return eval_sd(model, path, concept, original, out, sd, seed=seed, images_per_prompt=images_per_prompt,
                       sample_steps=sample_steps, guidance=guidance, attack_reg=attack_reg, force=force, reuse=reuse,
                       progress=progress, log=log)  # fmt: skip
    if prompts or judge or fid_weights:
        raise UnlearnError("--prompts / --judge / --fid-weights are for Stable Diffusion pipelines; a TinyShapes "
                           "target is judged by its own classifier")  # fmt: skip
    concept_kind(concept)
    original = original or default_original(path)
    opath = resolve(original)
    guidance = TINYSHAPES_GUIDANCE if guidance is None else guidance
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
            return Path(out), _finished_metrics(out)
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


# ----------------------------------------------------------------------------------------------- Stable Diffusion
# A real SD 1.x/2.x pipeline (any diffusers directory without tinyshapes.json, or a cached hub id) has no concept
# classifier: prompts come from a CSV (unlearn.data.sd_prompts), a CLIP model judges the images zero-shot
# (unlearn.metrics.clip_judge) and FID compares them with the original model's (unlearn.metrics.fid).
# docs/diffusion-sd-eval.md describes the whole path.
SD_BATCH = 8  # images per sampling call: `sample` decodes a call's latents at once (8 x 3 x 512 x 512 for SD)
SD_SETS = ("forget", "paraphrase", "retain")  # position = the noise salt of the set's images (paired across models)


def resolve_model(model: str) -> Path:
    """An embedded name or a local directory through `resolve`; anything else as a cached hub id."""
    if model in EMBEDDED or Path(model).expanduser().exists():
        return resolve(model)
    return hub_pipeline_dir(model)


def _run_name(model: str, path: Path) -> str:  # run paths: the embedded name or hub id, else the directory
    return model if model in EMBEDDED or not Path(model).expanduser().exists() else str(path)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class SDEvalArgs:
    prompts: str | None = None  # the prompts CSV; None: unlearn/assets/sd_prompts/objects.csv
    judge: str | None = None  # CLIP directory or hub id
    fid_weights: str | None = None  # FID Inception-v3 weights file; None: fid omitted


@dataclass
class SDInputs:
    """Everything an SD evaluation reads besides the pipelines, loaded (and so checked) before a run is claimed."""

    sets: dict  # forget / paraphrase / retain -> [PromptRow] for the erased concept (`sd_prompts.select`)
    labels: dict  # domain -> the concepts the judge chooses among (every concept of that domain in the file)
    domain: str  # the erased concept's domain
    prompts_path: Path
    judge: object  # unlearn.metrics.clip_judge.ClipJudge
    inception: object | None  # FID feature module, None without --fid-weights


def sd_inputs(concept: str, sd: SDEvalArgs, log=print) -> SDInputs:
    """Load and check the prompts CSV, the CLIP judge and the FID weights (one-line errors, nothing written)."""
    from unlearn.data.sd_prompts import DEFAULT_PROMPTS, load_prompts, select
    from unlearn.metrics.clip_judge import load_judge
    from unlearn.metrics.fid import load_inception

    if not sd.judge:
        raise UnlearnError("a Stable Diffusion pipeline needs --judge: a CLIP directory or hub id (e.g. "
                           "openai/clip-vit-large-patch14) that reads the images zero-shot")  # fmt: skip
    rows = load_prompts(sd.prompts)
    sets = select(rows, concept, sd.prompts or str(DEFAULT_PROMPTS))
    labels: dict[str, list[str]] = {}
    for r in rows:
        if r.concept not in labels.setdefault(r.domain, []):
            labels[r.domain].append(r.concept)
    inception = load_inception(sd.fid_weights) if sd.fid_weights else None
    judge = load_judge(sd.judge, _device())
    if inception is None:
        log("fid: omitted (no --fid-weights: FID Inception-v3 weights, safetensors or a weights-only state dict)")
    prompts_path = Path(sd.prompts).expanduser().resolve() if sd.prompts else DEFAULT_PROMPTS
    return SDInputs(sets, labels, sets["forget"][0].domain, prompts_path, judge, inception)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def sd_images(target, cond: torch.Tensor, ecfg: DiffusionEvalConfig, salt: int, desc: str, progress: bool = True,
              latents: bool = False) -> torch.Tensor:  # fmt: skip
    """Images (n, 3, H, W) in [0, 1] (or latents) for text embeddings ``cond`` (n, T, d), SD_BATCH per call.

    Call k of set ``salt`` draws its noise from seed (ecfg.seed, salt, k): two models given the same embeddings draw
    from identical noise, so original-vs-erased images are paired, and the sets do not share noise.
    """
    out = []
    for k, i in enumerate(tqdm(range(0, cond.shape[0], SD_BATCH), desc=desc, disable=not progress, leave=False)):
        seed = (ecfg.seed * 1_000 + salt) * 100_003 + k
        out.append(sample(target, cond[i : i + SD_BATCH], seed=seed, steps=ecfg.sample_steps, guidance=ecfg.guidance,
                          batch_size=SD_BATCH, latents=latents))  # fmt: skip
    return torch.cat(out)


def _encode(target, rows: list) -> torch.Tensor:  # PromptRows -> text embeddings (n, T, d)
    return encode_prompts(target, [r.prompt for r in rows])


def evaluate_sd(target, original, concept: str, inputs: SDInputs, ecfg: DiffusionEvalConfig, progress: bool = True,
                log=print) -> tuple[dict, list[dict]]:  # fmt: skip
    """The SD erasure metrics of ``target`` for ``concept`` (judge_metrics + adversarial_attack_success + fid);
    ``original`` None (an eval without a known original) leaves out what needs it, saying so. Returns
    (metrics, examples)."""
    from unlearn.metrics.clip_judge import judge_metrics, read_images
    from unlearn.metrics.diffusion import adversarial_attack
    from unlearn.metrics.fid import frechet_distance

    ipp = ecfg.images_per_prompt
    rows = {s: [r for r in inputs.sets[s] for _ in range(ipp)] for s in SD_SETS}
    examples, retain_imgs = [], None
    jobs = [(s, rows[s], _encode(target, rows[s]), salt) for salt, s in enumerate(SD_SETS) if rows[s]]
    if original is not None:
        W, W0 = kv_weights(target.unet), kv_weights(original.unet)
        if [w.shape for w in W] != [w.shape for w in W0]:
            raise UnlearnError(f"{original.path} is not the original of {target.path}: their cross-attention "
                               "layers differ in number or shape")  # fmt: skip
        adv = adversarial_attack(W, W0, jobs[0][2], ecfg.attack_reg)  # (n_f, T, d) from the forget embeddings
        jobs.append(("adversarial", rows["forget"], adv, 0))  # the forget images' noise
    for name, set_rows, cond, salt in jobs:
        imgs = sd_images(target, cond, ecfg, salt, f"{name} images", progress)
        judged = read_images(inputs.judge, imgs, set_rows, inputs.labels)
        examples += [dict(e, set=name, image=i) for i, e in enumerate(judged)]
        if name == "retain":
            retain_imgs = imgs
    metrics = judge_metrics(examples, concept, inputs.domain)
    adv = [e["pred"] == concept for e in examples if e["set"] == "adversarial"]
    if adv:
        metrics["adversarial_attack_success"] = sum(adv) / len(adv)
    for key, why in (("in_domain_retention", f"no retain prompts of domain {inputs.domain!r}"),
                     ("cross_domain_retention", f"no retain prompts outside domain {inputs.domain!r}"),
                     ("paraphrase_attack_success", "no paraphrase prompts for the concept"),
                     ("adversarial_attack_success", "no original model to attack from")):  # fmt: skip
        if key not in metrics:
            log(f"{key}: omitted ({why})")
    if inputs.inception is not None and original is not None and retain_imgs is not None:
        cond_r = _encode(original, rows["retain"])
        ref = sd_images(original, cond_r, ecfg, SD_SETS.index("retain"), "original images", progress)
        metrics["fid"] = frechet_distance(inputs.inception, ref, retain_imgs)
    elif inputs.inception is not None:
        log("fid: omitted (" + ("no original model" if original is None else "no retain prompts") + ")")
    return metrics, examples


def _sd_grid(target, original, inputs: SDInputs, ecfg: DiffusionEvalConfig, path: Path, label: str) -> None:
    """Up to 4 forget and 4 retain prompts, one image each: the original's row above ``target``'s."""
    rows = inputs.sets["forget"][:4] + inputs.sets["retain"][:: max(1, len(inputs.sets["retain"]) // 4)][:4]
    models = [m for m in (original, target) if m is not None]
    imgs = [sd_images(m, _encode(m, rows), ecfg, 99, "grid", progress=False) for m in models]
    labels = ["original", label] if original is not None else [label]
    save_grid(torch.cat(imgs), path, nrow=len(rows), labels=labels)


def sd_training_pairs(target, inputs: SDInputs, ecfg: DiffusionEvalConfig, per_prompt: int, progress: bool = True):
    """Forget / retain (x0 latents (N, 4, h, w), cond (N, T, d)) pairs the *original* model draws (gradient
    methods), ``per_prompt`` per forget / retain prompt of the CSV."""

    def pairs(rows, salt):
        rows = [r for r in rows for _ in range(per_prompt)]
        cond = _encode(target, rows)
        return sd_images(target, cond, ecfg, salt, "training pairs", progress, latents=True), cond.cpu()

    return pairs(inputs.sets["forget"], 11), pairs(inputs.sets["retain"], 13)


def _sd_resolved(workflow: str, model: str, concept: str, inputs: SDInputs, sd: SDEvalArgs, ecfg) -> dict:
    return {"workflow": workflow, "model": model, "target_kind": "sd", "concept": concept,
            "prompts": str(inputs.prompts_path), "judge": sd.judge, "fid_weights": sd.fid_weights,
            "eval_config": asdict(ecfg)}  # fmt: skip


def _sd_provenance(path: Path, inputs: SDInputs, sd: SDEvalArgs) -> dict:
    prov = {"model_path": str(path), "weights_hash": files_hash(path), "prompts_hash": _sha(inputs.prompts_path)}
    if sd.fid_weights:
        prov["fid_weights_hash"] = _sha(Path(sd.fid_weights).expanduser())
    return prov


def run_erase_sd(cfg: EraseConfig, path: Path, log=print) -> Path:
    """`run_erase` on a Stable Diffusion pipeline ``path``: erase ``cfg.concept`` (the word alone, as the UCE / RECE
    papers edit), preserving the other concepts of the prompts CSV, judge with CLIP, write the run dir."""
    spec = get_method(cfg.method, "diffusion")
    mcfg = spec.config_cls()
    tcfg = None if spec.closed_form else DiffusionTrainConfig(**(spec.train_defaults or {}))
    ecfg = DiffusionEvalConfig(seed=cfg.seed, images_per_prompt=cfg.images_per_prompt, sample_steps=cfg.sample_steps,
                               guidance=cfg.sd_guidance, attack_reg=cfg.attack_reg)  # fmt: skip
    check_ranges(ecfg)
    apply_erase_overrides(cfg.method, {"method": mcfg, "train": tcfg, "eval": ecfg}, cfg.overrides)
    if cfg.erase_set != "concept":
        raise UnlearnError("--erase-set phrases uses TinyShapes caption phrases; on Stable Diffusion the edit rows "
                           "are the concept itself (--erase-set concept)")  # fmt: skip
    sd = SDEvalArgs(cfg.prompts, cfg.judge, cfg.fid_weights)
    inputs = sd_inputs(cfg.concept, sd, log)
    label = spec.run_label(mcfg) if spec.run_label is not None else cfg.method  # esd -> esd-x / esd-u
    rdir = run_dir(cfg.out, "sd", _run_name(cfg.model, path), label, cfg.concept, cfg.seed)
    resolved = {**_sd_resolved("erase", cfg.model, cfg.concept, inputs, sd, ecfg), "method": cfg.method,
                "seed": cfg.seed, "method_config": asdict(mcfg), "save_model": cfg.save_model,
                "train_config": asdict(tcfg) if tcfg is not None else None}  # fmt: skip
    run = claim_run(rdir, resolved, force=cfg.force, reuse=cfg.reuse, log=log,
                    provenance=_sd_provenance(path, inputs, sd))  # fmt: skip
    if run.reused:
        return rdir
    preserve = list(dict.fromkeys(r.concept for r in inputs.sets["retain"]))  # the other concepts must survive
    with run:
        run.start()
        target = load_target(path, _device())
        torch.manual_seed(cfg.seed)
        original = dataclasses.replace(target, unet=copy.deepcopy(target.unet).requires_grad_(False))
        if spec.closed_form:  # RECE's rounds are not evaluated one by one here (no rounds.jsonl on SD)
            info = spec.apply(target, [cfg.concept], mcfg, preserve, on_round=None)
        else:
            forget, retain = sd_training_pairs(original, inputs, ecfg, tcfg.pairs_per_prompt, cfg.progress)
            info = unlearn_diffusion(target, forget, retain, spec, mcfg, tcfg, cfg.seed, rdir, cfg.progress, log,
                                     concept=cfg.concept)  # fmt: skip
        metrics, examples = evaluate_sd(target, original, cfg.concept, inputs, ecfg, cfg.progress, log)
        metrics["edit_seconds"] = info["edit_seconds"]
        _sd_grid(target, original, inputs, ecfg, rdir / "grid.png", cfg.method)
        atomic_write_jsonl(rdir / "examples.jsonl", examples)
        if cfg.save_model:  # with the original's name, so `unlearn eval` compares with it by default
            save_target(target, rdir / "model")
            erased = {"original": cfg.model, "method": cfg.method, "concept": cfg.concept, "run": str(rdir)}
            atomic_write_json(rdir / "model" / ERASED_JSON, {"erased": erased})
        run.finish(metrics, info=_jsonable(info))
        clear_checkpoint(rdir)
    return rdir


ERASED_JSON = "unlearn_erased.json"  # written beside an erased SD pipeline: the model it was erased from


def eval_sd(model: str, path: Path, concept: str, original: str | None, out, sd: SDEvalArgs, *, seed: int = 0,
            images_per_prompt: int = 2, sample_steps: int = 20, guidance: float | None = None,
            attack_reg: float = 1e-3, force: bool = False, reuse: bool = False, progress: bool = True,
            log=print) -> tuple[Path | None, dict]:  # fmt: skip
    """`eval_diffusion` on a Stable Diffusion pipeline: judge ``model`` for ``concept`` against ``original`` (default:
    the one named in its ``unlearn_erased.json``, else none: fid and the adversarial attack are left out)."""
    ecfg = DiffusionEvalConfig(seed=seed, images_per_prompt=images_per_prompt, sample_steps=sample_steps,
                               guidance=SD_GUIDANCE if guidance is None else guidance,
                               attack_reg=attack_reg)  # fmt: skip
    check_ranges(ecfg)
    if original is None and (path / ERASED_JSON).exists():
        original = json.loads((path / ERASED_JSON).read_text())["erased"]["original"]
    opath = resolve_model(original) if original else None  # None: evaluate_sd says what it leaves out
    inputs = sd_inputs(concept, sd, log)
    run = None
    if out is not None:
        resolved = {**_sd_resolved("eval", model, concept, inputs, sd, ecfg), "original": original}
        prov = _sd_provenance(path, inputs, sd)
        if opath is not None:
            prov.update(original_path=str(opath), original_hash=files_hash(opath))
        run = claim_run(out, resolved, force=force, reuse=reuse, log=log, provenance=prov)
        if run.reused:
            return Path(out), _finished_metrics(out)
    with run if run is not None else contextlib.nullcontext():
        if run is not None:
            run.start()
        target = load_target(path, _device())
        orig = load_target(opath, _device()) if opath is not None else None
        metrics, examples = evaluate_sd(target, orig, concept, inputs, ecfg, progress, log)
        if run is not None:
            atomic_write_jsonl(Path(out) / "examples.jsonl", examples)
            _sd_grid(target, orig, inputs, ecfg, Path(out) / "grid.png", Path(_run_name(model, path)).name)
            run.finish(metrics)
    return (Path(out) if out is not None else None), metrics


__all__ = [
    "EraseConfig", "run_erase", "eval_diffusion", "erase_configs", "training_pairs", "grid_prompts", "run_erase_sd",
    "eval_sd", "evaluate_sd", "resolve_model",
]  # fmt: skip
