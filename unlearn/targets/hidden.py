"""Residual-stream hidden states of a causal LM at three positions of a QA record, batched and streamed.

The state of layer ``l`` is the output of decoder block ``l`` (the residual stream after it), read by a forward hook
on ``arch(model).blocks[l]`` — before the final norm, also for the last block (Hugging Face's
``output_hidden_states`` may return the last entry with the final norm applied; ``lens_logits`` of our last state is
the model's logits). Three positions per record (``POSITIONS``):

``prompt``
    the last prompt token: the state from which the model predicts the first answer token.
``entity``
    the mean over the prompt tokens that spell ``rec["entity"]`` (the subject: Meng et al. 2022's "last subject
    token" family of probes, here averaged over the subject's tokens). The entity is looked up as a *string* in
    the formatted prompt — inside the question's own occurrence, so a chat template's system text cannot match —
    and mapped to tokens by the tokenizer's character offsets (fast tokenizers: every token whose character span
    overlaps the entity's, so a token that carries the entity's leading space counts). Slow tokenizers have no
    offsets: there the entity's token ids (with and without a leading space) are searched as a subsequence of the
    prompt ids, less a leading token that is only whitespace. ``valid`` is False when the record has no entity or
    it does not occur in the prompt.
``answer``
    the mean over the answer tokens under teacher forcing, in the sequence `encode_qa` builds (prompt tokens, then
    ``fmt.answer(answer)`` tokenised on its own); the EOS that `encode_qa` appends is not an answer token.

Batches are length-sorted (little padding) and right-padded like `collate`: with causal attention and right padding
the states at real positions do not depend on the padding, so results are batch-size invariant up to float noise.
The batch order depends only on the tokenizer, the records, ``batch_size`` and the shard, so two models that share
a tokenizer yield aligned batches (``zip(iter_hidden(a, ...), iter_hidden(b, ...))``). Only the current batch's
(B, n_layers, d) states are held: the per-record token plans (a few ints each) are the only thing that grows with
the number of records.

Processes: records are sharded like the evaluation (record ``i`` goes to process ``i % world``); `collect_hidden`
gathers the shards back into record order on every process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from unlearn.targets.arch import arch
from unlearn.targets.llm import PromptFormat, _unwrap, encode_qa

POSITIONS = ("prompt", "entity", "answer")


@dataclass
class HiddenBatch:
    """One batch of hidden states. Rows follow ``index``; invalid rows of ``states`` are zeros."""

    index: list[int]  # example indices into recs
    states: dict[str, torch.Tensor]  # position -> (B, n_layers, d) float32, on the CPU
    valid: dict[str, torch.Tensor]  # position -> (B,) bool (entity not found in prompt -> False)


@dataclass(frozen=True)
class Shard:
    """Record ``i`` belongs to process ``i % world``; `unlearn.evaluate`'s shard has the same ``indices``."""

    rank: int = 0
    world: int = 1

    def indices(self, n: int) -> list[int]:
        return list(range(self.rank, n, self.world))


def shard_of(accelerator=None) -> Shard:
    """This process's shard. The world size comes from torch.distributed when a group is up: an ``Accelerator()``
    made without ``cpu=True`` under a gloo launch reports one process (docs/conventions.md#multi-process)."""
    if accelerator is None:
        return Shard()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard(accelerator.process_index, accelerator.num_processes)


# ----------------------------------------------------------------------------------------------- token plans
@dataclass
class _Plan:
    ids: list[int]  # prompt (+ answer) token ids
    prompt_last: int  # position of the last prompt token
    entity: tuple[int, ...]  # positions of the entity's tokens ((): not found)
    answer: tuple[int, int]  # [start, end) of the answer tokens (start == end: none)


def _sublist(hay: list[int], needle: list[int]) -> int:
    """First start of ``needle`` in ``hay``, -1 if absent."""
    m = len(needle)
    for s in range(len(hay) - m + 1):
        if hay[s : s + m] == needle:
            return s
    return -1


