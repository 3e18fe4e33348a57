"""Bridge to lm-evaluation-harness (family ``lm_eval``): run lm-eval tasks on the in-memory model under evaluation.

Two kinds of task:

* **Built-in** ``tinyfacts_{forget,retain,world_facts,arithmetic}_mc``: cloze multiple choice over the evaluated
  sets (the reference answer against the record's perturbed values). Their YAMLs are package data
  (``unlearn/assets/lm_eval_tasks/``); at run time the data are written as JSONL under
  ``$UNLEARN_HOME/lm_eval_tasks/<content hash>/`` and the YAMLs copied next to them with absolute ``data_files``
  (lm-eval resolves relative data paths against the current directory, not the YAML's). The task index is built
  with ``include_defaults=False`` (instant; the default index of ~14k YAMLs takes ~10 s).
* **Any other lm-eval task** (``mmlu``, ``wmdp_bio`` ...): looked up in lm-eval's default index. Offline, its
  dataset must already be in the Hugging Face datasets cache. WMDP's tasks (``wmdp_bio``, ``wmdp_cyber``,
  ``wmdp_chem``, group ``wmdp``) are lm-eval's own YAMLs, indexed from lm-eval's ``tasks/wmdp`` folder alone
  (no default index needed when every task is WMDP's) after checking that ``cais/wmdp`` loads (a one-line error
  otherwise).

`wmdp_evaluate` is the evaluation of ``--benchmark wmdp``: its lm-eval tasks plus the mean token NLL of the
held-out forget / retain text (``forget_text_nll``, ``retain_text_nll``).

The model is passed as an object (``HFLM(pretrained=model, tokenizer=tok)``), never saved and re-loaded. Under
several processes (a torch.distributed group, e.g. ``accelerate launch``) the work is split across them with
lm-eval's own data-parallel evaluation, which it skips for an in-memory model: `ShardedHFLM` reports the group's
rank and world size, so each process builds the requests of every ``world_size``-th document of each task (lm-eval's
``build_all_requests(rank, world_size)``), pads to the largest share so every process runs as many requests, and
the per-document metrics are gathered to rank 0, which aggregates them; the result is broadcast, so every process
returns the same dict (call `run_lm_eval` on every process). The numbers equal one process's (tested:
tests/unlearn/metrics/test_lm_eval_sharded.py).

Result keys: ``lm_eval_<task>_<metric>`` (e.g. ``lm_eval_tinyfacts_forget_mc_acc``), lm-eval's filter suffix
(``,none``) dropped and other filters appended (``_strict-match``); standard errors are not reported.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from unlearn.data import wmdp
from unlearn.data.benchmarks import DataFiles, load_sets
from unlearn.errors import UnlearnError
from unlearn.metrics import register_metric
from unlearn.store import atomic_write_jsonl, atomic_write_text, unlearn_home

# built-in task -> the evaluation set it is made from
BUILTIN_TASKS = {
    "tinyfacts_forget_mc": "forget",
    "tinyfacts_retain_mc": "retain",
    "tinyfacts_world_facts_mc": "world_facts",
    "tinyfacts_arithmetic_mc": "arithmetic",
}
TASK_DIR = Path(__file__).resolve().parents[1] / "assets" / "lm_eval_tasks"  # package data: works from a wheel
TEMPLATE = "_tinyfacts_mc_template.yaml"

for _task, _set in BUILTIN_TASKS.items():
    _where = {
        "forget": "the forget set",
        "retain": "the retain evaluation set",
        "world_facts": "world facts",
        "arithmetic": "held-out arithmetic",
    }[_set]
    _dir = "oracle" if _set == "forget" else "higher"
    _tail = " Best when closest to the retain-only oracle's value." if _set == "forget" else " Higher is better."
    register_metric(
        f"lm_eval_{_task}_acc",
        "lm_eval",
        _dir,
        f"lm-eval multiple-choice accuracy on {_where}: share "
        "of questions whose reference answer has the highest log-likelihood among it and the perturbed "
        f"values (cloze, 0-shot).{_tail}",
        "[0, 1]",
    )
    register_metric(
        f"lm_eval_{_task}_acc_norm",
        "lm_eval",
        _dir,
        f"lm-eval multiple-choice accuracy on {_where} "
        f"with log-likelihoods normalised by the choice's length in bytes.{_tail}",
        "[0, 1]",
    )
register_metric(
    "lm_eval_{task}",
    "lm_eval",
    "none",
    "any other lm-eval task's metric, lm_eval_<task>_<metric> (e.g. lm_eval_mmlu_acc). Its direction depends on "
    "the task (a utility benchmark: higher is better; a hazardous-knowledge benchmark such as WMDP measures what "
    "should be forgotten), so the registry does not rank it.",
)
register_metric(
    "forget_text_nll",
    "lm_eval",
    "higher",
    "WMDP: mean per-token negative log-likelihood (nats) of the held-out forget-corpus documents (never trained "
    "on; the first 512 tokens of each). Higher means the hazardous text became less likely.",
    ">= 0",
)
register_metric(
    "retain_text_nll",
    "lm_eval",
    "lower",
    "WMDP: mean per-token negative log-likelihood (nats) of the held-out retain-corpus documents (never trained "
    "on; the first 512 tokens of each). Lower is better (general text kept).",
    ">= 0",
)
WMDP_TASKS = {*wmdp.TASKS.values(), "wmdp"}  # lm-eval's wmdp folder: three tasks and their group


# ----------------------------------------------------------------------------------------------- task data
def option_values(rec: dict) -> list[str]:
    """The wrong options of a record, in the same form as its ``answer``.

    TinyFacts' perturbed answers are framed like its paraphrased answer ("born in Karth" vs "born in Velmora"),
    while the answer is the bare value ("Velmora"): when every perturbed answer shares the paraphrase's frame, the
    frame is stripped. Otherwise (TOFU: full-sentence answers and perturbations) they are used as they are.
    """
    ans, para, pert = rec["answer"], rec.get("paraphrased_answer") or "", list(rec.get("perturbed_answer") or [])
    if ans and ans in para:
        pre, post = para.split(ans, 1)
        if pre or post:
            if all(p.startswith(pre) and p.endswith(post) and len(p) > len(pre) + len(post) for p in pert):
                pert = [p[len(pre) : len(p) - len(post)] for p in pert]
    return [p for p in dict.fromkeys(pert) if p != ans]


def mc_docs(records: list[dict]) -> list[dict]:
    """Records -> lm-eval docs ``{"question", "choices", "answer": index}``; records without options are skipped.

    The choice order is shuffled with a seed derived from the question, so it is fixed across runs and the
    reference is not always first (lm-eval's argmax resolves ties towards the first choice).
    """
    docs = []
    for r in records:
        opts = option_values(r)
        if not opts:
            continue
        choices = [r["answer"], *opts]
        rng = random.Random(int(hashlib.sha256(r["question"].encode()).hexdigest()[:8], 16))
        rng.shuffle(choices)
        docs.append({"question": r["question"], "choices": choices, "answer": choices.index(r["answer"])})
    return docs


def default_sets() -> dict[str, list[dict]]:
    """The TinyFacts default sets (forget10, the retain evaluation entities, world facts, arithmetic), generated."""
    return load_sets("tinyfacts", "forget10", DataFiles())[0]


def write_builtin_tasks(tasks: list[str], sets: dict[str, list[dict]], root: Path | None = None) -> Path:
    """Write the data of the built-in ``tasks`` and their YAMLs (absolute ``data_files``) into one folder.

    Returns:
        the folder, ``<root>/<hash of the data>/`` (``root`` defaults to ``$UNLEARN_HOME/lm_eval_tasks``); the same
        data always map to the same folder, so concurrent runs never overwrite each other's files.
    """
    import yaml

    if not (TASK_DIR / TEMPLATE).exists():
        raise UnlearnError(f"lm-eval task YAMLs not found in {TASK_DIR} (run from a source checkout of unlearn)")
    docs = {}
    for t in tasks:
        name = BUILTIN_TASKS[t]
        if not sets.get(name):
            raise UnlearnError(f"lm-eval task {t} needs the {name!r} set, which this benchmark does not have")
        docs[t] = mc_docs(sets[name])
        if not docs[t]:
            raise UnlearnError(f"lm-eval task {t}: no record of the {name!r} set has perturbed answers")
    if root is None:
        root = unlearn_home() / "lm_eval_tasks"
    d = Path(root) / hashlib.sha256(json.dumps(docs, sort_keys=True).encode()).hexdigest()[:16]
    atomic_write_text(d / TEMPLATE, (TASK_DIR / TEMPLATE).read_text())
    for t, rows in docs.items():
        data = d / f"{t}.jsonl"
        atomic_write_jsonl(data, rows)
        cfg = yaml.safe_load((TASK_DIR / f"{t}.yaml").read_text())
        cfg["dataset_kwargs"]["data_files"] = {"test": str(data.resolve())}
        atomic_write_text(d / f"{t}.yaml", yaml.safe_dump(cfg, sort_keys=False))
    return d


# ----------------------------------------------------------------------------------------------- running
def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    sets: dict[str, list[dict]] | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    record: dict | None = None,
) -> dict[str, float]:
    """Run lm-eval ``tasks`` on an in-memory causal LM, split across the processes of a torch.distributed group.

    Args:
        model: a transformers causal LM (wrappers such as DDP are unwrapped); evaluated on its own device.
        tokenizer: its tokenizer.
        tasks: built-in ``tinyfacts_*_mc`` names and/or any lm-eval task or group name.
        sets: evaluation sets ``{"forget": [...], "retain": [...], ...}`` (TOFU schema) that the built-in tasks are
            made from; None generates the TinyFacts default sets.
        batch_size: lm-eval batch size (per process).
        limit: evaluate only the first ``limit`` documents of each task (for quick checks).
        record: if given, filled with ``world_size`` and ``requests_per_rank`` (the loglikelihood requests each
            process scored, padding included): how the work was split.

    Returns:
        ``{"lm_eval_<task>_<metric>": value}`` — identical on every process.
    """
    import torch.distributed as dist

    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise UnlearnError("no lm-eval task given")
    multi = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not multi:
        tm = _prepare(tasks, sets)
        out, n = _evaluate(model, tokenizer, tasks, tm, batch_size, limit, sharded=False)
        if record is not None:
            record.update(world_size=1, requests_per_rank=[n])
        return out  # type: ignore[return-value]
    # every process resolves the tasks (deterministic); one error anywhere stops all of them before any collective
    tm, err = None, None
    try:
        tm = _prepare(tasks, sets)
    except UnlearnError as e:
        err = str(e)
    errs: list = [None] * dist.get_world_size()
    dist.all_gather_object(errs, err)
    if any(errs):
        raise UnlearnError(next(e for e in errs if e))
    out, n = _evaluate(model, tokenizer, tasks, tm, batch_size, limit, sharded=True)
    counts: list = [None] * dist.get_world_size()
    dist.all_gather_object(counts, n)
    box = [out]  # rank 0 aggregated the gathered per-document metrics; the others got None from lm-eval
    dist.broadcast_object_list(box, src=0)
    if record is not None:
        record.update(world_size=dist.get_world_size(), requests_per_rank=counts)
    return box[0]


def _prepare(tasks: list[str], sets):
    """Write the built-in tasks' files, index the tasks, refuse unknown names; returns lm-eval's TaskManager."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    builtin = [t for t in tasks if t in BUILTIN_TASKS]
    other = [t for t in tasks if t not in BUILTIN_TASKS]
    include = []
    if builtin:  # the same data map to the same folder, written atomically: every process may write it
        include.append(str(write_builtin_tasks(builtin, sets if sets is not None else default_sets())))
    check_wmdp_data([t for t in other if t in WMDP_TASKS])
    defaults = bool([t for t in other if t not in WMDP_TASKS])
    if other and not defaults:  # lm-eval's own WMDP YAMLs, indexed alone
        include.append(str(Path(lm_eval.__file__).resolve().parent / "tasks" / "wmdp"))
    # the default index costs ~10 s: build it only when a task is neither ours nor WMDP's
    tm = TaskManager(include_path=include or None, include_defaults=defaults, verbosity="ERROR")
    unknown = [t for t in other if t not in tm.all_tasks]
    if unknown:
        import difflib

        hints = {t: difflib.get_close_matches(t, tm.all_tasks, n=3) for t in unknown}
        raise UnlearnError(
            "unknown lm-eval task(s): "
            + "; ".join(f"{t}" + (f" (did you mean {', '.join(h)}?)" if h else "") for t, h in hints.items())
            + f"; built-in: {', '.join(BUILTIN_TASKS)}"
        )
    return tm


def _evaluate(model, tokenizer, tasks, tm, batch_size, limit, sharded: bool) -> tuple[dict | None, int]:
    """lm-eval's simple_evaluate on the model; returns (flat results, or None on ranks > 0 when sharded; the number
    of loglikelihood requests this process scored)."""
    import lm_eval

    from unlearn.targets.llm import _unwrap  # heavy (torch, transformers): the registry import stays light

    _quiet()
    lm = _unwrap(model)
    was_training = lm.training
    lm.eval()
    try:
        hflm = sharded_hflm_class(sharded)(pretrained=lm, tokenizer=tokenizer, batch_size=batch_size)
        res = lm_eval.simple_evaluate(
            model=hflm,
            tasks=tasks,
            task_manager=tm,
            log_samples=False,
            limit=limit,
            verbosity="ERROR",
            bootstrap_iters=0,
        )
    finally:
        if was_training:
            lm.train()
    return (flatten_results(res, tasks) if res is not None else None), hflm.n_requests


def sharded_hflm_class(sharded: bool = True):
    """`ShardedHFLM`: lm-eval's HFLM on an in-memory model that takes part in lm-eval's data-parallel evaluation.

    For a model object lm-eval sets rank 0 / world size 1 ("custom distributed integration"); this subclass reports
    the torch.distributed group's rank and size instead (``sharded``) and does the two collectives HFLM routes
    through an accelerate Accelerator (``all_gather`` of the per-process request counts, ``barrier``) on the group
    itself, so no Accelerator is needed (one made without ``cpu=True`` reports a single process under a gloo
    launch). ``gather_object`` is HFLM's own (torch.distributed). It counts the loglikelihood requests it scores.
    """
    import torch
    import torch.distributed as dist
    from lm_eval.models.huggingface import HFLM

    class ShardedHFLM(HFLM):
        n_requests = 0  # loglikelihood requests scored by this process (lm-eval's padding included)

        @property
        def rank(self) -> int:
            return dist.get_rank() if sharded else 0

        @property
        def world_size(self) -> int:
            return dist.get_world_size() if sharded else 1

        def all_gather(self, tensor):
            if self.world_size <= 1:
                return tensor
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            dist.all_gather(parts, tensor.contiguous())
            # accelerate's gather concatenates along dim 0 (a 0-d count per process -> shape (world_size,))
            return torch.cat([p.reshape(-1) if p.dim() == 0 else p for p in parts])

        def barrier(self) -> None:
            if self.world_size > 1:
                dist.barrier()

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            self.n_requests += len(requests)
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    return ShardedHFLM


def check_wmdp_data(tasks: list[str]) -> None:
    """WMDP tasks need ``cais/wmdp`` (hub or datasets cache): a one-line UnlearnError when it does not load."""
    names = {d for d, t in wmdp.TASKS.items() if t in tasks}
    if "wmdp" in tasks:
        names |= set(wmdp.TASKS)
    for d in sorted(names):
        wmdp.load_qa(d)


def text_nll(model, tokenizer, records: list[dict], batch_size: int = 8, max_length: int = 512) -> float:
    """Mean per-token NLL (nats) of ``{"text"}`` documents: every token after the first, pooled over documents."""
    import torch
    import torch.nn.functional as F

    from unlearn.targets.llm import _unwrap, collate, encode_text

    lm = _unwrap(model)
    device = next(lm.parameters()).device
    items = [encode_text(tokenizer, r["text"], max_length) for r in records]
    items = [it for it in items if len(it[0]) >= 2]
    if not items:
        return float("nan")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    was_training = lm.training
    lm.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(items), batch_size):
                b = {k: v.to(device) for k, v in collate(items[i : i + batch_size], pad).items()}
                logits = lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
                labels = b["labels"][:, 1:]
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                                      reduction="sum")  # fmt: skip
                total += float(nll)
                count += int((labels != -100).sum())
    finally:
        if was_training:
            lm.train()
    return total / max(count, 1)


