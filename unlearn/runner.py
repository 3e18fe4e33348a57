"""The LLM workflows behind `unlearn run` and `unlearn eval`: claim the run directory, unlearn, evaluate, write.

Composes targets/ (resolution and loading), data/ (benchmark sets), methods + train (unlearning) and evaluate
(metrics) on the run lifecycle of `unlearn.workflow`; prints nothing itself except through the ``log`` callback,
and raises `UnlearnError` for user errors. ``--out`` is the runs root for `run` (the run tree below it) and the
run directory itself for `eval`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from unlearn.config import (
    BENCHMARK_TRAIN,
    EMBEDDED_METHOD,
    EMBEDDED_METHOD_TRAIN,
    EMBEDDED_TRAIN,
    TrainConfig,
    apply_overrides,
    resolve_benchmark,
    resolve_model,
    set_field,
)
from unlearn.data.benchmarks import DataFiles, check_split, data_hash, get_benchmark, load_sets
from unlearn.data.muse import training_chunks
from unlearn.errors import UnlearnError, unknown_name
from unlearn.evaluate import EvalConfig, cached_evaluate, eval_config, evaluate
from unlearn.loop import clear_checkpoint, total_steps
from unlearn.methods import get_method
from unlearn.metrics.cost import cost_metrics
from unlearn.metrics.muse import MuseEvalConfig, add_privleak, cached_muse_evaluate, muse_evaluate
from unlearn.sharding import resolve as resolve_sharding
from unlearn.store import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl, run_dir
from unlearn.targets.llm import (
    PromptFormat,
    encode_record,
    load_causal_lm,
    load_tokenizer,
    resolve_model_dir,
    save_model,
    uncached_hub_ids,
)
from unlearn.targets.resolve import Target, embedded_cfg, prompt_format, resolve_paths, tinyfacts_build_of
from unlearn.tracking import check_report_to, open_tracker
from unlearn.train import unlearn_model
from unlearn.workflow import claim_run, files_hash, read_resolved

SUITES = ("basic", "full", "internal")
INTERNAL_SUITES = ("full", "internal")  # the suites that run the internal evaluators (unlearn.metrics.internal)


def check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise unknown_name("suite", suite, SUITES)


@dataclass
class RunArgs:
    method: str = "npo"
    model: str = "tiny"
    benchmark: str | None = None  # None: the model alias's own (config.default_benchmark)
    split: str = "forget10"
    seed: int = 0
    out: str = "runs"
    overrides: list = field(default_factory=list)  # [(key, value)]
    files: DataFiles = field(default_factory=DataFiles)
    force: bool = False
    reuse: bool = False  # a finished run with the same settings is shown, not re-run
    save_model: bool = False
    prompt: str | None = None
    suite: str = "full"
    progress: bool = True
    name: str | None = None  # --name TAG: the run is filed under <method>+TAG
    compat: str = "none"  # metric conventions (EvalConfig.compat)


# training settings that change how a run is computed (memory, resumption, tracing), not what it learns: setting
# them makes no variant of its own
RUN_KNOBS = ("micro_batch_size", "checkpoint_every", "eval_every", "gradient_checkpointing", "report_to", "sharding")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def run_label(a: RunArgs, embedded: bool) -> tuple[str, dict]:
    """The method folder a run is filed under, and the ``variant`` record config.json keeps of it.

    The base is the method's own run label (``MethodSpec.run_label``, else its name). ``--name TAG`` appends
    ``+TAG``; without it, the settings ``--config`` / ``--set`` change relative to the defaults (the embedded presets
    count as defaults) append ``+`` and a 4-hex hash of those changes, so a hyper-parameter variant never shares a
    directory (or a leaderboard row) with the defaults. Settings the base label already shows
    (``MethodSpec.label_keys``) and `RUN_KNOBS` make no hash. Setting a value to its default changes nothing.
    """
    spec, mcfg, tcfg = prepare_configs(a, embedded)
    _, m0, t0 = prepare_configs(dataclasses.replace(a, overrides=[]), embedded)
    base = spec.run_label(mcfg) if spec.run_label is not None else a.method
    encoded = set(spec.label_keys)
    changed = {}
    for group, now, before, skip in (("train", tcfg, t0, set(RUN_KNOBS)), ("method", mcfg, m0, set())):
        fn, fb = _flat(asdict(now)), _flat(asdict(before))
        for k in sorted(fn):
            if fn[k] != fb[k] and k not in skip and k not in encoded and f"{group}.{k}" not in encoded:
                changed[f"{group}.{k}"] = fn[k]
    if a.name is not None:
        if not re.fullmatch(r"[A-Za-z0-9._=-]+", a.name):
            raise UnlearnError(f"--name {a.name!r}: use letters, digits and . _ = - only (it names a folder)")
        label = f"{base}+{a.name}"
    elif changed:
        label = f"{base}+{hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:4]}"
    else:
        label = base
    return label, {"label": label, "name": a.name, "changed": changed}


def prepare_configs(a: RunArgs, embedded: bool):
    """(method spec, method config, train config): defaults, per-split defaults, embedded presets, overrides."""
    spec = get_method(a.method, "llm")
    mcfg = spec.config_cls()
    split_defaults = getattr(__import__(spec.step.__module__, fromlist=["x"]), "SPLIT_DEFAULTS", {})
    for k, v in split_defaults.get(a.split, {}).items():
        setattr(mcfg, k, v)
    tcfg = TrainConfig()
    if embedded:
        for k, v in EMBEDDED_TRAIN.items():
            set_field(tcfg, k, str(v))
        for k, v in EMBEDDED_METHOD_TRAIN.get(a.method, {}).items():
            set_field(tcfg, k, str(v))
        for k, v in EMBEDDED_METHOD.get(a.method, {}).items():
            set_field(mcfg, k, str(v))
    else:  # a benchmark's reference recipe (MUSE), below --set
        for k, v in BENCHMARK_TRAIN.get(a.benchmark, {}).items():
            set_field(tcfg, k, str(v))
    apply_overrides(tcfg, mcfg, a.overrides)
    return spec, mcfg, tcfg


def _sets_for(tgt_cfg, benchmark: str, split: str, files: DataFiles):
    return load_sets(benchmark, split, files, tgt_cfg.data if tgt_cfg is not None else None)


def _sets_offline(tgt_cfg, benchmark: str, split: str, files: DataFiles, models: list[str | None],
                  tokenizer: str | None = None):  # fmt: skip
    """`_sets_for`, after checking that every hub model and the benchmark data can be loaded; offline, whatever is
    not cached is named in one error line with the ways to provide it (nothing is loaded before that check)."""
    missing = [f"model {m}" for m in uncached_hub_ids(models)]
    missing += [f"tokenizer {t}" for t in uncached_hub_ids([tokenizer], "tokenizer_config.json")]
    try:
        sets = _sets_for(tgt_cfg, benchmark, split, files)
    except UnlearnError as e:
        if not (missing and str(e).startswith("cannot load TOFU config")):
            raise
        sets, missing = None, [*missing, "dataset locuslab/TOFU"]
    if missing:
        raise UnlearnError(
            f"offline (HF_HUB_OFFLINE=1) and not in the Hugging Face cache: {', '.join(missing)}; download them "
            "once with network access (unset HF_HUB_OFFLINE), set HF_HOME to a cache that holds them, or pass "
            "local copies (--model DIR with config.json and *.safetensors, --oracle DIR for eval, --forget/--retain/"
            "--holdout JSONL files)"
        )
    return sets


def _cpu_gflops() -> float:
    """This machine's float32 matmul throughput with the current torch threads (a ~0.1 s measurement)."""
    a = torch.randn(512, 512)
    a @ a  # warm-up
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < 0.1:
        a @ a
        n += 1
    return 2 * 512**3 * n / (time.perf_counter() - t) / 1e9


