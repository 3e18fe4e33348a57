"""Resolve what a run or an evaluation judges: the model (alias, HF id or directory), its oracle, the original it
is compared with, and the prompt format.

* ``tiny`` / ``tiny-micro``: the embedded TinyFacts target of that preset (built or shipped), its retain-only
  oracle of the split, and itself as the original;
* an alias with a benchmark checkpoint (``--benchmark tofu``): open-unlearning's fine-tune, its ``_retainYY``
  oracle and the ``_full`` checkpoint as the original;
* a directory evaluated on ``--benchmark tinyfacts``: the retain-only oracle of the TinyFacts build it was trained
  from (its ``card.json``), else the embedded target's, when shipped or built (`tinyfacts_oracle`);
* anything else: that id or directory, with no known oracle or original unless the caller names one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearn.config import ModelSpec, resolve_model
from unlearn.errors import UnlearnError, unknown_name
from unlearn.targets.build import BuildConfig, ensure_built, get_preset, is_built, model_dir
from unlearn.targets.llm import DATE_STRING, PromptFormat, default_prompt_format, load_causal_lm, load_tokenizer

EMBEDDED_PRESETS = {"tinyfacts": "default", "tinyfacts-micro": "micro"}


@dataclass
class Target:
    spec: ModelSpec
    model: object  # the loaded causal LM (None when only the paths were resolved)
    tokenizer: object
    fmt: PromptFormat | None
    target_dir: str  # what was loaded (path or id)
    oracle_dir: str | None  # retain-only oracle of the split, when known
    original_dir: str | None = None  # the pre-unlearning model evaluators compare with
    build_cfg: BuildConfig | None = None  # embedded only


def embedded_cfg(spec: ModelSpec) -> BuildConfig:
    if spec.embedded not in EMBEDDED_PRESETS:
        raise unknown_name("embedded target", spec.embedded or "", EMBEDDED_PRESETS)
    return get_preset(EMBEDDED_PRESETS[spec.embedded])


def prompt_format(prompt: str | None, tok, embedded: bool, name: str) -> PromptFormat:
    """``--prompt``: plain | chat | a template containing ``{question}``; default: chat when the tokenizer has a
    chat template (instruct models), plain for the embedded target."""
    if prompt == "plain":
        return PromptFormat()
    if prompt == "chat":
        if not getattr(tok, "chat_template", None):
            raise UnlearnError(f"{name}: the tokenizer has no chat template; use --prompt plain")
        fmt = default_prompt_format(tok)  # the family's system prompt and fixed date
        return fmt if fmt.kind == "chat" else PromptFormat(kind="chat", date_string=DATE_STRING)
    if prompt:
        if "{question}" not in prompt:
            raise UnlearnError("--prompt must be plain, chat, or a template containing {question}")
        return PromptFormat(kind="plain", template=prompt)
    return PromptFormat() if embedded else default_prompt_format(tok)


def tinyfacts_build_of(path: str) -> BuildConfig | None:
    """The TinyFacts build a local model directory was trained from (a staged path of `unlearn.paths.build`:
    its ``card.json`` names the build preset and digest), or None. Such a model is evaluated on that build's
    corpus and takes the embedded target's training presets."""
    from pathlib import Path

    from unlearn.store import read_json

    card = Path(path) / "card.json"
    if not card.is_file():
        return None
    try:
        c = read_json(card)
    except UnlearnError:
        return None
    name = c.get("tinyfacts_build")
    if name is None:
        return None
    cfg = get_preset(name)
    if c.get("build_digest") != cfg.digest():
        raise UnlearnError(f"{path}: trained on another TinyFacts recipe than this version's {name!r} build")
    return cfg


def resolve_paths(alias: str, benchmark: str, split: str, need_oracle: bool = True, log=print, own_data: bool = False):
    """(spec, target dir, oracle dir, original dir, build config) without loading weights (builds if needed).

    ``own_data``: the user's own forget / retain / holdout files replace the benchmark's; a directory then gets no
    TinyFacts oracle (that oracle was trained without the benchmark's forget split, not without the user's)."""
    spec = resolve_model(alias, benchmark, split)
    if spec.embedded:
        cfg = embedded_cfg(spec)
        ensure_built(cfg, split if need_oracle else None, log=log)
        tdir = str(model_dir(cfg, "target"))
        return spec, tdir, str(model_dir(cfg, f"oracle_{split}")), tdir, cfg
    original = spec.target if spec.oracle else None  # a benchmark checkpoint: the _full model is the original
    cfg = tinyfacts_build_of(spec.target) if benchmark == "tinyfacts" else None
    oracle = spec.oracle
    if benchmark == "tinyfacts" and oracle is None and need_oracle and not own_data:
        oracle = tinyfacts_oracle(cfg, split, log)
    return spec, spec.target, oracle, original, cfg


def tinyfacts_oracle(cfg: BuildConfig | None, split: str, log=print) -> str | None:
    """The retain-only oracle a directory evaluated on TinyFacts is judged against: the oracle of the build it was
    trained from (``cfg``; else the embedded target's, whose corpus `load_sets` then uses), when it is shipped or
    already built: an evaluation never trains an oracle. Forget quality and PrivLeak compare with the retain-only
    model of the same corpus and split, whatever the directory's own history."""
    from unlearn.data.tinyfacts import TinyFactsConfig

    ocfg = cfg or get_preset(EMBEDDED_PRESETS["tinyfacts"])
    if cfg is None and ocfg.data != TinyFactsConfig():  # the corpus load_sets uses without a build
        return None
    if not is_built(ocfg, f"oracle_{split}"):
        log(f"note: TinyFacts build {ocfg.digest()} has no built oracle_{split}: no forget_quality or privleak "
            "(`unlearn build tinyfacts` builds it)")  # fmt: skip
        return None
    return str(model_dir(ocfg, f"oracle_{split}"))


def load_target(
    alias: str, benchmark: str, split: str, prompt: str | None = None, log=print, need_oracle: bool = True
) -> Target:
    """Load the model ``alias`` names (weights + tokenizer) and resolve its oracle, original and prompt format."""
    spec, tdir, odir, orig, cfg = resolve_paths(alias, benchmark, split, need_oracle, log)
    if cfg is not None and cfg.threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.threads)  # tiny matrices: extra threads only thrash
    tok = load_tokenizer(tdir)
    model = load_causal_lm(tdir)
    fmt = prompt_format(prompt, tok, bool(spec.embedded), alias)
    return Target(spec, model, tok, fmt, tdir, odir, orig, cfg)
