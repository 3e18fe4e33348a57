"""Needle: only the forget entities' concept-vector columns move (everything else bit-identical, even with the
default weight decay), they move up the forget NLL, and a forget set without a validated vector is an exit-2 error."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from unlearn.cli import main
from unlearn.config import TrainConfig
from unlearn.errors import UnlearnError
from unlearn.methods import get_method
from unlearn.methods.needle import NeedleConfig
from unlearn.targets.arch import arch
from unlearn.targets.llm import PromptFormat, SequenceLogProbs, collate, encode_qa
from unlearn.train import unlearn_model

SILENT = lambda *a, **k: None  # noqa: E731
COLS = {1: [3, 5], 0: [7]}  # layer -> columns of the planted vectors


def _vectors(tmp_path, model, entities, passed=True, norm_scale=1.0):
    a = arch(model)
    vecs = []
    for i, e in enumerate(entities):
        L = 1 if i == 0 else 0
        for D in COLS[L] if i < 2 else []:
            norm = float(a.value_matrix(L)[D].detach().float().norm()) * norm_scale
            vecs.append({"concept": e, "kind": "entity", "layer": L, "column": D, "norm": norm, "passed": passed})
    vecs.append({"concept": "someone else", "kind": "entity", "layer": 1, "column": 9, "passed": True})
    p = tmp_path / f"vectors_{passed}_{norm_scale}.json"
    p.write_text(json.dumps({"model_digest": None, "vectors": vecs}))
    return p


def _forget_nll(model, tok, recs) -> float:
    b = collate([encode_qa(tok, PromptFormat(), r["question"], r["answer"]) for r in recs], tok.pad_token_id)
    with torch.no_grad():
        out = SequenceLogProbs(model)(**b)
    return float(-out["seq_logp"].sum() / out["n_tokens"].sum())


def _run(tiny, cfg, forget, **tkw):
    tok, model, splits = tiny
    tcfg = TrainConfig(**{**dict(lr=0.2, epochs=2, batch_size=4, warmup_epochs=0, precision="fp32"), **tkw})
    assert tcfg.weight_decay > 0  # the default decay: masked entries must not move anyway
    return unlearn_model(copy.deepcopy(model), tok, PromptFormat(), forget, splits["retain90"][:4],
                         get_method("needle"), cfg, tcfg, 0, None, progress=False, log=SILENT)  # fmt: skip


def _forget(splits):
    recs = splits["forget10"]
    ents = sorted({r["entity"] for r in recs})[:2]
    return [r for r in recs if r["entity"] in ents], ents


def test_only_the_concept_columns_move_and_the_forget_nll_rises(tiny, tmp_path):
    tok, model, splits = tiny
    forget, ents = _forget(splits)
    cfg = NeedleConfig(vectors=str(_vectors(tmp_path, model, ents)))
    out, _ = _run(tiny, cfg, forget)
    assert cfg.entities == ents  # filled from the forget records
    a0, a1 = arch(model), arch(out)
    names = {a0.down_param_name(L): L for L in COLS}
    ref = dict(model.named_parameters())
    for n, p in out.named_parameters():
        if n not in names:
            assert torch.equal(p, ref[n]), n  # bit-identical
            continue
        L = names[n]
        moved = (a1.value_matrix(L) != a0.value_matrix(L)).any(dim=1)  # (d_ff,) which value vectors changed
        assert set(moved.nonzero().flatten().tolist()) == set(COLS[L]), n
    before, after = _forget_nll(model, tok, forget), _forget_nll(out, tok, forget)
    assert after > 1.1 * before, (before, after)  # gradient ascent (lr 0.2, the reference scripts' Needle lr)


def test_initial_noise_is_seeded(tiny, tmp_path):
    _, model, splits = tiny
    forget, ents = _forget(splits)
    path = str(_vectors(tmp_path, model, ents))
    runs = [_run(tiny, NeedleConfig(vectors=path, noise_std=0.1, entities=ents), forget, lr=1e-9, epochs=1)[0]
            for _ in range(2)]  # fmt: skip
    v = [arch(m).value_matrix(1)[3] for m in runs]
    assert torch.equal(v[0], v[1]) and not torch.allclose(v[0], arch(model).value_matrix(1)[3], atol=1e-3)


def test_no_validated_vector_is_an_error(tiny, tmp_path):
    _, model, splits = tiny
    forget, ents = _forget(splits)
    with pytest.raises(UnlearnError, match="none of the 2 forget entities has a validated concept vector"):
        _run(tiny, NeedleConfig(vectors=str(_vectors(tmp_path, model, ents, passed=False))), forget)
    # located but unvalidated vectors are usable on request
    _run(tiny, NeedleConfig(vectors=str(_vectors(tmp_path, model, ents, passed=False)), require_validated=False),
         forget, epochs=1)  # fmt: skip
    with pytest.raises(UnlearnError, match="made for another model"):
        _run(tiny, NeedleConfig(vectors=str(_vectors(tmp_path, model, ents, norm_scale=2.0))), forget)


def test_cli_exit_2_without_validated_vectors(tiny, tiny_target_dir, tmp_path, capsys):
    _, model, _ = tiny
    ents = sorted({json.loads(line)["entity"] for line in (tiny_target_dir / "forget.jsonl").read_text().splitlines()})
    path = _vectors(tmp_path, model, ents[:2], passed=False)
    rc = main(["run", "--method", "needle", "--model", str(tiny_target_dir / "model"),
               "--forget", str(tiny_target_dir / "forget.jsonl"), "--retain", str(tiny_target_dir / "retain.jsonl"),
               "--holdout", str(tiny_target_dir / "holdout.jsonl"), "--out", str(tmp_path / "runs"), "--suite",
               "basic", "--no-progress", "--set", f"method.vectors={path}", "--set", "epochs=1"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "has a validated concept vector" in err[0], err