def expected_cost(model, tok, fmt, forget: list, sets: dict, tcfg: TrainConfig, ecfg: EvalConfig) -> str:
    """One line: parameters, memory, steps and a CPU time estimate of a run, before it starts.

    Memory counts the weights in their dtype plus, for training all weights, gradients and AdamW's two float32
    moments (no activations). Time uses 6 N FLOPs per trained token (forward + backward, forget + retain batch)
    and 2 N per evaluated token (every scored answer once, every prompt generating up to max_new_tokens: an upper
    bound), at the float32 matmul rate measured here; real runs are slower (attention, memory traffic).
    """
    n_par = sum(p.numel() for p in model.parameters())
    w_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    train_bytes = w_bytes if tcfg.lora.r else w_bytes + n_par * (next(model.parameters()).element_size() + 8)

    def qa(r) -> bool:
        return isinstance(r.get("question"), str) and isinstance(r.get("answer"), str)

    sample = [r for r in forget[:64] if qa(r) or isinstance(r.get("text"), str)]  # QA or raw-text (WMDP) records
    seq = sum(len(encode_record(tok, fmt, r)[0]) for r in sample) / max(len(sample), 1)
    _, steps = total_steps(len(forget), tcfg)
    train_tok = steps * 2 * tcfg.batch_size * seq
    scored = sum(len(v) * (1 + len(v[0].get("perturbed_answer") or []) + 1) for v in sets.values() if v)
    prompts = sum(len(v) * (1 + bool(v[0].get("paraphrased_question"))) for k, v in sets.items()
                  if v and k != "holdout" and qa(v[0]))  # fmt: skip
    new_tokens = getattr(ecfg, "max_new_tokens", None) or getattr(ecfg, "verbmem_max_new_tokens", 32)  # MUSE's
    eval_tok = scored * seq + prompts * (seq + new_tokens)
    rate = _cpu_gflops() * 1e9
    return (f"expected cost: {_si(n_par)} parameters, weights {_gib(w_bytes)}, training ~{_gib(train_bytes)} "
            f"without activations; {steps} steps x {2 * tcfg.batch_size} sequences x ~{seq:.0f} tokens; on this CPU "
            f"({rate / 1e9:.0f} GFLOP/s measured) at least {_dur(6 * n_par * train_tok / rate)} training + "
            f"{_dur(2 * n_par * eval_tok / rate)} evaluation (a GPU is 1-2 orders of magnitude faster)")  # fmt: skip


