"""Time the UCE / RECE closed-form edit of Stable Diffusion 1.4's 32 cross-attention K/V matrices.

Weights do not matter for timing, so the 32 matrices get SD 1.4's shapes (d_out in {320, 640, 1280}, d = 768) and
random values; text embeddings are random too (1 erased prompt: its tail rows; 100 preserved prompts x 77 rows).
Compares a naive per-matrix solve (Gram matrices and inverse rebuilt for each of the 32 matrices, as the
reference scripts loop) with unlearn.methods.uce (Gram + one solve shared, then one matmul per matrix), and
times one RECE round (adversarial embedding + edit). Sampling and CLIP encoding are not included.

    PYTHONPATH=. python benchmarks/speed/uce_edit.py [--device cuda] [--full-unet] [--threads 2]

``--full-unet`` builds a random-init SD 1.4-shaped diffusers UNet and edits its real attn2 layers (slow to build
on a CPU: 860M parameters); the default uses bare Linear layers of the same shapes.
"""

import argparse
import json
import statistics
import time

import torch

from unlearn.methods.rece import adversarial_embedding_gram
from unlearn.methods.uce import uce_closed_form, uce_edit_
from unlearn.targets.diffusion import adversarial_embedding, cross_attention_kv

SD14_ATTN2_WIDTHS = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320]  # 16 blocks


def sd14_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )  # fmt: skip


def layers(device, full_unet: bool):
    if full_unet:
        with torch.device(device):
            unet = sd14_unet()
        return [m for _, m in cross_attention_kv(unet)]
    g = torch.Generator().manual_seed(0)
    out = []
    for w in SD14_ATTN2_WIDTHS:
        for _ in ("to_k", "to_v"):
            lin = torch.nn.Linear(768, w, bias=False)
            lin.weight.data = torch.randn(w, 768, generator=g) * 0.02
            out.append(lin.to(device))
    return out


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    ts = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def naive(lins, C_e, C_g, C_p, lamb, rho):
    with torch.no_grad():
        for lin in lins:  # per matrix: targets, both Gram sums and the inverse rebuilt each time
            W = lin.weight
            lin.weight.copy_(uce_closed_form(W, C_e, C_g @ W.T, C_p, lamb, 1.0, rho))


def shared_inverse(lins, C_e, C_g, C_p, lamb, rho):
    """The issue's fast baseline: preserve Gram and inverse formed once, then one full d x d matmul per matrix."""
    d = C_e.shape[1]
    G = rho * C_p.T @ C_p
    eye = torch.eye(d, device=C_e.device)
    T = (lamb * eye + C_g.T @ C_e + G) @ torch.linalg.inv(lamb * eye + C_e.T @ C_e + G)
    with torch.no_grad():
        for lin in lins:
            lin.weight.copy_(lin.weight @ T)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full-unet", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--preserve", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    lins = layers(a.device, a.full_unet)
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(1)
    C_e = torch.randn(74, 768, generator=g).to(a.device)  # one prompt: last concept token .. end of 77
    C_g = torch.randn(74, 768, generator=g).to(a.device)
    C_p = torch.randn(a.preserve * 77, 768, generator=g).to(a.device)
    rho = max(0.1, 1 / a.preserve)
    res = {"device": a.device, "threads": torch.get_num_threads(), "matrices": len(lins),
           "preserve_prompts": a.preserve, "full_unet": a.full_unet, "build_seconds": round(build_s, 2)}  # fmt: skip
    if a.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
    res["naive_seconds"] = timed(lambda: naive(lins, C_e, C_g, C_p, 0.5, rho), a.device, a.repeats)
    res["shared_inverse_seconds"] = timed(lambda: shared_inverse(lins, C_e, C_g, C_p, 0.5, rho), a.device, a.repeats)
    res["uce_seconds"] = timed(lambda: uce_edit_(lins, C_e, C_g, C_p, 0.5, 1.0, rho), a.device, a.repeats)
    W0 = [lin.weight.detach().clone() for lin in lins]
    C = torch.randn(77, 768, generator=g).to(a.device)
    P = torch.randn(77, 768, generator=g).to(a.device)  # RECE object preserve set: [''] (77 rows)

    def rece_round_naive():  # Σ WᵀW and Σ WᵀW⁰ re-read from the 32 matrices each round
        adv = adversarial_embedding([lin.weight for lin in lins], W0, C, 1e-3)
        uce_edit_(lins, adv, C_g[:1].expand(77, -1), P, 0.1, 1.0, 0.1)

    def g0():
        W = torch.cat(W0)
        return (W.T @ W).double()

    G0 = g0()
    T = torch.eye(768, dtype=torch.float64, device=a.device)

    def rece_round():  # unlearn.methods.rece: G⁰ once (timed separately), composite map T tracked
        adv = adversarial_embedding_gram(G0, T, C, 1e-3)
        uce_edit_(lins, adv, C_g[:1].expand(77, -1), P, 0.1, 1.0, 0.1)

    res["rece_round_naive_seconds"] = timed(rece_round_naive, a.device, a.repeats)
    res["rece_gram_once_seconds"] = timed(g0, a.device, a.repeats)
    res["rece_round_seconds"] = timed(rece_round, a.device, a.repeats)
    res["rece_uce_plus_3_rounds_seconds"] = (
        res["uce_seconds"] + res["rece_gram_once_seconds"] + 3 * res["rece_round_seconds"]
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
