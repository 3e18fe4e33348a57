"""Causal language-model targets: safe loading and saving, QA tokenisation, answer log-probs, greedy answers.

Safety: weights load from safetensors only, ``trust_remote_code`` is never set, nothing is unpickled. Offline, a
model that is not on disk is a one-line `UnlearnError` naming it and how to provide it.

Log-probs are computed over answer tokens only (prompt and padding masked with label -100). To avoid
materialising (B, T, V) float32 logits over a large vocabulary, the LM head is applied to the hidden states of
answer positions only (``answer_token_logits``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from unlearn.errors import UnlearnError

IGNORE = -100


# ----------------------------------------------------------------------------------------------- prompt formats
@dataclass
class PromptFormat:
    """How a question becomes a prompt.

    ``plain``: ``template.format(question=q)`` followed by ``answer_prefix + answer`` (the embedded target's
    ``Question: ... Answer:`` format). ``chat``: the tokenizer's chat template with a generation prompt.
    """

    kind: str = "plain"  # "plain" | "chat"
    template: str = "Question: {question}\nAnswer:"  # plain only
    answer_prefix: str = " "  # plain only: text between prompt and answer
    system_prompt: str | None = None  # chat only: a system message before the question
    date_string: str | None = None  # chat only: passed to the template (Llama-3 renders it as "Today Date")

    def prompt(self, tokenizer, question: str) -> str:
        if self.kind == "chat":
            msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            extra = {"date_string": self.date_string} if self.date_string else {}
            return tokenizer.apply_chat_template(
                [*msgs, {"role": "user", "content": question}], add_generation_prompt=True, tokenize=False, **extra
            )
        return self.template.format(question=question)

    def answer(self, answer: str) -> str:
        return (self.answer_prefix if self.kind == "plain" else "") + answer


# open-unlearning's prompt per model family (configs/model/*.yaml, template_args; docs/tofu-parity.md). The date is
# fixed so that a Llama-3 template never renders today's date (it falls back to strftime_now otherwise): the same
# prompt on every day, the one open-unlearning evaluates with.
SYSTEM_PROMPT = "You are a helpful assistant."
DATE_STRING = "10 Apr 2025"
LLAMA2_CHAT = PromptFormat(kind="plain", template="[INST] {question} [/INST]", answer_prefix="")


def prompt_family(tokenizer) -> str:
    """``llama3`` (header-id chat template), ``chatml`` (Qwen2.5), ``llama2`` ([INST] template), ``chat`` (another
    chat template) or ``plain`` (none), from the tokenizer's chat template."""
    t = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(t, dict):  # several named templates: the default one
        t = t.get("default", next(iter(t.values()), ""))
    if not t:
        return "plain"
    if "<|start_header_id|>" in t:
        return "llama3"
    if "<|im_start|>" in t:
        return "chatml"  # Qwen2.5
    if "[INST]" in t and "<<SYS>>" in t:
        return "llama2"
    return "chat"


def default_prompt_format(tokenizer) -> PromptFormat:
    """open-unlearning's prompt for the tokenizer's family: the Llama-3 (and Qwen2.5 ChatML) chat template with
    its system prompt and a fixed date; Llama-2's ``[INST] q [/INST]`` tags (open-unlearning does not apply its
    chat template); another chat template as it is (with the fixed date for templates that read one); plain
    ``Question: ... Answer:`` otherwise.
    """
    fam = prompt_family(tokenizer)
    if fam in ("llama3", "chatml"):  # open-unlearning's Llama-3.x and Qwen2.5 configs: system prompt (+ date)
        return PromptFormat(kind="chat", system_prompt=SYSTEM_PROMPT, date_string=DATE_STRING)
    if fam == "llama2":
        return LLAMA2_CHAT
    if fam == "chat":
        return PromptFormat(kind="chat", date_string=DATE_STRING)
    return PromptFormat()


