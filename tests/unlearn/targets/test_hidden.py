"""Hidden states at the prompt / entity / answer positions against an independent route: one unpadded forward pass
with ``output_hidden_states=True`` per record, read at hand-found positions."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unlearn.targets.arch import arch
from unlearn.targets.hidden import POSITIONS, Shard, collect_hidden, entity_positions, iter_hidden
from unlearn.targets.llm import PromptFormat, encode_prompt, encode_qa

FMT = PromptFormat()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: a second thread only contends (and is slow when the machine is busy)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def recs(tiny):
    _, _, splits = tiny
    # people (entity in the question), arithmetic (entity "7+1" absent from the question), and one without entity
    rows = splits["forget10"][:5] + splits["retain90"][:4] + splits["arithmetic"][:2]
    return [*rows, {k: v for k, v in splits["retain90"][10].items() if k != "entity"}]


def _by_index(batches, position):
    out = {}
    for hb in batches:
        for b, i in enumerate(hb.index):
            out[i] = (hb.states[position][b], bool(hb.valid[position][b]))
    return out


def _reference(model, tok, rec):
    """Per-layer states (L+1 entries, HF's convention), prompt length and answer-token count of one record."""
    ids, labels = encode_qa(tok, FMT, rec["question"], rec["answer"])
    n_prompt = labels.count(-100)
    n_answer = len(tok(FMT.answer(rec["answer"]), add_special_tokens=False)["input_ids"])
    assert ids[n_prompt + n_answer :] == [tok.eos_token_id]  # encode_qa appends EOS after the answer
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out, n_prompt, n_answer


def test_states_equal_output_hidden_states(tiny, recs):
    tok, model, _ = tiny
    a = arch(model)
    L = a.n_layers
    got = {pos: _by_index(iter_hidden(model, tok, FMT, recs, batch_size=4), pos) for pos in POSITIONS}
    assert sorted(got["prompt"]) == list(range(len(recs)))
    for i, rec in enumerate(recs):
        out, n_p, n_a = _reference(model, tok, rec)
        hs = [h[0] for h in out.hidden_states]  # L + 1 entries of (T, d); the last one has the final norm applied
        ent = entity_positions(tok, FMT, rec["question"], rec.get("entity"))
        for layer in range(L - 1):  # block l's output is hidden_states[l + 1]
            h = hs[layer + 1]
            torch.testing.assert_close(got["prompt"][i][0][layer], h[n_p - 1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got["answer"][i][0][layer], h[n_p : n_p + n_a].mean(0), atol=1e-5, rtol=1e-5)
            if ent:
                torch.testing.assert_close(got["entity"][i][0][layer], h[list(ent)].mean(0), atol=1e-5, rtol=1e-5)
        # the last block's state is pre-norm: the lens of it is the model's logits at that position
        with torch.no_grad():
            lens = a.lens_logits(got["prompt"][i][0][L - 1])
        torch.testing.assert_close(lens, out.logits[0, n_p - 1], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(got["prompt"][i][0][L - 1], hs[L][n_p - 1], atol=1e-3)
        assert got["prompt"][i][1] and got["answer"][i][1]


def test_entity_positions_spell_the_entity(tiny, recs):
    tok, model, _ = tiny
    states = _by_index(iter_hidden(model, tok, FMT, recs, positions=("entity",), batch_size=5), "entity")
    found = 0
    for i, rec in enumerate(recs):
        ent = entity_positions(tok, FMT, rec["question"], rec.get("entity"))
        ids = encode_prompt(tok, FMT, rec["question"])
        in_prompt = bool(rec.get("entity")) and rec["entity"] in rec["question"]
        assert bool(ent) == in_prompt == states[i][1], rec
        if ent:
            found += 1
            assert list(ent) == list(range(ent[0], ent[-1] + 1))  # one contiguous run of tokens
            assert tok.decode([ids[t] for t in ent]).strip() == rec["entity"]
        else:
            assert not states[i][0].any()  # invalid rows are zeros
    assert found == 9 and len(recs) - found == 3  # 5 + 4 people; arithmetic "7+1" and the entity-less record not


def test_slow_tokenizer_route_finds_the_same_tokens(tiny, recs):
    tok, _, _ = tiny

    class Slow:  # the tokenizer without offsets: token-subsequence search
        is_fast = False

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": tok(text, add_special_tokens=add_special_tokens)["input_ids"]}

        def decode(self, ids):
            return tok.decode(ids)

    for rec in recs[:9]:
        assert entity_positions(Slow(), FMT, rec["question"], rec["entity"]) == entity_positions(
            tok, FMT, rec["question"], rec["entity"]
        )


def test_batch_size_and_padding_invariance(tiny, recs):
    tok, model, _ = tiny
    one = {p: _by_index(iter_hidden(model, tok, FMT, recs, batch_size=1), p) for p in POSITIONS}
    many = iter_hidden(model, tok, FMT, recs, batch_size=len(recs))
    hb = next(many)
    lengths = {len(encode_qa(tok, FMT, r["question"], r["answer"])[0]) for r in recs}
    assert len(lengths) > 1  # the big batch is padded
    for pos in POSITIONS:
        for b, i in enumerate(hb.index):
            torch.testing.assert_close(hb.states[pos][b], one[pos][i][0], atol=1e-5, rtol=1e-5)
            assert bool(hb.valid[pos][b]) == one[pos][i][1]
        assert hb.states[pos].dtype == torch.float32 and hb.states[pos].shape == (len(recs), 2, 32)


def test_shards_union_equals_unsharded(tiny, recs):
    tok, model, _ = tiny
    full = _by_index(iter_hidden(model, tok, FMT, recs, batch_size=3), "answer")
    r0 = _by_index(iter_hidden(model, tok, FMT, recs, batch_size=3, shard=Shard(0, 2)), "answer")
    r1 = _by_index(iter_hidden(model, tok, FMT, recs, batch_size=3, shard=(1, 2)), "answer")
    assert sorted(r0) == list(range(0, len(recs), 2)) and sorted(r1) == list(range(1, len(recs), 2))
    for i, (s, _) in {**r0, **r1}.items():
        torch.testing.assert_close(s, full[i][0], atol=1e-5, rtol=1e-5)


def test_collect_hidden_in_record_order(tiny, recs):
    tok, model, _ = tiny
    X, valid = collect_hidden(model, tok, FMT, recs, position="entity", batch_size=4)
    assert X.shape == (len(recs), 2, 32) and valid.tolist() == [True] * 9 + [False] * 3
    ref = _by_index(iter_hidden(model, tok, FMT, recs, positions=("entity",), batch_size=1), "entity")
    for i in range(len(recs)):
        torch.testing.assert_close(X[i], ref[i][0], atol=1e-5, rtol=1e-5)


def test_hooks_removed_and_mode_restored(tiny, recs):
    tok, model, _ = tiny
    a = arch(model)

    def hooks():  # transformers keeps output-capturing hooks of its own on the blocks: compare to those
        return [list(blk._forward_hooks) for blk in a.blocks]

    before = hooks()
    model.train()
    try:
        for _ in iter_hidden(model, tok, FMT, recs[:2]):
            assert model.training  # restored before each yield
            assert hooks() == before  # ours exist only during the forward pass
        assert hooks() == before

        def boom(*_):
            raise RuntimeError("boom")

        h = a.blocks[1].register_forward_pre_hook(boom)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                next(iter_hidden(model, tok, FMT, recs[:2]))
        finally:
            h.remove()
        assert hooks() == before and model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="positions"):
        next(iter_hidden(model, tok, FMT, recs, positions=("last",)))


GATHER = """
import sys, torch, torch.distributed as dist
from unlearn.targets.hidden import Shard, gather_rows
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
idx = torch.tensor(Shard(rank, 2).indices(5)).flip(0)  # any local order: rows carry their index
rows = torch.stack([torch.full((2, 3), float(i)) for i in idx.tolist()])
full, ok = gather_rows(idx, rows, idx % 3 != 0, 5, Shard(rank, 2))
# one record, two processes: rank 1 holds no rows but joins the gather
idx1 = torch.tensor(Shard(rank, 2).indices(1), dtype=torch.long)
one = gather_rows(idx1, torch.full((len(idx1), 2, 3), 7.0), torch.ones(len(idx1), dtype=torch.bool), 1, Shard(rank, 2))
torch.save((full, ok, *one), out)
dist.destroy_process_group()
"""


def test_gather_rows_two_processes(tmp_path):
    """Two gloo processes, each with its shard's rows in its own order, both get all rows in record order."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", GATHER, str(r), str(port), str(tmp_path / f"{r}.pt")], env=env)
        for r in (0, 1)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    for r in (0, 1):
        full, ok, one, one_ok = torch.load(tmp_path / f"{r}.pt")
        assert full[:, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert ok.tolist() == [False, True, True, False, True]
        assert one.shape == (1, 2, 3) and one.eq(7.0).all() and one_ok.tolist() == [True]
