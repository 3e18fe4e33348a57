"""MUSE data: the sets read through ``datasets`` from a fabricated offline cache (``muse_env``, tests/conftest.py),
one-line errors, and the training corpus as fixed-length chunks that the loop trains on every token of."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass

import pytest

from unlearn.data.benchmarks import BENCHMARKS, DataFiles, check_split, load_sets
from unlearn.data.muse import EVAL_SETS, training_chunks
from unlearn.errors import UnlearnError


def test_benchmarks_registered():
    for b in ("muse_news", "muse_books"):
        check_split(b, "forget")
        assert BENCHMARKS[b].evaluation == "muse" and BENCHMARKS[b].default_split == "forget"
    assert BENCHMARKS["tofu"].default_split == "forget10" and BENCHMARKS["wmdp"].default_split == "bio"
    with pytest.raises(UnlearnError, match="unknown muse_news split 'forget10'"):
        check_split("muse_news", "forget10")


def test_sets_from_the_cache(muse_env, muse_rows):
    rows = muse_rows
    sets, forget, retain = load_sets("muse_news", "forget", DataFiles())
    assert set(sets) == {name for name, *_ in EVAL_SETS}
    assert sets["verbmem_forget"][0] == {"prompt": rows[("verbmem", "forget")]["prompt"][0],
                                         "gt": rows[("verbmem", "forget")]["gt"][0]}  # fmt: skip
    assert [r["question"] for r in sets["knowmem_retain"]] == rows[("knowmem", "retain_qa")]["question"]
    assert [r["text"] for r in sets["privleak_holdout"]] == rows[("privleak", "holdout")]["text"]
    assert [r["text"] for r in forget] == rows[("raw", "forget")]["text"]
    assert [r["text"] for r in retain] == rows[("raw", "retain1")]["text"]


def test_own_corpora_and_errors(muse_env, tmp_path, monkeypatch):
    import datasets

    f = tmp_path / "F.jsonl"
    f.write_text("".join(json.dumps({"text": f"my document {i}"}) + "\n" for i in range(3)))
    _, forget, _ = load_sets("muse_news", "forget", DataFiles(forget=str(f)))
    assert [r["text"] for r in forget] == ["my document 0", "my document 1", "my document 2"]
    with pytest.raises(UnlearnError, match="--holdout does not apply"):
        load_sets("muse_news", "forget", DataFiles(holdout=str(f)))
    with pytest.raises(UnlearnError, match=r"cannot load muse-bench/MUSE-Books\[verbmem\]"):
        load_sets("muse_books", "forget", DataFiles())
    cache = tmp_path / "datasets"  # a copy: the session's cache stays whole
    shutil.copytree(muse_env / "datasets", cache)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    shutil.rmtree(cache / "muse-bench___muse-news" / "privleak")
    with pytest.raises(UnlearnError, match=r"cannot load muse-bench/MUSE-News\[privleak\]") as e:
        load_sets("muse_news", "forget", DataFiles())
    assert len(str(e.value).splitlines()) == 1


def test_training_chunks_pack_the_corpus(muse_env):
    from unlearn.targets.llm import PromptFormat, encode_record, load_tokenizer

    tok = load_tokenizer("meta-llama/Llama-2-7b-hf")
    _, docs, _ = load_sets("muse_news", "forget", DataFiles())
    chunks = training_chunks(tok, docs, 16)
    whole = tok("\n\n".join(d["text"] for d in docs), add_special_tokens=False)["input_ids"]
    assert len(chunks) == -(-len(whole) // 15)  # 15 = max_length - 1 tokens per chunk, the last one shorter
    assert "".join(c["text"] for c in chunks) == tok.decode(whole)  # nothing dropped, nothing added
    for c in chunks:  # BOS + at most 15 tokens, every one of them a label
        ids, labels = encode_record(tok, PromptFormat(), c, 16)
        assert ids == labels and ids[0] == tok.bos_token_id and len(ids) <= 16
    with pytest.raises(UnlearnError, match="at least 2 tokens"):
        training_chunks(tok, docs, 1)


@dataclass
class _Cfg:
    pass


def test_the_loop_trains_every_token_of_a_chunk(muse_env):
    """Through `unlearn_model`: each forget row the method sees carries labels on every non-padding token."""
    from unlearn.config import TrainConfig
    from unlearn.methods import METHODS, MethodSpec
    from unlearn.targets.llm import PromptFormat, load_causal_lm, load_tokenizer
    from unlearn.train import unlearn_model

    tok, model = load_tokenizer("meta-llama/Llama-2-7b-hf"), load_causal_lm("muse-bench/MUSE-News_target")
    _, docs, _ = load_sets("muse_news", "forget", DataFiles())
    chunks = training_chunks(tok, docs, 16)
    seen = []

    def step(ctx, batch, cfg):
        b = batch["forget"]
        seen.append((b["input_ids"].clone(), b["labels"].clone(), b["attention_mask"].clone()))
        return -ctx.policy(b)["seq_logp"].sum() / ctx.norm["forget_tokens"], {}

    spec = MethodSpec("probe_text", "llm", _Cfg, "test", step=step)
    METHODS[("llm", "probe_text")] = spec
    try:
        tcfg = TrainConfig(precision="fp32", epochs=1, batch_size=len(chunks), warmup_epochs=0, lr=1e-3,
                           max_length=16)  # fmt: skip
        unlearn_model(copy.deepcopy(model), tok, PromptFormat(), chunks, [], spec, _Cfg(), tcfg, 0, None,
                      progress=False, log=lambda *a: None)  # fmt: skip
    finally:
        METHODS.pop(("llm", "probe_text"), None)
    ((ids, labels, mask),) = seen
    assert ids.shape[0] == len(chunks)
    assert (labels[mask.bool()] == ids[mask.bool()]).all() and (labels[~mask.bool()] == -100).all()
