"""One small per-architecture adapter: where a causal LM keeps its blocks, final norm, unembedding and MLP values.

The internal evaluators (hidden states, logit lens, concept vectors) and Needle need four places in a model, whose
names differ by architecture (transformers 5):

=========  ==========================  =========================  ========================  =====================
type       decoder blocks              final norm                 MLP down-projection       its weight
=========  ==========================  =========================  ========================  =====================
llama,     ``model.layers``            ``model.norm``             ``mlp.down_proj``         (d_model, d_ff) Linear
qwen2,
mistral,
olmo,
gemma
phi        ``model.layers``            ``model.final_layernorm``  ``mlp.fc2``               (d_model, d_ff) Linear
gpt_neox   ``gpt_neox.layers``         ``gpt_neox.final_layer_    ``mlp.dense_4h_to_h``     (d_model, d_ff) Linear
                                       norm``
gpt2       ``transformer.h``           ``transformer.ln_f``       ``mlp.c_proj``            (d_ff, d_model) Conv1D
=========  ==========================  =========================  ========================  =====================

The unembedding is always ``get_output_embeddings()`` (``lm_head``; tied to the input embedding for GPT-2 and Gemma).
A *value vector* (Geva et al. 2022, https://arxiv.org/abs/2203.14680) is what neuron ``D`` of layer ``L``'s MLP adds
to the residual stream per unit of activation: column ``D`` of a Linear down-projection, row ``D`` of GPT-2's Conv1D.
`value_matrix` hides that difference: it returns a (d_ff, d_model) *view* of the weight, so writing a row of it
writes the model. The input of the down-projection module is the activation vector σ(h) (d_ff) itself, so a forward
pre-hook on `down_proj(L)` reads the coefficient of every value vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from unlearn.errors import UnlearnError
from unlearn.targets.llm import _unwrap

# model_type -> (path of the block list, path of the final norm, down-projection name inside a block's mlp)
_PATHS = {
    "llama": ("model.layers", "model.norm", "down_proj"),
    "qwen2": ("model.layers", "model.norm", "down_proj"),
    "mistral": ("model.layers", "model.norm", "down_proj"),
    "olmo": ("model.layers", "model.norm", "down_proj"),
    "olmo2": ("model.layers", "model.norm", "down_proj"),
    "gemma": ("model.layers", "model.norm", "down_proj"),
    "phi": ("model.layers", "model.final_layernorm", "fc2"),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.final_layer_norm", "dense_4h_to_h"),
    "gpt2": ("transformer.h", "transformer.ln_f", "c_proj"),
}
SUPPORTED = tuple(sorted(_PATHS))


def _bare(model: nn.Module) -> nn.Module:
    """The bare transformers model under DDP / accelerate / peft / torch.compile wrappers."""
    model = _unwrap(model)
    return getattr(model, "_orig_mod", model)


def _get(root: nn.Module, path: str) -> nn.Module:
    for p in path.split("."):
        root = getattr(root, p)
    return root


@dataclass
class Arch:
    """The located parts of one causal LM. Build it with `arch(model)`."""

    model: nn.Module
    model_type: str
    blocks: nn.ModuleList  # decoder blocks, input to output
    final_norm: nn.Module  # applied to the last block's output before the unembedding
    unembed: nn.Module  # (V, d_model) weight: logits = unembed(final_norm(h))
    _down: str  # name of the down-projection inside a block's ``mlp``

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def down_proj(self, layer: int) -> nn.Module:
        return getattr(self.blocks[layer].mlp, self._down)

    def down_param_name(self, layer: int) -> str:
        """The qualified parameter name of layer ``layer``'s down-projection weight in ``self.model``."""
        w = self.down_proj(layer).weight
        return next(n for n, p in self.model.named_parameters() if p is w)

    @property
    def value_axis(self) -> int:
        """Axis of the down-projection weight that indexes neurons: 1 for Linear (d_model, d_ff), 0 for Conv1D."""
        return 0 if self.model_type == "gpt2" else 1

    def value_matrix(self, layer: int) -> torch.Tensor:
        """(d_ff, d_model) view of layer ``layer``'s value vectors; writes go to the model's weight."""
        w = self.down_proj(layer).weight
        return w if self.value_axis == 0 else w.T

    def unembedding(self) -> torch.Tensor:
        """(V, d_model) unembedding matrix E (logits = E h)."""
        return self.unembed.weight

    def head_params(self) -> list[tuple[str, nn.Parameter]]:
        """The last layer: the unembedding weight and the final norm's parameters (head-only unlearning).

        A head tied to the input embeddings would make "head-only" also train every input embedding: refused.
        """
        emb = self.model.get_input_embeddings()
        if emb is not None and emb.weight is self.unembed.weight:
            raise UnlearnError(f"{self.model_type}: the LM head is tied to the input embeddings; head-only training "
                               "would move them too")  # fmt: skip
        mine = {id(self.unembed.weight)} | {id(p) for p in self.final_norm.parameters()}
        return [(n, p) for n, p in self.model.named_parameters() if id(p) in mine]

    def lens_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logit lens: (..., d_model) residual -> (..., V) logits through the final norm and the unembedding."""
        return self.unembed(self.final_norm(h.to(self.unembed.weight.dtype)))


def arch(model: nn.Module) -> Arch:
    """Locate blocks, final norm, unembedding and MLP down-projections; exit-2 error for unsupported types."""
    model = _bare(model)
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in _PATHS:
        raise UnlearnError(
            f"internal evaluators do not know the architecture {mt!r}; supported: {', '.join(SUPPORTED)}"
        )
    blocks, norm, down = _PATHS[mt]
    head = model.get_output_embeddings()
    if head is None:
        raise UnlearnError(f"model of type {mt!r} has no output embedding (not a causal LM head model)")
    return Arch(model, mt, _get(model, blocks), _get(model, norm), head, down)
