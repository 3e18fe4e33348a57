import dataclasses
import typing

import pytest

from unlearn.config import (
    LoraConfig,
    TrainConfig,
    apply_overrides,
    check_ranges,
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


def _set_configs() -> list[type]:
    """Every config class `--set` reaches: training, LoRA, every method's (LLM and diffusion, nested ones too),
    diffusion training / evaluation, the audit."""
    from unlearn.audit.llm import AuditConfig
    from unlearn.diffusion_train import DiffusionTrainConfig
    from unlearn.methods import list_methods
    from unlearn.metrics.diffusion import DiffusionEvalConfig

    out = [TrainConfig, LoraConfig, DiffusionTrainConfig, DiffusionEvalConfig, AuditConfig]
    todo = [s.config_cls for s in list_methods()]
    while todo:
        cls = todo.pop()
        if cls not in out:
            out.append(cls)
            todo += [type(v) for v in vars(cls()).values() if dataclasses.is_dataclass(v)]
    return out


def _numeric(tp) -> bool:
    args = typing.get_args(tp)
    if tp in (int, float):
        return True
    return any(_numeric(a) for a in args if a is not type(None))


def test_every_numeric_set_field_declares_its_range():
    """A numeric field without a RANGES entry would accept any value (epochs=-1 ran and reported a "result"): each
    one says what it accepts ("any" where every finite value means something), and the defaults satisfy it."""
    missing = []
    for cls in _set_configs():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if _numeric(hints[f.name]) and hints[f.name] is not bool and f.name not in getattr(cls, "RANGES", {}):
                missing.append(f"{cls.__name__}.{f.name}")
        check_ranges(cls())
    assert not missing, missing


@pytest.mark.parametrize(
    "item, words",
    [
        ("lr=nan", "lr=nan: must be a number, not nan"),
        ("lr=-1e-5", "must be > 0"),
        ("lr=inf", "must be finite"),
        ("epochs=0", "must be > 0"),
        ("batch_size=0", "must be >= 1"),
        ("warmup_epochs=-1", "must be >= 0"),
        ("lora.r=-1", "lora.r=-1: must be >= 0"),
        ("lora.dropout=1", "must be < 1"),
        ("beta=-1", "beta=-1: must be > 0"),
        ("beta=nan", "must be a number, not nan"),
        ("method.retain_weight=-0.5", "must be >= 0"),
    ],
)
def test_out_of_range_overrides_are_refused(item, words):
    with pytest.raises(UnlearnError, match=words):
        apply_overrides(TrainConfig(), NPOConfig(), parse_overrides([item]))


def test_any_range_takes_every_finite_value_only():
    from unlearn.methods.simnpo import SimNPOConfig

    m = SimNPOConfig()
    set_field(m, "margin", "-2.5")
    assert m.margin == -2.5
    with pytest.raises(UnlearnError, match="must be finite"):
        set_field(m, "margin", "-inf")
