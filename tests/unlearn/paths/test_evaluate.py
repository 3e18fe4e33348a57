"""`unlearn paths eval` end to end on two micro paths: the long CSV, the summary, the figure, the run lifecycle, and
the same unlearning as `unlearn run` (one loop, one registry)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from unlearn.cli import main
from unlearn.paths import build as pb

ORDERS = "entities-world_facts-skill-forget,forget-entities-world_facts-skill"


@pytest.fixture(scope="module")
def micro_paths(micro_target, tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    root = pb.build_paths(pb.replace(pb.get_preset("micro"), parallel=2), orders=ORDERS, seeds=(0,),
                          out=tmp_path_factory.mktemp("paths"), progress=False, log=lambda *a: None)  # fmt: skip
    torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="module")
def evaluated(micro_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "exp"
    rc = main(["paths", "eval", "--method", "ga", "--paths", str(micro_paths), "--seeds", "0", "--log-every", "3",
               "--parallel", "1", "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    return out


def test_paths_start_from_the_oracle_and_learn_the_forget_stage(micro_paths):
    cards = {c["position"]: c for c in (json.loads((micro_paths / e["dir"] / "card.json").read_text())
                                        for e in pb.list_paths(micro_paths))}  # fmt: skip
    assert sorted(cards) == [1, 4]
    last, first = cards[4]["accuracy"], cards[1]["accuracy"]
    # the base never saw the forget entities; learned last, they are known; learned first, later stages erode them
    assert last["forget10"] >= 0.75 and last["forget10"] >= first["forget10"]
    assert min(last["retain90"], first["retain90"]) >= 0.5  # the base's retain knowledge survives the stages


def test_outputs(evaluated):
    df = pd.read_csv(evaluated / "path_dependence.csv")
    steps = sorted(set(df["step"]))
    assert steps[0] == 0 and steps[-1] == 10 and 3 in steps and 9 in steps  # step 0, every 3, the last step
    assert len(df) == 2 * len(steps) and set(df["position"]) == {1, 4}
    for col in ("forget_ll", "para_ll", "retain_ll", "arith_acc", "retain_acc"):
        assert df[col].notna().all()
    ga = df.groupby("path")["forget_ll"]
    assert (ga.last() < ga.first()).all()  # gradient ascent lowers the forget log-likelihood on both paths
    s = json.loads((evaluated / "path_dependence_summary.json").read_text())
    assert {"scores", "per_seed", "per_method", "overall", "spread"} <= set(s)
    fs = {r["position"]: r["fs"] for r in s["scores"]}
    f = df.set_index(["position", "step"])["forget_ll"]
    for p in (1, 4):  # FS = f(0) - f(T), read back from the CSV
        assert fs[p] == pytest.approx(f[(p, 0)] - f[(p, 10)], rel=1e-4)
    assert s["per_seed"][0]["recency"] == (fs[4] < fs[1])
    m = json.loads((evaluated / "metrics.json").read_text())
    assert m["ga_gap_fs"] == pytest.approx(abs(fs[4] - fs[1]), rel=1e-6)
    from unlearn.metrics import check_keys

    assert check_keys({k: v for k, v in m.items() if k != "schema_version"}) == []
    assert (evaluated / "path_dependence.png").stat().st_size > 10_000
    assert json.loads((evaluated / "status.json").read_text())["state"] == "finished"


def test_step0_is_the_path_model(evaluated, micro_paths):
    """The trajectory's first point is the probe applied to the path model itself (nothing trained before it)."""
    from unlearn.paths.evaluate import PathEntry, PathsEvalArgs, _probe_for, run_args
    from unlearn.targets.llm import load_causal_lm

    e = next(x for x in pb.list_paths(micro_paths) if x["position"] == 4)
    a = PathsEvalArgs(methods=["ga"], paths=str(micro_paths), out=str(evaluated), seeds=[0], log_every=3)
    ra = run_args(a, "ga", PathEntry(str(micro_paths / e["dir"]), "-".join(e["order"]), 4, 0), 0, "forget10",
                  evaluated)  # fmt: skip
    got = _probe_for(ra)(load_causal_lm(ra.model))
    df = pd.read_csv(evaluated / "path_dependence.csv")
    row = df[(df["position"] == 4) & (df["step"] == 0)].iloc[0]
    assert row["forget_ll"] == pytest.approx(got["forget_ll"], rel=1e-5)
    assert row["arith_acc"] == pytest.approx(got["arith_acc"])


def test_same_unlearning_as_unlearn_run(evaluated, micro_paths, tmp_path):
    """`unlearn run --model <path dir> --set eval_every=3` gives the metrics of the paths eval's run of that path."""
    e = next(x for x in pb.list_paths(micro_paths) if x["position"] == 1)
    rc = main(["run", "--method", "ga", "--model", str(micro_paths / e["dir"]), "--seed", "0", "--suite", "basic",
               "--set", "eval_every=3", "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    assert rc == 0
    direct = json.loads(next(tmp_path.glob(f"tinyfacts/{e['dir']}/ga/forget10/seed0/metrics.json")).read_text())
    via = json.loads((evaluated / f"path_runs/tinyfacts/{e['dir']}/ga/forget10/seed0/metrics.json").read_text())
    drop = {k for k in direct if k.startswith("cost_") and "seconds" in k}
    assert {k: v for k, v in direct.items() if k not in drop} == {k: v for k, v in via.items() if k not in drop}
    assert direct["forget_acc"] < 1.0  # the run really unlearned something (presets of the embedded target applied)


def test_bad_input(micro_paths, tmp_path, capsys):
    one = str(micro_paths / pb.list_paths(micro_paths)[0]["dir"])
    for argv, msg in (
        (["--method", "nope", "--paths", str(micro_paths)], "unknown"),
        (["--method", "ga", "--paths", one], "at least two"),
        (["--method", "ga", "--paths", str(micro_paths), "--seeds", "7"], "no path built with seeds 7"),
        (["--method", "ga", "--paths", str(micro_paths), "--log-every", "0"], "--log-every"),
        (["--method", "ga", "--paths", f"{one},{tmp_path / 'missing'}"], "not a directory"),
    ):
        capsys.readouterr()
        assert main(["paths", "eval", *argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "o" / "metrics.json").exists()
