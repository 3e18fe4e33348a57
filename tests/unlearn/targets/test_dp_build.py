"""The DP base builder: accounting from the actual (sigma, q, steps), units that never split an entity, per-unit
clipping equal to separate per-entity backward passes, resume after a kill, bad settings."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from unlearn.errors import UnlearnError
from unlearn.targets import dp_build
from unlearn.targets.dp_build import (
    DP_PRESETS,
    base_dir,
    build_dp_base,
    dp_epsilon,
    entity_of,
    noise_for,
    per_unit_grads,
    private_rows,
    row_losses,
    sample_step,
    unit_clipped_sum,
    unit_index,
)

# the RDP orders the builder uses (opacus' defaults extended to 256)
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 257))


def _gaussian_eps(sigma: float, steps: int, delta: float) -> float:
    """Without subsampling (q = 1) the Gaussian mechanism's RDP at order a is a / (2 sigma^2) per step (Mironov
    2017); converted with Balle et al. 2020, Thm 21 (what opacus' privacy_analysis.get_privacy_spent uses)."""
    best = math.inf
    for a in ORDERS:
        rdp = steps * a / (2 * sigma**2)
        best = min(best, rdp + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return best


def test_epsilon_is_the_accountants_for_sigma_q_steps():
    base = dp_epsilon(2.0, 0.05, 300, 1e-5)
    assert dp_epsilon(2.0, 0.05, 300, 1e-5) == base  # deterministic
    assert dp_epsilon(2.5, 0.05, 300, 1e-5) < base  # more noise
    assert dp_epsilon(2.0, 0.10, 300, 1e-5) > base  # a higher sampling rate
    assert dp_epsilon(2.0, 0.05, 600, 1e-5) > base  # more steps
    assert dp_epsilon(2.0, 0.05, 300, 1e-3) < base  # a looser delta
    # q = 1 against the closed form of the Gaussian mechanism
    assert dp_epsilon(8.0, 1.0, 50, 1e-5) == pytest.approx(_gaussian_eps(8.0, 50, 1e-5), rel=1e-9)
    assert dp_epsilon(0.0, 0.05, 10, 1e-5) == math.inf and dp_epsilon(1.0, 0.05, 0, 1e-5) == 0.0


def test_noise_for_meets_the_request_tightly():
    for eps in (0.5, 1.0, 10.0):
        sigma = noise_for(eps, 0.03, 400, 1e-5)
        got = dp_epsilon(sigma, 0.03, 400, 1e-5)
        assert got <= eps and got > 0.95 * eps  # never above, and not wastefully below
    assert noise_for(math.inf, 0.03, 400, 1e-5) == 0.0


def _rows():
    return [
        {"question": "q1", "answer": "a", "group": "Ann|pet"},
        {"question": "q2", "answer": "b", "group": "Bob|pet"},
        {"entity": "Ann", "text": "Ann has a cat."},
        {"question": "q3", "answer": "c", "group": "Ann|award"},
        {"question": "q4", "answer": "d", "group": "Cy|pet"},
        {"entity": "Bob", "text": "Bob plays."},
    ]


def test_entity_units_never_split_an_entity():
    rows = _rows()
    units, names = unit_index(rows, "entity")
    assert names == ["Ann", "Bob", "Cy"] and units == [[0, 2, 3], [1, 5], [4]]
    rec, _ = unit_index(rows, "record")
    assert rec == [[i] for i in range(6)]
    gen = torch.Generator().manual_seed(0)
    seen_any = False
    for _ in range(200):
        got, owner = sample_step(units, 0.5, 2, gen)
        by_owner: dict[int, set] = {}
        for r, o in zip(got, owner):
            by_owner.setdefault(o, set()).add(entity_of(rows[r]))
        assert all(len(e) == 1 for e in by_owner.values())  # one unit = one entity
        ents = [next(iter(e)) for e in by_owner.values()]
        assert len(ents) == len(set(ents))  # an entity is never two units in one step
        assert all(sum(1 for o in owner if o == j) <= 2 for j in by_owner)  # entity_rows cap
        assert len(got) == len(set(got))  # no row twice
        seen_any |= len(by_owner) > 1
    assert seen_any


def test_poisson_rate():
    units = [[i] for i in range(1000)]
    gen = torch.Generator().manual_seed(1)
    n = [len(sample_step(units, 0.05, 1, gen)[0]) for _ in range(200)]
    assert sum(n) / len(n) == pytest.approx(50, abs=3)  # q * N expected, Poisson-distributed
    assert len(set(n)) > 5


@pytest.fixture(scope="module")
def tiny_lm(tiny):
    import copy

    tok, model, _ = tiny
    return tok, copy.deepcopy(model).float().train()


def test_per_unit_clipping_equals_separate_backward(tiny_lm):
    """Per-row gradients summed per entity, clipped per entity == one backward per entity's mean loss, clipped by
    hand. Clipping rows instead of entities (opacus' per-row default) gives a different sum."""
    from opacus import GradSampleModule

    from unlearn.targets.llm import PromptFormat, collate, encode_qa

    tok, model = tiny_lm
    fmt = PromptFormat()
    qa = [("Where was Ann born?", "Paris"), ("What is Ann's pet?", "a cat"), ("Where was Bob born?", "Rome"),
          ("What does Cy play?", "the oboe"), ("What is Bob's job?", "a baker")]  # fmt: skip
    items = [encode_qa(tok, fmt, q, a) for q, a in qa]
    rows, owner = [0, 1, 2, 3, 4], [0, 0, 1, 2, 1]  # Ann: rows 0, 1; Bob: 2, 4; Cy: 3
    params = [p for p in model.parameters() if p.requires_grad]
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    G = per_unit_grads(gsm, params, items, rows, owner, 3, tok.pad_token_id, micro=2)
    gsm._close()
    manual = []
    for u in range(3):
        model.zero_grad()
        sel = [i for i, o in zip(rows, owner) if o == u]
        row_losses(model, collate([items[i] for i in sel], tok.pad_token_id)).mean().backward()
        manual.append(torch.cat([p.grad.flatten() for p in params]))
    manual = torch.stack(manual)
    torch.testing.assert_close(G, manual, rtol=1e-4, atol=1e-6)
    C = float(manual.norm(dim=1).min()) * 0.5  # every unit gets clipped
    total, norms = unit_clipped_sum(G, C)
    want = sum(m * min(1.0, C / (float(m.norm()) + 1e-6)) for m in manual)
    torch.testing.assert_close(total, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norms, manual.norm(dim=1), rtol=1e-4, atol=1e-6)
    assert float(total.norm()) <= 3 * C + 1e-4  # each unit contributes at most C
    per_row = torch.zeros_like(total)  # the wrong privacy unit: clip rows, not entities
    for i in rows:
        model.zero_grad()
        row_losses(model, collate([items[i]], tok.pad_token_id)).sum().backward()
        g = torch.cat([p.grad.flatten() for p in params]) / owner.count(owner[i])
        per_row += g * min(1.0, C / (float(g.norm()) + 1e-6))
    assert float((per_row - total).norm()) > 1e-3 * float(total.norm())
    model.zero_grad()


MICRO = replace(DP_PRESETS["micro"], steps=12, public_steps=30, checkpoint_every=5)


def test_build_records_the_accountants_epsilon_and_resumes(micro_target, monkeypatch):
    from unlearn.store import read_json
    from unlearn.targets.build import get_preset

    bcfg = get_preset("micro")
    tok = str(micro_target / "target")
    cfg = replace(MICRO, epsilon=2.0, privacy_unit="entity")
    d = build_dp_base(bcfg, cfg, tok, progress=False, log=lambda *_: None)
    card = read_json(d / "card.json")
    assert card["privacy_unit"] == "entity" and card["steps"] == 12 and card["delta"] == 1e-5
    assert card["n_units"] == 20  # the micro set's QA-trained entities (bio-only ones have no QA rows)
    assert card["sample_rate"] == pytest.approx((MICRO.batch_rows / MICRO.entity_rows) / 20)
    assert card["epsilon"] == dp_epsilon(card["noise_multiplier"], card["sample_rate"], 12, 1e-5)
    assert 1.9 < card["epsilon"] <= 2.0 and card["noise_multiplier"] > 0
    assert "eps2" in d.name and "entity" in d.name
    # a killed build resumes from its checkpoint and ends on the same weights as an uninterrupted one
    calls = {"n": 0}
    real = dp_build.unit_clipped_sum

    def dying(G, C):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(G, C)

    other = replace(cfg, seed=3)
    monkeypatch.setattr(dp_build, "unit_clipped_sum", dying)
    with pytest.raises(KeyboardInterrupt):
        build_dp_base(bcfg, other, tok, progress=False, log=lambda *_: None)
    assert (base_dir(bcfg, other).parent / (base_dir(bcfg, other).name + ".partial") / "checkpoint.pt").exists()
    monkeypatch.setattr(dp_build, "unit_clipped_sum", real)
    lines = []
    resumed = build_dp_base(bcfg, other, tok, progress=False, log=lines.append)
    assert any("resuming at step 5" in x for x in lines)
    from safetensors.torch import load_file

    a = load_file(str(resumed / "model.safetensors"))
    import shutil

    shutil.rmtree(resumed)
    fresh = build_dp_base(bcfg, other, tok, progress=False, log=lambda *_: None)
    b = load_file(str(fresh / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_infinite_epsilon_is_non_private(micro_target):
    from unlearn.store import read_json
    from unlearn.targets.build import get_preset

    bcfg = get_preset("micro")
    d = build_dp_base(bcfg, replace(MICRO, epsilon=math.inf, privacy_unit="entity"), str(micro_target / "target"),
                      progress=False, log=lambda *_: None)  # fmt: skip
    card = read_json(d / "card.json")
    assert card["noise_multiplier"] == 0.0 and card["privacy_unit"] == "none" and d.name.startswith("epsinf")
    assert card["epsilon"] is None  # inf is stored as null (standard JSON)
    # both units share the one non-private base
    assert base_dir(bcfg, replace(MICRO, epsilon=math.inf, privacy_unit="record")) == d


def test_bad_settings(micro_target):
    from unlearn.targets.build import get_preset

    for bad in (dict(epsilon=0.0), dict(epsilon=float("nan")), dict(privacy_unit="author"), dict(delta=1.5),
                dict(max_grad_norm=0.0), dict(steps=0)):  # fmt: skip
        with pytest.raises(UnlearnError):
            replace(MICRO, **bad).check()
    with pytest.raises(UnlearnError, match="1/N"):  # 20 entity units: delta must stay below 0.05
        build_dp_base(get_preset("micro"), replace(MICRO, delta=0.1), str(micro_target / "target"), progress=False)


def test_private_rows_are_entity_records_only():
    from unlearn.data.tinyfacts import generate
    from unlearn.targets.build import get_preset

    splits = generate(get_preset("micro").data)
    rows = private_rows(splits, bios=False)
    assert rows and all("group" in r for r in rows)
    world = {r["question"] for r in splits["world_facts"] + splits["arithmetic_train"]}
    assert not world & {r["question"] for r in rows}
    assert any("text" in r for r in private_rows(splits, bios=True))
