"""Concept-vector drift keys (``cv_*``): how much the forget entities' validated concept vectors moved.

Hong et al. 2024, "Intrinsic Evaluation of Unlearning Using Parametric Knowledge Traces"
(https://arxiv.org/abs/2406.11614, code https://github.com/yihuaihong/ConceptVectors): a concept vector is an MLP
value vector whose vocabulary projection names one concept and whose ablation damages answers about it only.
Locating, validating and the per-vector drift computation live in `unlearn.concepts` (methods use them too);
this module turns the drift of the forget entities' vectors into metric keys (means over vectors). Definitions in
docs/evaluators/concept-vectors.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from unlearn.metrics import register_metric

register_metric("cv_cosine", "concept_vectors", "lower",
                "mean cosine between the forget entities' concept vectors in the candidate and in the original "
                "(1 = untouched)", "[-1, 1]")  # fmt: skip
register_metric("cv_l2", "concept_vectors", "higher",
                "mean L2 distance of those vectors, candidate vs original, above the bf16 re-quantisation floor",
                ">= 0")  # fmt: skip
register_metric("cv_jaccard_original", "concept_vectors", "lower",
                "mean top-k Jaccard of the vectors' vocabulary projections, both through the original's unembedding "
                "(isolates the change of the vector)", "[0, 1]")  # fmt: skip
register_metric("cv_jaccard_self", "concept_vectors", "lower",
                "mean top-k Jaccard, each projection through its own model's unembedding (the reference's "
                "definition: includes read-out drift)", "[0, 1]")  # fmt: skip
register_metric("cv_related_rate", "concept_vectors", "lower",
                "mean share of the original projection's concept-related top tokens that survive in the candidate's",
                "[0, 1]")  # fmt: skip
register_metric(
    "cv_n_validated",
    "concept_vectors",
    "none",
    "number of validated concept vectors of the forget entities the cv_* means are over",
    ">= 0",
)

CV_KEYS = ("cv_cosine", "cv_l2", "cv_jaccard_original", "cv_jaccard_self", "cv_related_rate")


@dataclass
class DriftInput:
    """What drift needs: the original model (pre-unlearning) and the validated vectors of the forget entities."""

    original: object  # the original causal LM (same architecture as the candidate)
    vectors: list  # vector records (dicts with layer, column, top_tokens, concept tokens ...) from the JSON
    top_k: int = 0  # 0: the k the vectors were located with


def cv_metrics(model, inp: DriftInput | None) -> dict:
    """``cv_*`` keys of ``model``; ``None`` values (and ``cv_n_validated`` 0) without validated vectors."""
    if inp is None or not inp.vectors:
        return {**dict.fromkeys(CV_KEYS), "cv_n_validated": 0}
    from unlearn.concepts import drift

    res = drift(inp.original, model, inp.vectors)
    means = res["means"]
    return {
        "cv_cosine": means["cosine"],
        "cv_l2": means["l2_above_floor"],
        "cv_jaccard_original": means["jaccard_same_E"],
        "cv_jaccard_self": means["jaccard_own_E"],
        "cv_related_rate": means["related_rate"],
        "cv_n_validated": len(inp.vectors),
    }
