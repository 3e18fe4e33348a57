import pytest

from unlearn.config import (
    LoraConfig,
    TrainConfig,
    apply_overrides,
    load_yaml_overrides,
    parse_overrides,
    resolve_model,
    set_field,
)
from unlearn.errors import UnlearnError
from unlearn.methods.npo import NPOConfig


def test_typed_overrides_route_to_train_and_method():
    t, m = TrainConfig(), NPOConfig()
    apply_overrides(
        t,
        m,
        parse_overrides(
            [
                "lr=3e-4",
                "epochs=2",
                "lora.r=16",
                "beta=0.2",
                "method.retain=kl",
                "gradient_checkpointing=true",
                "precision=fp32",
            ]
        ),
    )
    assert t.lr == 3e-4 and t.epochs == 2 and t.lora.r == 16 and t.gradient_checkpointing is True
    assert m.beta == 0.2 and m.retain == "kl" and t.precision == "fp32"
    assert isinstance(t.lora, LoraConfig)


@pytest.mark.parametrize(
    "item, words",
    [
        ("lr", "expected key=value"),
        ("=3", "empty key"),
        ("nope=1", "unknown --set key 'nope'"),
        ("batch_size=abc", "batch_size=abc: expected int"),
        ("retain=sometimes", "must be one of none, nll, kl, kl_unmasked"),
        ("lora=3", "is a group"),
        ("lr.x=3", "has no sub-keys"),
        ("gradient_checkpointing=maybe", "expected a boolean"),
        ("lora.q=1", "unknown key 'q'"),
    ],
)
def test_bad_overrides_name_the_key(item, words):
    with pytest.raises(UnlearnError, match=words.replace("(", r"\(")):
        apply_overrides(TrainConfig(), NPOConfig(), parse_overrides([item]))


def test_unknown_key_lists_valid_names():
    with pytest.raises(UnlearnError) as e:
        apply_overrides(TrainConfig(), NPOConfig(), parse_overrides(["bogus=1"]))
    assert "beta" in str(e.value) and "lr" in str(e.value)


def test_int_accepts_integral_float_and_hex():
    t = TrainConfig()
    set_field(t, "batch_size", "1e1")
    assert t.batch_size == 10
    set_field(t, "batch_size", "0x10")
    assert t.batch_size == 16


def test_yaml_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 0.001\nlora:\n  r: 8\nbeta: 0.5\n")
    t, m = TrainConfig(), NPOConfig()
    apply_overrides(t, m, load_yaml_overrides(p))
    assert (t.lr, t.lora.r, m.beta) == (0.001, 8, 0.5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(UnlearnError, match="invalid YAML"):
        load_yaml_overrides(bad)
    with pytest.raises(UnlearnError, match="not found"):
        load_yaml_overrides(tmp_path / "missing.yaml")


def test_model_aliases():
    assert resolve_model("llama-1b").target == "meta-llama/Llama-3.2-1B-Instruct"
    s = resolve_model("llama-1b", "tofu", "forget05")
    assert s.target == "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"
    assert s.oracle == "open-unlearning/tofu_Llama-3.2-1B-Instruct_retain95"
    assert resolve_model("tiny").embedded == "tinyfacts"
    assert resolve_model("org/some-model").target == "org/some-model"
    with pytest.raises(UnlearnError, match="embedded TinyFacts"):
        resolve_model("tiny", "tofu")
