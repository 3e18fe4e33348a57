"""Concept vectors (parametric knowledge traces): locate, validate and compare MLP value vectors about one concept.

Hong et al., "Intrinsic Evaluation of Unlearning Using Parametric Knowledge Traces" (https://arxiv.org/abs/2406.11614,
code https://github.com/yihuaihong/ConceptVectors), building on Geva et al. 2022 (https://arxiv.org/abs/2203.14680):
an MLP adds ``W_down σ(h)`` to the residual stream, so column ``D`` of layer ``L``'s down-projection (``v``, d_model)
is a *value vector* added with weight ``σ_D(h)``. Projected through the unembedding (``E v``, no final norm, as the
reference does) its top tokens say what it promotes; a *concept vector* is one whose top tokens are about one concept
and whose ablation damages the model's answers about that concept and not about others.

This module is shared by the Needle method (`unlearn.methods.needle`) and by the concept-vector metrics, so it
imports neither training nor metrics code. Its pieces:

* `project` / `top_tokens`: vocabulary projection of value vectors, chunked; ties broken by (−logit, token id).
* `locate`: for each concept (a set of token pieces), the value vector whose top-K overlaps it most.
  ``score = |TopK ∩ Tok(c)| / K`` (the reference's coherence); ``K = min(200, V // 20)`` so that K stays a small
  fraction of the vocabulary (200 of a 32k vocabulary is 0.6 %; of the embedded target's 1024 it would be 20 %).
* `validate`: causal validation: ablate the one column in place (zero, Gaussian noise or the layer's mean value
  vector), answer the concept's and unrelated questions greedily, restore the column from a clone and check the
  restoration bit-exactly. Unlike the reference notebook it (1) never lets one concept's perturbation leak into
  the next (the notebook's "clean" copy aliases the working weights, so noise accumulates across concepts) and
  (2) scores *every* unrelated question (the notebook keeps only the last ``len(target questions)`` of the 50).
* `drift`: how much an unlearned model changed each vector: cosine, L2 (fp32) and the bf16 re-quantisation floor,
  top-K Jaccard with the original's unembedding (``same_E``: change of the vector alone) and with each model's own
  (``own_E``: the reference's definition), related-token survival and, given prompts, the activation ratio.
* The default concept set of the embedded TinyFacts target (`tinyfacts_concepts`) and the vectors file
  (`save_vectors` / `load_vectors`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearn.errors import UnlearnError
from unlearn.targets.arch import Arch, arch

FORMAT_VERSION = 1
BOUNDARY = "Ġ▁ "  # word-boundary markers of byte-level BPE (GPT-2, Llama-3) and SentencePiece (Llama-2) pieces


def default_top_k(vocab_size: int) -> int:
    """K of the top-K readout: the reference's 200, capped at 5 % of the vocabulary (51 for a 1024-token vocab)."""
    return max(1, min(200, vocab_size // 20))


def default_layers(n_layers: int) -> list[int]:
    """The searched layers: the middle-to-upper band ``[floor(0.4 n), n - 2]`` of the reference's models (its dev
    concepts sit in layers 15-27 of 32); a model with fewer than 8 layers has no such band (for 4 layers it would be
    layers 1-2 only), so there every layer but the first (embedding-adjacent) one is searched."""
    if n_layers < 8:
        return list(range(min(1, n_layers - 1), n_layers))
    return list(range(math.floor(0.4 * n_layers), n_layers - 1))


# ----------------------------------------------------------------------------------------------- projection
@torch.no_grad()
def project(a: Arch, layer: int, columns: Sequence[int] | None = None, chunk: int = 1024) -> torch.Tensor:
    """(n, V) float32 logits ``E v`` of layer ``layer``'s value vectors (all d_ff, or ``columns``), no final norm."""
    W = a.value_matrix(layer)  # (d_ff, d_model) view
    if columns is not None:
        W = W[list(columns)]
    E = a.unembedding().detach()  # (V, d_model)
    out = []
    for i in range(0, W.shape[0], chunk):
        out.append(W[i : i + chunk].detach().float() @ E.float().T)  # (chunk, V)
    return torch.cat(out).cpu()


def rank_tokens(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(n, k) token ids of the k largest logits per row, ordered by (−logit, token id): a stable descending sort
    keeps equal logits in increasing id order, where `torch.topk` leaves ties unspecified."""
    return torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k]


@torch.no_grad()
def top_tokens(a: Arch, layer: int, k: int, columns: Sequence[int] | None = None, chunk: int = 1024) -> torch.Tensor:
    """(n, k) top-k token ids of layer ``layer``'s value vectors, in chunks so that (chunk, V) is the largest
    temporary (11008 x 32000 floats would be 1.4 GB per layer of a 7B model)."""
    cols = list(range(a.value_matrix(layer).shape[0])) if columns is None else list(columns)
    out = [rank_tokens(project(a, layer, cols[i : i + chunk]), k) for i in range(0, len(cols), chunk)]
    return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)


# ----------------------------------------------------------------------------------------------- concept tokens
def piece_text(piece: str) -> str:
    return piece.lstrip(BOUNDARY)


def concept_token_ids(tok, words: Sequence[str], min_chars: int = 3) -> set[int]:
    """``Tok(c)``: the token pieces of a concept's words, each tokenised with and without a leading space, keeping
    pieces with at least ``min_chars`` letters (boundary marker stripped). The filter drops what every concept
    shares: single digits (years are spelled digit by digit), one- and two-letter fragments, punctuation."""
    ids: set[int] = set()
    for w in words:
        for text in (w, " " + w):
            for i in tok(text, add_special_tokens=False)["input_ids"]:
                t = piece_text(tok.convert_ids_to_tokens(i))
                if sum(ch.isalpha() for ch in t) >= min_chars:
                    ids.add(int(i))
    return ids


# ----------------------------------------------------------------------------------------------- locate
def locate(
    model: nn.Module,
    tok,
    concepts: dict[str, Sequence[str]],
    layers: Sequence[int] | None = None,
    top_k: int | None = None,
    min_score: float = 0.0,
    per_concept: int = 1,
    min_chars: int = 3,
    progress: Callable | None = None,
) -> list[dict]:
    """The best value vector(s) of every concept by vocabulary projection.

    Args:
        concepts: concept name -> its words (tokenised by `concept_token_ids`).
        layers: searched layers (default `default_layers`).
        top_k: K of the readout (default `default_top_k`).
        min_score: keep a candidate only if ``|TopK ∩ Tok(c)| / K >= min_score``.
        per_concept: candidates kept per concept (best first).
        progress: optional ``progress(iterable) -> iterable`` wrapper over the layers (e.g. tqdm).

    Returns: one dict per kept candidate: ``concept, layer, column, score, overlap, n_concept_tokens, top_k,
    norm`` (‖v‖, fp32), ``top_tokens`` (the K pieces, best first) and ``related_tokens`` / ``related_token_ids``
    (the concept pieces among them). Columns are
    ranked by overlap, then by how high the overlapping tokens sit (sum over them of ``(K - rank) / K``), then by
    (layer, column); concepts with no piece left after filtering are skipped.
    """
    a = arch(model)
    V = a.unembedding().shape[0]
    K = top_k or default_top_k(V)
    layers = default_layers(a.n_layers) if layers is None else list(layers)
    bad = [L for L in layers if not 0 <= L < a.n_layers]
    if bad:
        raise UnlearnError(f"layers {bad} out of range: the model has {a.n_layers} layers")
    names, sets = [], []
    for c, words in concepts.items():
        ids = concept_token_ids(tok, words, min_chars)
        if ids:
            names.append(c)
            sets.append(ids)
    if not names:
        return []
    C = torch.zeros((len(names), V))  # (n_concepts, V) membership
    for j, ids in enumerate(sets):
        C[j, sorted(ids)] = 1.0
    weight = (K - torch.arange(K, dtype=torch.float32)) / K  # (K,) rank weights, 1 for the top token
    keys, overlaps, where = [], [], []  # per (layer, column chunk): (n_cols, n_concepts) each
    for L in progress(layers) if progress else layers:
        top = top_tokens(a, L, K)  # (d_ff, K)
        for i in range(0, top.shape[0], 1024):
            hit = C[:, top[i : i + 1024]]  # (n_concepts, chunk, K): 1 where a top token belongs to the concept
            ov = hit.sum(-1).T  # (chunk, n_concepts)
            rank_w = (hit * weight).sum(-1).T  # (chunk, n_concepts), < ov + 1
            keys.append(ov + rank_w / (K + 1))  # lexicographic (overlap, rank weight)
            overlaps.append(ov)
            where += [(L, D) for D in range(i, i + ov.shape[0])]
    key = torch.cat(keys)  # (n_layers * d_ff, n_concepts)
    overlap = torch.cat(overlaps)
    pieces = tok.convert_ids_to_tokens(list(range(V)))
    out = []
    for j, c in enumerate(names):
        # stable descending sort: equal keys keep (layer, column) order
        order = torch.sort(key[:, j], descending=True, stable=True).indices[:per_concept]
        for r in order.tolist():
            score = float(overlap[r, j]) / K
            if overlap[r, j] == 0 or score < min_score:
                continue
            L, D = where[r]
            ids = top_tokens(a, L, K, [D])[0].tolist()
            norm = round(float(a.value_matrix(L)[D].detach().float().norm()), 6)
            out.append({
                "concept": c, "layer": L, "column": D, "score": round(score, 6), "overlap": int(overlap[r, j]),
                "n_concept_tokens": len(sets[j]), "top_k": K, "norm": norm,
                "top_tokens": [pieces[i] for i in ids], "related_tokens": [pieces[i] for i in ids if i in sets[j]],
                "related_token_ids": [i for i in ids if i in sets[j]],
            })  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------- validation
@dataclass
class Thresholds:
    """When an ablation counts as causal evidence. The spec's BLEU thresholds (target <= 0.7, unrelated >= 0.85,
    specificity >= 0.2), with exact agreement with the unablated model's own answers in place of BLEU:"""

    max_target_agreement: float = 0.7  # at least 30 % of the concept's answers must change
    min_unrelated_agreement: float = 0.85  # at most 15 % of the unrelated answers may change
    min_specificity: float = 0.2  # unrelated agreement minus target agreement


def _answers(model, tok, fmt, questions: Sequence[str], max_new_tokens: int, batch_size: int = 128) -> list[str]:
    from unlearn.targets.llm import encode_prompt, greedy_generate

    out = []
    for i in range(0, len(questions), batch_size):
        prompts = [encode_prompt(tok, fmt, q) for q in questions[i : i + batch_size]]
        gen = greedy_generate(model, tok, prompts, max_new_tokens=max_new_tokens)
        out += [tok.decode(g, skip_special_tokens=True).strip() for g in gen]
    return out


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


@torch.no_grad()
def validate(
    model: nn.Module,
    tok,
    fmt,
    candidate: dict,
    concept_questions: Sequence[tuple[str, str]],
    unrelated_questions: Sequence[tuple[str, str]],
    mode: str = "zero",
    noise_std: float = 0.1,
    n_draws: int = 3,
    seed: int = 0,
    max_new_tokens: int = 16,
    thresholds: Thresholds | None = None,
    before: dict[str, str] | None = None,
) -> dict:
    """Ablate column ``candidate["column"]`` of layer ``candidate["layer"]`` and measure what changes.

    ``mode``: ``zero`` (v := 0, deterministic), ``noise`` (v := v + N(0, noise_std²), ``n_draws`` draws from a
    generator seeded with ``seed``; the reference uses std 0.1, one draw) or ``mean`` (v := the mean of the layer's
    value vectors, keeping the layer's average contribution). Questions are (question, gold answer) pairs;
    ``before`` may hold the unablated model's answers (question -> answer) to skip regenerating them.

    Returns exact-match accuracy against the gold answers before/after (``target_*``, ``unrelated_*``; after =
    mean over draws), agreement with the unablated model's own answers (``*_agreement``), ``*_change = 1 -
    agreement``, ``specificity = target_change - unrelated_change``, ``noise_to_norm = noise_std·sqrt(d)/‖v‖``
    (noise mode), the counts scored and ``passed`` (`Thresholds`). The weights are bit-identical afterwards.
    """
    if mode not in ("zero", "noise", "mean"):
        raise UnlearnError(f"ablation mode must be zero, noise or mean, got {mode!r}")
    if not concept_questions:
        raise UnlearnError(f"concept {candidate.get('concept')!r} has no question to validate with")
    th = thresholds or Thresholds()
    a = arch(model)
    W = a.value_matrix(int(candidate["layer"]))  # (d_ff, d_model) view of the weight
    D = int(candidate["column"])
    saved = W[D].detach().clone()  # (d_model,): restored from this clone, never from an alias of W
    tq = [q for q, _ in concept_questions]
    uq = [q for q, _ in unrelated_questions]
    qs = tq + uq
    gold = [g for _, g in concept_questions] + [g for _, g in unrelated_questions]
    if before is not None and all(q in before for q in qs):
        base = [before[q] for q in qs]
    else:
        base = _answers(model, tok, fmt, qs, max_new_tokens)
    draws = n_draws if mode == "noise" else 1
    gen = torch.Generator().manual_seed(seed)
    mean_v = W.detach().float().mean(0).to(W.dtype)  # (d_model,)
    after = []
    try:
        for _ in range(draws):
            if mode == "zero":
                W[D] = 0
            elif mode == "mean":
                W[D] = mean_v
            else:
                noise = torch.randn(saved.shape, generator=gen, dtype=torch.float32) * noise_std
                W[D] = (saved.float() + noise.to(saved.device)).to(W.dtype)
            after.append(_answers(model, tok, fmt, qs, max_new_tokens))
            W[D] = saved
    finally:
        W[D] = saved
    if not torch.equal(W[D], saved):
        raise RuntimeError("value vector not restored bit-exactly")
    nt = len(tq)

    def acc(ans, lo, hi):
        return _mean(ans[i].strip() == gold[i].strip() for i in range(lo, hi))

    def agree(ans, lo, hi):
        return _mean(ans[i] == base[i] for i in range(lo, hi))

    n = len(qs)
    res = {
        "mode": mode,
        "n_target": nt,
        "n_unrelated": n - nt,
        "target_before": acc(base, 0, nt),
        "target_after": _mean(acc(x, 0, nt) for x in after),
        "unrelated_before": acc(base, nt, n) if n > nt else float("nan"),
        "unrelated_after": _mean(acc(x, nt, n) for x in after) if n > nt else float("nan"),
        "target_agreement": _mean(agree(x, 0, nt) for x in after),
        "unrelated_agreement": _mean(agree(x, nt, n) for x in after) if n > nt else 1.0,
    }
    res["target_change"] = 1 - res["target_agreement"]
    res["unrelated_change"] = 1 - res["unrelated_agreement"]
    res["specificity"] = res["target_change"] - res["unrelated_change"]
    norm = float(saved.float().norm())
    res["noise_to_norm"] = noise_std * math.sqrt(saved.numel()) / norm if mode == "noise" and norm > 0 else None
    res["passed"] = bool(
        res["target_agreement"] <= th.max_target_agreement
        and res["unrelated_agreement"] >= th.min_unrelated_agreement
        and res["specificity"] >= th.min_specificity
    )
    return res


# ----------------------------------------------------------------------------------------------- drift
def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


@torch.no_grad()
def _activations(model: nn.Module, layer: int, column: int, prompts: Sequence[list[int]]) -> float:
    """Mean |σ_D(h)| over every token of ``prompts``: the input of the down-projection at index ``column``."""
    a = arch(model)
    vals: list[torch.Tensor] = []
    hook = a.down_proj(layer).register_forward_pre_hook(lambda m, args: vals.append(args[0][..., column].abs()))
    dev = next(model.parameters()).device
    try:
        for p in prompts:
            model(input_ids=torch.tensor([p], device=dev))
    finally:
        hook.remove()
    return float(torch.cat([v.flatten().float().cpu() for v in vals]).mean()) if vals else float("nan")


@torch.no_grad()
def drift(
    original: nn.Module,
    candidate: nn.Module,
    vectors: Sequence[dict],
    tok=None,
    top_k: int | None = None,
    prompts: dict[str, Sequence[list[int]]] | None = None,
) -> dict:
    """How much ``candidate`` (e.g. an unlearned model) changed each concept vector of ``original``.

    ``vectors``: dicts with ``layer``, ``column`` and optionally ``concept``, ``top_k`` (the K the vector was
    located with; ``top_k`` overrides, default `default_top_k`) and ``related_token_ids`` (the original's concept
    pieces among its top-K, as `locate` writes them; or ``related_tokens`` pieces, mapped to ids with ``tok``).
    ``prompts``: optional concept -> tokenised prompts for the activation ratio.

    Per vector: ``cosine`` (fp32, clipped to <= 1), ``l2`` (fp32), ``l2_dtype_floor = ‖v0 − bf16(v0)‖`` (what
    bf16 re-quantisation alone would show; 0 when the original is already bf16-representable), ``l2_above_floor``,
    ``jaccard_same_E`` (both top-K sets read with the original's unembedding: change of the vector alone),
    ``jaccard_own_E`` (each with its own: the reference's definition, includes readout drift),
    ``related_rate`` (fraction of the related tokens still in the candidate's own-E top-K, the reference's
    ``|P1 ∩ (P0 ∩ W)| / |P0 ∩ W|``; None without related tokens) and ``act_ratio`` (mean |σ_D| on the concept's
    prompts, candidate / original; with ``prompts``). Returns ``{"rows": [...], "means": {metric: mean}}``.
    """
    a0, a1 = arch(original), arch(candidate)
    V = a0.unembedding().shape[0]
    E0 = a0.unembedding().detach().float().cpu()  # (V, d_model)
    E1 = a1.unembedding().detach().float().cpu()
    rows = []
    for vec in vectors:
        L, D = int(vec["layer"]), int(vec["column"])
        K = top_k or int(vec.get("top_k") or 0) or default_top_k(V)
        v0 = a0.value_matrix(L)[D].detach().float().cpu()  # (d_model,)
        v1 = a1.value_matrix(L)[D].detach().float().cpu()
        n0, n1 = float(v0.norm()), float(v1.norm())
        cos = float(v0 @ v1) / (n0 * n1) if n0 > 0 and n1 > 0 else float("nan")
        l2 = float((v0 - v1).norm())
        floor = float((v0 - v0.to(torch.bfloat16).float()).norm())
        t0 = set(rank_tokens(E0 @ v0, K).tolist())
        t1_same = set(rank_tokens(E0 @ v1, K).tolist())
        t1_own = set(rank_tokens(E1 @ v1, K).tolist())
        row = {
            "concept": vec.get("concept"), "layer": L, "column": D, "cosine": min(cos, 1.0), "l2": l2,
            "l2_dtype_floor": floor, "l2_above_floor": max(0.0, l2 - floor),
            "jaccard_same_E": jaccard(t0, t1_same), "jaccard_own_E": jaccard(t0, t1_own), "related_rate": None,
        }  # fmt: skip
        ids = set(vec.get("related_token_ids") or ())
        if not ids and vec.get("related_tokens") and tok is not None:
            ids = set(tok.convert_tokens_to_ids(list(vec["related_tokens"])))
        if ids:
            row["related_rate"] = len(ids & t1_own) / len(ids)
        if prompts and vec.get("concept") in prompts:
            p = prompts[vec["concept"]]
            base = _activations(original, L, D, p)
            row["act_ratio"] = _activations(candidate, L, D, p) / base if base > 0 else float("nan")
        rows.append(row)
    keys = [k for k in rows[0] if k not in ("concept", "layer", "column")] if rows else []
    mean = {}
    for k in keys:
        xs = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
        mean[k] = _mean(xs) if xs else None
    return {"rows": rows, "means": mean}


# ----------------------------------------------------------------------------------------------- TinyFacts concepts
def _value_words(value: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z]+", value)]


def tinyfacts_concepts(records: Sequence[dict]) -> dict[str, dict]:
    """The default concept set of the embedded target from its QA records (``entity``, ``split`` = attribute,
    ``question``, ``answer``).

    * one ``entity`` concept per entity: its name pieces and the words of its eight attribute values (what a
      value vector "about" that person would promote at the answer position); questions: its own QA pairs;
    * one ``value`` concept per distinct attribute value (e.g. ``occupation=astronomer``): the value's words;
      questions: every QA pair whose gold answer is that value (of the same attribute). Years are spelled digit by
      digit by the tokenizer, so birth-year values have no piece left after `concept_token_ids` and drop out.

    Returns name -> {"kind", "words", "questions": [(q, a), ...], "entities": [...]}, entity concepts first.
    """
    ent: dict[str, dict] = {}
    val: dict[str, dict] = {}
    for r in records:
        e = ent.setdefault(r["entity"], {"kind": "entity", "words": _value_words(r["entity"]), "questions": [],
                                         "entities": [r["entity"]]})  # fmt: skip
        e["words"] += [w for w in _value_words(r["answer"]) if w not in e["words"]]
        e["questions"].append((r["question"], r["answer"]))
        name = f"{r.get('split', 'value')}={r['answer']}"
        v = val.setdefault(name, {"kind": "value", "words": _value_words(r["answer"]), "questions": [],
                                  "entities": []})  # fmt: skip
        v["questions"].append((r["question"], r["answer"]))
        v["entities"].append(r["entity"])
    return {**ent, **val}


def unrelated_for(
    name: str, concept: dict, records: Sequence[dict], n_entities: int = 5, n_values: int = 40, seed: int = 8888
) -> list[tuple[str, str]]:
    """QA pairs about other things, drawn with a generator seeded by (seed, concept name) so that each concept's
    set is fixed and independent of the order concepts are validated in.

    Entity concept: every QA pair of ``n_entities`` other entities (the reference: the questions of 5 other
    concepts). Value concept: ``n_values`` QA pairs whose gold answer is another value."""
    rng = random.Random(f"{seed}:{name}")
    if concept["kind"] == "entity":
        own = set(concept.get("entities", ()))
        others = sorted({r["entity"] for r in records} - own)
        pick = set(rng.sample(others, min(n_entities, len(others))))
        return [(r["question"], r["answer"]) for r in records if r["entity"] in pick]
    own_answers = {a for _, a in concept["questions"]}
    pool = [(r["question"], r["answer"]) for r in records if r["answer"] not in own_answers]
    return rng.sample(pool, min(n_values, len(pool)))


# ----------------------------------------------------------------------------------------------- vectors file
def weights_digest(model_dir: str | Path) -> str:
    """sha256 (first 12 hex) of a model directory's safetensors files: the digest of a non-embedded model."""
    h = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise UnlearnError(f"{model_dir}: no safetensors weights to digest")
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def dumps_vectors(doc: dict) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def save_vectors(path: str | Path, doc: dict) -> None:
    from unlearn.store import atomic_write_text

    atomic_write_text(path, dumps_vectors(doc))


_REQUIRED = ("concept", "layer", "column")


def load_vectors(path: str | Path) -> dict:
    """A vectors file: ``{format, model, model_digest, created_with, settings, vectors: [{concept, kind, layer,
    column, score, top_tokens, related_tokens, validation, passed}, ...]}``; one-line errors when malformed."""
    p = Path(path)
    if not p.is_file():
        raise UnlearnError(f"concept vectors file not found: {p}")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnlearnError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("vectors"), list):
        raise UnlearnError(f"{p}: expected an object with a 'vectors' list")
    for i, v in enumerate(doc["vectors"]):
        if not isinstance(v, dict) or any(k not in v for k in _REQUIRED):
            raise UnlearnError(f"{p}: vector {i} needs {', '.join(_REQUIRED)}")
        if not isinstance(v["layer"], int) or not isinstance(v["column"], int):
            raise UnlearnError(f"{p}: vector {i}: layer and column must be integers")
    return doc


def package_vectors_path(name: str = "tinyfacts") -> Path:
    """The shipped vectors of the embedded target (package data)."""
    return Path(__file__).resolve().parent / "assets" / "concept_vectors" / f"{name}.json"


def settings_dict(**kw: Any) -> dict:
    return {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in kw.items()}
