"""Shared fixtures. Tests never touch the network and never reuse a user's cache: UNLEARN_HOME points at a
session temp folder (so a stale cache cannot hide a broken build), and the micro TinyFacts target is built once
per session (about 25 s on 2 cores)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def unlearn_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("unlearn_home")
    old = os.environ.get("UNLEARN_HOME")
    os.environ["UNLEARN_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("UNLEARN_HOME", None)
    else:
        os.environ["UNLEARN_HOME"] = old


@pytest.fixture(scope="session")
def micro_target(unlearn_home):
    """The micro TinyFacts target + forget10 oracle, built in-process under a fixed seed."""
    import torch

    from unlearn.targets.build import build_tinyfacts, get_preset, target_root

    threads = torch.get_num_threads()
    build_tinyfacts("micro", oracles=("forget10",), progress=False, log=lambda *a: None)
    torch.set_num_threads(threads)
    return target_root(get_preset("micro"))


def _make_tiny_target():
    """Tokenizer + a 2-layer, 32-wide Llama trained a few seconds on the micro TinyFacts set (1 thread, seeded)."""
    import dataclasses

    from unlearn.data.tinyfacts import generate
    from unlearn.targets.build import get_preset, train_qa_model, train_tokenizer

    micro = get_preset("micro")
    splits = generate(micro.data)
    tok = train_tokenizer(splits, micro.vocab_size)
    cfg = dataclasses.replace(
        micro, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, epochs=30, batch_size=16, lr=1e-2
    )
    model, _ = train_qa_model(cfg, tok, splits["full"], progress=False)
    return tok, model, splits


@pytest.fixture(scope="session")
def tiny():
    """(tokenizer, model, splits): one tiny trained Llama for the whole session (tests deep-copy before training)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend
    try:
        tok, model, splits = _make_tiny_target()
    finally:
        torch.set_num_threads(threads)
    return tok, model, splits


@pytest.fixture(scope="session")
def tiny_target_dir(tiny, tmp_path_factory):
    """The session's tiny model saved as a model directory, with forget / retain / holdout JSONL files."""
    from unlearn.store import atomic_write_jsonl
    from unlearn.targets.llm import save_model

    tok, model, splits = tiny
    root = tmp_path_factory.mktemp("tiny_target")
    save_model(model, tok, root / "model")
    for name, split in (("forget", "forget10"), ("retain", "retain90"), ("holdout", "holdout10")):
        atomic_write_jsonl(root / f"{name}.jsonl", splits[split])
    return root
