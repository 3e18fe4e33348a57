"""Sharded training with torch's own FSDP2 (``torch.distributed.fsdp.fully_shard``), launched by accelerate.

``--set sharding=auto|none|ddp|fsdp`` (`TrainConfig.sharding`): ``auto`` is DDP under several processes (as
before) unless ``accelerate launch`` was given an FSDP config (accelerate exports ``ACCELERATE_USE_FSDP=true``),
then FSDP. ``none`` and ``ddp`` are the same thing (no parameter sharding: plain in one process, DDP in several);
asking for them under an FSDP config, or for ``fsdp`` under DeepSpeed / Megatron-LM, is a conflict (one line,
exit 2). ``fsdp`` in ONE process runs unsharded (nothing to shard over; the run says so) and writes ordinary
checkpoints.

Why not ``accelerator.prepare``: accelerate's FSDP plugin silently falls back to DDP on CPU (parameters stay
plain), so the model is sharded here, layer by layer, as torchtune and torchtitan do; accelerate only launches the
processes and sets up the process group (NCCL on GPU, gloo on CPU). The pieces:

* `FSDP` is the ``wrap(module, accelerator)`` of `unlearn.train.setup`: ``fully_shard`` on every decoder block
  (`unlearn.targets.arch.arch(model).blocks`), then on the root (the ``SequenceLogProbs`` wrapper, which holds the
  embeddings, final norm and LM head). On GPU with bf16 a ``MixedPrecisionPolicy`` computes in bf16 and reduces
  gradients in fp32. Micro-batches before the last skip the gradient reduce-scatter (``no_sync`` ->
  ``set_requires_gradient_sync(False)``, what DDP's ``no_sync`` does). The frozen reference is sharded the same way
  (`FSDP.reference`). Parameters become DTensors with the same names: train.setup builds the optimizer on them.
* `clip_grad_norm_`: the global gradient norm over DTensor shards (one all-reduce), then clipping.
* `save_sharded` / `load_sharded`: model + optimizer through ``torch.distributed.checkpoint`` (every rank writes its
  shard; collective), used by `unlearn.loop.save_checkpoint` / `load_checkpoint` for a sharded model. A resume with
  another world size (or sharding) stops with exit 2: resharding is not offered.
* `consolidate`: a plain, unsharded copy of the model on every rank (one parameter all-gathered at a time). The
  trajectory evaluation (main process) and the final evaluation, the internal suite and ``--save-model`` all run
  on it, so no evaluation forward is collective and nothing can deadlock. Memory: one full copy of the weights per
  process after training (no gradients, no optimizer state: a quarter of fp32 AdamW training's 16 bytes/param).
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import torch
from torch import nn

from unlearn.errors import UnlearnError

SHARDINGS = ("auto", "none", "ddp", "fsdp")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def world_size(accelerator=None) -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return accelerator.num_processes if accelerator is not None else int(os.environ.get("WORLD_SIZE", "1"))


def resolve(choice: str, accelerator=None) -> str:
    """The sharding a run uses: ``"ddp"`` (no sharding: plain or DDP) or ``"fsdp"`` (several processes, sharded).

    Raises `UnlearnError` on a conflict with the accelerate launch configuration.
    """
    if choice not in SHARDINGS:
        raise UnlearnError(f"sharding={choice!r}: choose one of {', '.join(SHARDINGS)}")
    fsdp_env = _env_true("ACCELERATE_USE_FSDP")  # `accelerate launch` with distributed_type: FSDP
    if choice == "auto":
        choice = "fsdp" if fsdp_env else "ddp"
    elif choice in ("none", "ddp") and fsdp_env:
        raise UnlearnError(f"sharding={choice} conflicts with the accelerate FSDP config this was launched with "
                           "(ACCELERATE_USE_FSDP=true): drop --set sharding or launch with a DDP config")  # fmt: skip
    if choice == "fsdp":
        for env, name in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")):
            if _env_true(env):
                raise UnlearnError(f"sharding=fsdp conflicts with the accelerate {name} config this was launched "
                                   "with: launch with an FSDP or DDP config (benchmarks/accelerate/)")  # fmt: skip
        return "fsdp"
    return "ddp"


def wrapper(tcfg, accelerator, method=None, mcfg=None, log=print):
    """The ``wrap`` for `unlearn.train.setup`: an `FSDP` under ``sharding=fsdp`` with several processes, else None
    (accelerate's DDP, as before)."""
    if resolve(tcfg.sharding, accelerator) != "fsdp":
        return None
    if world_size(accelerator) <= 1:
        log("sharding=fsdp with one process: nothing to shard over, training unsharded")
        return None
    if tcfg.lora.r > 0:
        raise UnlearnError("sharding=fsdp does not combine with LoRA (lora.r > 0): LoRA fits in DDP (sharding=ddp)")
    if method is not None and (method.grad_mask is not None or method.make_aux is not None):
        raise UnlearnError(f"{method.name} masks gradients or keeps auxiliary modules: it runs with sharding=ddp")
    cuda = torch.cuda.is_available()
    bf16 = tcfg.precision == "bf16" or (tcfg.precision == "auto" and cuda)
    return FSDP(bf16=bf16 and cuda, log=log)


def _mesh(accelerator):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(accelerator.device.type, (world_size(accelerator),))


class FSDP:
    """``fully_shard`` layer by layer; ``summary`` holds the parameter elements this rank keeps."""

    def __init__(self, bf16: bool = False, log=print):
        self.bf16 = bf16  # GPU bf16: bf16 compute, fp32 gradient reduction
        self.log = log
        self.summary: dict = {}
        self._mesh = None

    def _shard(self, root: nn.Module, lm: nn.Module, accelerator) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from unlearn.targets.arch import arch

        if self._mesh is None:
            self._mesh = _mesh(accelerator)
        kw = {"mesh": self._mesh}
        if self.bf16:
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in arch(lm).blocks:  # one all-gather per block: only one block's full weights live at a time
            fully_shard(block, **kw)
        fully_shard(root, **kw)  # embeddings, final norm, LM head (tied ones stay one parameter)

    def __call__(self, module: nn.Module, accelerator) -> nn.Module:
        """Shard ``module`` (a ``SequenceLogProbs`` of the trainable LM) in place; returns it."""
        self._shard(module, module.lm, accelerator)

        @contextlib.contextmanager
        def no_sync():  # accelerate's no_sync(model) calls this: skip the reduce-scatter until the last micro-batch
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)

        module.no_sync = no_sync
        local, total = local_elements(module)
        self.summary = {"sharding": "fsdp", "param_elements": total, "local_param_elements": local}
        self.log(f"sharding=fsdp over {world_size(accelerator)} processes: this rank holds {local:,} of {total:,} "
                 f"parameter elements ({local / max(total, 1):.1%})")  # fmt: skip
        return module

    def reference(self, ref_model: nn.Module, accelerator) -> nn.Module:
        """The frozen reference, sharded like the trainable model; returns its ``SequenceLogProbs`` root (the
        reference is only ever called through it, so that the root's embeddings and head are gathered)."""
        from unlearn.targets.llm import SequenceLogProbs

        root = SequenceLogProbs(ref_model)
        self._shard(root, ref_model, accelerator)
        self.summary["reference_local_param_elements"] = local_elements(root)[0]
        return root


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def local_elements(module: nn.Module) -> tuple[int, int]:
    """(parameter elements stored on this rank, parameter elements of the full model)."""
    from torch.distributed.tensor import DTensor

    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in module.parameters())
    return local, sum(p.numel() for p in module.parameters())


