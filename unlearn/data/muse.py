"""MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models", arXiv 2407.06460;
code https://github.com/swj0419/muse_bench): the News (BBC articles) and Books (Harry Potter) corpora.

Both are Hugging Face datasets, ``muse-bench/MUSE-News`` and ``muse-bench/MUSE-Books``, read with ``datasets``
(offline: from the datasets cache, as for WMDP, see `unlearn.data.wmdp.write_hf_cache`). The configs and splits
used here (MUSE's ``load_data.py``; open-unlearning's ``configs/data/datasets/MUSE_*.yaml``):

==============  ==============================================  ================================================
config          splits (columns)                                used as
==============  ==============================================  ================================================
``raw``         ``forget``, ``retain1`` (``text``)              the unlearning corpora (forget / retain training)
``verbmem``     ``forget`` (``prompt``, ``gt``)                 VerbMem: continuation of forget-text prefixes
``knowmem``     ``forget_qa``, ``retain_qa``, ``*_qa_icl``      KnowMem: QA on forget / retain facts, few-shot
                (``question``, ``answer``)                      examples from the ``_icl`` splits
``privleak``    ``forget``, ``holdout`` (``text``)              PrivLeak: Min-K% MIA, forget vs never-seen text
==============  ==============================================  ================================================

Evaluation sets (``sets``): ``verbmem_forget``, ``knowmem_forget``, ``knowmem_forget_icl``, ``knowmem_retain``,
``knowmem_retain_icl``, ``privleak_forget``, ``privleak_holdout``. Training sets: ``{"text"}`` documents of
``raw/forget`` (or ``--forget FILE``) and ``raw/retain1`` (or ``--retain FILE``); `training_chunks` turns them into
the fixed-length token chunks the references train on. Knows nothing of models (a tokenizer is passed in).
"""

from __future__ import annotations

from unlearn.data.wmdp import _load_hub, load_text_records
from unlearn.errors import UnlearnError, unknown_name

HUB = {"muse_news": "muse-bench/MUSE-News", "muse_books": "muse-bench/MUSE-Books"}
SPLITS = ("forget",)
# (set name, config, split, columns) of the evaluation sets
EVAL_SETS = (
    ("verbmem_forget", "verbmem", "forget", ("prompt", "gt")),
    ("knowmem_forget", "knowmem", "forget_qa", ("question", "answer")),
    ("knowmem_forget_icl", "knowmem", "forget_qa_icl", ("question", "answer")),
    ("knowmem_retain", "knowmem", "retain_qa", ("question", "answer")),
    ("knowmem_retain_icl", "knowmem", "retain_qa_icl", ("question", "answer")),
    ("privleak_forget", "privleak", "forget", ("text",)),
    ("privleak_holdout", "privleak", "holdout", ("text",)),
)
CHUNK_SEPARATOR = "\n\n"  # MUSE and open-unlearning join the corpus documents with a blank line before chunking


def _rows(benchmark: str, config: str, split: str, columns: tuple[str, ...]) -> list[dict]:
    repo = HUB[benchmark]
    hint = "load it once online, or write it into the datasets cache (unlearn.data.wmdp.write_hf_cache)"
    from datasets.utils import logging as ds_logging

    level = ds_logging.get_verbosity()
    ds_logging.set_verbosity_error()  # offline, datasets warns once per set that it uses the cached copy: expected
    try:
        ds = _load_hub(repo, config, split, hint)
    finally:
        ds_logging.set_verbosity(level)
    missing = set(columns) - set(ds.column_names)
    if missing:
        raise UnlearnError(f"{repo}[{config}] split {split}: missing column(s) {', '.join(sorted(missing))}")
    out = [{c: r[c] for c in columns} for r in ds]
    bad = [i for i, r in enumerate(out) if not all(isinstance(r[c], str) for c in columns)]
    if bad:
        raise UnlearnError(f"{repo}[{config}] split {split}: row {bad[0]} has a non-string field")
    if not out:
        raise UnlearnError(f"{repo}[{config}] split {split}: no rows")
    return out


def load_muse(benchmark: str, split: str, forget: str | None = None, retain: str | None = None):
    """(evaluation sets, forget training documents, retain training documents) of a MUSE corpus.

    Every set is loaded here, so that a missing cache fails before any training and the data hash covers them.
    """
    if benchmark not in HUB:
        raise unknown_name("MUSE benchmark", benchmark, HUB)
    if split not in SPLITS:
        raise unknown_name(f"{benchmark} split", split, SPLITS)
    sets = {name: _rows(benchmark, cfg, sp, cols) for name, cfg, sp, cols in EVAL_SETS}
    forget_docs = load_text_records(forget) if forget else _rows(benchmark, "raw", "forget", ("text",))
    retain_docs = load_text_records(retain) if retain else _rows(benchmark, "raw", "retain1", ("text",))
    return sets, forget_docs, retain_docs


def training_chunks(tokenizer, docs: list[dict], max_length: int) -> list[dict]:
    """The corpus as ``{"text"}`` chunks of ``max_length`` tokens, as the references train on it.

    open-unlearning's ``PretrainingDataset`` (and MUSE's ``DefaultDataset`` for ``.txt`` corpora) joins every
    document with a blank line, tokenizes the whole without special tokens and cuts it into consecutive pieces
    (the last one shorter), so no document is truncated and short ones are packed together. A piece holds
    ``max_length - 1`` tokens: it is decoded back to text and re-tokenized with BOS when it is trained on
    (`unlearn.targets.llm.encode_text` labels every token), so a sequence is BOS + ``max_length - 1`` tokens,
    MUSE's layout (open-unlearning keeps BOS + ``max_length``).
    """
    if max_length < 2:
        raise UnlearnError(f"max_length={max_length}: a training chunk needs at least 2 tokens")
    ids = tokenizer(CHUNK_SEPARATOR.join(d["text"] for d in docs), add_special_tokens=False)["input_ids"]
    n = max_length - 1
    chunks = [tokenizer.decode(ids[i : i + n]) for i in range(0, len(ids), n)]
    out = [{"text": c} for c in chunks if c.strip()]
    if not out:
        raise UnlearnError("the MUSE corpus has no text to train on")
    return out
