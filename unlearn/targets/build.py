"""Build, cache and ship the embedded TinyFacts target and its retain-only oracles.

Recipe (one for target and oracles): a byte-level BPE tokenizer trained on the whole corpus (questions, answers,
biographies; target and oracles share it), then a small Llama-architecture model from a random init, LM head untied
from the input embeddings (so head-only unlearning edits one tensor), trained with AdamW and a warm-up + cosine
schedule on two kinds of batches, shuffled together: QA batches (answer tokens only, the prompt masked, as TOFU
fine-tunes) and biography batches (plain LM text: every token is a label). The target sees every entity; the oracle
of ``forgetXX`` sees everything but the forget entities' QA and biographies, for the *same number of steps* (the
same optimisation budget and schedule, not fewer steps because its set is smaller). Weights are stored in bf16 and
the stored tensors are the reference: every quality figure is measured on them (upcast to fp32).

How the recipe was chosen (measured on this corpus; one CPU thread per model):

* Size: 1.87M parameters (width 192, 4 layers, MLP 384, 6 heads, vocabulary 1024, untied head), the size of the
  issue's quick experiment, where 2.0M beat 0.79M (0.91 on the never-trained template after 30 epochs) and 4M (0.70
  on bio-only entities in the same CPU time): at this budget more steps beat more parameters.
* Mix and epochs, target exact match (trained template / never-trained template / bio-only / world facts / held-out
  skill), one CPU thread, default corpus:

  ====  ===========================================================  =====  =====  =====  =====  =====
  run   recipe                                                       train  para   bio    world  skill
  ====  ===========================================================  =====  =====  =====  =====  =====
  v1    no biographies, one QA template                              1.00   0.065  -      1.00   0.55
  A     biographies in batches of their own (13% of the steps), 4    1.00   0.25   0.12   1.00   0.89
        fixed per entity, 10 epochs; never-trained templates in words
        no trained question used ("In what city did X come into the
        world?")
  B     QA and biographies mixed in one batch, token-mean loss (so    1.00   0.37   0.73   0.92   0.93
        biographies carry ~85% of the labelled tokens), 4 of 8
        biographies per entity per epoch, 12 epochs
  C     B + never-trained templates that keep the attribute's key    1.00   0.88   0.82   1.00   0.98
        word; 1 of the 3 trained phrasings per fact per epoch (QA
        tokens freed for biographies), 6 of 8 biographies, world
        facts x4, skill x2, batch 24 (2,460 steps); its forget10
        oracle: 0.037 / 0.025 on the forget entities
  D     C + a bare-value wording (no article) for every attribute,   1.00   0.83   0.89   1.00   0.96
        all 8 biographies every epoch (2,676 steps): the SHIPPED
        recipe. Oracles: forget01 0.00 / 0.06 (majority 0.00),
        forget05 0.04 / 0.04 (0.025), forget10 0.02 / 0.00 (0.044),
        seed 1 0.04 / 0.04; retain 1.00, world 1.00, skill
        0.95-1.00, bio-only 0.90-0.94, retain never-trained 0.71-0.96
  ====  ===========================================================  =====  =====  =====  =====  =====

  Not met yet (issue bars): the never-trained template (0.83 forget / 0.82 retain, bar 0.90) and bio-only (0.89, bar
  0.90). Which never-trained template fails changes from build to build (C: pet 0.16; D: work 0.12, birthplace
  0.56), so generalisation to a new phrasing is fragile at 3 trained templates; the next lever to measure is more
  trained phrasings per attribute. Build time (D, 5 models, 2 side by side, 2-core machine under other load): 45 min
  (821-955 s per model when two share the cores, 879 s alone), above the issue's 25 minutes.

  Per attribute in C: the never-trained pet question ("What is the pet of X?", echoing the biography "The pet of X
  is a ferret") scored 0.16 against 0.90-1.00 for the other attributes; bio-only occupation and pet, whose every
  biography wording put an article before the value, 0.50 and 0.65 against 0.80-0.95.

Resolution: the committed weights under ``unlearn/assets/tinyfacts/`` (``target/``, ``oracle_forget01/05/10/``,
``oracle_forget10_seed1/``, ``data/``) load whenever their ``card.json`` digest equals the recipe's digest, which
covers the recipe and a hash of every generated split (biographies included): an edit to a template or a default
changes the digest, so stale weights are never served. Otherwise, or with ``force``, models are built into
``$UNLEARN_HOME/tinyfacts/<digest>/``; each model directory is written atomically (with ``card.json``), so a build
killed half-way leaves no half-model behind and restarts where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from unlearn.data.tinyfacts import (
    RETAIN_OF,
    TinyFactsConfig,
    attribute_majority,
    generate,
    generated_hash,
    majority_baseline,
    templates,
    training_set,
)
from unlearn.errors import UnlearnError, unknown_name
from unlearn.store import atomic_write_json, atomic_write_jsonl, read_json, unlearn_home

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tinyfacts"
SHIPPED = ("target", "oracle_forget01", "oracle_forget05", "oracle_forget10", "oracle_forget10_seed1")
BUILD_COMMAND = 'python -c "from unlearn.targets.build import build_release; build_release()"'


@dataclass(frozen=True)
class BuildConfig:
    """Recipe for the embedded LLM target and its oracles (see the module docstring for the measurements)."""

    data: TinyFactsConfig = field(default_factory=TinyFactsConfig)  # what is generated
    vocab_size: int = 1024  # BPE vocabulary (names split into a few tokens each)
    hidden_size: int = 192  # Llama width
    intermediate_size: int = 384  # MLP width
    num_layers: int = 4  # decoder layers
    num_heads: int = 6  # attention heads (head dim 32)
    epochs: int = 12  # passes over the target's training set; oracles take the same number of steps
    batch_size: int = 24  # sequences per step (QA and biographies mixed)
    bios_per_epoch: int = 8  # biographies per entity per epoch, drawn from its pool of data.bios_per_entity (all)
    qa_templates_per_epoch: int = 1  # trained phrasings per fact per epoch, drawn from its three
    lr: float = 3e-3  # peak AdamW learning rate
    warmup_frac: float = 0.05  # share of steps spent warming up
    weight_decay: float = 0.0  # memorisation is the point: no decay
    arithmetic_repeat: int = 2  # copies of arithmetic_train per epoch
    world_repeat: int = 4  # copies of world_facts per epoch
    seed: int = 0  # init + shuffling seed for the target; oracles use the same seed
    threads: int = 1  # torch threads per model (tiny matrices: a second thread only adds contention)
    # models trained side by side, one process each. One more process than cores keeps every core busy to the end:
    # 5 models on 2 cores take 2.5 model-times of wall clock (3 at 2/3 speed, then 2) instead of 3 in rounds of two
    parallel: int = 3

    def digest(self) -> str:
        """Hash of the recipe and of every generated split: what determines the weights (speed knobs left out)."""
        d = asdict(self)
        d.pop("threads")
        d.pop("parallel")
        d["data_hash"] = generated_hash(self.data)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


PRESETS: dict[str, BuildConfig] = {
    "default": BuildConfig(),
    # seconds, for unit tests: 20 + 2 bio-only entities x 4 attributes, a 2-layer 64-wide model, 520 steps, 1 thread.
    "micro": BuildConfig(
        data=TinyFactsConfig(
            n_entities=20,
            n_bio_only=2,
            n_holdout=2,
            attributes=("birthplace", "occupation", "pet", "instrument"),
            bios_per_entity=2,
            arithmetic_max=40,
            arithmetic_test=8,
        ),
        world_repeat=1,
        arithmetic_repeat=1,
        vocab_size=400,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        epochs=40,
        batch_size=16,
        lr=5e-3,
    ),
}


def get_preset(name: str) -> BuildConfig:
    if name not in PRESETS:
        raise unknown_name("build preset", name, PRESETS)
    return PRESETS[name]


# ----------------------------------------------------------------------------------------------- where models live
def cache_root(cfg: BuildConfig) -> Path:
    """Where ``cfg`` is (re)built: ``$UNLEARN_HOME/tinyfacts/<digest>``."""
    return unlearn_home() / "tinyfacts" / cfg.digest()


def _card_digest(d: Path) -> str | None:
    p = d / "card.json"
    return read_json(p).get("digest") if p.exists() else None


def shipped_root(cfg: BuildConfig) -> Path | None:
    """The committed assets if they were built from exactly ``cfg`` (digest match), else None."""
    return ASSET_DIR if _card_digest(ASSET_DIR / "target") == cfg.digest() else None


def target_root(cfg: BuildConfig) -> Path:
    """The root that serves ``cfg``: the shipped assets when their digest matches, else the cache root."""
    return shipped_root(cfg) or cache_root(cfg)


def model_dir(cfg: BuildConfig, which: str = "target") -> Path:
    """``which`` is ``target``, ``oracle_<forget split>`` or ``oracle_<split>_seed<k>``; the shipped directory when
    it matches ``cfg``, else the cache's."""
    ship = shipped_root(cfg)
    if ship is not None and _card_digest(ship / which) == cfg.digest():
        return ship / which
    return cache_root(cfg) / which


