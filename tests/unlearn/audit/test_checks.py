"""Untrusted-candidate checks of `unlearn audit`: planted pickles never run, foreign models and tokenizers are
refused before loading, LoRA adapters apply only to a byte-identical original and merge to a plain causal LM."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import pytest
import torch

from unlearn.audit.checks import (
    check_adapter,
    check_compatible,
    file_digests,
    inspect_candidate,
    load_candidate,
    weights_equal,
)
from unlearn.errors import UnlearnError
from unlearn.targets.llm import load_causal_lm, load_tokenizer


class _Payload:
    """Unpickling this creates the marker file: stands in for any code a hostile pickle would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker, name="pytorch_model.bin"):
    (path / name).write_bytes(pickle.dumps(_Payload(marker)))


def _save_llama(path, tok, hidden=32, seed=0, with_tokenizer=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(tok) + 8,  # spare rows: a tokenizer with a few added tokens still fits the same shapes
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    if with_tokenizer:
        tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny[0]


@pytest.fixture(scope="module")
def original(tok, tmp_path_factory):
    return _save_llama(tmp_path_factory.mktemp("original"), tok)


@pytest.fixture(scope="module")
def other(tok, tmp_path_factory):
    """Same architecture and tokenizer as the original, other weights."""
    return _save_llama(tmp_path_factory.mktemp("other"), tok, seed=1)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------------------- pickles
def test_payload_is_live(tmp_path):
    """Guard for the tests below: the planted payload really does run when unpickled."""
    marker = tmp_path / "RAN"
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()


def test_pickle_only_candidate_refused_and_never_unpickled(original, tmp_path):
    cand, marker = tmp_path / "cand", tmp_path / "MARKER"
    cand.mkdir()
    shutil.copy(original / "config.json", cand)
    _plant(cand, marker)
    with pytest.raises(UnlearnError, match="pickle") as e:
        inspect_candidate(cand)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_pickle_beside_safetensors_ignored(original, tmp_path):
    cand, marker = _copy(original, tmp_path / "cand"), tmp_path / "MARKER"
    _plant(cand, marker)
    _plant(cand, marker, "training_args.pt")
    info = inspect_candidate(cand)
    assert info.kind == "full" and info.weight_files == ["model.safetensors"]
    assert info.ignored_pickles == ["pytorch_model.bin", "training_args.pt"]
    assert any("pytorch_model.bin" in w for w in info.warnings)
    assert check_compatible(original, cand) == []
    model = load_candidate(original, cand, info)
    assert weights_equal(model, load_causal_lm(str(original)))
    assert "pytorch_model.bin" not in file_digests(cand)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["file", "missing", "no_weights", "no_config"])
def test_not_a_model_refused(original, tmp_path, case):
    p = tmp_path / "cand"
    if case == "file":
        p.write_text("x")
    elif case == "no_weights":
        p.mkdir()
        shutil.copy(original / "config.json", p)
    elif case == "no_config":
        p.mkdir()
        shutil.copy(original / "model.safetensors", p)
    want = {"file": "not a file", "missing": "not found", "no_weights": "no \\*.safetensors", "no_config": "config"}
    with pytest.raises(UnlearnError, match=want[case]) as e:
        inspect_candidate(p)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("which", ["config.json", "tokenizer_config.json"])