def wmdp_evaluate(model, tokenizer, sets: dict[str, list[dict]], split: str, extra_tasks=(), limit=None) -> dict:
    """The ``--benchmark wmdp`` evaluation: lm-eval accuracy of the split's WMDP tasks (+ ``extra_tasks``) and
    the held-out forget / retain text NLL. Call it on every process (lm-eval's work is split across them)."""
    tasks = list(dict.fromkeys([*wmdp.tasks_for(split), *extra_tasks]))
    metrics = run_lm_eval(model, tokenizer, tasks, sets=sets, limit=limit)
    for name in ("forget", "retain"):
        if sets.get(name):
            metrics[f"{name}_text_nll"] = text_nll(model, tokenizer, sets[name])
    return metrics


def _quiet() -> None:
    """lm-eval warns that an in-memory model ignores model args (expected here); datasets draws a bar per file."""
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - lm_eval depends on datasets
        pass


def flatten_results(res: dict, tasks: list[str]) -> dict[str, float]:
    """lm-eval's ``results`` (and ``groups``) of the requested tasks -> flat ``lm_eval_<task>_<metric>`` floats."""
    tables = {**res.get("results", {}), **res.get("groups", {})}
    names = [t for t in tasks if t in tables] or list(tables)
    out = {}
    for t in names:
        for key, v in tables[t].items():
            if "," not in key or "_stderr" in key or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            metric, filt = key.split(",", 1)
            suffix = "" if filt == "none" else f"_{filt}"
            out[f"lm_eval_{t}_{metric}{suffix}"] = float(v)
    return out