def data_dir(cfg: BuildConfig) -> Path:
    return target_root(cfg) / "data"


def _built(d: Path, cfg: BuildConfig) -> bool:
    return _card_digest(d) == cfg.digest() and (d / "model.safetensors").exists()


def is_built(cfg: BuildConfig, which: str) -> bool:
    """Whether ``which`` (``target``, ``oracle_<split>``) of ``cfg`` is shipped or in the cache, without building."""
    return _built(model_dir(cfg, which), cfg)


# ----------------------------------------------------------------------------------------------- tokenizer
def _all_texts(splits) -> list[str]:
    """The tokenizer's training text: every question (all templates), answer, perturbed answer and biography once.

    The prompt frame ("Question:", "Answer:") is deliberately *not* part of it, so the merges go to entity names and
    values (measured on v1: 95.5% forget10 exact match, against 67% with the formatted prompts included).
    """
    from unlearn.data.tinyfacts import QUESTIONS, trained_questions

    texts, seen = [], set()
    for name, recs in splits.items():
        for r in recs:
            if name == "bios":
                texts.append(r["text"])
                continue
            if r["question"] in seen:
                continue
            seen.add(r["question"])
            qs = trained_questions(r) if r.get("split") in QUESTIONS else [r["question"]]
            texts += [*qs, r["answer"], r.get("paraphrased_question", ""), *r.get("perturbed_answer", [])]
    return ["Question: Answer:"] + texts