# ----------------------------------------------------------------------------------------------- loading
def quiet_transformers() -> None:
    """Silence transformers' per-load / per-save progress bars and info logs (our own bars are enough)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and Path(name).expanduser().exists()


def check_weights_dir(path: Path) -> None:
    """Refuse directories whose weights are pickles (``.bin``, ``.pt``) or that hold no weights at all."""
    st = list(path.glob("*.safetensors"))
    if st:
        return
    pickles = [p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    if pickles:
        raise UnlearnError(
            f"{path}: weights are pickle files ({', '.join(sorted(pickles)[:3])}); only safetensors are loaded "
            "(convert them with a trusted tool first)"
        )
    raise UnlearnError(f"{path}: no *.safetensors weights found")


def resolve_model_dir(name: str, weights: bool = True) -> tuple[str, bool]:
    """Return (name-or-path to pass to from_pretrained, is_local). Local dirs are checked for safe weights."""
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UnlearnError(f"{name}: a model must be a directory in Hugging Face format, not a file")
        if weights and not (p / "config.json").exists():
            raise UnlearnError(f"{name}: no config.json (not a Hugging Face model directory)")
        if weights:
            check_weights_dir(p)
        elif not (p / "tokenizer.json").exists() and not (p / "tokenizer_config.json").exists():
            raise UnlearnError(f"{name}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
        return str(p), True
    if _looks_local(name):
        raise UnlearnError(f"model directory not found: {name}")
    return name, False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    src, local = resolve_model_dir(name, weights=False)
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=False, local_files_only=local or _offline())
    except (OSError, ValueError) as e:
        raise _missing(name, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # Llama-style tokenizers ship without a pad token
    return tok


def tokenizer_hash(tok) -> str:
    """sha256 of what decides a tokenizer's ids and prompts, for cache keys: its class, its serialisation (a fast
    tokenizer's vocabulary, merges, normalizer, added tokens; else the vocabulary), special tokens and padding
    (the pad token `load_tokenizer` sets included) and its chat template."""
    import hashlib
    import json

    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    meta = [type(tok).__name__, {k: str(v) for k, v in tok.special_tokens_map.items()}, tok.pad_token_id,
            tok.padding_side, getattr(tok, "chat_template", None), getattr(tok, "add_bos_token", None)]  # fmt: skip
    h = hashlib.sha256(body.encode())
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def load_causal_lm(name: str, dtype: torch.dtype | None = None, device: str | torch.device | None = None):
    """Load a causal LM from a local directory or a cached hub id; safetensors only, no remote code."""
    from transformers import AutoConfig, AutoModelForCausalLM

    src, local = resolve_model_dir(name)
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=False, local_files_only=local or _offline())
    except (OSError, ValueError) as e:
        raise _missing(name, e) from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = config.architectures or []
    causal_arch = not archs or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or not causal_arch:
        raise UnlearnError(
            f"{name}: architecture {config.model_type!r} is not a causal language model "
            f"(architectures: {', '.join(config.architectures or ['?'])})"
        )
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            src,
            trust_remote_code=False,
            use_safetensors=True,
            local_files_only=local or _offline(),
            dtype=dtype or torch.float32,
            output_loading_info=True,
        )
    except (OSError, ValueError) as e:
        raise _missing(name, e) from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing or mismatched:
        what = missing[:3] if missing else [str(m[0]) for m in mismatched[:3]]
        raise UnlearnError(
            f"{name}: the weights do not match the {config.model_type} architecture "
            f"({len(missing)} missing, {len(mismatched)} mismatched tensors, e.g. {', '.join(what)})"
        )
    if device is not None:
        model.to(device)
    model.eval()
    return model


def uncached_hub_ids(names, file: str = "config.json") -> list[str]:
    """The hub ids among ``names`` (local directories and None skipped) that an offline run cannot load: with
    ``HF_HUB_OFFLINE`` set, those whose ``file`` (a tokenizer repo: ``tokenizer_config.json``) is not in the Hugging
    Face cache. Online: none (they are downloaded)."""
    if not _offline():
        return []
    from huggingface_hub import try_to_load_from_cache  # the cache only, never the network

    out = []
    for n in names:
        if n and not Path(n).expanduser().exists() and not _looks_local(n) and n not in out:
            if not isinstance(try_to_load_from_cache(n, file), str):
                out.append(n)
    return out


def _missing(name: str, err: Exception) -> UnlearnError:
    msg = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    return UnlearnError(
        f"cannot load model {name!r} ({msg}); offline, put its weights in the Hugging Face cache (HF_HOME) "
        "or pass a local directory with config.json and *.safetensors"
    )


def save_model(model, tokenizer, path: str | Path) -> None:
    """Save in Hugging Face format with safetensors (atomic: written to a temp folder, then renamed)."""
    import shutil

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- tokenisation
def encode_qa(tokenizer, fmt: PromptFormat, question: str, answer: str, max_length: int = 512):
    """Token ids and labels of one QA pair: prompt tokens get label -100, answer tokens (+ EOS) keep theirs."""
    prompt = fmt.prompt(tokenizer, question)
    add_special = fmt.kind == "plain"  # chat templates already contain BOS
    p_ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    a_ids = tokenizer(fmt.answer(answer), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and (not a_ids or a_ids[-1] != tokenizer.eos_token_id):
        a_ids = a_ids + [tokenizer.eos_token_id]
    ids = (p_ids + a_ids)[:max_length]
    labels = ([IGNORE] * len(p_ids) + a_ids)[:max_length]
    return ids, labels


def encode_text(tokenizer, text: str, max_length: int = 512):
    """Token ids and labels of a plain-text document (a raw corpus record): every token is a label (BOS first)."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
    return ids, list(ids)