def _si(n: float) -> str:
    return next(f"{n / d:.3g}{u}" for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "k"), (1, "")) if n >= d or d == 1)


def _gib(b: float) -> str:
    return f"{b / 2**30:.3g} GiB" if b >= 2**27 else f"{b / 2**20:.3g} MiB"


def _dur(sec: float) -> str:
    return f"{sec / 3600:.3g} h" if sec >= 3600 else f"{sec / 60:.3g} min" if sec >= 60 else f"{sec:.2g} s"


def _text_benchmark(benchmark: str) -> bool:
    """Whether a benchmark is evaluated by lm-eval tasks + held-out text NLL (WMDP), not the QA suite."""
    return get_benchmark(benchmark, "llm").evaluation == "lm_eval"


def _muse_benchmark(benchmark: str) -> bool:
    """Whether a benchmark is evaluated by MUSE's metrics (unlearn.metrics.muse)."""
    return get_benchmark(benchmark, "llm").evaluation == "muse"


def _muse_config(suite: str) -> MuseEvalConfig:
    if suite == "internal":
        raise UnlearnError("--suite internal is not available for MUSE (its sets are raw text and QA without options)")
    return MuseEvalConfig(suite=suite)


def _muse_oracle(oracle_dir: str | None, tok, sets, mcfg) -> dict | None:
    """The retrained model's cached MUSE evaluation (for PrivLeak), or None without one."""
    if not oracle_dir or mcfg.suite != "full":
        return None
    return cached_muse_evaluate(oracle_dir, lambda: load_causal_lm(oracle_dir), tok, sets, mcfg)