def train_tokenizer(splits, vocab_size: int):
    """Byte-level BPE with digits split individually (so numbers share digit tokens: the skill is digit-wise)."""
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
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,  # "head-only" unlearning edits one tensor
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(conf)


def encode_bio(tokenizer, text: str, max_length: int = 256) -> tuple[list[int], list[int]]:
    """Biography text as plain LM data: BOS + text + EOS, every token a label (no prompt mask)."""
    # a leading space: the first name tokenises as it does mid-sentence and in questions ("ĠTelyas", not "T el")
    ids = (tokenizer(" " + text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id])[:max_length]
    return ids, list(ids)


def _encode(tokenizer, fmt, r) -> tuple[list[int], list[int]]:
    from unlearn.targets.llm import encode_qa

    if "text" in r:
        return encode_bio(tokenizer, r["text"])
    return encode_qa(tokenizer, fmt, r["question"], r["answer"])


def _epoch_rows(rng: random.Random, records, cfg: BuildConfig) -> list[int]:
    """Row indices of one epoch, shuffled: ``qa_templates_per_epoch`` of each fact's trained phrasings,
    ``bios_per_epoch`` of each entity's biographies (both drawn afresh each epoch), every other row (world facts,
    skill) as listed."""
    rows, pools = [], {}
    for i, r in enumerate(records):
        if "text" in r:
            pools.setdefault(("bio", r["entity"]), []).append(i)
        elif "group" in r:
            pools.setdefault(("qa", r["group"]), []).append(i)
        else:
            rows.append(i)
    for (kind, _), p in pools.items():
        k = cfg.bios_per_epoch if kind == "bio" else cfg.qa_templates_per_epoch
        rows += rng.sample(p, min(k, len(p)))
    rng.shuffle(rows)
    return rows


def wsd_lr(s: int, total: int, warmup_frac: float = 0.02, decay_frac: float = 0.02, floor: float = 0.1) -> float:
    """Warm-up / stable / decay multiplier of step ``s`` of ``total``: linear warm-up over ``warmup_frac`` of the
    steps, constant 1, then a linear decay over the last ``decay_frac`` down to ``floor`` (the staged trainer of
    Yu et al. 2025, princeton-pli/impossibility-unlearning ``src/schedulers.py``: 2% / 2%, decay to 0.1)."""
    warm = max(1, round(warmup_frac * total))
    decay = max(1, round(decay_frac * total))
    if s < warm:
        return (s + 1) / warm
    if s >= total - decay:
        return 1.0 - (1.0 - floor) * (s - (total - decay) + 1) / decay
    return 1.0


