"""Evaluate the micro target (with its oracle) under accelerate; the main process writes metrics + examples to JSON.

Launched by test_eval_multiprocess.py as
``accelerate launch --multi_gpu --num_processes 2 tests/unlearn/_eval_mp.py OUT.json`` (gloo on CPU; ``--cpu``
would silently start one process). UNLEARN_HOME must hold the built micro target.
"""

import json
import sys


def mp_sets(sets: dict) -> dict:
    """Uneven shards on purpose: 7 forget records, and a one-record set that leaves process 1 with nothing."""
    return {**sets, "forget": sets["forget"][:7], "real_authors": sets["world_facts"][:1]}


def main(out: str) -> None:
    import torch.distributed as dist
    from accelerate import Accelerator

    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.evaluate import EvalConfig, _Shard, evaluate
    from unlearn.targets.llm import load_causal_lm
    from unlearn.targets.resolve import load_target

    # no cpu=True on purpose: on a CPU machine this Accelerator reports one process although the gloo group has two,
    # and evaluate() must still shard (it reads the group's size)
    acc = Accelerator()
    tgt = load_target("tiny-micro", "tinyfacts", "forget10", log=lambda *a: None)
    sets = mp_sets(load_sets("tinyfacts", "forget10", DataFiles(), tgt.build_cfg.data)[0])
    cfg = EvalConfig(suite="full", batch_size=4)  # small batches: several per shard
    om, oe = evaluate(load_causal_lm(tgt.oracle_dir), tgt.tokenizer, tgt.fmt, sets, cfg, accelerator=acc)
    m, ex = evaluate(
        tgt.model, tgt.tokenizer, tgt.fmt, sets, cfg, oracle={"metrics": om, "examples": oe}, accelerator=acc
    )
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump(
                {
                    "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                    "shards": _Shard(acc).n,
                    "metrics": m,
                    "examples": ex,
                    "oracle_metrics": om,
                },
                f,
            )
    acc.wait_for_everyone()
    if dist.is_initialized():
        dist.destroy_process_group()  # without it gloo runs abort at exit now and then (SIGABRT)


if __name__ == "__main__":
    main(sys.argv[1])