def clip_grad_norm_(params, max_norm: float) -> torch.Tensor:
    """The global L2 norm of the (DTensor) gradients; clips them to ``max_norm`` when it is > 0 (the formula of
    ``torch.nn.utils.clip_grad_norm_``: scale by min(1, max_norm / (norm + 1e-6)))."""
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
    if isinstance(total, DTensor):  # a partial norm per shard: one all-reduce makes it global
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


# ----------------------------------------------------------------------------------------------- checkpoints
def _plain_opt(opt):
    return getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps the torch one


def save_sharded(folder: Path, model: nn.Module, opt) -> None:
    """Model + optimizer state through torch.distributed.checkpoint into ``folder`` (every rank; collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, _plain_opt(opt))
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(folder))


def load_sharded(folder: Path, model: nn.Module, opt) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, _plain_opt(opt))
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, _plain_opt(opt), model_state_dict=state["model"], optim_state_dict=state["optim"])


def check_resume(state: dict, model: nn.Module) -> None:
    """A sharded checkpoint resumes only with the sharding and world size that wrote it (exit 2 otherwise)."""
    now = ("fsdp", world_size()) if is_sharded(model) else ("ddp", None)
    was = (state.get("sharding", "ddp"), state.get("world_size") if state.get("sharding") == "fsdp" else None)
    if now != was:
        what = {("ddp", None): "unsharded"}
        raise UnlearnError(
            f"the checkpoint was written {what.get(was, f'by {was[1]} FSDP processes')} and this run is "
            f"{what.get(now, f'{now[1]} FSDP processes')}: resume with the same launch, or start over with --force"
        )


# ----------------------------------------------------------------------------------------------- consolidation
def consolidate(model: nn.Module, keep: bool = True) -> nn.Module | None:
    """A plain copy of a sharded causal LM on this rank's device; every rank must call (one all-gather per tensor).

    ``keep=False``: take part in the gathers only (returns None). Buffers (not sharded) are copied as they are.
    """
    from torch.distributed.tensor import DTensor

    device = next(model.parameters()).device
    full = {}
    for name, t in model.state_dict().items():
        t = t.full_tensor() if isinstance(t, DTensor) else t
        if keep:
            full[name] = t.detach().clone()
    if not keep:
        return None
    with torch.device("meta"):
        plain = type(model)(copy.deepcopy(model.config))
    plain.load_state_dict(full, strict=False, assign=True)
    for name, b in model.named_buffers():  # non-persistent ones (rotary inv_freq) are not in the state dict
        mod, _, leaf = name.rpartition(".")
        plain.get_submodule(mod)._buffers[leaf] = b.detach().clone()
    plain.tie_weights()
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"consolidate: parameters not restored: {missing[:4]}")
    if getattr(model, "generation_config", None) is not None:
        plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.to(device).eval()


__all__ = ["SHARDINGS", "resolve", "wrapper", "FSDP", "is_sharded", "local_elements", "clip_grad_norm_",
           "save_sharded", "load_sharded", "check_resume", "consolidate"]  # fmt: skip