def _text_eval(model, tok, sets, split: str, extra_tasks=(), trace: bool = False) -> dict:
    """WMDP's evaluation (unlearn.metrics.lm_eval.wmdp_evaluate); ``trace``: only the cheap text NLLs."""
    from unlearn.metrics.lm_eval import text_nll, wmdp_evaluate  # heavy and optional: lm-eval imports ~2 s

    if trace:
        return {f"{k}_text_nll": text_nll(model, tok, sets[k]) for k in ("forget", "retain") if sets.get(k)}
    return wmdp_evaluate(model, tok, sets, split, extra_tasks)


def _oracle_eval(oracle_dir: str | None, tok, fmt, sets, ecfg, shown: bool = False) -> dict | None:
    """The oracle's cached evaluation (every process reads, or computes and atomically writes, the same file): for
    the full suite, whose forget quality and PrivLeak compare with it, or to be ``shown`` beside (``--compare``)."""
    if not oracle_dir or ecfg.suite == "internal" or (ecfg.suite != "full" and not shown):
        return None
    return cached_evaluate(oracle_dir, lambda: load_causal_lm(oracle_dir, ecfg.torch_dtype), tok, fmt, sets, ecfg)


def _internal_suite(spec, tok, fmt, sets, retain_train, original: str | None, oracle: str | None):
    """The internal evaluators bound to this evaluation (references loaded lazily, hidden states cached)."""
    from unlearn.metrics.internal import FixedModel, InternalConfig, InternalSuite, probe_split

    icfg = InternalConfig()

    def fixed(path):
        return FixedModel(path, lambda: load_causal_lm(path)) if path else None

    def vectors():
        return drift_input(spec, original, sets.get("forget", []))

    probe = probe_split(retain_train, sets.get("retain", []), icfg)
    return InternalSuite(tok, fmt, sets, probe, fixed(original), fixed(oracle), vectors, icfg)


def drift_input(spec, original: str | None, forget: list[dict]):
    """The validated concept vectors of the forget entities, with the original model; None when there are none.

    Vectors come from ``<original>/concept_vectors.json`` or the shipped embedded-target file, and count only when
    the file's ``model_digest`` is the original's (its card digest for a built target, else its weights digest):
    vectors located on other weights are never applied.
    """
    from unlearn.concepts import load_vectors, package_vectors_path, weights_digest
    from unlearn.metrics.concept_drift import DriftInput

    if not original or not Path(original).is_dir():
        return None
    card = Path(original) / "card.json"
    try:
        digest = read_json(card).get("digest") if card.is_file() else weights_digest(original)
    except UnlearnError:
        return None
    entities = {r.get("entity") for r in forget if r.get("entity")}
    for p in (Path(original) / "concept_vectors.json", package_vectors_path()):
        if p.is_file():
            doc = load_vectors(p)
            if doc.get("model_digest") == digest:
                vecs = [v for v in doc["vectors"] if v.get("passed") and v.get("kind", "entity") == "entity"
                        and v.get("concept") in entities]  # fmt: skip
                return DriftInput(load_causal_lm(original), vecs) if vecs else None
    return None


def _internal(suite, model, accelerator, main: bool, rdir: Path | None) -> dict:
    """Run the internal suite on the candidate; on the main process write layers.csv / layers.png (with the
    original's and the oracle's per-layer series, from their cached evaluations) into ``rdir``."""
    m, rows = suite.evaluate(model, accelerator=accelerator)
    if main and rdir is not None:
        from unlearn.metrics.internal import write_layers

        series = {"candidate": rows}
        for label, fm in (("original", suite.original), ("oracle", suite.oracle)):
            if fm is not None:
                series[label] = suite.cached(fm.path, fm.load, label)["layers"]
        write_layers(rdir, series)
    return m


