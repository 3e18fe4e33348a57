"""Build and cache the embedded TinyFacts target and its retain-only oracles.

One recipe trains both: a byte-level BPE tokenizer on the whole TinyFacts text (so target and oracles share
it), then a small Llama-architecture model from a random init, trained on answer tokens only (prompt masked,
as TOFU fine-tunes) with AdamW and a warm-up + cosine schedule. The target sees every entity; the oracle of
``forgetXX`` sees only ``retainYY`` — world facts and arithmetic_train are in both.

Cache: ``$UNLEARN_HOME/tinyfacts/<hash>/`` where the hash covers the data config and the recipe; a model is
rebuilt only when that hash changes. Each model directory is written atomically and holds ``build.json``
(recipe, time, accuracy), so a build killed half-way leaves no half-model behind and restarts where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from unlearn.data.tinyfacts import RETAIN_OF, TinyFactsConfig, generate, training_set
from unlearn.errors import UnlearnError, unknown_name
from unlearn.store import atomic_write_json, atomic_write_jsonl, read_json, unlearn_home


@dataclass(frozen=True)
class BuildConfig:
    """Recipe for the embedded LLM target (the default builds target + forget10 oracle in a few minutes on 2 cores)."""

    data: TinyFactsConfig = field(default_factory=TinyFactsConfig)  # what is generated
    vocab_size: int = 1024  # BPE vocabulary (names split into a few tokens each)
    hidden_size: int = 128  # Llama width
    intermediate_size: int = 256  # MLP width
    num_layers: int = 4  # decoder layers
    num_heads: int = 4  # attention heads (head dim 32)
    epochs: int = 40  # passes over the training set (30 left target and oracle 8 points apart on retain)
    batch_size: int = 32  # sequences per step
    lr: float = 3e-3  # peak AdamW learning rate
    warmup_frac: float = 0.05  # share of steps spent warming up
    weight_decay: float = 0.0  # memorisation is the point: no decay
    seed: int = 0  # init + shuffling seed for the target; oracles use the same seed
    threads: int = 1  # torch threads per model (tiny matrices: a second thread only adds contention)
    parallel: int = 2  # models trained side by side (one process each) when several are built

    def digest(self) -> str:
        d = asdict(self)
        d.pop("threads")  # speed knobs, not part of what is built
        d.pop("parallel")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


PRESETS: dict[str, BuildConfig] = {
    "default": BuildConfig(),
    # seconds, for unit tests: 20 entities x 4 attributes, a 2-layer 48-wide model, 60 epochs, 1 thread.
    "micro": BuildConfig(
        data=TinyFactsConfig(
            arithmetic_max=6,
            arithmetic_repeat=1,
            n_entities=20,
            n_holdout=2,
            attributes=("birthplace", "occupation", "pet", "colour"),
            arithmetic_test=10,
        ),
        vocab_size=400,
        hidden_size=48,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        epochs=60,
        batch_size=16,
        lr=5e-3,
        threads=1,
    ),
}


def get_preset(name: str) -> BuildConfig:
    if name not in PRESETS:
        raise unknown_name("build preset", name, PRESETS)
    return PRESETS[name]


def target_root(cfg: BuildConfig) -> Path:
    return unlearn_home() / "tinyfacts" / cfg.digest()


def model_dir(cfg: BuildConfig, which: str = "target") -> Path:
    """``which`` is ``target`` or ``oracle_<forget split>`` (e.g. ``oracle_forget10``)."""
    return target_root(cfg) / which


def data_dir(cfg: BuildConfig) -> Path:
    return target_root(cfg) / "data"


# ----------------------------------------------------------------------------------------------- tokenizer
def _all_texts(splits) -> list[str]:
    """The tokenizer's training text: every question, answer, paraphrase and perturbed answer once.

    The prompt frame ("Question:", "Answer:") is deliberately *not* part of it, so the merges go to entity names and
    values. Measured on the default recipe: 95.5% forget10 exact match, against 67% when the formatted prompts were
    included (names then split into ~5 sub-tokens and are much harder to memorise in 30 epochs).
    """
    texts = []
    seen = set()
    for recs in splits.values():
        for r in recs:
            if r["question"] in seen:
                continue
            seen.add(r["question"])
            texts += [r["question"], r["answer"], r.get("paraphrased_question", ""), r.get("paraphrased_answer", "")]
            texts += r.get("perturbed_answer", [])
    return ["Question: Answer:"] + texts


def train_tokenizer(splits, vocab_size: int):
    """Byte-level BPE with digits split individually (so arithmetic and years share digit tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_all_texts(splits), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


# ----------------------------------------------------------------------------------------------- training
def new_model(cfg: BuildConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(conf)


def train_qa_model(
    cfg: BuildConfig, tokenizer, records, desc: str = "train", progress: bool = True, total_steps: int | None = None
):
    """Train a fresh model on ``records`` with the build recipe; returns (model, seconds).

    ``total_steps`` fixes the number of optimizer steps (default: ``epochs`` passes over ``records``). Oracles use
    the target's step count, so that "the same recipe" means the same optimisation budget and schedule, not fewer
    steps because the retain set is smaller.
    """
    from tqdm.auto import tqdm

    from unlearn.targets.llm import PromptFormat, collate, sequence_logps

    fmt = PromptFormat()
    items = [_encode(tokenizer, fmt, r) for r in records]
    model = new_model(cfg, tokenizer)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(len(items) / cfg.batch_size)
    total = total_steps or steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup_frac * total))

    def lr_at(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))) * 0.95 + 0.05

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(cfg.seed)
    t0 = time.time()
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    step = 0
    while step < total:  # shuffled passes over the data until the step budget is spent
        order = list(range(len(items)))
        rng.shuffle(order)
        for b in range(min(steps_per_epoch, total - step)):
            step += 1
            batch = collate(
                [items[i] for i in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]], tokenizer.pad_token_id
            )
            seq, n = sequence_logps(model, batch)
            loss = -seq.sum() / n.sum()  # token-mean NLL over answer tokens
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return model, time.time() - t0


