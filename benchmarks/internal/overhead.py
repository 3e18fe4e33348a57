"""What the internal evaluators add to ``--suite full`` per evaluated model, on the shipped TinyFacts target.

Side by side in one process, alternating, ``--repeats`` times: the logit part of ``--suite full`` (``evaluate``)
and the internal part (hidden states, CKA against the original and the oracle, probe and k-NN at every block,
logit lens, concept-vector drift) on the same candidate (the target itself, forget10). The references' hidden
states are cached the first time (like their logit evaluations), so the first internal pass is reported apart as
"cold". The budget is 15 s per evaluated model on 2 cores.

    PYTHONPATH=. python benchmarks/internal/overhead.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the build recipe's)")
    ap.add_argument("--split", default="forget10")
    a = ap.parse_args(argv)
    os.environ.setdefault("UNLEARN_HOME", tempfile.mkdtemp(prefix="unlearn_overhead_"))
    import torch

    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.evaluate import EvalConfig, evaluate
    from unlearn.runner import _internal_suite
    from unlearn.targets.llm import load_causal_lm, load_tokenizer
    from unlearn.targets.resolve import prompt_format, resolve_paths

    spec, tdir, odir, orig, bcfg = resolve_paths("tiny", "tinyfacts", a.split, log=lambda *x: None)
    torch.set_num_threads(a.threads or bcfg.threads or torch.get_num_threads())
    tok = load_tokenizer(tdir)
    fmt = prompt_format(None, tok, True, "tiny")
    sets, _, retain_train = load_sets("tinyfacts", a.split, DataFiles(), bcfg.data)
    model = load_causal_lm(tdir)
    suite = _internal_suite(spec, tok, fmt, sets, retain_train, orig, odir)

    t0 = time.perf_counter()
    suite.evaluate(model)
    cold = time.perf_counter() - t0
    logit, internal = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        evaluate(model, tok, fmt, sets, EvalConfig(suite="full"))
        logit.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        suite.evaluate(model)
        internal.append(time.perf_counter() - t0)
    med_l, med_i = statistics.median(logit), statistics.median(internal)
    print(f"threads {torch.get_num_threads()}, {a.repeats} repeats, split {a.split}")
    print(f"full suite, logit part:  median {med_l:.2f} s  {[round(x, 2) for x in logit]}")
    print(f"internal part (warm):    median {med_i:.2f} s  {[round(x, 2) for x in internal]}  (budget 15 s)")
    print(f"internal part (cold, references' hidden states computed and cached): {cold:.2f} s")
    print(f"ratio internal / logit: {med_i / med_l:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
