"""Tokens/s and MFU of our unlearning steps (GA, NPO) and of no-grad evaluation against a plain PyTorch loop over
the same model, in one run on one device (so the ratio is measured on one card).

Ours goes through the library: `unlearn.train.setup` / `train_step` / `optimizer_step` (SequenceLogProbs, the
method's step with global normalisers, clipping, AdamW fused on CUDA, bf16 autocast) and
`unlearn.targets.llm.SequenceLogProbs` for evaluation. The plain loop is what one writes by hand: full logits from
``model(...)``, float32 cross-entropy, a reference forward every NPO step, fused AdamW, one micro-batch.

Model: a random-init Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192, vocab
128256, tied embeddings), bf16 weights, SDPA attention. Shapes:
    lm    16 sequences x 512 tokens, every token an answer token: GA, NPO (no retain term), evaluation.
    tofu  32 forget + 32 retain QA sequences of ~125 tokens (TOFU-like spread, prompt tokens masked), NPO + retain
          NLL at effective batch 32 (open-unlearning's TOFU NPO step; the plain loop does it in one micro-batch).

Usage (GPU, < 3 minutes):  python benchmarks/speed/train_speed.py --out speed.json
CPU smoke test (seconds):  python benchmarks/speed/train_speed.py --tiny --out /tmp/speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import time

import torch
import torch.nn.functional as F

# dense bf16 peak FLOP/s by card name (spec sheets, without sparsity); unknown cards get no MFU
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
    "B200": 2250e12,
}


def model_config(tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            attn_implementation="sdpa",
            pad_token_id=0,
        )
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
        pad_token_id=0,
    )


def make_model(conf, device, dtype):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(conf)
    return model.to(dtype).train()


# ----------------------------------------------------------------------------------------------- data
def lm_items(n: int, T: int, vocab: int, g: torch.Generator) -> list:
    """n sequences of T random tokens, every token an answer token (label = id; the first predicts nothing)."""
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (T,), generator=g).tolist()
        out.append((ids, [-100] + ids[1:]))
    return out


def tofu_items(n: int, vocab: int, g: torch.Generator, scale: float = 1.0) -> list:
    """TOFU-like QA sequences: total length ~ N(125, 35) clipped to [48, 256], a 15-40 token prompt (masked)."""
    out = []
    for _ in range(n):
        T = int(min(256, max(48, 125 + 35 * torch.randn((), generator=g).item())) * scale)
        p = int(torch.randint(15, 41, (), generator=g).item() * scale)
        ids = torch.randint(3, vocab, (max(T, p + 2),), generator=g).tolist()
        out.append((ids, [-100] * p + ids[p:]))
    return out


def to_batch(items: list, device) -> dict:
    from unlearn.targets.llm import collate

    return {k: v.to(device) for k, v in collate(items, pad_id=0).items()}


# ----------------------------------------------------------------------------------------------- plain loop
def plain_seq_logps(model, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Full logits, float32 cross-entropy per token, summed per sequence. -> (B,) log-probs, (B,) answer tokens"""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]  # (B, T-1, V)
    labels = b["labels"][:, 1:]
    nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none")
    mask = labels != -100
    return -(nll.view(labels.shape) * mask).sum(-1), mask.sum(-1)


class Plain:
    """The hand-written loop: one micro-batch, fused AdamW on CUDA, clipping at 1.0."""

    def __init__(self, model, ref, lr: float, autocast):
        self.model, self.ref, self.autocast = model, ref, autocast
        self.opt = torch.optim.AdamW(
            model.parameters(), lr=lr, weight_decay=0.01, fused=next(model.parameters()).is_cuda or None
        )

    def _update(self, loss):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def ga(self, b):
        with self.autocast():
            loss = -self.model(**b).loss  # HF token-mean NLL (float32 over full logits), ascended
        self._update(loss)

    def npo(self, f, r=None, beta: float = 0.1):
        """NPO on ``f`` (+ retain NLL on ``r`` in the same forward pass), reference forward every step."""
        with self.autocast():
            if r is None:
                logp, _ = plain_seq_logps(self.model, f)
            else:
                both = _cat(f, r)
                lp, n = plain_seq_logps(self.model, both)
                B = f["input_ids"].shape[0]
                logp, r_nll = lp[:B], -lp[B:].sum() / n[B:].sum()
            with torch.no_grad():
                ref, _ = plain_seq_logps(self.ref, f)
            loss = -(2 / beta) * F.logsigmoid(-beta * (logp - ref)).mean()
            if r is not None:
                loss = loss + r_nll
        self._update(loss)

    @torch.no_grad()
    def eval(self, b):
        with self.autocast():
            return plain_seq_logps(self.model, b)[0]


