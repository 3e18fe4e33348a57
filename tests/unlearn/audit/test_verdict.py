"""The verdict rule on hand-made numbers: evidence roles, the control kinds, the cap without an oracle, the minimum."""

import pytest

from unlearn.audit.llm import MARGINS, build_claims
from unlearn.audit.verdict import Evidence, judge, overall


def E(metric, cand, ctrl, thr=0.1, role="recovery", sign=1):
    return Evidence(metric, cand, ctrl, thr, 100, role, sign)


def test_oracle_control_three_outcomes():
    assert judge("x", [E("acc", 0.9, 0.05, role="behaviour")], "oracle").verdict == "not_forgotten"
    assert judge("x", [E("acc", 0.10, 0.05, role="behaviour")], "oracle").verdict == "forgotten"  # 0.05 <= margin
    assert judge("x", [E("acc", 0.16, 0.05, role="behaviour")], "oracle").verdict == "not_forgotten"  # 0.11 > 0.1
    sup = judge("x", [E("acc", 0.0, 0.05, role="behaviour"), E("relearn", 0.7, 0.1)], "oracle")
    assert sup.verdict == "suppressed" and "relearn" in sup.reason
    assert judge("x", [E("acc", 0.0, 0.05, role="behaviour"), E("relearn", 0.2, 0.1)], "oracle").verdict == "forgotten"


def test_sign_minus_one_means_lower_is_more_knowledge():
    assert judge("x", [E("rank", 1.0, 50.0, thr=5, sign=-1)], "oracle").verdict == "suppressed"
    assert judge("x", [E("rank", 60.0, 50.0, thr=5, sign=-1)], "oracle").verdict == "forgotten"


def test_original_control_needs_a_drop_and_control_free_evidence():
    # no drop below the original by the margin: not forgotten
    assert judge("x", [E("acc", 0.95, 1.0, role="behaviour")], "original").verdict == "not_forgotten"
    # dropped, but no control-free evidence: capped at suppressed, and it says why
    capped = judge("x", [E("acc", 0.05, 1.0, role="behaviour"), E("cka", 0.7, 1.0)], "original")
    assert capped.verdict == "suppressed" and "capped" in capped.reason
    # dropped and at chance level: forgotten; above chance: suppressed
    ok = [E("acc", 0.05, 1.0, role="behaviour"), E("relearn", 0.08, 0.07, thr=0.05, role="control_free")]
    assert judge("x", ok, "original").verdict == "forgotten"
    up = [E("acc", 0.05, 1.0, role="behaviour"), E("relearn", 0.5, 0.07, thr=0.05, role="control_free")]
    assert judge("x", up, "original").verdict == "suppressed"


def test_missing_numbers_never_make_forgotten():
    c = judge("x", [E("acc", None, 0.1, role="behaviour"), E("r", float("nan"), 0.1)], "oracle")
    assert c.verdict == "suppressed" and "no usable evidence" in c.reason


def test_overall_is_the_minimum():
    cs = [judge("a", [E("acc", 0.0, 0.0, role="behaviour")], "oracle"),
          judge("b", [E("acc", 0.0, 0.0, role="behaviour"), E("r", 0.9, 0.0)], "oracle")]  # fmt: skip
    assert overall(cs) == "suppressed"
    with pytest.raises(ValueError):
        overall([])


def _metrics(acc, prob, probe, cka, auc=0.5):
    return {"forget_acc": acc, "forget_prob": prob, "mia_loss_auc": auc, "mia_min_k_auc": auc,
            "forget_probe_acc": probe, "forget_knn_acc": probe, "forget_cka_original": cka,
            "forget_probe_chance": 0.07}  # fmt: skip


def _att(relearn, ic, q, pr):
    return {"relearn": {"before": [0.0] * 10, "after": [1.0] * int(10 * relearn) + [0.0] * (10 - int(10 * relearn)),
                        "entities": ["e"] * 10, "n_train": 10, "chance": 0.07},
            "in_context": {"acc": [ic] * 10, "n_guarded": 0, "chance": 0.07},
            "quantization": {"presets": {"int4": {"acc": [q] * 10}}, "chance": 0.07},
            "prompts": {"attacks": {"paraphrase": {"acc": [pr] * 10, "n": 10}}, "chance": 0.07,
                        "reverse_chance": 0.05}}  # fmt: skip


N = {"forget": 160, "holdout": 160, "chance": 0.07}


def test_build_claims_from_numbers():
    oracle, oracle_att = _metrics(0.02, 0.1, 0.06, 0.76), _att(0.1, 0.0, 0.02, 0.0)
    # a second oracle: every difference within the margins -> forgotten
    cl = build_claims(_metrics(0.04, 0.12, 0.08, 0.78), oracle, _att(0.1, 0.02, 0.03, 0.03), oracle_att, "oracle", N)
    assert {c.name for c in cl} == {"behaviour", "mia", "internal", "relearn", "in_context", "quantization",
                                    "prompts"}  # fmt: skip
    assert overall(cl) == "forgotten"
    # the untouched target
    tgt = build_claims(_metrics(1.0, 0.99, 0.5, 1.0, 0.99), oracle, _att(1.0, 0.9, 1.0, 0.8), oracle_att, "oracle", N)
    assert all(c.verdict == "not_forgotten" for c in tgt)
    # "I don't know.": behaviour at the oracle's level, relearning brings it back
    idk = build_claims(_metrics(0.0, 0.0, 0.06, 0.77), oracle, _att(0.8, 0.0, 0.0, 0.0), oracle_att, "oracle", N)
    by = {c.name: c.verdict for c in idk}
    assert by["behaviour"] == "forgotten" and by["relearn"] == "suppressed" and overall(idk) == "suppressed"
    # the margin is the one in MARGINS: just above it fires, just below does not
    m = MARGINS["relearn_acc"]
    for after, want in ((0.1 + m + 0.1, "suppressed"), (0.1 + m - 0.1, "forgotten")):
        a = _att(0.0, 0.0, 0.0, 0.0)
        a["relearn"]["after"] = [after] * 10
        by = {c.name: c.verdict for c in build_claims(_metrics(0.0, 0.0, 0.06, 0.76), oracle, a, oracle_att,
                                                       "oracle", N)}  # fmt: skip
        assert by["relearn"] == want


def test_mia_counts_both_directions():
    oracle = _metrics(0.02, 0.1, 0.06, 0.76, auc=0.5)
    low = build_claims(_metrics(0.0, 0.0, 0.06, 0.76, auc=0.2), oracle, {}, {}, "oracle", N)
    assert {c.name: c.verdict for c in low}["mia"] == "suppressed"  # forget far *less* likely than holdout


def test_no_oracle_caps_internal_but_not_chance_level_families():
    orig = _metrics(1.0, 0.99, 0.5, 1.0, 0.99)
    cl = build_claims(_metrics(0.05, 0.05, 0.07, 0.8), orig, _att(0.1, 0.05, 0.05, 0.05), _att(1, 1, 1, 1),
                      "original", N)  # fmt: skip
    by = {c.name: c.verdict for c in cl}
    assert by["relearn"] == "forgotten"  # 0.1 after relearning vs chance 0.07 + 0.05
    assert by["internal"] == "forgotten"  # probe at chance (control-free)
    cl2 = build_claims(_metrics(0.05, 0.05, 0.07, 0.8), orig, _att(0.5, 0.05, 0.05, 0.05), _att(1, 1, 1, 1),
                       "original", N)  # fmt: skip
    assert {c.name: c.verdict for c in cl2}["relearn"] == "suppressed"
