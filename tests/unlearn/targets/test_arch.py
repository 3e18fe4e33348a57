"""The per-architecture adapter on tiny random models of every supported type: the logit lens of the last block's
output is the model's logits, and value vectors are (d_ff, d_model) views that write the model."""

import pytest
import torch

from unlearn.errors import UnlearnError
from unlearn.targets.arch import SUPPORTED, arch

D, FF, V, LAYERS = 16, 24, 50, 2
COMMON = {"vocab_size": V, "hidden_size": D, "intermediate_size": FF, "num_hidden_layers": LAYERS,
          "num_attention_heads": 2, "max_position_embeddings": 32}  # fmt: skip


def _tiny(model_type: str):
    """A tiny random causal LM of ``model_type`` (its config class's own field names) and its d_ff."""
    import transformers as tf

    if model_type == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=D, n_inner=FF, n_layer=LAYERS, n_head=2,
                                                n_positions=32))  # fmt: skip
    cls = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 1}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 1}),
        "mistral": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 1, "head_dim": 8}),
        "olmo": ("OlmoConfig", "OlmoForCausalLM", {}),
        "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
        "gemma": ("GemmaConfig", "GemmaForCausalLM", {"num_key_value_heads": 1, "head_dim": 8}),
        "phi": ("PhiConfig", "PhiForCausalLM", {}),
        "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {}),
    }[model_type]
    conf = getattr(tf, cls[0])(**COMMON, **cls[2])
    return getattr(tf, cls[1])(conf)


@pytest.fixture(scope="module", params=SUPPORTED)
def model(request):
    torch.manual_seed(0)
    m = _tiny(request.param).eval()
    for p in m.parameters():  # norms start at 1 / 0: randomise them too, so a wrong norm would show
        if p.ndim == 1:
            p.data.add_(0.3 * torch.randn_like(p))
    assert m.config.model_type == request.param
    return m


def test_lens_of_last_block_is_the_output(model):
    a = arch(model)
    assert a.n_layers == LAYERS
    got = {}
    h = a.blocks[-1].register_forward_hook(lambda _m, _i, o: got.setdefault("h", o[0] if isinstance(o, tuple) else o))
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits  # (2, 7, V)
    finally:
        h.remove()
    with torch.no_grad():
        lens = a.lens_logits(got["h"])
    torch.testing.assert_close(lens, logits, atol=1e-5, rtol=1e-5)
    # the block output is not already normed: skipping the final norm gives other logits
    assert not torch.allclose(a.unembed(got["h"]), logits, atol=1e-3)
    assert a.unembedding().shape == (V, D)


def test_value_matrix_is_a_writable_view(model):
    a = arch(model)
    vm = a.value_matrix(1)
    assert vm.shape == (FF, D)
    name = a.down_param_name(1)
    assert dict(model.named_parameters())[name] is a.down_proj(1).weight
    ids = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        old = vm[3].clone()
        delta = torch.randn(D, generator=torch.Generator().manual_seed(3))  # not constant: LayerNorm removes that
        vm[3] += delta
        after = model(input_ids=ids).logits
        # the write landed on neuron 3's value vector: the weight's neuron axis holds the new row
        w = a.down_proj(1).weight
        row = w[3] if a.value_axis == 0 else w[:, 3]
        torch.testing.assert_close(row, old + delta)
        vm[3] -= delta
    assert (after - before).abs().max() > 1e-4


def test_unsupported_types_are_refused():
    import transformers as tf

    opt = tf.OPTForCausalLM(tf.OPTConfig(vocab_size=V, hidden_size=D, ffn_dim=FF, num_hidden_layers=1,
                                         num_attention_heads=2, word_embed_proj_dim=D))  # fmt: skip
    with pytest.raises(UnlearnError, match="'opt'"):
        arch(opt)
    with pytest.raises(UnlearnError, match="None"):
        arch(torch.nn.Linear(2, 2))
