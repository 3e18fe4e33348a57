"""The LLM task's extension points for representation and refusal methods: ``ctx.hidden`` equals the model's own
hidden states (policy with gradient, frozen reference without), ``forget_targets`` answers reach the step row for
row with the forget batch, and text-only records train on every token."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

from unlearn.config import TrainConfig
from unlearn.methods import METHODS, MethodSpec
from unlearn.targets.llm import IGNORE, PromptFormat, encode_record, encode_text
from unlearn.train import setup, train_step

from .test_train_values import SILENT, qa_items, tiny_lm


@dataclass
class _Cfg:
    layer: int = 0


def _spec(step, **kw):
    return MethodSpec("probe_hooks", "llm", _Cfg, "test", step=step, **kw)


def test_hidden_equals_output_hidden_states_with_and_without_grad():
    model = tiny_lm(0)
    f, r = qa_items(3, 1), qa_items(3, 2)
    seen = {}

    def step(ctx, batch, cfg):
        hf, hr = ctx.hidden(batch["forget"], batch["retain"], layer=cfg.layer)
        (ref,) = ctx.hidden(batch["retain"], layer=cfg.layer, reference=True)
        seen.update(hf=hf, hr=hr, ref=ref, fb=batch["forget"], rb=batch["retain"])
        return (hf.float().pow(2).mean() + hr.float().pow(2).mean()), {}

    spec = _spec(step, needs_reference=lambda cfg: True)
    loop = setup(copy.deepcopy(model), f, spec, _Cfg(layer=0), TrainConfig(precision="fp32"), 0, 1, 1, None, SILENT)
    train_step(loop, f, r, [0, 1, 2])
    with torch.no_grad():
        for key, b in (("hf", "fb"), ("hr", "rb"), ("ref", "rb")):
            # block 0 output (the last hidden_states entry is post-norm)
            want = model(input_ids=seen[b]["input_ids"], attention_mask=seen[b]["attention_mask"],
                         output_hidden_states=True).hidden_states[1]  # fmt: skip
            m = seen[b]["attention_mask"].bool()
            assert torch.allclose(seen[key][m], want[m], atol=1e-5), key
    assert seen["hf"].requires_grad and not seen["ref"].requires_grad
    assert all(p.grad is not None for p in loop.params[:3])  # the loss on hidden states reached the weights
    with pytest.raises(Exception, match="out of range"):
        loop2 = setup(copy.deepcopy(model), f, spec, _Cfg(layer=5), TrainConfig(precision="fp32"), 0, 1, 1, None,
                      SILENT)  # fmt: skip
        train_step(loop2, f, r, [0, 1, 2])


def test_forget_targets_arrive_row_for_row(tiny):
    from unlearn.train import unlearn_model

    tok, model, splits = tiny
    forget = splits["forget10"][:6]
    got = []

    def step(ctx, batch, cfg):
        alt = batch["forget_alt"]
        for row in range(alt["input_ids"].shape[0]):
            lab = alt["labels"][row]
            got.append(tok.decode(lab[lab != IGNORE], skip_special_tokens=True).strip())
        assert ctx.norm["forget_alt_seqs"] == 6.0
        out = ctx.policy(alt)
        return -out["seq_logp"].sum() / ctx.norm["forget_alt_tokens"], {}

    spec = _spec(step, forget_targets=lambda recs, cfg, seed: [f"idk {i}" for i in range(len(recs))])
    METHODS[("llm", "probe_hooks")] = spec
    try:
        tcfg = TrainConfig(precision="fp32", epochs=1, batch_size=6, warmup_epochs=0, lr=1e-3)
        unlearn_model(copy.deepcopy(model), tok, PromptFormat(), forget, [], spec, _Cfg(), tcfg, 0, None,
                      progress=False, log=SILENT)  # fmt: skip
    finally:
        METHODS.pop(("llm", "probe_hooks"), None)
    assert sorted(got) == sorted(f"idk {i}" for i in range(6))


def test_text_records_label_every_token(tiny):
    tok = tiny[0]
    ids, labels = encode_text(tok, "Ulzel was born in Gallow.")
    assert ids == labels and ids[0] == tok.bos_token_id
    assert encode_record(tok, PromptFormat(), {"text": "Ulzel was born in Gallow."}) == (ids, labels)
    q = encode_record(tok, PromptFormat(), {"question": "Q?", "answer": "A"}, answer="B")
    assert tok.decode([t for t in q[1] if t != IGNORE], skip_special_tokens=True).strip() == "B"
