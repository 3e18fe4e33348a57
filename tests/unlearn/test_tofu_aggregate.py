"""TOFU aggregation on TOFU's published Llama-2-7b eval logs (full model vs the retain90 model).

The expected figures are computed here independently, with numpy/scipy straight from the JSON, following TOFU's
``aggregate_eval_stat.py`` (https://github.com/locuslab/tofu), and are also pinned as literals:

    forget quality of `full` against `retain90`  = 1.834066e-21  (KS statistic 0.396667, 300 vs 300 examples)
    model utility of `full`                      = 0.622677
    model utility of `retain90`                  = 0.613745
"""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import hmean, ks_2samp

from unlearn.cli import main
from unlearn.metrics.logit import truth_ratio
from unlearn.tofu_aggregate import aggregate, utility_components

DATA = Path(__file__).resolve().parents[1] / "assets" / "tofu"  # TOFU's published logs, committed (MIT licence)
FULL = DATA / "llama2-7b_full_eval_log_aggregated.json"
RETAIN = DATA / "llama2-7b_retain90_eval_log_aggregated.json"


@pytest.fixture(scope="module")
def logs():
    return json.loads(FULL.read_text()), json.loads(RETAIN.read_text())


def _vals(d):
    return np.array(list(d.values()), dtype=np.float64)


def _tofu_stat(task):
    """TOFU's exp(mean perturbed avg-loss - paraphrased avg-loss) = 1/R."""
    return np.exp(_vals(task["average_perturb_loss"]).mean(-1) - _vals(task["avg_paraphrased_loss"]))


def _ref_fq(cand, ret):
    return ks_2samp(_tofu_stat(cand["eval_log_forget.json"]), _tofu_stat(ret["eval_log_forget.json"])).pvalue


def _ref_mu(log):
    nums = []
    for k in ("eval_log.json", "eval_real_author_wo_options.json", "eval_real_world_wo_options.json"):
        t = log[k]
        gt = np.exp(-_vals(t["avg_gt_loss"]))
        if k == "eval_log.json":
            nums.append(gt.mean())
        else:
            false = np.exp(-_vals(t["average_perturb_loss"])).sum(-1)
            nums.append((gt / (gt + false)).mean())
        nums.append(_vals(t["rougeL_recall"]).mean())
        nums.append(np.maximum(0, 1 - 1 / _tofu_stat(t)).mean())
    assert len(nums) == 9
    return hmean(nums)


def test_reference_figures_pinned(logs):
    full, retain = logs
    assert _ref_fq(full, retain) == pytest.approx(1.834066e-21, rel=1e-5)
    assert _ref_mu(full) == pytest.approx(0.622677, abs=1e-6)
    assert _ref_mu(retain) == pytest.approx(0.613745, abs=1e-6)


def test_aggregate_matches_independent_computation(logs):
    full, retain = logs
    res = aggregate(full, retain)
    assert res["forget_quality"] == pytest.approx(_ref_fq(full, retain), rel=1e-9)
    assert res["forget_ks_statistic"] == pytest.approx(119 / 300, abs=1e-12)
    assert res["model_utility"] == pytest.approx(_ref_mu(full), rel=1e-12)
    assert res["retain_model_utility"] == pytest.approx(_ref_mu(retain), rel=1e-12)
    assert utility_components(retain)["model_utility"] == pytest.approx(_ref_mu(retain), rel=1e-12)
    # forget-set components: mean exp(-gt loss), mean ROUGE-L recall, mean min(R, 1/R)
    f = full["eval_log_forget.json"]
    assert res["forget_prob"] == pytest.approx(np.exp(-_vals(f["avg_gt_loss"])).mean(), rel=1e-12)
    assert res["forget_rougeL_recall"] == pytest.approx(_vals(f["rougeL_recall"]).mean(), rel=1e-12)
    s = _tofu_stat(f)
    assert res["forget_truth_ratio"] == pytest.approx(np.minimum(s, 1 / s).mean(), rel=1e-12)
    # the retain model against itself is indistinguishable
    assert aggregate(retain, retain)["forget_quality"] == pytest.approx(1.0)