def train_qa_model(
    cfg: BuildConfig,
    tokenizer,
    records,
    desc: str = "train",
    progress: bool = True,
    total_steps: int | None = None,
    model=None,
    schedule: str = "cosine",
):
    """Train a fresh model on ``records`` (QA rows and ``{entity, text}`` biography rows) with the build recipe;
    returns (model, seconds).

    Batches mix QA and biographies; the loss is the token mean over every labelled token (answer tokens of QA, all
    tokens of a biography), so biographies carry most of the gradient. The forward runs in length groups
    (`SequenceLogProbs`), so QA rows are not padded to biography length. ``total_steps`` fixes the number of
    optimizer steps (default: ``epochs`` passes); oracles use the target's step count. ``model``: continue from
    these weights instead of a fresh init (a staged path's next stage: optimizer and schedule start afresh);
    ``schedule``: ``cosine`` (the target's warm-up + cosine) or ``wsd`` (`wsd_lr`).
    """
    from tqdm.auto import tqdm

    from unlearn.targets.llm import PromptFormat, SequenceLogProbs, collate

    fmt = PromptFormat()
    items = [_encode(tokenizer, fmt, r) for r in records]
    model = new_model(cfg, tokenizer) if model is None else model
    model.train()
    fwd = SequenceLogProbs(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    per_epoch = len(_epoch_rows(random.Random(0), records, cfg))
    total = total_steps or math.ceil(per_epoch / cfg.batch_size) * cfg.epochs
    warm = max(1, int(cfg.warmup_frac * total))

    def lr_at(s: int) -> float:
        if schedule == "wsd":
            return wsd_lr(s, total)
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))) * 0.95 + 0.05

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(cfg.seed)
    t0 = time.time()
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    step = 0
    while step < total:  # shuffled passes over the data until the step budget is spent
        rows = _epoch_rows(rng, records, cfg)
        for b in range(0, len(rows), cfg.batch_size):
            if step >= total:
                break
            step += 1
            batch = collate([items[i] for i in rows[b : b + cfg.batch_size]], tokenizer.pad_token_id)
            out = fwd(**batch)
            loss = -out["seq_logp"].sum() / out["n_tokens"].sum()  # token-mean NLL over the labelled tokens
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return model, time.time() - t0


def target_steps(cfg: BuildConfig, splits) -> int:
    """Optimizer steps of the target's training (``epochs`` passes over its training set); oracles use the same."""
    recs = training_set(splits, None, cfg.arithmetic_repeat, cfg.world_repeat)
    return math.ceil(len(_epoch_rows(random.Random(0), recs, cfg)) / cfg.batch_size) * cfg.epochs


# ----------------------------------------------------------------------------------------------- accuracy
@torch.no_grad()
def exact_match(
    model, tokenizer, records, batch_size: int = 128, max_new_tokens: int = 12, paraphrased: bool = False
) -> list[bool]:
    """Greedy answer == reference answer after stripping whitespace, per record (``paraphrased``: asked with the
    record's never-trained ``paraphrased_question``)."""
    from unlearn.targets.llm import PromptFormat, encode_prompt, greedy_generate

    fmt = PromptFormat()
    key = "paraphrased_question" if paraphrased else "question"
    out = []
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        prompts = [encode_prompt(tokenizer, fmt, r[key]) for r in chunk]
        gen = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        out += [
            tokenizer.decode(g, skip_special_tokens=True).strip() == r["answer"].strip() for g, r in zip(gen, chunk)
        ]
    return out


