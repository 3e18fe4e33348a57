"""The metric registry as the single source of truth: templates, directions, check_keys, the generated docs."""

from pathlib import Path

import pytest

from unlearn.metrics import DIRECTIONS, METRICS, check_keys, lookup, metrics_doc, register_metric


@pytest.fixture
def scratch(monkeypatch):
    """Register test-only names without leaking them into the real registry."""
    from unlearn import metrics as M

    M._load_all()  # the real registrations first, so the copies below hold them and nothing leaks either way
    monkeypatch.setattr(M, "METRICS", dict(M.METRICS))
    monkeypatch.setattr(M, "_PATTERNS", dict(M._PATTERNS))
    return M


def test_templates_match_only_their_values(scratch):
    scratch.register_metric("{set}_scratch_{ref}", "representation", "higher", "d", values={
        "set": ("forget", "retain"), "ref": ("original", "oracle")})  # fmt: skip
    scratch.register_metric("layer{n}_norm", "representation", "none", "any layer index")
    assert scratch.lookup("forget_scratch_oracle").name == "{set}_scratch_{ref}"
    assert scratch.lookup("holdout_scratch_oracle") is None and scratch.lookup("forget_scratch_target") is None
    assert scratch.lookup("layer12_norm").direction == "none" and scratch.lookup("layer_norm") is None


def test_exact_names_win_over_templates():
    assert lookup("forget_acc").name == "forget_acc" and lookup("forget_acc").direction == "oracle"
    assert lookup("retain_acc").name == "{set}_acc" and lookup("retain_acc").direction == "higher"
    assert lookup("retain_para_acc").name == "{set}_para_acc"  # not "{set}_acc" with set="retain_para"


def test_check_keys_flags_unregistered_and_non_scalars():
    ok = {"schema_version": 1, "forget_acc": 0.1, "cost_steps": 3, "forget_quality": None}
    assert check_keys(ok) == []
    assert check_keys({"model": "tiny", "forget_acc": 0.1}) == ["model"]
    assert check_keys({"forget_acc": [0.1, 0.2]}) == ["forget_acc"]  # per-layer series go to CSV, not here


def test_directions_are_checked():
    with pytest.raises(ValueError, match="direction must be one of"):
        register_metric("x_metric", "logit", "up", "bad")
    assert set(m.direction for m in METRICS.values()) <= set(DIRECTIONS)


def test_docs_metrics_md_is_what_the_registry_generates():
    doc = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
    assert doc.read_text() == metrics_doc(), (
        'docs/metrics.md is stale: python -c "from unlearn.metrics import write_metrics_doc; '
        "write_metrics_doc('docs/metrics.md')\""
    )
