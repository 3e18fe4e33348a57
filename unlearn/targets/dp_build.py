"""DP bases for DP2Unlearning: the embedded TinyFacts model trained with differential privacy on its entity records.

DP2Unlearning (Al Mahmud, Jebreel, Domingo-Ferrer, Sanchez 2025, https://arxiv.org/abs/2504.13774, code
https://github.com/tamimalmahmud/DP2Unlearning) trains the base model with epsilon-DP once; a deletion request is
then served by fine-tuning that base on the retained data only (`unlearn.methods.dp2`). By post-processing, the
result's dependence on the deleted data is bounded by the base's guarantee. Here the base is built in two stages:

1. **Public stage** (non-private, shared by every base of one TinyFacts build): world facts and the skill
   (successor arithmetic), the corpus parts that describe no entity, from a random init with the target's recipe.
2. **Private stage**: DP-SGD (Abadi et al. 2016, https://arxiv.org/abs/1607.00133) over the entity records, i.e.
   every QA row (three trained phrasings per fact) and every biography of every entity, with Poisson sampling over
   privacy units, per-unit clipping to norm C, Gaussian noise sigma*C on the sum, division by the expected number
   of units per step, then AdamW. Each step also takes a public batch (world facts, skill) whose gradient is added
   un-noised: public data costs no privacy and keeps the skill from being overwritten.

Privacy units (``privacy_unit``):

* ``record``: one training row (one QA phrasing or one biography) is a unit, the reference code's choice (one TOFU
  QA). Deleting an entity removes ~32 rows, so its guarantee is only the group bound (k*eps, k*e^((k-1)eps)*delta).
* ``entity``: all rows of one entity form one unit; a sampled entity contributes the gradient of its mean loss over
  ``entity_rows`` of its rows drawn afresh (a randomised function of that entity's data alone, so per-unit clipping
  bounds its influence exactly as for a fixed function). opacus clips per row, so the rows' per-sample gradients
  (opacus ``GradSampleModule``, hooks mode) are summed per entity here before clipping (`unit_clipped_sum`).

The noise multiplier comes from opacus' RDP accountant for the requested (epsilon, delta), the sampling rate q =
expected units / N and the step count; the card records the accountant's epsilon for the steps actually taken.
``epsilon = inf`` trains the same stages with the same sampling but without clipping or noise (the non-private
reference; the privacy unit is irrelevant there, so both units share one base).

Caveat stated in every card: the tokenizer is the shipped target's, trained on the whole corpus (forget entities'
names included), so the guarantee is conditional on the tokenizer (`tokenizer_leak` counts the vocabulary entries
that occur in no retained or public text).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from unlearn.errors import UnlearnError, unknown_name
from unlearn.store import atomic_write_json, read_json, unlearn_home

UNITS = ("record", "entity")
EPSILON_PRESETS = (0.5, 1.0, 5.0, 10.0, math.inf)


@dataclass(frozen=True)
class DPBuildConfig:
    """The DP base recipe on top of a TinyFacts build (``BuildConfig``); measurements in docs/methods/dp2.md."""

    epsilon: float = 1.0  # target epsilon of the private stage; inf = no clipping, no noise
    privacy_unit: str = "entity"  # record | entity: what one Poisson-sampled, clipped unit is
    delta: float = 1e-5  # target delta; must be < 1/N for N units (220 entities, 6,560 records)
    max_grad_norm: float = 1.0  # per-unit clipping norm C
    batch_rows: int = 64  # expected private rows per step (record: units; entity: units x entity_rows)
    entity_rows: int = 4  # rows drawn per sampled entity (entity unit)
    bios: bool = False  # biographies in the private stage too (~2.5x the tokens per step: over the time budget)
    public_rows: int = 16  # public rows (world facts, skill) per private step, un-noised
    steps: int = 600  # private-stage optimizer steps
    lr: float = 3e-3  # peak AdamW lr of the private stage (warm-up + cosine, the target's schedule)
    public_steps: int = 600  # public-stage steps (batch = the build's batch size)
    micro_rows: int = 32  # physical rows per forward (memory: micro_rows x parameters floats of per-row grads)
    seed: int = 0  # init, sampling and noise seed
    checkpoint_every: int = 100  # resumable checkpoint of the private stage every N steps

    def check(self) -> None:
        if self.privacy_unit not in UNITS:
            raise unknown_name("privacy unit", self.privacy_unit, UNITS)
        if not (self.epsilon > 0):  # also rejects NaN
            raise UnlearnError(f"epsilon must be > 0 (or inf), got {self.epsilon}")
        if not (0 < self.delta < 1):
            raise UnlearnError(f"delta must be in (0, 1), got {self.delta}")
        for k in ("batch_rows", "entity_rows", "steps", "micro_rows", "public_steps", "checkpoint_every"):
            if getattr(self, k) < (0 if k in ("public_steps", "checkpoint_every") else 1):
                raise UnlearnError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise UnlearnError(f"max_grad_norm must be finite and > 0, got {self.max_grad_norm}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UnlearnError(f"lr must be finite and > 0, got {self.lr}")

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    def label(self) -> str:
        """Folder / run-label form: ``entity-eps1``, ``record-eps0.5``, ``epsinf`` (both units share it)."""
        return "epsinf" if not self.private else f"{self.privacy_unit}-eps{self.epsilon:g}"

    def digest(self, build_digest: str) -> str:
        d = asdict(self)
        d.pop("micro_rows")  # speed knobs: the update does not depend on them (up to float summation order)
        d.pop("checkpoint_every")
        if not self.private:
            d["privacy_unit"] = "record"
        return hashlib.sha256(json.dumps({"build": build_digest, **d}, sort_keys=True).encode()).hexdigest()[:12]


# the recipe per TinyFacts build preset (the micro one: seconds, for tests)
DP_PRESETS: dict[str, DPBuildConfig] = {
    "default": DPBuildConfig(),
    "micro": DPBuildConfig(
        batch_rows=16, entity_rows=2, public_rows=8, steps=40, public_steps=150, micro_rows=16, checkpoint_every=10
    ),  # fmt: skip
}


def dp_recipe(bcfg, epsilon: float, privacy_unit: str, delta: float = 1e-5) -> DPBuildConfig:
    """The DP recipe of the build preset ``bcfg`` is (micro or default) at this epsilon, unit and delta."""
    from unlearn.targets.build import PRESETS

    name = next((n for n, c in PRESETS.items() if c == bcfg), "default")
    base = DP_PRESETS.get(name, DP_PRESETS["default"])
    return replace(base, epsilon=float(epsilon), privacy_unit=privacy_unit, delta=float(delta))


# ----------------------------------------------------------------------------------------------- accounting
# RDP orders: opacus' defaults (1.1 ... 10.9, 12 ... 63) extended to 256 (with small sampling rates and few steps
# the best order for the record unit is above 63, and the default grid then overstates epsilon)
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 257))


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The RDP accountant's epsilon (opacus ``RDPAccountant``) after ``steps`` Poisson-subsampled Gaussian steps."""
    from opacus.accountants import RDPAccountant

    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = RDPAccountant()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta, alphas=ALPHAS))


