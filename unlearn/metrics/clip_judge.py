"""A CLIP zero-shot concept judge and CLIPScore, for erasure on real text-to-image models (Stable Diffusion).

TinyShapes has a trained classifier; a Stable Diffusion model has none, so a CLIP model (Radford et al. 2021,
https://arxiv.org/abs/2103.00020; any Hugging Face CLIP directory or id, e.g. ``openai/clip-vit-large-patch14``)
reads each image zero-shot. For an image of a row in domain D the judge scores the label prompts

    "a photo of a {c}"  for every concept c of D in the prompts file,   and   "a photo"  (nothing in particular)

and the reading is the argmax of the cosine similarities (softmax-free: only the order matters). The neutral label
lets an erased image that shows nothing recognisable be read as "not the concept" without forcing it into another
concept. The same CLIP gives ``clip_score`` (Hessel et al. 2021, https://arxiv.org/abs/2104.08718, CLIPScore with
w = 100, as torchmetrics' ``CLIPScore``): 100 * max(cos(image, its own prompt), 0), averaged.

Images are preprocessed as CLIP's image processor does (shorter side resized to ``size`` with bicubic
interpolation, centre crop ``crop_size``, per-channel mean / std), read from the model's ``preprocessor_config.json``
when it has one (OpenAI's values otherwise), written out in torch so no image-processor backend is needed.
Weights load from safetensors only, no remote code. `judge_metrics` turns per-image rows into the erasure metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from unlearn.errors import UnlearnError
from unlearn.metrics import register_metric

if TYPE_CHECKING:
    import torch

LABEL_TEMPLATE = "a photo of a {}"
NEUTRAL_LABEL = "a photo"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalisation (openai/CLIP clip.py)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

register_metric("clip_score", "diffusion", "higher", "CLIPScore (100 * max(cos, 0)) of the retain prompts' images "
                "with their prompts: the other concepts are still drawn as asked", "[0, 100]")  # fmt: skip
register_metric("clip_score_forget", "diffusion", "lower", "CLIPScore of the erased concept's images with their "
                "prompts: lower when the concept no longer matches", "[0, 100]")  # fmt: skip


def label_prompts(concepts: list[str]) -> list[str]:
    """The judge's label prompts for one domain: one per concept, then the neutral label (index len(concepts))."""
    return [LABEL_TEMPLATE.format(c) for c in concepts] + [NEUTRAL_LABEL]


def decide(image_feats: torch.Tensor, label_feats: torch.Tensor) -> torch.Tensor:
    """Index (n,) of the label whose embedding (k, e) is closest in cosine to each image embedding (n, e)."""
    import torch  # heavy: metric modules load with the registry, torch only on use

    sims = torch.nn.functional.normalize(image_feats, dim=-1) @ torch.nn.functional.normalize(label_feats, dim=-1).T
    return sims.argmax(-1)  # (n,)


def clip_score_values(image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """CLIPScore (n,) = 100 * max(cos(image_i, text_i), 0) for paired embeddings (n, e) and (n, e)."""
    import torch  # heavy: as in decide

    cos = torch.nn.functional.cosine_similarity(image_feats.double(), text_feats.double(), dim=-1)
    return 100 * cos.clamp(min=0)


@dataclass
class ClipJudge:
    model: object  # transformers CLIPModel
    tokenizer: object
    size: int  # shorter image side after resizing
    crop: int  # centre-crop side (the vision tower's input)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = ""
    batch_size: int = 32

    def _device(self):
        return next(self.model.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n, 3, H, W) in [0, 1] -> CLIP pixel values (n, 3, crop, crop)."""
        import torch  # heavy: as in decide

        h, w = images.shape[-2:]
        s = self.size / min(h, w)
        x = torch.nn.functional.interpolate(images.float(), size=(round(h * s), round(w * s)), mode="bicubic",
                                            antialias=True, align_corners=False).clamp(0, 1)  # fmt: skip
        top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]
        mean, std = torch.tensor(self.mean).view(1, 3, 1, 1), torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (n, e) of images (n, 3, H, W) in [0, 1]."""
        import torch  # heavy: as in decide

        out = []
        with torch.no_grad():
            for i in range(0, images.shape[0], self.batch_size):
                px = self.preprocess(images[i : i + self.batch_size]).to(self._device())
                out.append(self.model.get_image_features(pixel_values=px).pooler_output.float().cpu())
        return torch.cat(out)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """CLIP text embeddings (n, e); prompts longer than the text tower's context are truncated."""
        import torch  # heavy: as in decide

        n_ctx = self.model.config.text_config.max_position_embeddings
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                ids = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True,
                                     max_length=n_ctx, return_tensors="pt").to(self._device())  # fmt: skip
                out.append(self.model.get_text_features(**ids).pooler_output.float().cpu())
        return torch.cat(out)


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _preprocessor_config(name: str, local: bool) -> dict:
    """The model's ``preprocessor_config.json`` as a dict, {} when it has none."""
    if local:
        f = Path(name) / "preprocessor_config.json"
        return json.loads(f.read_text()) if f.exists() else {}
    from huggingface_hub import hf_hub_download  # heavy-ish: only for a hub id

    try:
        return json.loads(Path(hf_hub_download(name, "preprocessor_config.json", local_files_only=_offline()))
                          .read_text())  # fmt: skip
    except Exception:  # absent from the repo or the cache: CLIP's defaults below
        return {}


