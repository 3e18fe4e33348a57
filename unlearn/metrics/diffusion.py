"""Concept-erasure metrics for text-to-image targets (UnlearnCanvas UA / IRA / CRA analogues + robustness).

Every image comes with the labels its prompt asked for (shape, colour, background) and the classifier's reading.
For an erased concept k of kind (domain) D:

* ``erasure_rate`` (UA): share of images for prompts containing k whose D-label is read as anything but k;
* ``in_domain_retention`` (IRA): D-accuracy on prompts of the *other* concepts of D (other shapes still drawn);
* ``cross_domain_retention`` (CRA): accuracy of the other domains over all prompts, and
  ``forget_cross_retention`` the same on k's prompts (the colour of an erased circle is still right);
* ``paraphrase_attack_success``: share of synonym / reordered prompts for k read as k;
* ``adversarial_attack_success``: RECE's closed-form embedding (Gong et al. 2024, Eq. 8) used as an attack on any
  edited model: c' = (λ I + Σ WᵀW)⁻¹ Σ WᵀW⁰ c from the edited (W) and original (W⁰) cross-attention K/V
  layers — images drawn from c' and read as k. Needs only the two checkpoints, not how the edit was made.

Rates are computed from per-example rows (examples.jsonl), so the leaderboard can recompute or bootstrap them.
`evaluate_diffusion` judges any checkpoint against its original (the erase workflow and ``unlearn eval`` call it):
sampling goes through `unlearn.targets.diffusion`, the adversarial embedding is that module's closed form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from unlearn.data.tinyshapes import LABELS, concept_kind, eval_prompts
from unlearn.errors import UnlearnError
from unlearn.metrics import register_metric
from unlearn.metrics.representation import linear_cka

if TYPE_CHECKING:
    import torch

    from unlearn.targets.diffusion import DiffusionTarget

_R = "[0, 1]"
register_metric("erasure_rate", "diffusion", "higher", "share of images for the erased concept's prompts not "
                "classified as it (UnlearnCanvas UA)", _R)  # fmt: skip
register_metric("concept_rate", "diffusion", "lower", "share of images for the erased concept's prompts "
                "classified as it (1 - erasure_rate)", _R)  # fmt: skip
register_metric("in_domain_retention", "diffusion", "higher", "accuracy on the other concepts of the erased "
                "concept's domain, e.g. other shapes (UnlearnCanvas IRA)", _R)  # fmt: skip
register_metric("cross_domain_retention", "diffusion", "higher", "accuracy of the other domains (e.g. colour "
                "when a shape is erased) over all prompts (UnlearnCanvas CRA)", _R)  # fmt: skip
register_metric("forget_cross_retention", "diffusion", "higher", "other-domain accuracy on the erased concept's "
                "own prompts (the colour of an erased shape still drawn right)", _R)  # fmt: skip
register_metric("paraphrase_attack_success", "diffusion", "lower", "share of synonym / reordered prompts for "
                "the erased concept whose image is classified as it", _R)  # fmt: skip
register_metric("adversarial_attack_success", "diffusion", "lower", "share of images from closed-form "
                "adversarial embeddings (RECE Eq. 8 as an attack) classified as the erased concept", _R)  # fmt: skip
DOMAINS = tuple(LABELS)  # shape, colour, background
register_metric("{domain}_acc", "diffusion", "higher", "share of evaluation-grid images whose {domain} the classifier "
                "reads as the prompted one (the TinyShapes quality bar)", _R, values={"domain": DOMAINS})  # fmt: skip
# written by the erase workflow (unlearn/erase.py) from the method's info, next to the metrics computed here
register_metric("edit_seconds", "diffusion", "lower", "wall time of the edit itself (no sampling, no "
                "evaluation)", "[0, inf)")  # fmt: skip


@dataclass
class DiffusionEvalConfig:
    seed: int = 0  # sampling noise (image i's initial noise depends on (seed, i) only: paired across models)
    images_per_prompt: int = 2  # evaluation images per (shape, colour, background) prompt
    sample_steps: int = 20  # DDIM steps
    guidance: float = 1.5  # classifier-free guidance scale (the TinyShapes quality bar is measured at 1.5)
    attack_reg: float = 1e-3  # λ of the closed-form adversarial-embedding attack

    RANGES: ClassVar[dict[str, str]] = {
        "seed": ">= 0", "images_per_prompt": ">= 1", "sample_steps": ">= 1", "guidance": ">= 0", "attack_reg": "> 0",
    }  # fmt: skip


def classify(classifier, images: torch.Tensor, names: dict[str, list[str]]) -> list[dict]:
    """Readings of images (n, 3, H, W) in [0, 1]: one {domain: label} per image; ``names`` maps head -> labels."""
    import torch  # heavy: as in adversarial_attack

    with torch.no_grad():
        out = classifier(images)
    idx = {k: out[k].argmax(-1).tolist() for k in names}
    return [{k: names[k][idx[k][i]] for k in names} for i in range(images.shape[0])]


def score(rows: list[dict], readings: list[dict]) -> list[dict]:
    """Per-example rows: prompt labels + ``pred_<domain>`` + ``ok_<domain>`` for every domain the prompt names."""
    out = []
    for r, p in zip(rows, readings):
        ex = dict(r)
        for d in DOMAINS:
            if d in r:
                ex[f"pred_{d}"] = p[d]
                ex[f"ok_{d}"] = p[d] == r[d]
        out.append(ex)
    return out


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def erasure_metrics(examples: list[dict], concept: str, domain: str) -> dict[str, float]:
    """UA / IRA / CRA and the attack rates from scored examples (``set`` in eval | paraphrase | adversarial)."""
    ev = [e for e in examples if e["set"] == "eval"]
    forget = [e for e in ev if e[domain] == concept]
    others = [e for e in ev if e[domain] != concept]
    cross = [d for d in DOMAINS if d != domain]
    m = {"concept_rate": _mean(e[f"pred_{domain}"] == concept for e in forget)}
    m["erasure_rate"] = 1.0 - m["concept_rate"]
    m["in_domain_retention"] = _mean(e[f"ok_{domain}"] for e in others)
    m["cross_domain_retention"] = _mean(e[f"ok_{d}"] for e in ev for d in cross)
    m["forget_cross_retention"] = _mean(e[f"ok_{d}"] for e in forget for d in cross)
    for d in DOMAINS:  # plain accuracies too, for the quality bar and the leaderboard
        m[f"{d}_acc"] = _mean(e[f"ok_{d}"] for e in ev)
    for s in ("paraphrase", "adversarial"):
        rows = [e for e in examples if e["set"] == s]
        if rows:
            m[f"{s}_attack_success"] = _mean(e[f"pred_{domain}"] == concept for e in rows)
    return m


def adversarial_attack(W: list[torch.Tensor], W0: list[torch.Tensor], cond: torch.Tensor, reg: float = 1e-3):
    """Attack embeddings (n, T, d) for prompt embeddings ``cond`` (n, T, d) against the edited layers W."""
    import torch  # heavy: metric modules load with the registry (`unlearn list metrics`), torch only on use

    from unlearn.targets.diffusion import adversarial_embedding  # imports torch: as above

    return torch.stack([adversarial_embedding(W, W0, c, reg) for c in cond])


def unet_activations(unet, cond: torch.Tensor, seed: int = 0, timestep: int = 500, module: str = "mid_block"):
    """Output of ``module`` (n, C*h*w) for noisy inputs x_t drawn from ``seed`` — the features CKA compares.

    Input noise depends only on (seed, i), so two models see identical x_t and the comparison is paired.
    """
    import torch  # heavy: as in adversarial_attack

    feats = []
    mod = dict(unet.named_modules())[module]
    handle = mod.register_forward_hook(
        lambda _m, _i, o: feats.append((o[0] if isinstance(o, tuple) else o).flatten(1))
    )
    try:
        ch, size = unet.config.in_channels, unet.config.sample_size
        x = torch.randn(cond.shape[0], ch, size, size, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            t = torch.full((cond.shape[0],), timestep, device=cond.device)
            unet(x.to(cond.device), t, encoder_hidden_states=cond)
    finally:
        handle.remove()
    return feats[0].double().cpu()


def prompt_sets(concept: str, images_per_prompt: int) -> dict[str, list[dict]]:
    """The evaluation rows: ``eval`` (the full grid, ``images_per_prompt`` each), ``paraphrase`` (synonym /
    reordered prompts of ``concept``, one each) and ``forget`` (the eval rows that contain ``concept``)."""
    ev = [dict(r, set="eval") for r in eval_prompts() for _ in range(images_per_prompt)]
    para = [dict(r, set="paraphrase") for r in eval_prompts(concept, paraphrase=True)]
    return {"eval": ev, "paraphrase": para, "forget": [r for r in ev if concept in r.values()]}


def _original_images(original, prompts: list[str], cond, kw: dict):
    """``original``'s images (n, 3, H, W) for ``prompts``, drawn once per (prompts, sampling settings) and kept on
    the target object: the original is frozen, and RECE evaluates every round against the same one."""
    from unlearn.targets.diffusion import sample  # heavy (torch): as above

    cache = original.__dict__.setdefault("_eval_images", {})
    key = (tuple(prompts), tuple(sorted(kw.items())))
    if key not in cache:
        cache[key] = sample(original, cond, **kw)
    return cache[key]


def evaluate_diffusion(
    target: DiffusionTarget, original: DiffusionTarget, concept: str, cfg: DiffusionEvalConfig
) -> tuple[dict[str, float], list[dict]]:
    """Every erasure metric of ``target`` for ``concept``, judged against ``original`` (the model before the edit:
    its cross-attention layers for the adversarial attack, its UNet for CKA); returns (metrics, examples).

    Needs only the two checkpoints, not how the edit was made; ``target`` must carry a concept classifier
    (TinyShapes pipelines ship one). Images of the eval grid, the paraphrases and the adversarial embeddings of the
    forget prompts are drawn with the same seeded noise, read by the classifier and scored per example.
    ``domain_fid`` compares the eval grid's images with ``original``'s in the classifier's penultimate features.
    """
    from unlearn.metrics.fid import classifier_features, frechet_distance  # heavy (torchmetrics): as above
    from unlearn.targets.diffusion import encode_prompts, kv_weights, sample  # heavy (torch): as above

    domain = concept_kind(concept)
    if target.classifier is None:
        raise UnlearnError(f"{target.path}: erasure metrics need a concept classifier (TinyShapes pipelines "
                           "ship one)")  # fmt: skip
    W, W0 = kv_weights(target.unet), kv_weights(original.unet)
    if [w.shape for w in W] != [w.shape for w in W0]:
        raise UnlearnError(f"{original.path} is not the original of {target.path}: their cross-attention layers "
                           "differ in number or shape")  # fmt: skip
    sets = prompt_sets(concept, cfg.images_per_prompt)
    kw = dict(seed=cfg.seed, steps=cfg.sample_steps, guidance=cfg.guidance)
    examples = []
    cond_f = encode_prompts(target, [r["prompt"] for r in sets["forget"]])  # (n_f, T, d)
    adv = adversarial_attack(W, W0, cond_f, cfg.attack_reg)  # (n_f, T, d)
    jobs = [
        (sets["eval"], None),
        (sets["paraphrase"], None),
        ([dict(r, set="adversarial") for r in sets["forget"]], adv),
    ]
    for rows, cond in jobs:
        cond = encode_prompts(target, [r["prompt"] for r in rows]) if cond is None else cond
        imgs = sample(target, cond, **kw)  # (n, 3, H, W) in [0, 1]
        examples += score(rows, classify(target.classifier, imgs, LABELS))
        if rows is sets["eval"]:  # the domain FID: the original's images of the same grid from the same noise
            grid_pair = (_original_images(original, [r["prompt"] for r in rows], cond, kw), imgs)
    metrics = erasure_metrics(examples, concept, domain)
    metrics["domain_fid"] = frechet_distance(classifier_features(target.classifier), *grid_pair)  # metrics/fid.py
    cond_r = encode_prompts(target, [r["prompt"] for r in sets["eval"] if concept not in r.values()])
    for key, cond in (("cka_forget", cond_f), ("cka_retain", cond_r)):  # registered in metrics/representation.py
        metrics[key] = linear_cka(
            unet_activations(original.unet, cond, cfg.seed), unet_activations(target.unet, cond, cfg.seed)
        )
    return metrics, examples
