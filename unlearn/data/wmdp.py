"""WMDP (Li et al. 2024, "The WMDP Benchmark", arXiv 2403.03218): raw-text forget / retain corpora and the
multiple-choice test sets lm-eval's ``wmdp_*`` tasks read.

Splits (``--split``): ``bio``, ``cyber``, ``bio,cyber``.

* forget corpus: ``--forget FILE`` (JSONL, one ``{"text": ...}`` per line), else ``cais/wmdp-corpora``
  ``cyber-forget-corpus`` (cyber) / ``cais/wmdp-bio-forget-corpus`` (bio: gated on the Hub, so normally a file);
* retain corpus: ``--retain FILE``, else ``cais/wmdp-corpora`` ``bio-retain-corpus`` / ``cyber-retain-corpus``;
* evaluation: lm-eval's own ``wmdp_bio`` / ``wmdp_cyber`` tasks on ``cais/wmdp`` (``wmdp-bio`` / ``wmdp-cyber``,
  split ``test``, fields question / choices / answer), plus the mean token NLL on held-out forget and retain text
  (the last ~10% of each corpus, at most `MAX_HELDOUT` documents, is never trained on).

Offline, every Hub dataset must be in the datasets cache (``$HF_DATASETS_CACHE``, default ``$HF_HOME/datasets``):
``datasets`` 5.x, with ``HF_HUB_OFFLINE=1``, skips the Hub entirely and reads
``<cache>/cais___wmdp/wmdp-bio/0.0.0/<hash>/{wmdp-test.arrow,dataset_info.json}``. A copy loaded online once is
there already; `write_hf_cache` writes that layout from local rows (e.g. the parquet files copied from another
machine). Knows nothing of models.
"""

from __future__ import annotations

from pathlib import Path

from unlearn.data.tofu import _iter_json_objects
from unlearn.errors import UnlearnError, unknown_name

SPLITS = ("bio", "cyber", "bio,cyber")
QA_HUB = "cais/wmdp"
QA_CONFIGS = {"bio": "wmdp-bio", "cyber": "wmdp-cyber", "chem": "wmdp-chem"}
TASKS = {"bio": "wmdp_bio", "cyber": "wmdp_cyber", "chem": "wmdp_chem"}  # lm-eval task names
CORPORA_HUB = "cais/wmdp-corpora"
FORGET_CORPORA = {"bio": ("cais/wmdp-bio-forget-corpus", None), "cyber": (CORPORA_HUB, "cyber-forget-corpus")}
RETAIN_CORPORA = {"bio": (CORPORA_HUB, "bio-retain-corpus"), "cyber": (CORPORA_HUB, "cyber-retain-corpus")}
GATED = {"cais/wmdp-bio-forget-corpus"}
HELDOUT_FRACTION = 0.1
MAX_HELDOUT = 200


def domains(split: str) -> list[str]:
    return split.split(",")


def tasks_for(split: str) -> list[str]:
    """lm-eval task names of a split (``bio,cyber`` -> wmdp_bio, wmdp_cyber)."""
    return [TASKS[d] for d in domains(split)]


# ----------------------------------------------------------------------------------------------- text records
def load_text_records(path: str | Path) -> list[dict]:
    """A JSONL file of ``{"text": str}`` documents (other fields are dropped); one-line errors."""
    path = Path(path)
    out = []
    for where, obj in _iter_json_objects(path):  # the one JSONL reader of the data layer (file:line errors)
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise UnlearnError(f'{where}: expected an object with a string "text" field')
        if obj["text"].strip():
            out.append({"text": obj["text"]})
    if not out:
        raise UnlearnError(f"{path}: no text records")
    return out


def _load_hub(repo: str, config: str | None, split: str, hint: str):
    import datasets  # deferred: slow to import, and local files do not need it

    try:
        return datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # offline and not cached, gated, corrupt cache ...: all fixable by the user
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        name = f"{repo}[{config}]" if config else repo
        raise UnlearnError(f"cannot load {name} ({reason}); {hint}") from None


def load_corpus(repo: str, config: str | None, flag: str) -> list[dict]:
    """A WMDP text corpus from the Hub (or the datasets cache offline) as ``{"text"}`` records."""
    hint = f'pass {flag} FILE (JSONL, one {{"text": ...}} per line)'
    if repo in GATED:
        hint = f"{repo} is gated on the Hub (request access, or {hint})"
    rows = _load_hub(repo, config, "train", hint)
    if "text" not in rows.column_names:
        raise UnlearnError(f"{repo}[{config}]: no 'text' column (columns: {', '.join(rows.column_names)})")
    out = [{"text": t} for t in rows["text"] if isinstance(t, str) and t.strip()]
    if not out:
        raise UnlearnError(f"{repo}[{config}]: no text records")
    return out