def encode_record(tokenizer, fmt: PromptFormat, rec: dict, max_length: int = 512, answer: str | None = None):
    """``encode_qa`` of a QA record (``answer`` replaces its answer), `encode_text` of a ``text``-only record."""
    if "question" not in rec and "text" in rec:
        return encode_text(tokenizer, rec["text"], max_length)
    return encode_qa(tokenizer, fmt, rec["question"], rec["answer"] if answer is None else answer, max_length)


def encode_prompt(tokenizer, fmt: PromptFormat, question: str) -> list[int]:
    return tokenizer(fmt.prompt(tokenizer, question), add_special_tokens=fmt.kind == "plain")["input_ids"]


def collate(items: Sequence[tuple[list[int], list[int]]], pad_id: int, pad_to: int | None = None) -> dict:
    """Right-pad (ids, labels) pairs into a batch dict of (B, T) tensors."""
    T = max(len(ids) for ids, _ in items)
    if pad_to:
        T = max(T, pad_to)
    B = len(items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    for i, (ids, lab) in enumerate(items):
        n = len(ids)
        input_ids[i, :n] = torch.tensor(ids)
        labels[i, :n] = torch.tensor(lab)
        attn[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attn, "labels": labels}


# ----------------------------------------------------------------------------------------------- log-probs
def _unwrap(model):
    """The underlying transformers model (through DDP / accelerate wrappers and peft)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return model


def answer_token_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at answer positions only.

    Returns:
        logits (N, V) in the model's dtype, targets (N,), row (N,) — the sequence index of each answer token.
        Position t's logits predict token t+1, so N counts label != -100 among ``labels[:, 1:]``.
    """
    lm = _unwrap(model)
    labels = batch["labels"][:, 1:]  # (B, T-1)
    mask = labels != IGNORE  # (B, T-1)
    head = lm.get_output_embeddings()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if head is not None and hasattr(lm, "base_model") and lm.base_model is not lm and not softcap:
        h = lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = head(h[:, :-1][mask])  # (N, V): the LM head only where a label exists
    else:  # generic fallback: full logits, then select
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
    row = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)[mask]
    return logits, labels[mask], row


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per answer token, computed in float32. (N, V), (N,) -> (N,)

    One fused cross-entropy kernel (log-softmax + gather) rather than a gather and a separate logsumexp pass over
    the (N, V) logits: the vocabulary-wide passes dominate the step for 128k-token vocabularies.
    """
    return -torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of answer-token log-probs per sequence and the number of answer tokens. -> (B,), (B,)"""
    logits, targets, row = answer_token_logits(model, batch)
    return per_sequence(token_logps(logits, targets), row, batch["labels"].shape[0])