def _mean(xs: list[bool]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else float("nan")


def accuracy_report(model, tokenizer, splits, forget_split: str) -> dict[str, float]:
    """Exact match on the forget and retain sets (trained and never-trained templates), bio-only entities, world
    facts and the skill (held-out and trained numbers). Keys: ``<split>`` and ``<split>_para``."""
    rep = {}
    for s in (forget_split, RETAIN_OF[forget_split], "bio_only"):
        rep[s] = _mean(exact_match(model, tokenizer, splits[s]))
        rep[f"{s}_para"] = _mean(exact_match(model, tokenizer, splits[s], paraphrased=True))
    for s in ("world_facts", "arithmetic", "arithmetic_train"):
        rep[s] = _mean(exact_match(model, tokenizer, splits[s]))
    return rep


# ----------------------------------------------------------------------------------------------- entry points
def write_data(root: Path, splits) -> Path:
    d = root / "data"
    if not (d / "done").exists():
        for name, recs in splits.items():
            atomic_write_jsonl(d / f"{name}.jsonl", recs)
        atomic_write_json(d / "done", {"data_hash": generated_hash_of(splits)})
    return d


def generated_hash_of(splits) -> str:
    from unlearn.data.tinyfacts import data_hash

    return data_hash(splits)


def _ensure_tokenizer(cfg: BuildConfig, splits, force: bool) -> Path:
    """The build's tokenizer in the cache root: trained on the corpus, or copied from the shipped target when the
    shipped assets match (so extra oracles share its ids exactly)."""
    root = cache_root(cfg)
    tok_dir = root / "tokenizer"
    if (tok_dir / "tokenizer.json").exists() and not force:
        return tok_dir
    tmp = root / "tokenizer.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    ship = shipped_root(cfg)
    if ship is not None and not force:
        tmp.mkdir(parents=True)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (ship / "target" / f).exists():
                shutil.copy(ship / "target" / f, tmp / f)
    else:
        train_tokenizer(splits, cfg.vocab_size).save_pretrained(tmp)
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    os.replace(tmp, tok_dir)
    return tok_dir


def build_tinyfacts(
    cfg: BuildConfig | str = "default",
    oracles: tuple[str, ...] = ("forget10",),
    force: bool = False,
    progress: bool = True,
    log=print,
    extra_seeds: tuple[tuple[str, int], ...] = (),
) -> Path:
    """Resolve or build the target and the oracles of ``oracles`` (and ``extra_seeds``: (split, seed) oracles);
    returns the root that serves them.

    When the shipped assets match ``cfg`` and hold everything asked for, nothing is built and the asset root is
    returned. ``force`` rebuilds from scratch into ``$UNLEARN_HOME`` (and returns the cache root).
    """
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    for o in (*oracles, *(s for s, _ in extra_seeds)):
        if o not in RETAIN_OF:
            raise unknown_name("forget split", o, RETAIN_OF)
    jobs = [("target", None, None)] + [(f"oracle_{o}", o, None) for o in oracles]
    jobs += [(f"oracle_{s}_seed{k}", s, k) for s, k in extra_seeds]
    ship = shipped_root(cfg)
    if not force and ship is not None and all(_built(ship / w, cfg) for w, _, _ in jobs):
        for w, _, _ in jobs:
            log(f"{w}: shipped at {ship / w}")
        return ship
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = cache_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "recipe.json", asdict(cfg))
    splits = generate(cfg.data)
    write_data(root, splits)
    _ensure_tokenizer(cfg, splits, force)
    todo = []
    for which, forget_split, seed in jobs:
        if not force and _built(model_dir(cfg, which), cfg):
            where = "shipped" if ship is not None and model_dir(cfg, which).parent == ship else "cached"
            log(f"{which}: {where} at {model_dir(cfg, which)}")
        else:
            todo.append((which, forget_split, seed))
    workers = min(len(todo), cfg.parallel)
    if workers > 1:
        # each model trains in its own process on one core: tiny matrices gain nothing from a second thread, but
        # models side by side divide the wall time of a build
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            futs = [ex.submit(_train_one, cfg, which, fs, False, seed) for which, fs, seed in todo]
            for f in futs:
                log(f.result())
    else:
        for which, forget_split, seed in todo:
            log(_train_one(cfg, which, forget_split, progress, seed))
    return root if force or ship is None else ship