def noise_for(epsilon: float, sample_rate: float, steps: int, delta: float) -> float:
    """The smallest noise multiplier (to opacus' tolerance) whose RDP epsilon after ``steps`` is <= ``epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    if not math.isfinite(epsilon):
        return 0.0
    sigma = float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                       steps=steps, accountant="rdp", epsilon_tolerance=0.005,
                                       alphas=ALPHAS))  # fmt: skip
    if dp_epsilon(sigma, sample_rate, steps, delta) > epsilon:  # never report above the request
        raise UnlearnError(f"the accountant found no noise multiplier for epsilon {epsilon}")
    return sigma


# ----------------------------------------------------------------------------------------------- units
def entity_of(row: dict) -> str:
    """The entity a private row describes (QA rows carry ``group`` = ``entity|attribute``, biographies ``entity``)."""
    return row["entity"] if "entity" in row else row["group"].split("|")[0]


def private_rows(splits, bios: bool = True) -> list[dict]:
    """The entity records of the target's training set: QA rows in their trained phrasings (and biographies)."""
    from unlearn.data.tinyfacts import training_set

    return [r for r in training_set(splits) if "group" in r or (bios and "text" in r)]


def public_rows(splits, cfg) -> list[dict]:
    """World facts and the skill's training problems, repeated as the target's recipe repeats them."""
    rows = [{"question": r["question"], "answer": r["answer"]} for r in splits["world_facts"]] * cfg.world_repeat
    skill = [{"question": r["question"], "answer": r["answer"]} for r in splits["arithmetic_train"]]
    return rows + skill * cfg.arithmetic_repeat