def entity_positions(tok, fmt: PromptFormat, question: str, entity: str | None) -> tuple[int, ...]:
    """Positions (into `encode_prompt`'s ids) of the tokens that spell ``entity`` in the formatted prompt."""
    if not entity:
        return ()
    prompt = fmt.prompt(tok, question)
    q0 = prompt.rfind(question)  # the question's own occurrence (a chat template puts it last)
    c0 = prompt.find(entity, max(q0, 0))
    if c0 < 0:
        return ()
    c1 = c0 + len(entity)
    add_special = fmt.kind == "plain"
    if getattr(tok, "is_fast", False):
        enc = tok(prompt, add_special_tokens=add_special, return_offsets_mapping=True)
        # special tokens have empty (0, 0) spans; overlap with [c0, c1) selects the entity's tokens
        return tuple(t for t, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < c1 and e > c0)
    ids = tok(prompt, add_special_tokens=add_special)["input_ids"]
    for text in (" " + entity, entity):
        sub = tok(text, add_special_tokens=False)["input_ids"]
        s = _sublist(ids, sub) if sub else -1
        if s >= 0:
            toks = list(range(s, s + len(sub)))
            while len(toks) > 1 and not tok.decode([ids[toks[0]]]).strip():  # a bare-space token is not the entity
                toks.pop(0)
            return tuple(toks)
    return ()


def _plan(tok, fmt: PromptFormat, rec: dict, with_answer: bool, with_entity: bool, max_length: int) -> _Plan:
    ids, labels = encode_qa(tok, fmt, rec["question"], rec.get("answer", ""), max_length=max_length)
    n_prompt = sum(1 for x in labels if x == -100)  # prompt tokens come first, all labelled -100
    n_answer = len(tok(fmt.answer(rec.get("answer", "")), add_special_tokens=False)["input_ids"])
    answer = (n_prompt, min(n_prompt + n_answer, len(ids)))
    ids = ids[: answer[1]] if with_answer else ids[:n_prompt]  # the EOS (and the answer if unused) is not run
    entity = entity_positions(tok, fmt, rec["question"], rec.get("entity")) if with_entity else ()
    entity = tuple(t for t in entity if t < n_prompt)
    return _Plan(ids, n_prompt - 1, entity, answer)