def load_qa(domain: str) -> list[dict]:
    """The WMDP multiple-choice test set of a domain (question, choices, answer), as lm-eval will read it."""
    rows = _load_hub(
        QA_HUB,
        QA_CONFIGS[domain],
        "test",
        f"lm-eval's {TASKS[domain]} reads it: load it once online, or write it into the datasets cache "
        "(unlearn.data.wmdp.write_hf_cache)",
    )
    missing = {"question", "choices", "answer"} - set(rows.column_names)
    if missing:
        raise UnlearnError(f"{QA_HUB}[{QA_CONFIGS[domain]}]: missing field(s) {', '.join(sorted(missing))}")
    return [{"question": r["question"], "choices": list(r["choices"]), "answer": int(r["answer"])} for r in rows]


def split_heldout(records: list[dict], what: str) -> tuple[list[dict], list[dict]]:
    """(training records, held-out evaluation records): the last ~10% (1 to `MAX_HELDOUT`) are held out."""
    if len(records) < 2:
        raise UnlearnError(f"the {what} corpus needs at least 2 documents (one is held out for evaluation)")
    k = min(MAX_HELDOUT, max(1, round(len(records) * HELDOUT_FRACTION)))
    return records[:-k], records[-k:]


def load_wmdp(split: str, forget: str | None = None, retain: str | None = None):
    """(evaluation sets, forget training records, retain training records) of a WMDP split.

    Evaluation sets: ``forget`` / ``retain`` (held-out text) and ``wmdp_<domain>`` (the multiple-choice test set,
    loaded here so that a missing cache fails before any training, and so that the data hash covers it).
    """
    if split not in SPLITS:
        raise unknown_name("wmdp split", split, SPLITS)
    if forget:
        forget_all = load_text_records(forget)
    else:
        forget_all = []
        for d in domains(split):
            forget_all += load_corpus(*FORGET_CORPORA[d], "--forget")
    if retain:
        retain_all = load_text_records(retain)
    else:
        retain_all = []
        for d in domains(split):
            retain_all += load_corpus(*RETAIN_CORPORA[d], "--retain")
    forget_train, forget_eval = split_heldout(forget_all, "forget")
    retain_train, retain_eval = split_heldout(retain_all, "retain")
    sets: dict[str, list[dict]] = {"forget": forget_eval, "retain": retain_eval}
    for d in domains(split):
        sets[TASKS[d]] = load_qa(d)
    return sets, forget_train, retain_train


# ----------------------------------------------------------------------------------------------- cache
def write_hf_cache(repo: str, config: str, split: str, rows: dict[str, list], cache_dir: str | Path | None = None,
                   revision: str = "0" * 40) -> Path:  # fmt: skip
    """Write ``rows`` (column -> values) where an offline ``datasets.load_dataset(repo, config, split=split)``
    finds them: ``<cache>/<ns>___<name>/<config>/0.0.0/<revision>/{<name>-<split>.arrow, dataset_info.json}``,
    ``<name>`` being the repository name in datasets' snake case (``MUSE-News`` -> ``muse-news``).

    ``cache_dir`` defaults to ``datasets.config.HF_DATASETS_CACHE``. Returns the folder written.
    """
    import datasets
    from datasets.arrow_writer import ArrowWriter
    from datasets.naming import camelcase_to_snakecase

    ns, repo_name = repo.split("/")
    name = camelcase_to_snakecase(repo_name)  # datasets names folders and files by it (locuslab/TOFU -> tofu)
    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE)
    d = root / f"{ns}___{name}" / config / "0.0.0" / revision
    d.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict(rows)
    with ArrowWriter(features=ds.features, path=str(d / f"{name}-{split}.arrow")) as w:
        w.write_table(ds.data.table)
        n, _ = w.finalize()
    split_info = datasets.SplitInfo(name=split, num_examples=n, dataset_name=name)
    old = d / "dataset_info.json"
    splits = datasets.SplitDict(dataset_name=name)
    if old.exists():  # another split of the same config written earlier
        for s in datasets.DatasetInfo.from_directory(str(d)).splits.values():
            if s.name != split:
                splits.add(s)
    splits.add(split_info)
    info = datasets.DatasetInfo(features=ds.features, config_name=config, dataset_name=name, version="0.0.0",
                                splits=splits)  # fmt: skip
    info.write_to_directory(str(d))
    return d