def _cat(a: dict, b: dict) -> dict:
    T = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    fills = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    return {k: torch.cat([F.pad(x[k], (0, T - x[k].shape[1]), value=v) for x in (a, b)]) for k, v in fills.items()}


# ----------------------------------------------------------------------------------------------- our loop
def our_loop(model, method: str, f_items: list, batch_size: int, precision: str, accelerator, **mkw):
    """unlearn.train's loop pieces for ``method`` (reference log-probs cached by setup: timed separately)."""
    from unlearn.config import TrainConfig
    from unlearn.methods import get_method
    from unlearn.train import setup

    spec = get_method(method)
    tcfg = TrainConfig(lr=1e-5, batch_size=batch_size, warmup_epochs=0, precision=precision)
    t0 = time.perf_counter()
    loop = setup(model, f_items, spec, spec.config_cls(**mkw), tcfg, 0, 1, 10_000, accelerator, log=lambda *a: None)
    _sync()
    return loop, time.perf_counter() - t0


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, warmup: int, iters: int) -> float:
    """Seconds per call (mean over ``iters`` after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    _sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync()
    return (time.perf_counter() - t0) / iters


# ----------------------------------------------------------------------------------------------- main
def flops_per_token(conf, n_params: int, T: float, train: bool) -> float:
    """PaLM-style model FLOPs: 2N per token forward (+ causal attention 2 L d T), x3 with backward."""
    fwd = 2 * n_params + 2 * conf.num_hidden_layers * conf.hidden_size * T
    return 3 * fwd if train else fwd


def run(args) -> dict:
    from accelerate import Accelerator

    from unlearn.targets.llm import SequenceLogProbs

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    precision = "bf16" if cuda else "fp32"
    if not cuda:
        torch.set_num_threads(max(1, args.threads))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    card = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    peak = next((v for k, v in PEAK_BF16.items() if k in card), None) if cuda else None
    conf = model_config(args.tiny)
    model = make_model(conf, device, dtype)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    acc = Accelerator(cpu=not cuda)
    g = torch.Generator().manual_seed(0)
    warm, iters = (1, 2) if args.tiny else (args.warmup, args.iters)
    rows = []

    def add(shape, what, loop, sec, tokens, T, train, base=None):
        tps = tokens / sec
        mfu = tps * flops_per_token(conf, n_params, T, train) / peak if peak else None
        rows.append(
            {
                "shape": shape,
                "step": what,
                "loop": loop,
                "ms_per_step": 1e3 * sec,
                "tokens_per_s": tps,
                "mfu": mfu,
                "ratio": (tps / base["tokens_per_s"]) if base else None,
            }
        )
        return rows[-1]

    if args.shape in ("lm", "all"):
        B, T = (2, 64) if args.tiny else (16, 512)
        items = lm_items(B, T, conf.vocab_size, g)
        b = to_batch(items, device)
        tokens = int(b["attention_mask"].sum())
        plain = Plain(model, ref, 1e-5, autocast)
        p = add("lm", "ga", "plain", timed(lambda: plain.ga(b), warm, iters), tokens, T, True)
        del plain
        loop, _ = our_loop(model, "ga", items, B, precision, acc)
        add("lm", "ga", "ours", timed(lambda: _our_step(loop, items), warm, iters), tokens, T, True, p)
        del loop
        plain = Plain(model, ref, 1e-5, autocast)
        p = add("lm", "npo", "plain", timed(lambda: plain.npo(b), warm, iters), tokens, T, True)
        del plain
        loop, cache_s = our_loop(model, "npo", items, B, precision, acc, retain="none")
        add("lm", "npo", "ours", timed(lambda: _our_step(loop, items), warm, iters), tokens, T, True, p)
        rows[-1]["ref_cache_s"] = cache_s  # one reference pass over the forget set, amortised over all epochs
        del loop
        _free()
        plain = Plain(model, ref, 1e-5, autocast)
        p = add("lm", "eval", "plain", timed(lambda: plain.eval(b), warm, iters), tokens, T, False)
        wrap = SequenceLogProbs(model)

        def ours_eval():
            with torch.no_grad(), autocast():
                return wrap(**b)["seq_logp"]

        add("lm", "eval", "ours", timed(ours_eval, warm, iters), tokens, T, False, p)
        del plain
        _free()
    if args.shape in ("tofu", "all"):
        B = 4 if args.tiny else 32
        f_items = tofu_items(B, conf.vocab_size, g, 0.25 if args.tiny else 1.0)
        r_items = tofu_items(B, conf.vocab_size, g, 0.25 if args.tiny else 1.0)
        fb, rb = to_batch(f_items, device), to_batch(r_items, device)
        tokens = int(fb["attention_mask"].sum() + rb["attention_mask"].sum())
        T = tokens / (2 * B)
        pad_share = 1 - tokens / (2 * B * max(fb["input_ids"].shape[1], rb["input_ids"].shape[1]))
        plain = Plain(model, ref, 1e-5, autocast)
        p = add("tofu", "npo+nll", "plain", timed(lambda: plain.npo(fb, rb), warm, iters), tokens, T, True)
        del plain
        loop, cache_s = our_loop(model, "npo", f_items, B, precision, acc, retain="nll")
        add(
            "tofu",
            "npo+nll",
            "ours",
            timed(lambda: _our_step(loop, f_items, r_items), warm, iters),
            tokens,
            T,
            True,
            p,
        )
        rows[-1].update(ref_cache_s=cache_s, micro_batch=loop.micro, padding_share=pad_share)
        del loop
        _free()
    import transformers

    return {
        "card": card,
        "peak_flops": peak,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model_params": n_params,
        "dtype": str(dtype).replace("torch.", ""),
        "tiny": args.tiny,
        "warmup": warm,
        "iters": iters,
        "rows": rows,
        "peer_open_unlearning_tofu_npo": {"s_per_step": 2.42, "tokens_per_s": 2400, "card": "H200"},
    }


def _our_step(loop, f_items, r_items=None):
    from unlearn.train import optimizer_step, train_step

    idx = list(range(len(f_items)))
    train_step(loop, f_items, r_items if r_items is not None else f_items, idx)
    optimizer_step(loop)


def _free():
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def table(res: dict) -> str:
    lines = [
        f"card: {res['card']}  (torch {res['torch']}, transformers {res['transformers']}, "
        f"{res['model_params'] / 1e6:.1f}M params, {res['dtype']})",
        f"{'shape':<6}{'step':<9}{'loop':<7}{'ms/step':>10}{'tokens/s':>12}{'MFU':>8}{'ours/plain':>12}",
    ]
    for r in res["rows"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
        lines.append(
            f"{r['shape']:<6}{r['step']:<9}{r['loop']:<7}{r['ms_per_step']:>10.1f}{r['tokens_per_s']:>12,.0f}"
            f"{mfu:>8}{ratio:>12}"
        )
    tofu = [r for r in res["rows"] if r["shape"] == "tofu" and r["loop"] == "ours"]
    if tofu and not res["tiny"]:
        s = tofu[0]["ms_per_step"] / 1e3
        lines.append(
            f"tofu NPO step vs open-unlearning (2.42 s/step on an H200): {2.42 / s:.1f}x faster "
            f"(micro-batch {tofu[0]['micro_batch']}, padding {100 * tofu[0]['padding_share']:.0f}%, "
            f"reference cache {tofu[0]['ref_cache_s']:.2f} s once)"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", choices=["lm", "tofu", "all"], default="all")
    ap.add_argument("--tiny", action="store_true", help="a small model and batch (CPU smoke test)")
    ap.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    ap.add_argument("--iters", type=int, default=10, help="timed steps")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    res = run(args)
    print(table(res))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