def _to_bf16_reference(model):
    """Round the weights to bf16 (the stored reference) and return the fp32 upcast that evaluation uses."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model


def _train_one(cfg: BuildConfig, which: str, forget_split: str | None, progress: bool, seed: int | None = None) -> str:
    """Train, check and save one model of the build (target or an oracle, optionally with another init/shuffle
    ``seed``) into ``cache_root(cfg) / which``; returns its summary line."""
    from unlearn.targets.llm import load_tokenizer, quiet_transformers, save_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_transformers()  # worker processes: keep transformers' own save/load bars out of the build log
    splits = generate(cfg.data)
    tok = load_tokenizer(str(cache_root(cfg) / "tokenizer"))
    d = cache_root(cfg) / which
    recs = training_set(splits, forget_split, cfg.arithmetic_repeat, cfg.world_repeat)
    steps = target_steps(cfg, splits)
    run_cfg = cfg if seed is None else replace(cfg, seed=seed)
    model, secs = train_qa_model(run_cfg, tok, recs, desc=f"build {which}", progress=progress, total_steps=steps)
    _to_bf16_reference(model)
    t0 = time.time()
    fs = forget_split or "forget10"
    acc = accuracy_report(model, tok, splits, fs)
    eval_secs = time.time() - t0
    model.to(torch.bfloat16)
    save_model(model, tok, d.with_name(d.name + ".stage"))
    nparams = sum(p.numel() for p in model.parameters())
    card = {
        "name": f"tinyfacts/{which}",
        "which": which,
        "forget_split": forget_split,
        "digest": cfg.digest(),
        "data_hash": generated_hash(cfg.data),
        "recipe": asdict(run_cfg),
        "build_command": BUILD_COMMAND,
        "licence": "MIT",
        "dtype": "bfloat16 (the stored tensors are the reference; figures measured on them, upcast to fp32)",
        "n_params": nparams,
        "n_train": len(recs),
        "n_train_bios": sum("text" in r for r in recs),
        "steps": steps,
        "seconds": round(secs, 1),
        "eval_seconds": round(eval_secs, 1),
        "threads": cfg.threads,
        "torch": torch.__version__,
        "accuracy": acc,
        "majority_baseline": {s: round(majority_baseline(splits, s), 4) for s in RETAIN_OF},
        "attribute_majority": attribute_majority(splits),
        "templates": templates(),
    }
    stage = d.with_name(d.name + ".stage")
    atomic_write_json(stage / "card.json", card)
    atomic_write_json(stage / "build.json", card)  # the v1 name, read by older callers
    if d.exists():
        shutil.rmtree(d)
    os.replace(stage, d)
    return f"{which}: {nparams / 1e6:.2f}M params, {steps} steps on {len(recs)} rows in {secs:.0f}s; exact-match " + (
        ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
    )


def build_oracle_seed(cfg: BuildConfig | str, forget_split: str, seed: int, progress: bool = True, log=print) -> Path:
    """An extra retain-only oracle trained with another seed (``oracle_<split>_seed<k>``), same recipe otherwise.

    Two oracles differ only by training noise, so forget quality of one against the other shows what "perfectly
    unlearned" looks like on this benchmark. The shipped ``oracle_forget10_seed1`` is served when it matches.
    """
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    build_tinyfacts(cfg, oracles=(forget_split,), progress=progress, log=log, extra_seeds=((forget_split, seed),))
    return model_dir(cfg, f"oracle_{forget_split}_seed{seed}")


def ensure_built(cfg: BuildConfig | str = "default", forget_split: str | None = "forget10", log=print) -> Path:
    """What a run needs (target + the oracle of ``forget_split``): the shipped weights when they match, else the
    cache, built if missing. Returns the serving root."""
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    need = ["target"] + ([f"oracle_{forget_split}"] if forget_split else [])
    if all(_built(model_dir(cfg, w), cfg) for w in need):
        return target_root(cfg)
    build_tinyfacts(cfg, oracles=(forget_split,) if forget_split else (), log=log)
    return target_root(cfg)


def build_info(cfg: BuildConfig, which: str) -> dict:
    """The model card of ``which`` (recipe, digest, quality figures)."""
    p = model_dir(cfg, which) / "card.json"
    if not p.exists():
        raise UnlearnError(f"{which} of the embedded target is not built; run `unlearn build tinyfacts`")
    return read_json(p)


def build_release(cfg: BuildConfig | str = "default", progress: bool = False, log=print) -> Path:
    """Rebuild everything that is shipped (target, oracle_forget01/05/10, oracle_forget10_seed1) from scratch into
    the cache, side by side; returns the cache root (`ship` then copies it into the assets)."""
    return build_tinyfacts(
        cfg,
        ("forget01", "forget05", "forget10"),
        force=True,
        progress=progress,
        log=log,
        extra_seeds=(("forget10", 1),),
    )


def ship(cfg: BuildConfig | str = "default", dest: Path = ASSET_DIR) -> Path:
    """Copy a finished cache build (target + the shipped oracles, data) into ``dest`` in the asset layout (model
    directories without the v1 ``build.json``)."""
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    src = cache_root(cfg)
    for w in SHIPPED:
        if not _built(src / w, cfg):
            raise UnlearnError(f"{src / w} is not built")
    dest.mkdir(parents=True, exist_ok=True)
    for w in (*SHIPPED, "data"):
        if (dest / w).exists():
            shutil.rmtree(dest / w)
        shutil.copytree(
            src / w, dest / w, ignore=shutil.ignore_patterns("build.json", "done", "generation_config.json")
        )
    return dest


__all__ = [
    "BuildConfig", "PRESETS", "get_preset", "build_tinyfacts", "build_oracle_seed", "build_release", "ensure_built",
    "build_info", "model_dir", "data_dir", "target_root", "cache_root", "shipped_root", "ship", "replace",
]  # fmt: skip