def per_sequence(lp: torch.Tensor, row: torch.Tensor, B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-token log-probs into their sequences, and count them. (N,), (N,) -> (B,), (B,)"""
    seq = torch.zeros(B, dtype=lp.dtype, device=lp.device).index_add(0, row, lp)
    n = torch.zeros(B, dtype=torch.long, device=lp.device).index_add(0, row, torch.ones_like(row))
    return seq, n


def length_groups(lengths: Sequence[int], overhead_tokens: int = 1024, max_groups: int = 4) -> list[list[int]]:
    """Split a batch into at most ``max_groups`` runs of similar length when that saves more padded tokens than the
    extra forward passes cost.

    Cost of a split: padded tokens of each group (its size times its longest sequence) plus ``overhead_tokens`` per
    extra forward pass. Sequences are sorted by length and the optimal contiguous split is found by dynamic
    programming (n <= a few hundred, k <= 4: negligible). Returns lists of row indices.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    L = [lengths[i] for i in order]
    n = len(L)
    if n <= 1:
        return [order]
    inf = float("inf")
    # best[k][j]: cost of the first j sorted rows in k groups; cut[k][j]: where the last group starts
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0
    for k in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                c = best[k - 1][i] + (j - i) * L[j - 1]
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = min(range(1, max_groups + 1), key=lambda k: best[k][n] + overhead_tokens * (k - 1))
    groups, j = [], n
    while k > 0:
        i = cut[k][j]
        groups.append(order[i:j])
        j, k = i, k - 1
    return groups[::-1]


class SequenceLogProbs(nn.Module):
    """Wraps a causal LM so that one forward returns per-sequence answer log-probs (what DDP / accelerate wrap).

    forward(input_ids, attention_mask, labels, full_logits=False) -> dict with ``seq_logp`` (B,), ``n_tokens`` (B,),
    ``logits`` (N, V) at answer positions in (row, position) order, ``row`` (N,), and ``full_logits`` (B, T, V)
    when asked for. Right-padded batches of mixed lengths (e.g. forget + retain) run as up to 4 length groups
    (`length_groups`), so that padding does not cost compute; the outputs are identical either way.
    """

    def __init__(self, lm: nn.Module, bucket: bool = True):
        super().__init__()
        self.lm = lm
        self.bucket = bucket

    def forward(self, input_ids, attention_mask, labels, full_logits: bool = False):
        if full_logits:
            full = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
            mask = labels[:, 1:] != IGNORE
            logits = full[:, :-1][mask]
            row = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(mask)[mask]
            targets = labels[:, 1:][mask]
        else:
            full = None
            lengths = attention_mask.sum(1).tolist() if self.bucket else None
            groups = length_groups(lengths) if lengths is not None else [list(range(labels.shape[0]))]
            if len(groups) == 1:
                batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
                logits, targets, row = answer_token_logits(self.lm, batch)
            else:
                parts = []
                for g in groups:
                    T = int(max(lengths[i] for i in g))
                    gi = torch.tensor(g, device=labels.device)
                    sub = {"input_ids": input_ids[gi, :T], "attention_mask": attention_mask[gi, :T],
                           "labels": labels[gi, :T]}  # fmt: skip
                    lg, tg, rw = answer_token_logits(self.lm, sub)
                    parts.append((lg, tg, gi[rw]))
                logits = torch.cat([p[0] for p in parts])
                targets = torch.cat([p[1] for p in parts])
                row = torch.cat([p[2] for p in parts])
                # canonical (row, position) order: answer tokens of a row are already in position order
                perm = torch.sort(row, stable=True).indices
                logits, targets, row = logits[perm], targets[perm], row[perm]
        seq, n = per_sequence(token_logps(logits, targets), row, labels.shape[0])
        return {"seq_logp": seq, "n_tokens": n, "logits": logits, "row": row, "full_logits": full}


def split_output(out: dict, sizes: list[int]) -> list[dict]:
    """Split a SequenceLogProbs output over a concatenated batch back into its parts (by sequence counts)."""
    parts, start = [], 0
    for b in sizes:
        sel = (out["row"] >= start) & (out["row"] < start + b)
        parts.append(
            {
                "seq_logp": out["seq_logp"][start : start + b],
                "n_tokens": out["n_tokens"][start : start + b],
                "logits": out["logits"][sel],
                "row": out["row"][sel] - start,
                "full_logits": None if out["full_logits"] is None else out["full_logits"][start : start + b],
            }
        )
        start += b
    return parts


# ----------------------------------------------------------------------------------------------- generation
@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int = 32) -> list[list[int]]:
    """Greedy continuation of a batch of prompt ids (left-padded), stopping per sequence at EOS.

    Returns the generated ids only, without the EOS and anything after it.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    T = max(len(p) for p in prompts)
    B = len(prompts)
    ids = torch.full((B, T), pad, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p)
        attn[i, T - len(p) :] = 1
    ids, attn = ids.to(device), attn.to(device)
    out = model.generate(
        input_ids=ids,
        attention_mask=attn,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    gen = out[:, T:].tolist()
    res = []
    for g in gen:
        if eos in g:
            g = g[: g.index(eos)]
        res.append(g)
    return res
