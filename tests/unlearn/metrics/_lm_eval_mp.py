"""lm-eval on the micro target under accelerate; every process writes its result dict and the split it saw.

Launched by test_lm_eval_sharded.py as
``accelerate launch --multi_gpu --num_processes 2 tests/unlearn/metrics/_lm_eval_mp.py OUT_DIR`` (gloo on CPU;
``--cpu`` would silently start one process). UNLEARN_HOME must hold the built micro target.
"""

import json
import sys

TASKS = ["tinyfacts_forget_mc", "tinyfacts_retain_mc", "tinyfacts_world_facts_mc", "tinyfacts_arithmetic_mc"]
BATCH = 4  # small batches: several per process


def mp_sets(sets: dict) -> dict:
    """Uneven shards on purpose: 7 forget and 7 arithmetic documents (4 + 3: lm-eval pads the smaller share)."""
    return {**sets, "forget": sets["forget"][:7], "arithmetic": sets["arithmetic"][:7]}


def perturbed(model):
    """The target with seeded noise in its weights (0.6 std per tensor): accuracies strictly between 0 and 1, so a
    result missing one process's documents would show (the clean target scores 1.0 on most tasks)."""
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.6 * p.std() * torch.randn(p.shape, generator=g))
    return model


def main(out: str) -> None:
    import torch.distributed as dist
    from accelerate import Accelerator

    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.metrics.lm_eval import run_lm_eval
    from unlearn.targets.resolve import load_target

    Accelerator(cpu=True)  # what `unlearn eval` makes under a launch (unlearn.commands.run.make_accelerator)
    tgt = load_target("tiny-micro", "tinyfacts", "forget10", log=lambda *a: None)
    sets = mp_sets(load_sets("tinyfacts", "forget10", DataFiles(), tgt.build_cfg.data)[0])
    record: dict = {}
    m = run_lm_eval(perturbed(tgt.model), tgt.tokenizer, TASKS, sets=sets, batch_size=BATCH, record=record)
    rank = dist.get_rank()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"rank": rank, "group_size": dist.get_world_size(), "record": record, "metrics": m}, f)
    dist.barrier()
    dist.destroy_process_group()  # without it gloo runs abort at exit now and then (SIGABRT)


if __name__ == "__main__":
    main(sys.argv[1])