def target_steps(cfg: BuildConfig, splits) -> int:
    """Optimizer steps of the target's training (``epochs`` passes over its training set); oracles use the same."""
    n = len(training_set(splits, None, cfg.data.arithmetic_repeat))
    return math.ceil(n / cfg.batch_size) * cfg.epochs


def _encode(tokenizer, fmt, r):
    from unlearn.targets.llm import encode_qa

    return encode_qa(tokenizer, fmt, r["question"], r["answer"])


# ----------------------------------------------------------------------------------------------- accuracy
@torch.no_grad()
def exact_match(model, tokenizer, records, batch_size: int = 64, max_new_tokens: int = 16) -> list[bool]:
    """Greedy answer == reference answer after stripping whitespace, per record."""
    from unlearn.targets.llm import PromptFormat, encode_prompt, greedy_generate

    fmt = PromptFormat()
    out = []
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        prompts = [encode_prompt(tokenizer, fmt, r["question"]) for r in chunk]
        gen = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        out += [
            tokenizer.decode(g, skip_special_tokens=True).strip() == r["answer"].strip() for g, r in zip(gen, chunk)
        ]
    return out


def _accuracy_report(model, tokenizer, splits, forget_split: str) -> dict[str, float]:
    rep = {}
    for s in (forget_split, RETAIN_OF[forget_split], "world_facts", "arithmetic", "arithmetic_train"):
        hits = exact_match(model, tokenizer, splits[s])
        rep[s] = sum(hits) / len(hits)
    return rep


# ----------------------------------------------------------------------------------------------- entry point
def write_data(cfg: BuildConfig, splits) -> Path:
    d = data_dir(cfg)
    if not (d / "done").exists():
        for name, recs in splits.items():
            atomic_write_jsonl(d / f"{name}.jsonl", recs)
        atomic_write_json(d / "done", {"data": asdict(cfg.data)})
    return d


