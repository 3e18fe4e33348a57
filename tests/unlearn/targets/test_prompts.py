"""open-unlearning's prompt per model family (docs/tofu-parity.md): every supported chat template renders the same
prompt on every day (a fixed date, never today's), with the family's system prompt, and the QA labels match the
conversation the template renders."""

from __future__ import annotations

import datetime

import pytest

from unlearn.targets.llm import DATE_STRING, SYSTEM_PROMPT, PromptFormat, default_prompt_format, encode_qa
from unlearn.targets.resolve import prompt_format

CORPUS = [
    "Who wrote the novel about the lighthouse keeper? Jane Doe wrote it in the city of Town 4.",
    "You are a helpful assistant. Cutting Knowledge Date: December 2023 Today Date: system user",
]
Q, A = "Who wrote the novel about the lighthouse keeper?", "Jane Doe wrote it."
TEMPLATES = ("llama3.jinja", "llama2.jinja", "chatml.jinja")


def _today_strings() -> list[str]:
    """Today (and tomorrow: a test may straddle midnight) in the formats chat templates use."""
    days = [datetime.date.today() + datetime.timedelta(d) for d in (0, 1)]
    return [d.strftime(f) for d in days for f in ("%d %b %Y", "%d %B %Y", "%Y-%m-%d", "%B %d, %Y")]


@pytest.mark.parametrize("template", TEMPLATES)
def test_no_template_renders_the_current_date(make_chat_tokenizer, template):
    tok = make_chat_tokenizer(CORPUS, template)
    fmt = default_prompt_format(tok)
    for f in (fmt, prompt_format("chat", tok, False, "m") if fmt.kind == "chat" else fmt):
        text = f.prompt(tok, Q)
        assert Q in text
        assert not [d for d in _today_strings() if d in text], text


def test_llama3_without_a_date_would_render_today(make_chat_tokenizer):
    """The control: the template itself falls back to strftime_now, which is what the fixed date prevents."""
    tok = make_chat_tokenizer(CORPUS, "llama3.jinja")
    text = PromptFormat(kind="chat").prompt(tok, Q)
    assert any(d in text for d in _today_strings()), text


def test_llama3_family_gets_open_unlearnings_system_prompt_and_date(make_chat_tokenizer):
    tok = make_chat_tokenizer(CORPUS, "llama3.jinja")
    fmt = default_prompt_format(tok)
    assert (fmt.kind, fmt.system_prompt, fmt.date_string) == ("chat", SYSTEM_PROMPT, DATE_STRING)
    assert (SYSTEM_PROMPT, DATE_STRING) == ("You are a helpful assistant.", "10 Apr 2025")
    text = fmt.prompt(tok, Q)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        f"Today Date: 10 Apr 2025\n\nYou are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>"
        f"\n\n{Q}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # labels = the answer's tokens + <|eot_id|>: the conversation open-unlearning renders with the assistant turn
    ids, labels = encode_qa(tok, fmt, Q, A)
    chat = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": Q},
            {"role": "assistant", "content": A}]  # fmt: skip
    full = tok.apply_chat_template(chat, tokenize=False, date_string=DATE_STRING)
    assert tok.decode(ids) == full
    answer = [t for t in labels if t != -100]
    assert tok.decode(answer) == A + "<|eot_id|>" and answer[-1] == tok.eos_token_id


def test_llama2_uses_open_unlearnings_inst_tags(make_chat_tokenizer):
    """open-unlearning does not apply Llama-2's chat template: ``[INST] q [/INST]``, no system prompt."""
    tok = make_chat_tokenizer(CORPUS, "llama2.jinja", special=("<s>", "</s>"), bos="<s>", eos="</s>")
    fmt = default_prompt_format(tok)
    assert (fmt.kind, fmt.prompt(tok, Q), fmt.answer(A)) == ("plain", f"[INST] {Q} [/INST]", A)


def test_other_chat_templates_and_plain_models(make_chat_tokenizer):
    tok = make_chat_tokenizer(CORPUS, "chatml.jinja")  # Qwen2.5: open-unlearning passes its system prompt
    fmt = default_prompt_format(tok)
    assert fmt.kind == "chat" and fmt.system_prompt == SYSTEM_PROMPT and fmt.date_string == DATE_STRING
    assert fmt.prompt(tok, Q) == (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{Q}<|im_end|>\n"
                                  "<|im_start|>assistant\n")  # fmt: skip
    tok.chat_template = (
        "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    )
    fmt = default_prompt_format(tok)  # another template (gemma-like): as it is, no system prompt
    assert fmt.kind == "chat" and fmt.system_prompt is None and fmt.date_string == DATE_STRING
    tok.chat_template = None  # phi-1.5: no chat template, open-unlearning's "Question: ...\nAnswer: ..." tags
    fmt = default_prompt_format(tok)
    assert (fmt.kind, fmt.prompt(tok, Q), fmt.answer(A)) == ("plain", f"Question: {Q}\nAnswer:", f" {A}")
