"""The LLM workflows behind `unlearn run` and `unlearn eval`: resolve model and data, unlearn, evaluate, write.

Composes targets (loading), methods + train (unlearning) and evaluate (metrics); prints nothing itself except
through the ``log`` callback, and raises `UnlearnError` for user errors.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unlearn.config import (
    EMBEDDED_METHOD,
    EMBEDDED_TRAIN,
    ModelSpec,
    TrainConfig,
    apply_overrides,
    resolve_model,
    set_field,
)
from unlearn.data.schema import load_records
from unlearn.errors import UnlearnError, unknown_name
from unlearn.evaluate import EvalConfig, evaluate
from unlearn.store import (
    SCHEMA_VERSION,
    atomic_write_json,
    atomic_write_jsonl,
    is_finished,
    read_json,
    read_jsonl,
    run_dir,
    write_status,
)

BENCHMARKS = ("tinyfacts", "tofu")
SPLITS = ("forget01", "forget05", "forget10")
EMBEDDED_PRESETS = {"tinyfacts": "default", "tinyfacts-micro": "micro"}


@dataclass
class DataFiles:
    forget: str | None = None
    retain: str | None = None
    holdout: str | None = None


@dataclass
class Target:
    spec: ModelSpec
    model: object
    tokenizer: object
    fmt: object
    target_dir: str  # what was loaded (path or id)
    oracle_dir: str | None
    build_cfg: object | None = None  # embedded only


# ----------------------------------------------------------------------------------------------- resolution
def check_names(benchmark: str, split: str) -> None:
    if benchmark not in BENCHMARKS:
        raise unknown_name("benchmark", benchmark, BENCHMARKS)
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)


def embedded_cfg(spec: ModelSpec):
    from unlearn.targets.build import get_preset

    if spec.embedded not in EMBEDDED_PRESETS:
        raise unknown_name("embedded target", spec.embedded or "", EMBEDDED_PRESETS)
    return get_preset(EMBEDDED_PRESETS[spec.embedded])


def load_target(
    alias: str, benchmark: str, split: str, prompt: str | None = None, log=print, need_oracle: bool = True
) -> Target:
    from unlearn.targets.llm import PromptFormat, default_prompt_format, load_causal_lm, load_tokenizer

    spec = resolve_model(alias, benchmark, split)
    build_cfg = None
    if spec.embedded:
        from unlearn.targets.build import ensure_built, model_dir

        build_cfg = embedded_cfg(spec)
        import torch

        if build_cfg.threads and not torch.cuda.is_available():
            torch.set_num_threads(build_cfg.threads)  # tiny matrices: extra threads only thrash
        ensure_built(build_cfg, split if need_oracle else None, log=log)
        tdir, odir = str(model_dir(build_cfg, "target")), str(model_dir(build_cfg, f"oracle_{split}"))
    else:
        tdir, odir = spec.target, spec.oracle
    tok = load_tokenizer(tdir)
    model = load_causal_lm(tdir)
    if prompt == "plain":
        fmt = PromptFormat()
    elif prompt == "chat":
        if not getattr(tok, "chat_template", None):
            raise UnlearnError(f"{alias}: the tokenizer has no chat template; use --prompt plain")
        fmt = PromptFormat(kind="chat")
    elif prompt:
        if "{question}" not in prompt:
            raise UnlearnError("--prompt must be plain, chat, or a template containing {question}")
        fmt = PromptFormat(kind="plain", template=prompt)
    else:
        fmt = PromptFormat() if spec.embedded else default_prompt_format(tok)
    return Target(spec, model, tok, fmt, tdir, odir, build_cfg)


def load_sets(benchmark: str, split: str, target: Target, files: DataFiles) -> tuple[dict, list, list]:
    """(evaluation sets, forget training records, retain training records)."""
    if benchmark == "tinyfacts":
        from unlearn.data.tinyfacts import RETAIN_OF, generate
        from unlearn.targets.build import get_preset

        cfg = target.build_cfg or get_preset("default")
        splits = generate(cfg.data)
        retain_train = splits[RETAIN_OF[split]]
        # evaluation retain set: the first 10% of entities, in every retain split (like TOFU's retain_perturbed)
        n_eval_ent = max(1, round(cfg.data.n_entities * 0.1))
        keep = {r["entity"] for r in splits["full"]}
        ents = list(dict.fromkeys(r["entity"] for r in splits["full"] if r["entity"] in keep))[:n_eval_ent]
        retain_eval = [r for r in retain_train if r["entity"] in set(ents)]
        sets = {
            "forget": splits[split],
            "retain": retain_eval,
            "world_facts": splits["world_facts"],
            "arithmetic": splits["arithmetic"],
            "holdout": splits[split.replace("forget", "holdout")],
        }
    else:  # tofu
        from unlearn.data.tofu import load_tofu

        def get(cfg_name, override):
            return load_records(override, require_perturbed=False) if override else load_tofu(cfg_name)

        sets = {
            "forget": get(f"{split}_perturbed", files.forget),
            "retain": get("retain_perturbed", None),
            "world_facts": load_tofu("world_facts_perturbed"),
            "real_authors": load_tofu("real_authors_perturbed"),
            "holdout": get(split.replace("forget", "holdout"), files.holdout),
        }
        retain_train = get({"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}[split], None)
    if files.forget:
        sets["forget"] = load_records(files.forget)
    if files.retain:
        retain_train = load_records(files.retain)
        sets["retain"] = retain_train[: max(len(sets["forget"]), 1) * 1]
    if files.holdout:
        sets["holdout"] = load_records(files.holdout)
    return sets, sets["forget"], retain_train


def data_hash(sets: dict) -> str:
    return hashlib.sha256(json.dumps(sets, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- cached evals
def cached_eval(model_path: str, load, tok, fmt, sets: dict, ecfg: EvalConfig, oracle=None, log=print) -> dict:
    """Evaluate a fixed model (target / oracle) once per (model, data, eval config); cached under $UNLEARN_HOME."""
    from unlearn.store import unlearn_home

    key = hashlib.sha256(
        json.dumps(
            [
                str(Path(model_path).resolve()) if Path(model_path).exists() else model_path,
                data_hash(sets),
                asdict(ecfg),
                oracle is not None,
            ]
        ).encode()
    ).hexdigest()[:16]
    p = unlearn_home() / "evals" / f"{key}.json"
    if p.exists():
        return read_json(p)
    model = load()
    m, ex = evaluate(model, tok, fmt, sets, ecfg, oracle=oracle)
    res = {"model": model_path, "metrics": m, "examples": ex}
    atomic_write_json(p, res)
    return res


def _git_sha() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import accelerate
    import torch
    import transformers

    import unlearn

    return {
        "unlearn": unlearn.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "git_sha": _git_sha(),
    }


# ----------------------------------------------------------------------------------------------- run
@dataclass
class RunArgs:
    method: str = "npo"
    model: str = "tiny"
    benchmark: str = "tinyfacts"
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


def prepare_configs(a: RunArgs, embedded: bool):
    from unlearn.methods import get_method

    spec = get_method(a.method, "llm")
    mcfg = spec.config_cls()
    split_defaults = getattr(__import__(spec.step.__module__, fromlist=["x"]), "SPLIT_DEFAULTS", {})
    for k, v in split_defaults.get(a.split, {}).items():
        setattr(mcfg, k, v)
    tcfg = TrainConfig()
    if embedded:
        for k, v in EMBEDDED_TRAIN.items():
            set_field(tcfg, k, str(v))
        for k, v in EMBEDDED_METHOD.get(a.method, {}).items():
            set_field(mcfg, k, str(v))
    apply_overrides(tcfg, mcfg, a.overrides)
    return spec, mcfg, tcfg


def run(a: RunArgs, log=print, accelerator=None) -> Path:
    """Unlearn, evaluate, write the run directory; returns it."""
    from unlearn.train import clear_checkpoint, unlearn_model

    check_names(a.benchmark, a.split)
    spec0 = resolve_model(a.model, a.benchmark, a.split)
    mspec, mcfg, tcfg = prepare_configs(a, bool(spec0.embedded))
    rdir = run_dir(a.out, a.benchmark, a.model, a.method, a.split, a.seed)
    main = accelerator is None or accelerator.is_main_process
    if is_finished(rdir) and a.reuse and not a.force:
        old = read_json(rdir / "config.json")
        if old.get("method_config") == asdict(mcfg) and old.get("train_config") == asdict(tcfg):
            log(f"{rdir} is already finished with these settings; showing it (--force re-runs it)")
            return rdir
        raise UnlearnError(f"{rdir} is finished with other settings; pass --force to replace it")
    if is_finished(rdir):
        if not a.force:
            raise UnlearnError(f"{rdir} is already finished; pass --force to run it again")
        if main:
            for f in ("metrics.json", "examples.jsonl", "trace.jsonl", "status.json", "config.json"):
                (rdir / f).unlink(missing_ok=True)
            clear_checkpoint(rdir)
            shutil.rmtree(rdir / "model", ignore_errors=True)
    elif (rdir / "config.json").exists() and main:
        old = read_json(rdir / "config.json")
        same = old.get("method_config") == asdict(mcfg) and old.get("train_config") == asdict(tcfg)
        if not same:  # an unfinished run with other settings: restart it cleanly rather than mix the two
            log(f"{rdir}: unfinished run with different settings; restarting")
            clear_checkpoint(rdir)
            (rdir / "trace.jsonl").unlink(missing_ok=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    t0 = time.time()
    tgt = load_target(a.model, a.benchmark, a.split, a.prompt, log=log)
    sets, forget, retain_train = load_sets(a.benchmark, a.split, tgt, a.files)
    ecfg = EvalConfig(suite=a.suite)
    config = {
        "schema_version": SCHEMA_VERSION,
        "method": a.method,
        "model": a.model,
        "model_path": tgt.target_dir,
        "oracle_path": tgt.oracle_dir,
        "benchmark": a.benchmark,
        "split": a.split,
        "seed": a.seed,
        "method_config": asdict(mcfg),
        "train_config": asdict(tcfg),
        "eval_config": asdict(ecfg),
        "prompt_format": asdict(tgt.fmt),
        "data_files": asdict(a.files),
        "data_hash": data_hash(sets),
        "n_forget": len(forget),
        "n_retain_train": len(retain_train),
        "versions": versions(),
    }
    if main:
        atomic_write_json(rdir / "config.json", config)
        write_status(rdir, "running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))

    def eval_fn(model):
        m, _ = evaluate(
            model, tgt.tokenizer, tgt.fmt, {k: sets[k] for k in ("forget", "retain")}, EvalConfig(suite="basic")
        )
        return m

    model, summary = unlearn_model(
        tgt.model,
        tgt.tokenizer,
        tgt.fmt,
        forget,
        retain_train,
        mspec,
        mcfg,
        tcfg,
        a.seed,
        rdir,
        eval_fn=eval_fn,
        progress=a.progress,
        accelerator=accelerator,
        log=log,
    )
    oracle = None
    if tgt.oracle_dir:  # every process reads (or computes and atomically writes) the same cached evaluation
        from unlearn.targets.llm import load_causal_lm

        oracle = cached_eval(
            tgt.oracle_dir, lambda: load_causal_lm(tgt.oracle_dir), tgt.tokenizer, tgt.fmt, sets, ecfg, log=log
        )
    metrics, examples = evaluate(model, tgt.tokenizer, tgt.fmt, sets, ecfg, oracle=oracle, accelerator=accelerator)
    if main:
        metrics.update(
            {
                "cost_steps": summary["steps"],
                "cost_tokens": summary["tokens"],
                "cost_seconds": round(time.time() - t0, 2),
                "cost_train_seconds": summary["seconds"],
            }
        )
        if a.save_model:
            from unlearn.targets.llm import save_model

            save_model(model, tgt.tokenizer, rdir / "model")
        atomic_write_jsonl(rdir / "examples.jsonl", examples)
        write_status(rdir, "finished", summary=summary)
        atomic_write_json(rdir / "metrics.json", {"schema_version": SCHEMA_VERSION, **metrics})  # last: marks done
        clear_checkpoint(rdir)
    return rdir


def compare_table(rdir: Path, log=print) -> dict[str, dict]:
    """Target before unlearning, the unlearned model and the oracle, side by side (cached evals)."""
    from unlearn.targets.llm import load_causal_lm, load_tokenizer

    cfg = read_json(rdir / "config.json")
    tok = load_tokenizer(cfg["model_path"])
    tgt = Target(
        resolve_model(cfg["model"], cfg["benchmark"], cfg["split"]),
        None,
        tok,
        None,
        cfg["model_path"],
        cfg["oracle_path"],
    )
    if tgt.spec.embedded:
        tgt.build_cfg = embedded_cfg(tgt.spec)
    from unlearn.targets.llm import PromptFormat

    fmt = PromptFormat(**cfg["prompt_format"])
    sets, _, _ = load_sets(cfg["benchmark"], cfg["split"], tgt, DataFiles(**cfg["data_files"]))
    ecfg = EvalConfig(**cfg["eval_config"])
    cols = {}
    oracle = None
    if cfg["oracle_path"]:
        oracle = cached_eval(cfg["oracle_path"], lambda: load_causal_lm(cfg["oracle_path"]), tok, fmt, sets, ecfg)
    target = cached_eval(
        cfg["model_path"], lambda: load_causal_lm(cfg["model_path"]), tok, fmt, sets, ecfg, oracle=oracle
    )
    cols["target"] = target["metrics"]
    cols[cfg["method"]] = read_json(rdir / "metrics.json")
    if oracle:
        cols["oracle"] = oracle["metrics"]
    return cols


def format_table(cols: dict[str, dict], keys: list[str] | None = None) -> str:
    from unlearn.metrics import all_metrics

    reg = all_metrics()
    if keys is None:  # the union, in first-seen order; a model without a metric shows "-"
        keys = list(dict.fromkeys(k for c in cols.values() for k in c if k in reg or k.startswith("cost_")))
    w = max(len(k) for k in keys) + 2
    head = "metric".ljust(w) + "".join(f"{c:>14}" for c in cols) + "   better"
    lines = [head, "-" * len(head)]
    for k in keys:
        d = reg[k].direction if k in reg else ""
        better = {"higher": "higher", "lower": "lower", "oracle": "~oracle"}.get(d, "")
        vals = "".join(f"{_fmt(c.get(k)):>14}" for c in cols.values())
        lines.append(f"{k.ljust(w)}{vals}   {better}")
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    return str(v)


def trace_rows(rdir: Path) -> list[dict]:
    p = Path(rdir) / "trace.jsonl"
    return read_jsonl(p, tolerant=True) if p.exists() else []