def unit_index(rows: list[dict], unit: str) -> tuple[list[list[int]], list[str]]:
    """(rows of each unit, unit names): one row per unit for ``record``, all rows of an entity for ``entity``."""
    if unit == "record":
        return [[i] for i in range(len(rows))], [str(i) for i in range(len(rows))]
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(entity_of(r), []).append(i)
    names = sorted(groups)
    return [groups[n] for n in names], names


def sample_step(units: list[list[int]], q: float, per_unit: int, gen: torch.Generator) -> tuple[list[int], list[int]]:
    """One Poisson-sampled step: every unit independently with probability ``q``; a sampled unit contributes
    ``per_unit`` of its rows drawn without replacement (all of them if it has fewer). Returns (rows, unit of each
    row as a 0-based index into the sampled units): a unit's rows always share one index."""
    chosen = (torch.rand(len(units), generator=gen) < q).nonzero().flatten().tolist()
    rows, owner = [], []
    for j, u in enumerate(chosen):
        members = units[u]
        if len(members) > per_unit:
            members = [members[i] for i in torch.randperm(len(members), generator=gen)[:per_unit].tolist()]
        rows += members
        owner += [j] * len(members)
    return rows, owner


# ----------------------------------------------------------------------------------------------- gradients
# opacus' hooks warn on every backward that no *input* requires grad (token ids never do); the parameter gradients
# they capture are unaffected (tests/unlearn/targets/test_dp_build.py checks them against separate backward passes)
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")


