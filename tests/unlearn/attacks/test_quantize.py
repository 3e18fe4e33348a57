"""RTN fake quantization: hand-worked grids, groups (also a short last one), constant groups, idempotence, the
half-bin error bound, and `quantized_copy` on a tiny Llama (the original untouched, embeddings and head skipped,
a sub-half-bin update erased: the mechanism of Zhang et al. 2025)."""

import pytest
import torch

from unlearn.attacks.quantize import (
    PRESETS,
    QuantConfig,
    bitsandbytes_available,
    get_preset,
    quantize_tensor,
    quantized_copy,
)
from unlearn.errors import UnlearnError


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_two_bit_asymmetric_by_hand():
    # min 0, max 3.3, 2 bits: scale = 3.3 / 3 = 1.1, zero = 0; w / scale = 0, 0.909, 1.818, 3 -> q = 0, 1, 2, 3
    got = quantize_tensor(_t([0.0, 1.0, 2.0, 3.3]), bits=2, group_size=0, symmetric=False)
    torch.testing.assert_close(got, _t([0.0, 1.1, 2.2, 3.3]), atol=1e-6, rtol=0)


def test_asymmetric_zero_point_by_hand():
    # min -1, max 2, 2 bits: scale 1, zero = round(1) = 1; -0.4 -> round(-0.4) + 1 = 1 -> (1 - 1) * 1 = 0; 1.6 -> 2
    got = quantize_tensor(_t([-1.0, -0.4, 1.6, 2.0]), bits=2)
    torch.testing.assert_close(got, _t([-1.0, 0.0, 2.0, 2.0]), atol=1e-6, rtol=0)


def test_symmetric_int8_by_hand():
    # absmax 1.27, qmax 127: scale 0.01; w / scale = 127, -33.3, 0.4, 1.51 -> q = 127, -33, 0, 2
    got = quantize_tensor(_t([1.27, -0.333, 0.004, 0.0151]), bits=8, group_size=0, symmetric=True)
    torch.testing.assert_close(got, _t([1.27, -0.33, 0.0, 0.02]), atol=1e-6, rtol=0)


def test_symmetric_clamps_to_plus_minus_qmax():
    # 2 bits symmetric: qmax = 1, scale = 2; 1.2 / 2 = 0.6 -> 1 -> 2; -0.9 / 2 -> 0 (|q| never reaches 2)
    got = quantize_tensor(_t([2.0, 1.2, -0.9, -2.0]), bits=2, symmetric=True)
    torch.testing.assert_close(got, _t([2.0, 2.0, 0.0, -2.0]), atol=1e-6, rtol=0)


def test_groups_use_their_own_min_and_max():
    w = _t([0.0, 1.0, 2.0, 3.0, 10.0, 21.0, 30.0, 40.0])
    grouped = quantize_tensor(w, bits=2, group_size=4)
    # group 1: scale 1 (exact); group 2: min 10, max 40, scale 10, zero -1; 21 -> round(2.1) - 1 = 1 -> 20
    torch.testing.assert_close(grouped, _t([0.0, 1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 40.0]), atol=1e-5, rtol=0)
    each = torch.cat([quantize_tensor(w[:, :4], 2), quantize_tensor(w[:, 4:], 2)], dim=1)
    assert torch.equal(grouped, each)
    # one group for the row: scale 40 / 3 flattens 0..3 to 0 and moves 10 to 13.33
    per_row = quantize_tensor(w, bits=2, group_size=0)
    torch.testing.assert_close(per_row[0, :4], torch.zeros(4))
    torch.testing.assert_close(per_row[0, 4:], torch.tensor([40 / 3, 80 / 3, 80 / 3, 40.0]), atol=1e-5, rtol=0)
    assert not torch.allclose(grouped, per_row)


def test_short_last_group():
    # in = 7, group 4: the last group [4, 7, 5.2] has its own min 4 / max 7 (scale 1, zero -4): 5.2 -> 5. Had it
    # been padded with zeros (min 0, scale 7 / 3), 4 would become 4.67.
    w = _t([0.0, 1.0, 2.0, 3.0, 4.0, 7.0, 5.2])
    got = quantize_tensor(w, bits=2, group_size=4)
    torch.testing.assert_close(got, _t([0.0, 1.0, 2.0, 3.0, 4.0, 7.0, 5.0]), atol=1e-5, rtol=0)
    assert got.shape == w.shape


def test_group_larger_than_row_is_per_row():
    w = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(quantize_tensor(w, 4, group_size=128), quantize_tensor(w, 4, group_size=0))
    assert torch.equal(quantize_tensor(w, 4, group_size=None), quantize_tensor(w, 4, group_size=0))


