"""Memory-lean defaults: NPO with its NLL retain term keeps no frozen copy of the model (its reference log-probs
are cached from the model itself before the first update), and the cache equals the one a copy gives, bit for bit."""

from __future__ import annotations

import copy
import dataclasses
import gc

import pytest
import torch

from unlearn.config import TrainConfig
from unlearn.methods import get_method
from unlearn.targets.llm import PromptFormat, encode_qa
from unlearn.train import setup, unlearn_model


def _alive_param_elements() -> int:
    """Elements of every distinct nn.Parameter held by a live nn.Module (a gc walk: independent of the loop)."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters(recurse=False):
                seen[id(p)] = p.numel()
    return sum(seen.values())


def _peak_extra_params(tiny, retain: str) -> tuple[int, int]:
    """(peak parameter elements alive during a real 3-step NPO run minus those alive before it, model size)."""
    tok, model, splits = tiny
    spec = get_method("npo")
    peak = []

    def step(ctx, batch, cfg):  # measures at every micro-batch of every step, then runs NPO's own step
        peak.append(_alive_param_elements())
        return spec.step(ctx, batch, cfg)

    probe = dataclasses.replace(spec, step=step)
    m = copy.deepcopy(model)
    gc.collect()
    before = _alive_param_elements()
    tcfg = TrainConfig(lr=1e-3, epochs=3, batch_size=4, warmup_epochs=0)
    unlearn_model(m, tok, PromptFormat(), splits["forget10"][:4], splits["retain90"][:8], probe,
                  spec.config_cls(retain=retain), tcfg, seed=0, rdir=None, progress=False)  # fmt: skip
    return max(peak) - before, sum(p.numel() for p in model.parameters())


def test_npo_with_nll_retain_allocates_no_reference_model(tiny):
    extra, n = _peak_extra_params(tiny, "nll")
    assert extra == 0, (extra, n)


def test_npo_with_kl_retain_keeps_one_reference_copy(tiny):
    extra, n = _peak_extra_params(tiny, "kl")  # the measurement sees a copy when there is one
    assert extra == n, (extra, n)


@pytest.mark.parametrize("method", ["npo", "idkdpo"])
def test_cached_reference_logps_equal_the_copy_s_bit_for_bit(tiny, method):
    """The cache from the model itself (no copy) equals the one from a frozen copy (the old path), exactly."""
    tok, model, splits = tiny
    spec = get_method(method)
    f = [encode_qa(tok, PromptFormat(), r["question"], r["answer"]) for r in splits["forget10"]]
    tcfg = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=3)
    lean = setup(copy.deepcopy(model), f, spec, spec.config_cls(), tcfg, tok.pad_token_id, 1, 1)
    always = dataclasses.replace(spec, needs_reference=lambda cfg: True, reference_logps=lambda cfg: False)
    old = setup(copy.deepcopy(model), f, always, spec.config_cls(), tcfg, tok.pad_token_id, 1, 1)
    assert old.ref_model is not None and old.ref_cache.shape == (len(f),)
    assert (lean.ref_model is None) == (method == "npo")
    assert torch.equal(lean.ref_cache, old.ref_cache)
    assert lean.model.training  # the cache pass put the model back in training mode