def load_judge(name: str, device: str | None = None) -> ClipJudge:
    """A `ClipJudge` from a CLIP directory or hub id (cached, offline); one-line errors otherwise."""
    from transformers import AutoConfig, AutoTokenizer, CLIPModel  # heavy: only when a judge is needed

    p = Path(name).expanduser()
    local = p.exists()
    if local and not (p / "config.json").is_file():
        raise UnlearnError(f"--judge {name}: not a Hugging Face CLIP directory (no config.json)")
    if not local and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise UnlearnError(f"--judge {name}: neither a CLIP directory nor a hub id like openai/clip-vit-base-patch32")
    src, cached = (str(p) if local else name), local or _offline()  # cached: never ask the network
    try:
        # the architecture first: CLIPModel.from_pretrained on another model type warns and initialises randomly
        kind = AutoConfig.from_pretrained(src, trust_remote_code=False, local_files_only=cached).model_type
        if kind != "clip":
            raise UnlearnError(f"--judge {name}: a {kind!r} model, not CLIP (model_type 'clip')")
        model = CLIPModel.from_pretrained(src, use_safetensors=True, local_files_only=cached)
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=False, local_files_only=cached)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UnlearnError(f"cannot load the CLIP judge {name!r} ({msg}); offline, put it in the Hugging Face "
                           "cache (HF_HOME) or pass a local CLIP directory (safetensors)") from None  # fmt: skip
    pre = _preprocessor_config(src, local)
    crop = pre.get("crop_size", model.config.vision_config.image_size)
    crop = crop["height"] if isinstance(crop, dict) else int(crop)
    size = pre.get("size", crop)
    size = size.get("shortest_edge", crop) if isinstance(size, dict) else int(size)
    mean = tuple(pre.get("image_mean", OPENAI_MEAN))
    std = tuple(pre.get("image_std", OPENAI_STD))
    dev = device or "cpu"
    return ClipJudge(model.to(dev).eval(), tok, size, crop, mean, std, name=name)


def read_images(judge: ClipJudge, images: torch.Tensor, rows: list, labels: dict[str, list[str]]) -> list[dict]:
    """Per-image readings: for image i of ``rows[i]`` (a `unlearn.data.sd_prompts.PromptRow`), the concept of its
    domain the judge picks (``labels[domain]`` concepts + the neutral label, read as ``""``) and its CLIPScore with
    its own prompt. Returns rows {prompt, concept, domain, pred, clip_score}."""
    feats = judge.image_features(images)  # (n, e)
    text = judge.text_features([r.prompt for r in rows])  # (n, e)
    scores = clip_score_values(feats, text).tolist()
    preds: list[str] = [""] * len(rows)
    for dom, concepts in labels.items():
        idx = [i for i, r in enumerate(rows) if r.domain == dom]
        if not idx:
            continue
        choice = decide(feats[idx], judge.text_features(label_prompts(concepts))).tolist()
        for i, c in zip(idx, choice):
            preds[i] = concepts[c] if c < len(concepts) else ""
    return [{"prompt": r.prompt, "concept": r.concept, "domain": r.domain, "pred": p, "clip_score": s}
            for r, p, s in zip(rows, preds, scores)]  # fmt: skip


def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def judge_metrics(examples: list[dict], concept: str, domain: str) -> dict[str, float]:
    """Erasure metrics from judged rows with ``set`` in forget | retain | paraphrase (the role for ``concept``):

    erasure_rate = share of forget images not read as ``concept``; in_domain_retention = share of retain images of
    ``domain`` read as their own concept; cross_domain_retention = the same for retain images of other domains;
    paraphrase_attack_success = share of paraphrase images read as ``concept``; clip_score(_forget) = mean CLIPScore
    of the retain (forget) images. A metric with no rows to average is left out (the caller says so).
    """
    by = {s: [e for e in examples if e["set"] == s] for s in ("forget", "retain", "paraphrase")}
    m = {
        "concept_rate": _mean(e["pred"] == concept for e in by["forget"]),
        "in_domain_retention": _mean(e["pred"] == e["concept"] for e in by["retain"] if e["domain"] == domain),
        "cross_domain_retention": _mean(e["pred"] == e["concept"] for e in by["retain"] if e["domain"] != domain),
        "paraphrase_attack_success": _mean(e["pred"] == concept for e in by["paraphrase"]),
        "clip_score": _mean(e["clip_score"] for e in by["retain"]),
        "clip_score_forget": _mean(e["clip_score"] for e in by["forget"]),
    }
    if m["concept_rate"] is not None:
        m["erasure_rate"] = 1.0 - m["concept_rate"]
    return {k: float(v) for k, v in m.items() if v is not None}


__all__ = ["ClipJudge", "load_judge", "label_prompts", "decide", "clip_score_values", "read_images", "judge_metrics"]