def test_truth_ratio_matches_tofu_logged_values(logs):
    """TOFU's logs carry its own per-example truth_ratio field (float32): our R reproduces it."""
    for task in logs[0].values():
        R = truth_ratio(-_vals(task["avg_paraphrased_loss"]), 1, -_vals(task["average_perturb_loss"]), 1)
        np.testing.assert_allclose(R, _vals(task["truth_ratio"]), rtol=1e-5)


def test_cli_prints_and_writes(tmp_path, capsys):
    out = tmp_path / "agg.json"
    rc = main(["tofu-aggregate", "--candidate", str(FULL), "--retain", str(RETAIN), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Forget Quality" in printed and "1.834e-21" in printed and "0.6227" in printed
    written = json.loads(out.read_text())
    assert written["forget_quality"] == pytest.approx(1.834066e-21, rel=1e-5)
    assert written["model_utility"] == pytest.approx(0.622677, abs=1e-6)


def test_cli_errors_exit_2(tmp_path, capsys):
    rc = main(["tofu-aggregate", "--candidate", str(tmp_path / "missing.json"), "--retain", str(RETAIN)])
    assert rc == 2
    assert "candidate log not found" in capsys.readouterr().err

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["tofu-aggregate", "--candidate", str(bad), "--retain", str(RETAIN)]) == 2
    assert "not valid JSON" in capsys.readouterr().err

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"eval_log.json": {}}))
    assert main(["tofu-aggregate", "--candidate", str(FULL), "--retain", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: retain: not a TOFU eval_log_aggregated.json") and err.count("\n") == 1


def test_field_errors_are_user_errors(logs):
    from unlearn.errors import UnlearnError

    full, _ = logs
    broken = {k: dict(v) for k, v in full.items()}
    del broken["eval_log.json"]["rougeL_recall"]
    with pytest.raises(UnlearnError, match="rougeL_recall"):
        aggregate(broken, full)
    with pytest.raises(UnlearnError, match="JSON object"):
        aggregate([], full)


def test_rouge_recomputed_from_tofus_generations_and_the_preset_does_not_truncate(logs):
    """TOFU's logged generations ([prompt, generation, ground truth]) give back its per-example ROUGE-L recall with
    the suite's `rouge_l`. TOFU generated them under ``max_length: 200`` tokens, prompt included
    (config/eval_everything.yaml), so each is under 200 tokens: the TOFU preset's 200 new tokens keeps every one
    whole. The old 32-token cap would not: a Llama-2 token never spans two words, so 32 tokens keep at most the
    first 32 words, and even that upper bound loses recall."""
    from unlearn.evaluate import eval_config
    from unlearn.metrics.logit import rouge_l

    assert eval_config("tofu").max_new_tokens >= 200
    cases = ((logs[0], "eval_log.json", 0.98565), (logs[0], "eval_log_forget.json", 0.98545),
             (logs[1], "eval_log.json", 0.97581), (logs[1], "eval_log_forget.json", 0.40824))  # fmt: skip
    for log, task, mean in cases:
        gen, logged = log[task]["generated_text"], log[task]["rougeL_recall"]
        ours = np.array([rouge_l(gen[i][1], gen[i][2])[0] for i in gen])
        np.testing.assert_allclose(ours, [logged[i] for i in gen], atol=1e-12)
        assert ours.mean() == pytest.approx(mean, abs=1e-5)
        if mean > 0.9:  # the full model, and the retain90 model on the retain set: they remember
            cut = np.array([rouge_l(" ".join(gen[i][1].split()[:32]), gen[i][2])[0] for i in gen])
            assert cut.mean() < ours.mean() - 0.01
