"""Relearning attack: the split (per entity, disjoint, seeded, leakage guard) and the fine-tune's exact arithmetic."""

import copy

import pytest
import torch

from unlearn.attacks.relearn import RelearnConfig, finetune, split_facts
from unlearn.errors import UnlearnError
from unlearn.targets.llm import PromptFormat, collate, encode_qa, sequence_logps


def _recs(n_ent=3, n_fact=8):
    return [{"question": f"Q{a} of E{e}?", "answer": f"v{e}_{a}", "entity": f"E{e}", "split": f"a{a}"}
            for e in range(n_ent) for a in range(n_fact)]  # fmt: skip


def test_split_is_per_entity_half_disjoint_and_seeded():
    recs = _recs()
    t, v, leaky = split_facts(recs, 0.5, seed=0)
    assert leaky == 0 and len(t) == 12 and len(v) == 12
    for e in ("E0", "E1", "E2"):  # floor(0.5 * 8) = 4 seen facts of every entity, the other 4 held out
        assert sum(r["entity"] == e for r in t) == 4 and sum(r["entity"] == e for r in v) == 4
    assert not {r["question"] for r in t} & {r["question"] for r in v}
    assert split_facts(recs, 0.5, seed=0)[0] == t  # deterministic
    assert split_facts(list(reversed(recs)), 0.5, seed=0)[0] == t  # independent of the input order
    assert split_facts(recs, 0.5, seed=1)[0] != t
    t3, v3, _ = split_facts(recs, 0.3, seed=0)  # floor(0.3 * 8) = 2
    assert len(t3) == 6 and len(v3) == 18


def test_leakage_guard_is_within_the_entity():
    recs = _recs(n_ent=1, n_fact=2)
    recs[1]["answer"] = "Gallow"
    for seed in range(20):  # find a seed that puts the mention into T and the fact into V
        t, v, leaky = split_facts(recs + [{"question": "Was E0 born in gallow?", "answer": "yes", "entity": "E0"}],
                                  0.34, seed=seed)  # fmt: skip
        if any("gallow" in r["question"] for r in t) and not any(r["answer"] == "Gallow" for r in t):
            assert leaky == 1 and all(r["answer"] != "Gallow" for r in v)
            break
    else:
        pytest.fail("no seed split the mention and the fact")
    other = recs + [{"question": "Was E9 born in Gallow?", "answer": "yes", "entity": "E9"}]
    assert split_facts(other, 0.5, seed=0)[2] == 0  # another person's town is not a leak


def test_single_fact_entity_goes_to_held_out():
    t, v, _ = split_facts([{"question": "q", "answer": "a", "entity": "X"}], 0.5)
    assert t == [] and len(v) == 1


def test_finetune_loss_is_the_answer_token_mean_and_first_step_moves_by_lr(tiny):
    tok, model, splits = tiny
    recs = splits["forget10"][:4]
    fmt = PromptFormat()
    before = copy.deepcopy(model.state_dict())
    tuned, losses = finetune(model, tok, fmt, recs, RelearnConfig(steps=1, lr=1e-3, batch_size=4, seed=0))
    for k, v in model.state_dict().items():  # the input model is never changed
        assert torch.equal(v, before[k]), k
    batch = collate([encode_qa(tok, fmt, r["question"], r["answer"]) for r in recs], tok.pad_token_id)
    with torch.no_grad():
        seq, n = sequence_logps(model, batch)
    assert losses[0] == pytest.approx(float(-seq.sum() / n.sum()), rel=1e-5)  # token mean, not sequence mean
    # Adam's first step is lr * g / (|g| + eps) per element: every parameter with a gradient moves by ~lr
    deltas = torch.cat([(p1 - before[k]).abs().flatten() for k, p1 in tuned.state_dict().items()])
    assert float(deltas.max()) == pytest.approx(1e-3, rel=1e-3)


def test_finetune_refuses_bad_settings(tiny):
    tok, model, splits = tiny
    with pytest.raises(UnlearnError, match="steps"):
        finetune(model, tok, PromptFormat(), splits["forget10"][:2], RelearnConfig(steps=-1))
    with pytest.raises(UnlearnError, match="at least one"):
        finetune(model, tok, PromptFormat(), [], RelearnConfig())