# ----------------------------------------------------------------------------------------------- run
def run(a: RunArgs, log=print, accelerator=None, trace_eval=None) -> Path:
    """Unlearn, evaluate, write the run directory; returns it.

    ``trace_eval(model) -> dict``: what trace.jsonl's ``eval`` rows hold when ``eval_every`` > 0 (default: the basic
    evaluation); it only reads the model (`unlearn paths eval` passes its trajectory probe).
    """
    if a.force and a.reuse:  # before anything is resolved or built
        raise UnlearnError("--force and --reuse contradict each other; pass one")
    a = replace(a, benchmark=resolve_benchmark(a.model, a.benchmark, log))
    check_split(a.benchmark, a.split)
    check_suite(a.suite)
    spec0 = resolve_model(a.model, a.benchmark, a.split)
    tinyfacts_dir = not spec0.embedded and a.benchmark == "tinyfacts" and tinyfacts_build_of(spec0.target) is not None
    mspec, mcfg, tcfg = prepare_configs(a, bool(spec0.embedded) or tinyfacts_dir)
    check_report_to(tcfg.report_to)  # a missing tracker extra fails before anything is claimed or written
    label, variant = run_label(a, bool(spec0.embedded) or tinyfacts_dir)
    resolve_sharding(tcfg.sharding, accelerator)  # a conflict with the launch config fails before anything runs
    rdir = run_dir(a.out, a.benchmark, a.model, label, a.split, a.seed)
    main = accelerator is None or accelerator.is_main_process
    muse = _muse_benchmark(a.benchmark)
    own = any(asdict(a.files).values())
    spec, tdir, odir, orig, bcfg = resolve_paths(a.model, a.benchmark, a.split, log=log, own_data=own)
    sets, forget, retain_train = _sets_offline(bcfg, a.benchmark, a.split, a.files, [tdir, odir], spec.tokenizer)
    tok = load_tokenizer(spec.tokenizer or tdir)
    start_dir, start_info = tdir, {}
    fmt = prompt_format(a.prompt, tok, bool(spec.embedded), a.model)
    if muse:
        ecfg = _muse_config(a.suite)
    else:
        ecfg = eval_config(a.benchmark, a.suite, a.compat)
        if tcfg.precision == "bf16":
            ecfg.weights = "bf16"
    if muse:  # the corpora as the references train on them: fixed-length chunks, every token a label
        forget = training_chunks(tok, forget, tcfg.max_length)
        retain_train = training_chunks(tok, retain_train, tcfg.max_length)
    if mspec.start_from is not None:  # the method unlearns from weights of its own (DP2Unlearning's DP base)
        user_keys = {k.split(".")[-1] for k, _ in a.overrides}
        ctx = {"build": bcfg, "split": a.split, "target": tdir, "oracle": odir, "user_keys": user_keys, "log": log,
               "progress": a.progress}  # fmt: skip
        start_dir, start_info = mspec.start_from(mcfg, tcfg, ctx)
    # what the loop trains on as its retain set (the method's own, e.g. DP2's retained data); the evaluators' probe
    # split keeps the benchmark's retain QA (retain_train)
    train_retain = start_info.get("retain", retain_train)
    resolved = {
        "workflow": "run",
        "method": a.method,
        "run_label": label,
        "variant": variant,
        "model": a.model,
        "benchmark": a.benchmark,
        "split": a.split,
        "seed": a.seed,
        "method_config": asdict(mcfg),
        "train_config": asdict(tcfg),
        "eval_config": asdict(ecfg),
        "prompt_format": asdict(fmt),
        "data_files": asdict(a.files),
        "data_hash": data_hash(sets),
        "save_model": a.save_model,
    }
    provenance = {
        "model_path": tdir,
        "tokenizer_path": spec.tokenizer or tdir,
        "oracle_path": odir,
        "original_path": orig,
        "weights_hash": files_hash(tdir),
        "start_path": start_dir,
        "start_hash": files_hash(start_dir),
        "oracle_hash": files_hash(odir),
        "n_forget": len(forget),
        "n_retain_train": len(train_retain),
    }
    claim = claim_run(rdir, resolved, force=a.force, reuse=a.reuse, main=main, log=log, provenance=provenance)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if claim.reused:
        return rdir
    t0 = time.time()
    with claim:
        claim.start()
        # precision=bf16 loads the weights in bf16, as open-unlearning does (torch_dtype: bfloat16)
        dtype = torch.bfloat16 if tcfg.precision == "bf16" else None
        tgt = Target(spec, load_causal_lm(start_dir, dtype=dtype), tok, fmt, tdir, odir, orig, bcfg)
        if bcfg is not None and bcfg.threads and not torch.cuda.is_available():
            torch.set_num_threads(bcfg.threads)  # tiny matrices: extra threads only thrash
        if bcfg is None and main:  # a real model: say what it will cost before it starts
            log(expected_cost(tgt.model, tok, fmt, forget, sets, tcfg, ecfg))

        text = _text_benchmark(a.benchmark)

        def eval_fn(model):
            if trace_eval is not None:
                return trace_eval(model)
            if text:
                return _text_eval(model, tgt.tokenizer, sets, a.split, trace=True)
            if muse:
                return muse_evaluate(model, tgt.tokenizer, sets, replace(ecfg, suite="basic"))[0]
            basic = {k: sets[k] for k in ("forget", "retain")}
            return evaluate(model, tgt.tokenizer, tgt.fmt, basic, eval_config(a.benchmark, "basic", a.compat))[0]

        # the experiment tracker (report_to) follows the trace rows on the main process; closed however training ends
        tracker = open_tracker(tcfg.report_to, rdir, os.path.relpath(rdir, a.out), resolved) if main else None
        try:
            model, summary = unlearn_model(
                tgt.model, tgt.tokenizer, tgt.fmt, forget, train_retain, mspec, mcfg, tcfg, a.seed, rdir,
                eval_fn=eval_fn, progress=a.progress, accelerator=accelerator, log=log, track=tracker,
            )  # fmt: skip
        finally:
            if tracker is not None:
                tracker.close()
        if text:  # WMDP: lm-eval task accuracy + held-out text NLL; no QA suite, oracle or internal suite
            metrics, examples = _text_eval(model, tok, sets, a.split), []
        elif muse:  # MUSE: VerbMem, KnowMem, PrivLeak against the retrained model
            metrics, examples = muse_evaluate(model, tok, sets, ecfg, oracle=_muse_oracle(odir, tok, sets, ecfg))
        else:
            oracle = _oracle_eval(odir, tok, fmt, sets, ecfg)
            metrics, examples = evaluate(model, tok, fmt, sets, ecfg, oracle=oracle, accelerator=accelerator)
            if a.suite in INTERNAL_SUITES:
                suite = _internal_suite(spec, tok, fmt, sets, retain_train, orig or tdir, odir)
                metrics.update(_internal(suite, model, accelerator, main, rdir))
        if main:
            # the estimate (bytes per process, unlearn/memory.py) beside resolved/provenance: not part of the identity
            cfg_json = read_json(rdir / "config.json")
            cfg_json["memory_estimate"] = summary.get("memory_estimate")
            atomic_write_json(rdir / "config.json", cfg_json)
            metrics.update(cost_metrics(summary, time.time() - t0))
            if "dp_card" in start_info:  # a DP-trained starting model: its accountant's figures and one-off cost
                from unlearn.metrics.privacy import dp_metrics

                metrics.update(dp_metrics(start_info["dp_card"], start_info["retrain_steps"]))
            if a.save_model:
                save_model(model, tok, rdir / "model")
            atomic_write_jsonl(rdir / "examples.jsonl", examples)
            claim.finish(metrics, summary=summary)
            clear_checkpoint(rdir)
        else:
            claim.close()
    return rdir


