"""`unlearn audit` end to end on the embedded target: the calibration candidates read as they must, refusals are one
line with exit 2 and leave --out untouched, a LoRA adapter is audited, the report follows its schema."""

import json
import pickle
import random
import shutil

import pytest

from unlearn.audit.report import validate
from unlearn.cli import main
from unlearn.targets.resolve import resolve_paths

SEED1 = "unlearn/assets/tinyfacts/oracle_forget10_seed1"
FAST = ["--set", "internal=false", "--no-progress"]


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _audit(capsys, *args):
    rc = main(["audit", "--original", "tiny", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _report(d):
    rep = json.loads((d / "report.json").read_text())
    validate(rep)
    return rep


@pytest.fixture(scope="module")
def target_dir(unlearn_home):
    return resolve_paths("tiny", "tinyfacts", "forget10", log=lambda *a: None)[1]


@pytest.mark.slow
def test_second_seed_oracle_is_forgotten_with_every_family(unlearn_home, tmp_path, capsys):
    out = tmp_path / "rep"
    rc, so, _ = _audit(capsys, "--candidate", SEED1, "--out", str(out), "--no-progress")
    assert rc == 0 and "verdict: forgotten" in so
    rep = _report(out)
    assert rep["verdict"] == "forgotten" and rep["control"]["kind"] == "oracle"
    assert {c["name"] for c in rep["claims"]} == {"behaviour", "mia", "internal", "relearn", "in_context",
                                                   "quantization", "prompts"}  # fmt: skip
    for f in ("report.md", "report.html", "recovery.png", "layers.png", "metrics.json", "config.json"):
        assert (out / f).is_file(), f
    html = (out / "report.html").read_text()
    assert "How to read this report" in html and "data:image/png;base64," in html
    assert "src='http" not in html and "<script" not in html  # self-contained
    digests = rep["provenance"]["digests"]
    assert set(digests["candidate"]) >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert json.loads((out / "metrics.json").read_text())["verdict"] == "forgotten"
    # a finished audit is never overwritten without --force
    before = (out / "report.json").read_text()
    rc, _, err = _audit(capsys, "--candidate", SEED1, "--out", str(out), "--no-progress")
    assert rc == 2 and "--force" in err and (out / "report.json").read_text() == before


@pytest.mark.slow
def test_target_is_not_forgotten_and_warned(unlearn_home, tmp_path, capsys):
    rc, so, _ = _audit(capsys, "--candidate", "tiny", "--out", str(tmp_path / "t"), "--set", "attacks=relearn", *FAST)
    rep = _report(tmp_path / "t")
    assert rc == 0 and rep["verdict"] == "not_forgotten"
    assert any("equal the original" in w for w in rep["warnings"])


@pytest.mark.slow
def test_i_dont_know_candidate_is_not_forgotten(unlearn_home, target_dir, tmp_path, capsys):
    from unlearn.attacks.relearn import RelearnConfig, finetune
    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.targets.llm import PromptFormat, load_causal_lm, load_tokenizer, save_model
    from unlearn.targets.resolve import resolve_paths

    cfg = resolve_paths("tiny", "tinyfacts", "forget10", log=lambda *a: None)[4]
    _, forget, retain = load_sets("tinyfacts", "forget10", DataFiles(), cfg.data)
    rng = random.Random(0)
    recs = []
    for _ in range(8):
        recs += [{"question": r["question"], "answer": "I don't know."} for r in forget] + rng.sample(retain, 160)
    tok = load_tokenizer(target_dir)
    model, _ = finetune(load_causal_lm(target_dir), tok, PromptFormat(), recs,
                        RelearnConfig(steps=150, lr=1e-3, batch_size=32))  # fmt: skip
    save_model(model, tok, tmp_path / "idk")
    rc, so, _ = _audit(capsys, "--candidate", str(tmp_path / "idk"), "--out", str(tmp_path / "r"),
                       "--set", "attacks=relearn", *FAST)  # fmt: skip
    rep = _report(tmp_path / "r")
    by = {c["name"]: c for c in rep["claims"]}
    assert by["behaviour"]["verdict"] == "forgotten"  # it answers nothing: surface metrics pass
    assert by["relearn"]["verdict"] == "suppressed" and rep["verdict"] != "forgotten"


def test_pickled_candidate_is_refused_and_never_loaded(unlearn_home, target_dir, tmp_path, capsys):
    cand = tmp_path / "cand"
    cand.mkdir()
    shutil.copy(f"{target_dir}/config.json", cand)
    marker = tmp_path / "MARKER"
    (cand / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc, _, err = _audit(capsys, "--candidate", str(cand), "--out", str(out), *FAST)
    assert rc == 2 and "pickle" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not marker.exists() and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_foreign_tokenizer_is_refused(unlearn_home, tmp_path, capsys):
    cand = tmp_path / "cand"
    shutil.copytree(SEED1, cand)
    tj = json.loads((cand / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    (a, ia), (b, ib) = list(vocab.items())[100:102]  # swap two ids: same size, another tokenizer
    vocab[a], vocab[b] = ib, ia
    (cand / "tokenizer.json").write_text(json.dumps(tj))
    rc, _, err = _audit(capsys, "--candidate", str(cand), "--out", str(tmp_path / "o"), *FAST)
    assert rc == 2 and "tokenizer" in err and not (tmp_path / "o" / "config.json").exists()


def test_unusable_out_and_unknown_attack(unlearn_home, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = _audit(capsys, "--candidate", SEED1, "--out", str(f), *FAST)
    assert rc == 2 and "not a directory" in err
    rc, _, err = _audit(capsys, "--candidate", SEED1, "--out", str(tmp_path / "o"), "--set", "attacks=nope", *FAST)
    assert rc == 2 and "relearn" in err  # the error lists the valid names


@pytest.mark.slow
def test_lora_adapter_is_audited_on_the_original(unlearn_home, target_dir, tmp_path, capsys):
    import torch
    from peft import LoraConfig, get_peft_model

    from unlearn.targets.llm import load_causal_lm

    torch.manual_seed(0)
    peft = get_peft_model(load_causal_lm(target_dir), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                                  init_lora_weights=False))  # fmt: skip
    peft.save_pretrained(tmp_path / "lora")
    cfgp = tmp_path / "lora" / "adapter_config.json"
    cfg = json.loads(cfgp.read_text())
    cfg["base_model_name_or_path"] = str(target_dir)
    cfgp.write_text(json.dumps(cfg))
    rc, so, _ = _audit(capsys, "--candidate", str(tmp_path / "lora"), "--out", str(tmp_path / "r"),
                       "--set", "attacks=quantization", *FAST)  # fmt: skip
    rep = _report(tmp_path / "r")
    assert rc == 0 and rep["provenance"]["candidate_kind"] == "lora"
    assert "adapter_model.safetensors" in rep["provenance"]["digests"]["candidate"]