def build_tinyfacts(
    cfg: BuildConfig | str = "default",
    oracles: tuple[str, ...] = ("forget10",),
    force: bool = False,
    progress: bool = True,
    log=print,
) -> Path:
    """Build (or reuse) the target and the oracles of ``oracles``; returns the cache root."""

    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    for o in oracles:
        if o not in RETAIN_OF:
            raise unknown_name("forget split", o, RETAIN_OF)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = target_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "recipe.json", asdict(cfg))
    splits = generate(cfg.data)
    write_data(cfg, splits)
    tok_dir = root / "tokenizer"
    if force or not (tok_dir / "tokenizer.json").exists():
        tok = train_tokenizer(splits, cfg.vocab_size)
        tmp = root / "tokenizer.tmp"
        tok.save_pretrained(tmp)
        if tok_dir.exists():
            _rm(tok_dir)
        os.replace(tmp, tok_dir)
    jobs = [("target", None)] + [(f"oracle_{o}", o) for o in oracles]
    todo = []
    for which, forget_split in jobs:
        if not force and (model_dir(cfg, which) / "build.json").exists():
            log(f"{which}: cached at {model_dir(cfg, which)}")
        else:
            todo.append((which, forget_split))
    workers = min(len(todo), cfg.parallel, os.cpu_count() or 1)
    if workers > 1:
        # each model trains in its own process on one core: tiny matrices gain nothing from a second thread, but
        # two models side by side halve the wall time of a target + oracle build
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            futs = [ex.submit(_train_one, cfg, which, fs, False) for which, fs in todo]
            for f in futs:
                log(f.result())
    else:
        for which, forget_split in todo:
            log(_train_one(cfg, which, forget_split, progress))
    return root


def _train_one(cfg: BuildConfig, which: str, forget_split: str | None, progress: bool, seed: int | None = None) -> str:
    """Train, check and save one model of the build (target or an oracle, optionally with another init/shuffle
    ``seed``) into ``model_dir(cfg, which)``; returns its summary line."""
    from unlearn.targets.llm import load_tokenizer, quiet_transformers, save_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_transformers()  # worker processes: keep transformers' own save/load bars out of the build log
    splits = generate(cfg.data)
    tok = load_tokenizer(str(target_root(cfg) / "tokenizer"))
    d = model_dir(cfg, which)
    recs = training_set(splits, forget_split, cfg.data.arithmetic_repeat)
    steps = target_steps(cfg, splits)
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    model, secs = train_qa_model(cfg, tok, recs, desc=f"build {which}", progress=progress, total_steps=steps)
    acc = _accuracy_report(model, tok, splits, forget_split or "forget10")
    save_model(model, tok, d)
    nparams = sum(p.numel() for p in model.parameters())
    info = {"which": which, "seconds": round(secs, 1), "n_params": nparams, "n_train": len(recs), "accuracy": acc,
            "recipe": asdict(cfg)}  # fmt: skip
    atomic_write_json(d / "build.json", info)
    return f"{which}: {nparams / 1e6:.2f}M params, trained on {len(recs)} QA in {secs:.0f}s; exact-match " + ", ".join(
        f"{k} {v:.3f}" for k, v in acc.items()
    )


def _rm(p: Path) -> None:
    import shutil

    shutil.rmtree(p)


def build_oracle_seed(cfg: BuildConfig | str, forget_split: str, seed: int, progress: bool = True, log=print) -> Path:
    """An extra retain-only oracle trained with another seed (``oracle_<split>_seed<k>``), same recipe otherwise.

    Two oracles differ only by training noise, so forget quality of one against the other shows what "perfectly
    unlearned" looks like on this benchmark.
    """
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    build_tinyfacts(cfg, oracles=(forget_split,), progress=progress, log=log)
    d = model_dir(cfg, f"oracle_{forget_split}_seed{seed}")
    if not (d / "build.json").exists():
        log(_train_one(cfg, d.name, forget_split, progress, seed=seed))
    return d


def ensure_built(cfg: BuildConfig | str = "default", forget_split: str | None = "forget10", log=print) -> Path:
    """Build what a run needs if it is missing (target + the oracle of ``forget_split``)."""
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    need = [model_dir(cfg, "target")] + ([model_dir(cfg, f"oracle_{forget_split}")] if forget_split else [])
    if all((d / "build.json").exists() for d in need):
        return target_root(cfg)
    return build_tinyfacts(cfg, oracles=(forget_split,) if forget_split else (), log=log)


def build_info(cfg: BuildConfig, which: str) -> dict:
    p = model_dir(cfg, which) / "build.json"
    if not p.exists():
        raise UnlearnError(f"{which} of the embedded target is not built; run `unlearn build tinyfacts`")
    return read_json(p)


__all__ = ["BuildConfig", "PRESETS", "build_tinyfacts", "ensure_built", "model_dir", "data_dir", "replace"]
