"""Answer log-probs, masking, generation and safe loading of causal LMs (tiny in-process models)."""

import pytest
import torch
import torch.nn.functional as F

from unlearn.errors import UnlearnError
from unlearn.targets.llm import (
    IGNORE,
    PromptFormat,
    collate,
    encode_prompt,
    encode_qa,
    greedy_generate,
    load_causal_lm,
    load_tokenizer,
    save_model,
    sequence_logps,
)


@pytest.fixture(scope="module")
def tiny(micro_target):
    tok = load_tokenizer(str(micro_target / "target"))
    model = load_causal_lm(str(micro_target / "target"))
    return model, tok


def test_encode_masks_prompt_and_appends_eos(tiny):
    _, tok = tiny
    ids, labels = encode_qa(tok, PromptFormat(), "Where was X born?", "Karth")
    n_prompt = len(encode_prompt(tok, PromptFormat(), "Where was X born?"))
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tok.eos_token_id and ids[0] == tok.bos_token_id
    assert tok.decode(ids[n_prompt:-1]).strip() == "Karth"


def test_sequence_logps_match_full_logsoftmax_and_ignore_padding(tiny):
    model, tok = tiny
    fmt = PromptFormat()
    items = [encode_qa(tok, fmt, "Where was Ada born?", "Karth"), encode_qa(tok, fmt, "What is 2 plus 3?", "5")]
    batch = collate(items, tok.pad_token_id)
    seq, n = sequence_logps(model, batch)
    # independent computation: full logits, log_softmax, shift, mask — one sequence at a time, no padding
    for i, (ids, labels) in enumerate(items):
        x = torch.tensor([ids])
        with torch.no_grad():
            lp = F.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
        tgt = torch.tensor(labels[1:])
        m = tgt != IGNORE
        ref = lp[m].gather(-1, tgt[m][:, None]).sum()
        assert n[i].item() == int(m.sum())
        torch.testing.assert_close(seq[i].detach(), ref, atol=1e-4, rtol=1e-5)
    # extra padding changes nothing
    seq2, _ = sequence_logps(model, collate(items, tok.pad_token_id, pad_to=40))
    torch.testing.assert_close(seq2.detach(), seq.detach(), atol=1e-4, rtol=1e-5)


def test_batched_greedy_equals_one_by_one(tiny):
    model, tok = tiny
    fmt = PromptFormat()
    qs = ["Where was Ada born?", "What is 2 plus 3?", "What is the capital of Zarnia?"]
    prompts = [encode_prompt(tok, fmt, q) for q in qs]
    batched = greedy_generate(model, tok, prompts, max_new_tokens=8)
    for p, b in zip(prompts, batched):
        assert greedy_generate(model, tok, [p], max_new_tokens=8)[0] == b
        assert tok.eos_token_id not in b and len(b) <= 8


def test_loading_refuses_pickles_and_wrong_architectures(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(UnlearnError, match="not found"):
        load_causal_lm(str(tmp_path / "nope"))
    pick = tmp_path / "pickled"
    pick.mkdir()
    model.config.save_pretrained(pick)
    torch.save(model.state_dict(), pick / "pytorch_model.bin")
    with pytest.raises(UnlearnError, match="pickle"):
        load_causal_lm(str(pick))
    empty = tmp_path / "noconfig"
    empty.mkdir()
    with pytest.raises(UnlearnError, match="config.json"):
        load_causal_lm(str(empty))
    # a BERT (not a causal LM) saved with safetensors
    from transformers import BertConfig, BertModel

    bert = tmp_path / "bert"
    BertModel(
        BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(bert)
    with pytest.raises(UnlearnError, match="not a causal language model"):
        load_causal_lm(str(bert))
    # a hub id offline: one line naming the model and how to provide it
    with pytest.raises(UnlearnError, match="HF_HOME"):
        load_causal_lm("some-org/definitely-not-cached-model")


def test_save_roundtrip(tiny, tmp_path):
    model, tok = tiny
    save_model(model, tok, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    again = load_causal_lm(str(tmp_path / "m"))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_checkpoint_with_wrong_shapes_is_rejected(tiny, tmp_path):
    """A checkpoint whose tensors do not fit its config (e.g. a vendor swapped files) is an error, not a
    silently re-initialised model."""
    import json

    model, tok = tiny
    save_model(model, tok, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["num_hidden_layers"] += 1  # the weights now miss a layer
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnlearnError, match="do not match"):
        load_causal_lm(str(tmp_path / "m"))


def test_length_groups_only_split_when_it_saves_padding():
    from unlearn.targets.llm import length_groups

    assert length_groups([10] * 8) == [list(range(8))]  # equal lengths: one pass
    g = length_groups([20] * 32 + [400] * 32, overhead_tokens=1024)
    assert len(g) == 2 and sorted(g[0]) == list(range(32))


def test_bucketed_forward_equals_one_pass(tiny):
    """Length groups change only how the batch runs, not what comes out (order included)."""
    from unlearn.targets.llm import SequenceLogProbs

    model, tok = tiny
    fmt = PromptFormat()
    qs = ["Where was Ada born?", "What is 2 plus 3?"] * 3
    ans = ["Karth", "5", "a much longer answer that makes this sequence far longer than the others " * 2] * 2
    items = [encode_qa(tok, fmt, q, a) for q, a in zip(qs, ans)]
    batch = collate(items, tok.pad_token_id)
    import unlearn.targets.llm as llm

    one = SequenceLogProbs(model, bucket=False)(**batch)
    orig = llm.length_groups
    llm.length_groups = lambda lengths, overhead_tokens=0: orig(lengths, overhead_tokens=0)  # force splitting
    try:
        many = SequenceLogProbs(model)(**batch)
    finally:
        llm.length_groups = orig
    torch.testing.assert_close(many["seq_logp"], one["seq_logp"], atol=1e-4, rtol=1e-5)
    assert torch.equal(many["row"], one["row"]) and torch.equal(many["n_tokens"], one["n_tokens"])
    torch.testing.assert_close(many["logits"], one["logits"], atol=1e-4, rtol=1e-5)