def test_auto_map_refused(original, tmp_path, which):
    cand, marker = _copy(original, tmp_path / "cand"), tmp_path / "MARKER"
    (cand / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    cfg = json.loads((cand / which).read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.Evil", "AutoTokenizer": ["evil.Tok", None]}
    (cand / which).write_text(json.dumps(cfg))
    with pytest.raises(UnlearnError, match="auto_map"):
        inspect_candidate(cand)
    with pytest.raises(UnlearnError, match="auto_map"):
        check_compatible(original, cand)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- compatibility
def test_foreign_tokenizer_refused(original, tmp_path):
    cand = _copy(original, tmp_path / "cand")
    foreign = load_tokenizer(str(original))
    foreign.add_tokens(["zqxa", "zqxb", "zqxc"])
    foreign.save_pretrained(cand)
    with pytest.raises(UnlearnError, match=r"tokenizer: 3 token\(s\) differ"):
        check_compatible(original, cand)


def test_changed_special_token_refused(original, tmp_path):
    cand = _copy(original, tmp_path / "cand")
    t = load_tokenizer(str(original))
    t.eos_token = "<unk>"
    t.save_pretrained(cand)
    with pytest.raises(UnlearnError, match="tokenizer: eos_token_id"):
        check_compatible(original, cand)


def test_candidate_without_tokenizer_allowed_with_warning(tok, original, tmp_path):
    cand = _save_llama(tmp_path / "cand", tok, seed=2, with_tokenizer=False)
    warnings = check_compatible(original, cand)
    assert len(warnings) == 1 and "original's tokenizer" in warnings[0]


def test_wrong_architecture_refused(tok, original, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    cand = tmp_path / "cand"
    GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=len(tok) + 8)
    ).save_pretrained(cand, safe_serialization=True)
    tok.save_pretrained(cand)
    with pytest.raises(UnlearnError, match="model_type is 'gpt2'"):
        check_compatible(original, cand)


def test_different_shapes_refused(tok, original, tmp_path):
    cand = _save_llama(tmp_path / "cand", tok, hidden=48)
    with pytest.raises(UnlearnError, match=r"tensor\(s\) differ .*lm_head\.weight \(\d+x48 vs original \d+x32\)"):
        check_compatible(original, cand)


# ----------------------------------------------------------------------------------------------- LoRA
def _make_adapter(original, path, base_name):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    base = load_causal_lm(str(original))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    pm = get_peft_model(base, cfg)
    pm.eval()
    pm.save_pretrained(path, safe_serialization=True)
    acfg = json.loads((path / "adapter_config.json").read_text())
    acfg["base_model_name_or_path"] = str(base_name)
    (path / "adapter_config.json").write_text(json.dumps(acfg))
    return pm


def test_lora_adapter_merges_to_plain_model(original, tmp_path):
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    adir, marker = tmp_path / "adapter", tmp_path / "MARKER"
    pm = _make_adapter(original, adir, original)
    _plant(adir, marker, "training_args.bin")
    info = inspect_candidate(adir)
    assert info.kind == "lora" and info.weight_files == ["adapter_model.safetensors"]
    assert info.ignored_pickles == ["training_args.bin"] and info.adapter_config["r"] == 4
    assert check_adapter(original, info) == []
    merged = load_candidate(original, adir, info)
    assert type(merged) is LlamaForCausalLM
    assert not marker.exists()

    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, pm(input_ids=ids).logits, atol=1e-5)

    orig = load_causal_lm(str(original))
    assert not weights_equal(merged, orig)
    sd = load_file(str(adir / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    A, B = sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"]
    W = orig.model.layers[0].self_attn.q_proj.weight
    want = W + (B @ A) * (8 / 4)
    assert torch.allclose(merged.model.layers[0].self_attn.q_proj.weight, want, atol=1e-6)
    assert torch.equal(merged.model.layers[0].self_attn.k_proj.weight, orig.model.layers[0].self_attn.k_proj.weight)


def test_lora_base_copy_with_same_bytes_accepted(original, tmp_path):
    copy = _copy(original, tmp_path / "copy")
    _make_adapter(original, tmp_path / "adapter", copy)
    assert check_adapter(original, inspect_candidate(tmp_path / "adapter")) == []


def test_lora_on_other_base_refused(original, other, tmp_path):
    _make_adapter(other, tmp_path / "adapter", other)
    with pytest.raises(UnlearnError, match="is not the original"):
        check_adapter(original, inspect_candidate(tmp_path / "adapter"))


def test_lora_unresolvable_base_refused(original, tmp_path):
    _make_adapter(original, tmp_path / "adapter", "nobody-here/not-cached-model")
    with pytest.raises(UnlearnError, match="cannot resolve .*'nobody-here/not-cached-model'.* the original"):
        check_adapter(original, inspect_candidate(tmp_path / "adapter"))


def test_lora_bin_only_refused(original, tmp_path):
    adir, marker = tmp_path / "adapter", tmp_path / "MARKER"
    _make_adapter(original, adir, original)
    (adir / "adapter_model.safetensors").unlink()
    _plant(adir, marker, "adapter_model.bin")
    with pytest.raises(UnlearnError, match="pickle"):
        inspect_candidate(adir)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- provenance
def test_file_digests(original, tmp_path):
    cand = _copy(original, tmp_path / "cand")
    (cand / "merges.txt").write_text("a b\n")
    (cand / "notes.txt").write_text("not a tokenizer file")
    _plant(cand, tmp_path / "MARKER")
    d = file_digests(cand)
    assert d["model.safetensors"] == hashlib.sha256((cand / "model.safetensors").read_bytes()).hexdigest()
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "merges.txt"} <= set(d)
    assert "notes.txt" not in d and "pytorch_model.bin" not in d
    assert all(len(v) == 64 for v in d.values())


def test_file_digests_of_cached_hf_id(original, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someone--tiny-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _copy(original, repo / "snapshots" / commit)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert file_digests("someone/tiny-model") == file_digests(original)
    with pytest.raises(UnlearnError, match="not in the Hugging Face cache"):
        file_digests("someone/absent-model")


def test_lora_with_foreign_tokenizer_refused(original, tmp_path):
    adir = tmp_path / "adapter"
    _make_adapter(original, adir, original)
    foreign = load_tokenizer(str(original))
    foreign.add_tokens(["zqxa"])
    foreign.save_pretrained(adir)
    with pytest.raises(UnlearnError, match="foreign tokenizer"):
        check_adapter(original, inspect_candidate(adir))


def test_weights_equal(original, other):
    a = load_causal_lm(str(original))
    assert weights_equal(a, load_causal_lm(str(original)))
    assert not weights_equal(a, load_causal_lm(str(other)))
