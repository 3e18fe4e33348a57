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