# ----------------------------------------------------------------------------------------------- eval
@dataclass
class EvalArgs:
    model: str = "tiny"
    benchmark: str | None = None  # None: the model alias's own (config.default_benchmark)
    split: str = "forget10"
    out: str | None = None  # the run directory itself (files directly in it); None: nothing is written
    files: DataFiles = field(default_factory=DataFiles)
    prompt: str | None = None
    suite: str = "full"
    oracle: str | None = None  # overrides the known oracle
    no_oracle: bool = False
    original: str | None = None  # overrides the known original (the pre-unlearning model)
    lm_eval_tasks: list = field(default_factory=list)
    force: bool = False
    reuse: bool = False
    progress: bool = True
    compat: str = "none"  # metric conventions (EvalConfig.compat)


def evaluate_checkpoint(a: EvalArgs, log=print, accelerator=None) -> tuple[dict, dict | None, Path | None]:
    """Evaluate any LLM checkpoint; returns (metrics, oracle evaluation or None, run dir or None)."""
    if a.force and a.reuse:
        raise UnlearnError("--force and --reuse contradict each other; pass one")
    a = replace(a, benchmark=resolve_benchmark(a.model, a.benchmark, log))
    check_split(a.benchmark, a.split)
    check_suite(a.suite)
    main = accelerator is None or accelerator.is_main_process
    muse = _muse_benchmark(a.benchmark)
    ecfg = _muse_config(a.suite) if muse else EvalConfig(suite=a.suite)
    own = any(asdict(a.files).values())
    spec, tdir, odir, orig, bcfg = resolve_paths(a.model, a.benchmark, a.split, not a.no_oracle, log, own)
    if a.oracle:
        resolve_model_dir(a.oracle)  # fail early, with the usual one-line errors
        odir = a.oracle
    if a.original:
        resolve_model_dir(a.original)
        orig = a.original
    if a.no_oracle:
        odir = None
    sets, _, retain_train = _sets_offline(bcfg, a.benchmark, a.split, a.files, [tdir, odir], spec.tokenizer)
    tok = load_tokenizer(spec.tokenizer or tdir)
    fmt = prompt_format(a.prompt, tok, bool(spec.embedded), a.model)
    if not muse:
        ecfg = eval_config(a.benchmark, a.suite, a.compat)
    claim = None
    if a.out:
        resolved = {"workflow": "eval", "model": a.model, "benchmark": a.benchmark, "split": a.split,
                    "eval_config": asdict(ecfg), "prompt_format": asdict(fmt), "data_files": asdict(a.files),
                    "data_hash": data_hash(sets), "oracle": odir, "original": orig,
                    "lm_eval_tasks": list(a.lm_eval_tasks)}  # fmt: skip
        prov = {"model_path": tdir, "weights_hash": files_hash(tdir), "oracle_hash": files_hash(odir)}
        claim = claim_run(a.out, resolved, force=a.force, reuse=a.reuse, main=main, log=log, provenance=prov)
        if claim.reused:
            return read_json(Path(a.out) / "metrics.json"), None, Path(a.out)
        claim.start()
    try:
        model = load_causal_lm(tdir)
        if accelerator is not None:
            model.to(accelerator.device)
        if _text_benchmark(a.benchmark):  # WMDP: its lm-eval tasks (+ --lm-eval-tasks) and held-out text NLL
            oracle, examples = None, []
            metrics = _text_eval(model, tok, sets, a.split, list(a.lm_eval_tasks))
        elif muse:
            oracle = _muse_oracle(odir, tok, sets, ecfg)
            metrics, examples = muse_evaluate(model, tok, sets, ecfg, oracle=oracle)
        else:
            oracle = _oracle_eval(odir, tok, fmt, sets, ecfg, shown=True)  # the table shows it beside
            metrics, examples = evaluate(model, tok, fmt, sets, ecfg, oracle=oracle, progress=main and a.progress,
                                         accelerator=accelerator)  # fmt: skip
            if a.suite in INTERNAL_SUITES:
                suite = _internal_suite(spec, tok, fmt, sets, retain_train, orig, odir)
                metrics.update(_internal(suite, model, accelerator, main, Path(a.out) if a.out else None))
        if a.lm_eval_tasks and not _text_benchmark(a.benchmark):
            from unlearn.metrics.lm_eval import run_lm_eval  # heavy and optional: lm-eval imports ~2 s

            # the work is split across the processes and every one gets the same result: every process calls it
            metrics.update(run_lm_eval(model, tok, list(a.lm_eval_tasks), sets=sets))
        if claim is not None and main:
            atomic_write_jsonl(Path(a.out) / "examples.jsonl", examples)
            claim.finish(metrics)
    except BaseException as e:
        if claim is not None:
            claim.__exit__(type(e), e, None)
        raise
    return metrics, oracle, Path(a.out) if a.out else None