def _weights(plans: list[_Plan], position: str, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Averaging weights (B, T), rows summing to 1 over the position's tokens (0 when invalid), and valid (B,)."""
    w = torch.zeros(len(plans), T)
    for b, p in enumerate(plans):
        if position == "prompt":
            toks = [p.prompt_last]
        elif position == "entity":
            toks = list(p.entity)
        else:
            toks = list(range(*p.answer))
        if toks:
            w[b, toks] = 1.0 / len(toks)
    return w, w.sum(1) > 0


def _forward(lm, body, blocks, ids, attn, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One forward pass; each block's output (B, T, d) is reduced at once to weights @ h (B, d) per position, so
    no (B, T, d) state outlives its block. Returns position -> (B, n_layers, d) float32 on the CPU."""
    device = lm.get_input_embeddings().weight.device
    out: dict[str, list] = {pos: [None] * len(blocks) for pos in weights}

    def hook(layer: int):
        def read(_module, _inputs, output):
            h = output[0] if isinstance(output, tuple) else output  # (B, T, d)
            for pos, w in weights.items():
                out[pos][layer] = torch.bmm(w.to(h.device)[:, None, :], h.float()).squeeze(1)  # (B, d)

        return read

    was_training = lm.training
    handles = []
    try:
        lm.eval()
        handles = [blk.register_forward_hook(hook(layer)) for layer, blk in enumerate(blocks)]
        with torch.no_grad():
            body(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False)
    finally:
        for hd in handles:
            hd.remove()
        lm.train(was_training)
    return {pos: torch.stack([o.cpu() for o in out[pos]], dim=1) for pos in weights}  # (B, n_layers, d)


# ----------------------------------------------------------------------------------------------- states
def iter_hidden(
    model,
    tok,
    fmt: PromptFormat,
    recs: Sequence[dict],
    positions: Sequence[str] = POSITIONS,
    batch_size: int = 64,
    shard: Shard | tuple[int, int] | None = None,
    max_length: int = 512,
) -> Iterator[HiddenBatch]:
    """Stream this shard's records as `HiddenBatch`es of (B, n_layers, d) float32 states per position.

    ``shard``: a `Shard`, ``(rank, world)``, any object with ``indices(n)`` (the evaluation's shard), or None (all
    records). The model runs in eval mode under ``torch.no_grad()``; its hooks exist only during each batch's
    forward pass (removed in ``finally``) and its train/eval mode is restored before every yield.
    """
    unknown = set(positions) - set(POSITIONS)
    if unknown:
        raise ValueError(f"unknown hidden-state positions {sorted(unknown)}; choose from {POSITIONS}")
    if isinstance(shard, tuple):
        shard = Shard(*shard)
    local = shard.indices(len(recs)) if shard is not None else list(range(len(recs)))
    lm = _unwrap(model)
    a = arch(lm)
    body = lm.base_model if getattr(lm, "base_model", lm) is not lm else lm  # skip the (B, T, V) LM head
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    plans = {i: _plan(tok, fmt, recs[i], "answer" in positions, "entity" in positions, max_length) for i in local}
    order = sorted(local, key=lambda i: len(plans[i].ids))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        bp = [plans[i] for i in index]
        T = max(len(p.ids) for p in bp)
        ids = torch.full((len(bp), T), pad, dtype=torch.long)  # right padding, as `collate`
        attn = torch.zeros((len(bp), T), dtype=torch.long)
        for b, p in enumerate(bp):
            ids[b, : len(p.ids)] = torch.tensor(p.ids)
            attn[b, : len(p.ids)] = 1
        wv = {pos: _weights(bp, pos, T) for pos in positions}
        states = _forward(lm, body, a.blocks, ids, attn, {pos: wv[pos][0] for pos in positions})
        yield HiddenBatch(index=list(index), states=states, valid={pos: wv[pos][1] for pos in positions})


def gather_rows(index: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor, n: int, shard: Shard):
    """Per-process (index (m,), rows (m, ...), valid (m,)) -> the full (n, ...) rows and (n,) valid in record
    order, on every process (``torch.distributed.all_gather_object`` of CPU tensors; one process: a scatter)."""
    parts = [(index, rows, valid)]
    if shard.world > 1:
        import torch.distributed as dist

        parts = [None] * shard.world
        dist.all_gather_object(parts, (index.cpu(), rows.cpu(), valid.cpu()))
    full = torch.zeros((n, *rows.shape[1:]), dtype=rows.dtype)
    ok = torch.zeros(n, dtype=torch.bool)
    for idx, r, v in parts:
        full[idx] = r
        ok[idx] = v
    return full, ok


def collect_hidden(
    model,
    tok,
    fmt: PromptFormat,
    recs: Sequence[dict],
    position: str = "prompt",
    batch_size: int = 64,
    accelerator=None,
    max_length: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All records' states at one position: (n, n_layers, d) float32 in record order and valid (n,), gathered
    across processes (every process must call it with the same records). Holds all n rows: for streaming
    statistics (CKA) iterate `iter_hidden` instead."""
    shard = shard_of(accelerator)
    idx, rows, ok = [], [], []
    for hb in iter_hidden(model, tok, fmt, recs, (position,), batch_size, shard, max_length):
        idx.append(torch.tensor(hb.index, dtype=torch.long))
        rows.append(hb.states[position])
        ok.append(hb.valid[position])
    if rows:
        index, states, valid = torch.cat(idx), torch.cat(rows), torch.cat(ok)
    else:  # more processes than records: this one has none, but still joins the gather
        a = arch(_unwrap(model))
        d = a.unembed.weight.shape[1]
        index, states = torch.zeros(0, dtype=torch.long), torch.zeros(0, a.n_layers, d)
        valid = torch.zeros(0, dtype=torch.bool)
    return gather_rows(index, states, valid, len(recs), shard)