def row_losses(model, batch: dict) -> torch.Tensor:
    """Token-mean NLL of each row over its labelled tokens (answer tokens of QA, every token of a biography). (B,)

    A full (B, T, V) forward with no gathering, so every row's loss depends on its own batch position only (what
    per-sample gradient hooks need)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]  # (B, T-1, V)
    labels = batch["labels"][:, 1:]  # (B, T-1)
    mask = labels != -100
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none") * mask
    return nll.sum(1) / mask.sum(1).clamp(min=1)


def per_unit_grads(gsm, params, items, rows, owner, n_units: int, pad_id: int, micro: int) -> torch.Tensor:
    """Per-unit gradients (n_units, P) of each unit's mean row loss, from per-row gradients summed per unit.

    Rows are sorted by length and run in micro-batches (less padding); opacus' hooks give each row's gradient
    (``loss_reduction="sum"``: the gradient of row i's own loss term), weighted 1 / (rows of its unit)."""
    from unlearn.targets.llm import collate

    P = sum(p.numel() for p in params)
    G = torch.zeros(n_units, P)
    counts = torch.bincount(torch.tensor(owner), minlength=n_units).float()
    order = sorted(range(len(rows)), key=lambda i: len(items[rows[i]][0]))
    for s in range(0, len(order), micro):
        sel = order[s : s + micro]
        batch = collate([items[rows[i]] for i in sel], pad_id)
        own = torch.tensor([owner[i] for i in sel])
        (row_losses(gsm, batch) / counts[own]).sum().backward()
        gs = torch.cat([p.grad_sample.reshape(len(sel), -1) for p in params], dim=1)  # (b, P)
        G.index_add_(0, own, gs)
        for p in params:
            p.grad_sample = None
            p.grad = None
    return G


def unit_clipped_sum(G: torch.Tensor, C: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_u min(1, C / ||g_u||) g_u over the rows of ``G`` (n_units, P); returns (sum (P,), unit norms (n,))."""
    norms = G.norm(dim=1)
    factor = (C / (norms + 1e-6)).clamp(max=1.0)
    return (factor[:, None] * G).sum(0), norms


def _assign(params, flat: torch.Tensor) -> None:
    off = 0
    for p in params:
        n = p.numel()
        g = flat[off : off + n].view_as(p)
        p.grad = g.clone() if p.grad is None else p.grad + g
        off += n


# ----------------------------------------------------------------------------------------------- build
def dp_root(build_digest: str) -> Path:
    return unlearn_home() / "tinyfacts-dp" / build_digest


def base_dir(bcfg, dcfg: DPBuildConfig) -> Path:
    """Where the base of ``dcfg`` on TinyFacts build ``bcfg`` lives (its folder shows unit and epsilon)."""
    return dp_root(bcfg.digest()) / f"{dcfg.label()}_seed{dcfg.seed}_{dcfg.digest(bcfg.digest())}"


def _done(d: Path) -> bool:
    return (d / "card.json").exists() and (d / "model.safetensors").exists()


def public_base(bcfg, tok_dir: str, progress: bool = True, log=print) -> Path:
    """The public-stage model (world facts + skill, non-private), shared by every DP base of ``bcfg``."""
    from unlearn.data.tinyfacts import generate
    from unlearn.targets.build import _to_bf16_reference, train_qa_model
    from unlearn.targets.llm import load_tokenizer, save_model

    d = dp_root(bcfg.digest()) / f"public_seed{bcfg.seed}"
    if _done(d):
        return d
    steps = dp_recipe(bcfg, 1.0, "entity").public_steps
    tok = load_tokenizer(tok_dir)
    rows = public_rows(generate(bcfg.data), bcfg)
    model, secs = train_qa_model(bcfg, tok, rows, desc="dp public stage", progress=progress, total_steps=steps)
    _to_bf16_reference(model)
    save_model(model, tok, d)
    atomic_write_json(d / "card.json", {"stage": "public", "steps": steps, "seconds": round(secs, 1),
                                        "rows": len(rows), "build_digest": bcfg.digest()})  # fmt: skip
    log(f"dp public stage: {steps} steps on {len(rows)} public rows in {secs:.0f}s")
    return d


def tokenizer_leak(tok, splits, forget_entities: set[str]) -> dict:
    """How much the shared tokenizer knows of the private entities: vocabulary entries used by some entity's
    private text but by no public text (world facts, skill, prompt frame, templates), in total and for entities of
    ``forget_entities`` only (entries no other text uses)."""

    def ids(texts):
        return {i for t in texts for i in tok(" " + t, add_special_tokens=False)["input_ids"]}

    public = ids([r["question"] + " " + r["answer"] for r in splits["world_facts"] + splits["arithmetic_train"]])
    public |= ids(["Question: Answer:"])
    rows = private_rows(splits)
    text = [(entity_of(r), r.get("text") or f"{r['question']} {r['answer']}") for r in rows]
    priv = ids([t for _, t in text])
    other = ids([t for e, t in text if e not in forget_entities])
    only_forget = ids([t for e, t in text if e in forget_entities]) - other - public
    return {"vocab": len(tok), "private_only": len(priv - public), "forget_only": len(only_forget)}


def build_dp_base(bcfg, dcfg: DPBuildConfig, tok_dir: str, progress: bool = True, log=print, threads: int = 1) -> Path:
    """Build (or resume, or reuse) the DP base of ``dcfg``; returns its directory (HF format + card.json)."""
    dcfg.check()
    d = base_dir(bcfg, dcfg)
    if _done(d):
        return d
    with _build_lock(d, log):
        if _done(d):  # another process built it while we waited
            return d
        return _build(bcfg, dcfg, d, tok_dir, progress, log, threads)


@contextlib.contextmanager
def _build_lock(d: Path, log, poll: float = 5.0):
    """One builder per base: ``<dir>.lock`` holds the builder's pid; a second caller waits for it (a lock whose
    process is gone, e.g. killed, is taken over and the build resumes from its checkpoint)."""
    lock = d.with_name(d.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    said = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale
                continue
            except PermissionError:
                pass
            if not said:
                log(f"dp base {d.name}: another process (pid {pid}) is building it; waiting")
                said = True
            time.sleep(poll)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _build(bcfg, dcfg: DPBuildConfig, d: Path, tok_dir: str, progress: bool, log, threads: int) -> Path:
    from opacus import GradSampleModule
    from tqdm.auto import tqdm

    from unlearn.data.tinyfacts import RETAIN_OF, generate
    from unlearn.targets.build import _encode, _to_bf16_reference, accuracy_report
    from unlearn.targets.llm import (
        PromptFormat,
        collate,
        load_causal_lm,
        load_tokenizer,
        quiet_transformers,
        save_model,
    )

    torch.set_num_threads(threads)
    quiet_transformers()
    pub_dir = public_base(bcfg, tok_dir, progress=progress, log=log)
    tok = load_tokenizer(tok_dir)
    splits = generate(bcfg.data)
    fmt = PromptFormat()
    priv = private_rows(splits, dcfg.bios)
    pub = public_rows(splits, bcfg)
    p_items = [_encode(tok, fmt, r) for r in priv]
    q_items = [_encode(tok, fmt, r) for r in pub]
    unit = dcfg.privacy_unit if dcfg.private else "record"
    units, _ = unit_index(priv, unit)
    per_unit = dcfg.entity_rows if unit == "entity" else 1
    expected_units = dcfg.batch_rows / per_unit
    q = min(1.0, expected_units / len(units))
    if dcfg.private and dcfg.delta >= 1 / len(units):
        raise UnlearnError(f"delta {dcfg.delta:g} must be < 1/N = {1 / len(units):.3g} for N = {len(units)} {unit}s")
    t_sigma = time.time()
    sigma = noise_for(dcfg.epsilon, q, dcfg.steps, dcfg.delta)

    model = load_causal_lm(str(pub_dir)).float()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum") if dcfg.private else None
    opt = torch.optim.AdamW(params, lr=dcfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    warm = max(1, int(bcfg.warmup_frac * dcfg.steps))

    def lr_at(s: int) -> float:  # the target's warm-up + cosine to 5%
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, dcfg.steps - warm))) * 0.95 + 0.05

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g_sample = torch.Generator().manual_seed(dcfg.seed)
    g_noise = torch.Generator().manual_seed(dcfg.seed + 1)
    g_pub = torch.Generator().manual_seed(dcfg.seed + 2)
    ckpt = d.with_name(d.name + ".partial") / "checkpoint.pt"
    step, seconds, tokens, n_sampled = 0, 0.0, 0, 0
    if ckpt.exists():  # our own file, still loaded tensors-only
        st = torch.load(ckpt, weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        for g, k in ((g_sample, "g_sample"), (g_noise, "g_noise"), (g_pub, "g_pub")):
            g.set_state(st[k])
        step, seconds, tokens, n_sampled = st["step"], st["seconds"], st["tokens"], st["n_sampled"]
        log(f"dp base {dcfg.label()}: resuming at step {step}")
    bar = tqdm(total=dcfg.steps, initial=step, desc=f"dp base {dcfg.label()}", disable=not progress, leave=False)
    P = sum(p.numel() for p in params)
    while step < dcfg.steps:
        t0 = time.time()
        rows, owner = sample_step(units, q, per_unit, g_sample)
        n_units = len(set(owner))
        if dcfg.private:
            flat = torch.zeros(P)
            if rows:
                G = per_unit_grads(gsm, params, p_items, rows, owner, n_units, tok.pad_token_id, dcfg.micro_rows)
                flat, _ = unit_clipped_sum(G, dcfg.max_grad_norm)
                del G
            flat = flat + sigma * dcfg.max_grad_norm * torch.randn(P, generator=g_noise)
            flat = flat / expected_units  # opacus' Poisson convention: divide by the expected batch, not the drawn
            _assign(params, flat)
        elif rows:  # epsilon = inf: the same sampled units and unit-mean losses, no clipping, no noise
            counts = torch.bincount(torch.tensor(owner), minlength=n_units).float()
            order = sorted(range(len(rows)), key=lambda i: len(p_items[rows[i]][0]))
            for s in range(0, len(order), dcfg.micro_rows):
                sel = order[s : s + dcfg.micro_rows]
                batch = collate([p_items[rows[i]] for i in sel], tok.pad_token_id)
                own = torch.tensor([owner[i] for i in sel])
                ((row_losses(model, batch) / counts[own]).sum() / expected_units).backward()
        # public rows: an ordinary token-mean gradient added un-noised (no privacy cost)
        if dcfg.public_rows:
            if gsm is not None:
                gsm.disable_hooks()
            pick = torch.randint(len(q_items), (dcfg.public_rows,), generator=g_pub).tolist()
            pb = collate([q_items[i] for i in pick], tok.pad_token_id)
            row_losses(model, pb).mean().backward()
            if gsm is not None:
                gsm.enable_hooks()
                for p in params:
                    p.grad_sample = None
            tokens += int((pb["labels"] != -100).sum())
        tokens += sum(len(p_items[r][0]) for r in rows)
        n_sampled += n_units
        if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
            raise UnlearnError(f"dp base {dcfg.label()}: non-finite gradient at step {step}")
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        seconds += time.time() - t0
        bar.update(1)
        if dcfg.checkpoint_every and step % dcfg.checkpoint_every == 0 and step < dcfg.steps:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "g_sample": g_sample.get_state(), "g_noise": g_noise.get_state(), "g_pub": g_pub.get_state(),
                        "step": step, "seconds": seconds, "tokens": tokens, "n_sampled": n_sampled}, tmp)  # fmt: skip
            os.replace(tmp, ckpt)
    bar.close()
    if gsm is not None:
        gsm._close()
    model.eval()
    _to_bf16_reference(model)
    eps = dp_epsilon(sigma, q, step, dcfg.delta) if dcfg.private else math.inf
    acc = accuracy_report(model, tok, splits, "forget10")
    forget_entities = {r["entity"] for r in splits["forget10"]}
    pub_card = read_json(pub_dir / "card.json")
    card = {
        "name": f"tinyfacts-dp/{dcfg.label()}",
        "dp_config": asdict(dcfg),  # inf is written as null
        "digest": dcfg.digest(bcfg.digest()),
        "build_digest": bcfg.digest(),
        "privacy_unit": unit if dcfg.private else "none",
        "n_units": len(units),
        "n_private_rows": len(priv),
        "sample_rate": q,
        "noise_multiplier": sigma,
        "steps": step,
        "epsilon": eps,
        "delta": dcfg.delta,
        "accountant": "rdp (opacus RDPAccountant)",
        "mean_units_per_step": n_sampled / max(1, step),
        "seconds": round(seconds, 1),
        "sigma_seconds": round(time.time() - t_sigma - seconds, 1),
        "tokens": tokens,
        "public_stage": pub_card,
        "accuracy": acc,
        "retain_of": RETAIN_OF["forget10"],
        "tokenizer": "the shipped target's (trained on the whole corpus): the guarantee is conditional on it",
        "tokenizer_leak": tokenizer_leak(tok, splits, forget_entities),
        "torch": torch.__version__,
    }
    stage = d.with_name(d.name + ".stage")
    if stage.exists():
        shutil.rmtree(stage)
    model.to(torch.bfloat16)
    save_model(model, tok, stage)
    atomic_write_json(stage / "card.json", card)
    if d.exists():
        shutil.rmtree(d)
    os.replace(stage, d)
    shutil.rmtree(ckpt.parent, ignore_errors=True)
    log(f"dp base {dcfg.label()}: sigma {sigma:.3f}, q {q:.4f}, {step} steps, epsilon {eps:.3g} in {seconds:.0f}s; "
        + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))  # fmt: skip
    return d


def _build_one(bcfg, dcfg, tok_dir, threads) -> str:
    d = build_dp_base(bcfg, dcfg, tok_dir, progress=False, log=lambda *_: None, threads=threads)
    c = read_json(d / "card.json")
    return f"{dcfg.label()}: epsilon {c['epsilon']}, sigma {c['noise_multiplier']:.3f}, {c['seconds']}s -> {d}"


def build_dp_bases(bcfg, configs: list[DPBuildConfig], tok_dir: str, parallel: int = 2, progress: bool = True,
                   log=print) -> list[Path]:  # fmt: skip
    """Build several bases, side by side in spawn processes (one thread each); returns their directories."""
    for c in configs:
        c.check()
    public_base(bcfg, tok_dir, progress=progress, log=log)  # once, before the private stages fan out
    todo = [c for c in configs if not _done(base_dir(bcfg, c))]
    if len(todo) > 1 and parallel > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(parallel, len(todo)), mp_context=mp.get_context("spawn")) as ex:
            for f in [ex.submit(_build_one, bcfg, c, tok_dir, 1) for c in todo]:
                log(f.result())
    else:
        for c in todo:
            build_dp_base(bcfg, c, tok_dir, progress=progress, log=log)
    return [base_dir(bcfg, c) for c in configs]


def parse_epsilon(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise UnlearnError(f"epsilon must be a number or inf, got {s!r}") from None
    if not (v > 0):
        raise UnlearnError(f"epsilon must be > 0 (or inf), got {s}")
    return v


__all__ = ["DPBuildConfig", "build_dp_base", "build_dp_bases", "base_dir", "dp_epsilon", "noise_for", "replace",
           "sample_step", "unit_index", "unit_clipped_sum", "per_unit_grads", "EPSILON_PRESETS", "UNITS"]  # fmt: skip