# ----------------------------------------------------------------------------------------------- compare
def run_config(rdir: Path) -> tuple[dict, dict]:
    """(resolved, provenance) of a run directory; run trees written before the lifecycle are read too."""
    cfg = read_json(Path(rdir) / "config.json")
    if "resolved" in cfg:
        return cfg["resolved"], cfg.get("provenance", {})
    return cfg, cfg  # pre-lifecycle layout: one flat dict held both


def compare_table(rdir: Path, log=print) -> dict[str, dict]:
    """Target before unlearning, the unlearned model and the oracle, side by side (cached evaluations)."""
    res, prov = run_config(rdir)
    if read_resolved(rdir) is None:
        raise UnlearnError(f"{rdir}: no config.json")
    if _text_benchmark(res["benchmark"]):
        raise UnlearnError(f"--compare is not available for --benchmark {res['benchmark']} (no QA suite, no oracle)")
    spec = resolve_model(res["model"], res["benchmark"], res["split"])
    bcfg = embedded_cfg(spec) if spec.embedded else None
    model_path, oracle_path = prov.get("model_path"), prov.get("oracle_path")
    if _muse_benchmark(res["benchmark"]):
        return _muse_compare(rdir, res, prov)
    if spec.embedded:  # the embedded target may live elsewhere now (shipped assets vs a cache): resolve it again
        _, model_path, oracle_path, _, bcfg = resolve_paths(res["model"], res["benchmark"], res["split"], log=log)
    tok = load_tokenizer(model_path)
    fmt = PromptFormat(**res["prompt_format"])
    sets, _, retain_train = _sets_for(bcfg, res["benchmark"], res["split"], DataFiles(**res["data_files"]))
    ecfg = EvalConfig(**res["eval_config"])
    oracle = _oracle_eval(oracle_path, tok, fmt, sets, ecfg, shown=True)
    if ecfg.suite == "internal":
        target = {"metrics": {}}
    else:
        target = cached_evaluate(model_path, lambda: load_causal_lm(model_path, ecfg.torch_dtype), tok, fmt, sets,
                                 ecfg, oracle=oracle)  # fmt: skip
    label = res.get("run_label") or res["method"]
    cols = {"target": dict(target["metrics"]), label: read_json(Path(rdir) / "metrics.json")}
    if oracle_path and (oracle or ecfg.suite == "internal"):
        cols["oracle"] = dict(oracle["metrics"]) if oracle else {}
    if ecfg.suite in INTERNAL_SUITES:  # the two ends of the internal scale: the original itself and the oracle
        suite = _internal_suite(spec, tok, fmt, sets, retain_train, model_path, oracle_path)
        cols["target"].update(suite.cached(model_path, suite.original.load, "original")["metrics"])
        if "oracle" in cols:
            cols["oracle"].update(suite.cached(oracle_path, suite.oracle.load, "oracle")["metrics"])
    return cols


def _muse_compare(rdir: Path, res: dict, prov: dict) -> dict[str, dict]:
    """MUSE: the target before unlearning, the unlearned model and the retrained model (cached evaluations)."""
    model_path, oracle_path = prov["model_path"], prov.get("oracle_path")
    tok = load_tokenizer(prov.get("tokenizer_path") or model_path)
    sets, _, _ = _sets_for(None, res["benchmark"], res["split"], DataFiles(**res["data_files"]))
    mcfg = MuseEvalConfig(**res["eval_config"])
    oracle = _muse_oracle(oracle_path, tok, sets, mcfg)
    target = cached_muse_evaluate(model_path, lambda: load_causal_lm(model_path), tok, sets, mcfg)
    cols = {"target": add_privleak(target["metrics"], oracle), res["method"]: read_json(Path(rdir) / "metrics.json")}
    if oracle is not None:
        cols["oracle"] = add_privleak(oracle["metrics"], oracle)  # the retrained model against itself: 0
    return cols


def trace_rows(rdir: Path) -> list[dict]:
    p = Path(rdir) / "trace.jsonl"
    return read_jsonl(p, tolerant=True) if p.exists() else []


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