@pytest.mark.parametrize("symmetric", [False, True])
def test_constant_group_unchanged(symmetric):
    w = _t([0.3, 0.3, 0.3, 0.3, 0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    got = quantize_tensor(w, bits=2, group_size=4, symmetric=symmetric)
    assert torch.isfinite(got).all()
    assert torch.equal(got[1], w[1])  # all-zero row: scale 0 either way
    if not symmetric:
        assert torch.equal(got[0, :4], w[0, :4])  # constant group: max == min


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_idempotent(name):
    cfg = get_preset(name)
    w = 0.02 * torch.randn(16, 300, generator=torch.Generator().manual_seed(1))  # 300 = 2 * 128 + a short 44
    once = quantize_tensor(w, cfg.bits, cfg.group_size, cfg.symmetric)
    twice = quantize_tensor(once, cfg.bits, cfg.group_size, cfg.symmetric)
    torch.testing.assert_close(twice, once, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("bits", "symmetric"), [(4, False), (4, True), (8, True), (3, False)])
def test_error_at_most_half_a_bin(bits, symmetric):
    g = 16
    w = torch.randn(8, 5 * g + 5, generator=torch.Generator().manual_seed(2))  # 5 full groups + a short one
    got = quantize_tensor(w, bits, group_size=g, symmetric=symmetric)
    for start in range(0, w.shape[1], g):
        x = w[:, start : start + g]  # (out, g)
        if symmetric:
            scale = x.abs().amax(1) / (2 ** (bits - 1) - 1)
        else:
            scale = (x.amax(1) - x.amin(1)) / (2**bits - 1)
        err = (got[:, start : start + g] - x).abs().amax(1)
        assert (err <= scale / 2 + 1e-6).all()


def test_dtype_kept_and_input_untouched():
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    before = w.clone()
    got = quantize_tensor(w, 4, group_size=4)
    assert got.dtype == torch.bfloat16
    assert torch.equal(w, before)


def test_bad_arguments():
    with pytest.raises(UnlearnError, match="2-D"):
        quantize_tensor(torch.zeros(4), 4)
    with pytest.raises(UnlearnError, match="bits"):
        quantize_tensor(torch.zeros(2, 4), 1)
    with pytest.raises(UnlearnError, match=r"unknown quantization preset 'int3'; valid: int4, int8"):
        get_preset("int3")


def test_presets():
    assert get_preset("int8") == QuantConfig(bits=8, group_size=0, symmetric=True)
    assert get_preset("int4") == QuantConfig(bits=4, group_size=128, symmetric=False)
    assert get_preset("int4").skip == ("embed", "lm_head")


def test_sub_half_bin_update_is_erased():
    # 4 bits, min 0, max 1.5: scale 0.1, grid 0, 0.1, ..., 1.5. An "unlearning update" of +-0.01 (a tenth of a bin)
    # on the interior weights leaves min, max and hence the grid as they were, and every weight in its bin.
    w = (torch.arange(16, dtype=torch.float32) * 0.1)[None].repeat(4, 1)  # (4, 16)
    delta = torch.zeros_like(w)
    delta[:, 1:15] = 0.01 * torch.tensor([1.0, -1.0]).repeat(7)
    assert not torch.equal(w + delta, w)
    assert torch.equal(quantize_tensor(w + delta, 4), quantize_tensor(w, 4))
    # a full-bin update survives
    assert not torch.equal(quantize_tensor(w + 10 * delta, 4), quantize_tensor(w, 4))


# ----------------------------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                       tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(conf).eval()


LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_quantized_copy(llama, preset):
    cfg = get_preset(preset)
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    q, info = quantized_copy(llama, cfg)
    after = llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the original is bit-identical
    assert q is not llama
    assert info["n_quantized"] == 2 * len(LINEARS)
    assert info["skipped"] == ["lm_head"]
    qs = q.state_dict()
    n = 0
    for k, v in qs.items():
        name = k.rsplit(".", 1)[0]
        if k.endswith(".weight") and name.rsplit(".", 1)[-1] in LINEARS:
            assert not torch.equal(v, before[k])
            expect = quantize_tensor(before[k], cfg.bits, cfg.group_size, cfg.symmetric)
            assert torch.equal(v, expect)
            levels = 2**cfg.bits - (1 if cfg.symmetric else 0)
            assert max(len(torch.unique(row)) for row in v) <= levels  # in < 128: one group per row in int4 too
            n += v.numel()
        else:
            assert torch.equal(v, before[k]), k  # embed_tokens, lm_head, norms
    assert info["n_params"] == n
    assert 0 < info["rel_change"] < (0.2 if preset == "int4" else 0.01)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.isfinite(q(input_ids=ids).logits).all()


def test_model_update_below_half_a_bin_is_erased(llama):
    # "original" = an int4-quantized model (every weight on its grid); "unlearned" = it plus an update of a tenth of
    # a bin on every weight strictly inside its group's range (min and max, hence the grid, unchanged). Quantized,
    # the two are the same model: the unlearning is gone.
    cfg = get_preset("int4")
    original, _ = quantized_copy(llama, cfg)
    unlearned, _ = quantized_copy(llama, cfg)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, mod in unlearned.named_modules():
            if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
                w = mod.weight  # (out, in): in <= 48 < 128, so a row is one group
                lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
                scale = (hi - lo) / 15  # (out, 1)
                sign = torch.randint(0, 2, w.shape, generator=gen).float() * 2 - 1
                inside = (w > lo) & (w < hi)
                w.add_(torch.where(inside, 0.1 * scale * sign, torch.zeros_like(w)))
    moved = sum(not torch.equal(a, b) for a, b in zip(original.parameters(), unlearned.parameters()))
    assert moved == 2 * len(LINEARS)
    qa, _ = quantized_copy(original, cfg)
    qb, _ = quantized_copy(unlearned, cfg)
    for (k, a), b in zip(qa.state_dict().items(), qb.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)


def test_gpt2_conv1d_is_quantized():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_inner=24, n_layer=1, n_head=2, n_positions=16))
    q, info = quantized_copy(m, get_preset("int4"))
    assert info["n_quantized"] == 4  # c_attn, attn c_proj, c_fc, mlp c_proj
    w = m.transformer.h[0].mlp.c_fc.weight  # Conv1D: (in, out)
    assert torch.equal(q.transformer.h[0].mlp.c_fc.weight, quantize_tensor(w.T, 4, 128).T)
    assert torch.equal(q.lm_head.weight, m.lm_head.weight)  # tied to wte: never quantized


def test_no_linear_layers():
    with pytest.raises(UnlearnError, match="no Linear layers"):
        quantized_copy(torch.nn.Sequential(torch.nn.ReLU()), get_preset("int8"))


def test_bitsandbytes_needs_cuda():
    if not torch.cuda.is_available():
        assert bitsandbytes_available() is False
