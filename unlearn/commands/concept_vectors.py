"""`unlearn concept-vectors locate|validate`: find (and causally validate) concept vectors of a causal LM.

``locate`` projects every value vector of the searched layers through the unembedding and keeps, per concept, the
one whose top-K tokens overlap the concept's tokens most; ``validate`` also ablates each located vector and keeps
the verdict (docs/evaluators/concept-vectors.md). Both write ``<name>.json`` (the vectors file Needle and the
``cv_*`` metrics read) and ``<name>.csv`` (one row per vector) to ``--out``.

Concepts: for the embedded target (``--model tiny``) the default set is every entity and every attribute value of
TinyFacts, with the questions of its QA records. Any other model needs ``--concepts FILE.json``, either
``{concept: [word, ...]}`` (enough for ``locate``) or ``{concept: {"tokens": [word, ...], "questions": [[q, a],
...]}}`` (``validate`` needs the questions; the unrelated questions of a concept are those of up to 5 other
concepts, drawn with a seeded generator as the reference does).
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from pathlib import Path

ACTIONS = ("locate", "validate")
MODES = ("zero", "noise", "mean")


def register(sub) -> None:
    p = sub.add_parser("concept-vectors", help="locate / validate concept vectors (MLP value vectors) of a model")
    p.add_argument("action", help="locate | validate")
    p.add_argument("--model", default="tiny", help="tiny (embedded TinyFacts target), an HF id or a model directory")
    p.add_argument("--concepts", help="JSON: {concept: [words]} or {concept: {tokens: [...], questions: [[q, a]]}}")
    p.add_argument("--out", default="concept_vectors_out", help="output directory (created)")
    p.add_argument("--layers", help="comma-separated layers to search (default: see docs)")
    p.add_argument("--top-k", type=int, default=0, help="K of the top-K readout (0: min(200, vocab/20))")
    p.add_argument("--min-score", type=float, default=0.0, help="keep candidates with |TopK ∩ Tok(c)|/K >= this")
    p.add_argument("--modes", default="zero,noise", help="ablations for validate; passed = passes every one")
    p.add_argument("--noise-std", type=float, default=0.1, help="std of the noise ablation (reference 0.1)")
    p.add_argument("--draws", type=int, default=3, help="noise draws per vector")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _fail(msg: str):
    from unlearn.errors import UnlearnError

    raise UnlearnError(msg)


def _read_concepts(path: str) -> dict[str, dict]:
    """{name: {"kind": "concept", "words": [...], "questions": [(q, a), ...]}} from a user file."""
    p = Path(path)
    if not p.is_file():
        _fail(f"--concepts: file not found: {p}")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        _fail(f"--concepts {p}: not valid JSON ({e})")
    if not isinstance(raw, dict) or not raw:
        _fail(f"--concepts {p}: expected a non-empty object {{concept: [words]}}")
    out = {}
    for name, v in raw.items():
        if isinstance(v, list):
            v = {"tokens": v}
        words, qs = (v.get("tokens"), v.get("questions", [])) if isinstance(v, dict) else (None, None)
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            _fail(f"--concepts {p}: {name!r} needs a non-empty list of token strings")
        if not isinstance(qs, list) or not all(
            isinstance(q, list) and len(q) == 2 and all(isinstance(x, str) for x in q) for q in qs
        ):
            _fail(f"--concepts {p}: {name!r}: questions must be [[question, answer], ...]")
        out[name] = {"kind": "concept", "words": words, "questions": [tuple(q) for q in qs], "entities": [name]}
    return out


def _unrelated(name: str, concepts: dict, seed: int) -> list[tuple[str, str]]:
    others = sorted(c for c in concepts if c != name and concepts[c]["questions"])
    pick = random.Random(f"{seed}:{name}").sample(others, min(5, len(others)))
    return [q for c in pick for q in concepts[c]["questions"]]


def _csv(vectors: list[dict]) -> str:
    cols = ["concept", "kind", "layer", "column", "score", "overlap", "passed", "target_change", "unrelated_change",
            "related_tokens"]  # fmt: skip
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for v in vectors:
        val = next(iter(v.get("validation", {}).values()), {})
        w.writerow([v["concept"], v.get("kind"), v["layer"], v["column"], v["score"], v["overlap"], v.get("passed"),
                    val.get("target_change"), val.get("unrelated_change"), " ".join(v["related_tokens"])])  # fmt: skip
    return buf.getvalue()


def run(args) -> int:
    from tqdm.auto import tqdm

    from unlearn import concepts as cv
    from unlearn.config import resolve_model
    from unlearn.errors import unknown_name
    from unlearn.store import atomic_write_text, read_json, read_jsonl, safe_name
    from unlearn.targets.llm import PromptFormat, default_prompt_format, load_causal_lm, load_tokenizer

    if args.action not in ACTIONS:
        raise unknown_name("concept-vectors action", args.action, ACTIONS)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise unknown_name("ablation mode", m, MODES)
    if args.draws < 1 or args.noise_std < 0 or args.top_k < 0:
        _fail("--draws must be >= 1, --noise-std >= 0, --top-k >= 0")
    layers = None
    if args.layers:
        try:
            layers = [int(x) for x in args.layers.split(",") if x.strip()]
        except ValueError:
            _fail(f"--layers must be comma-separated integers, got {args.layers!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _fail(f"--out {out}: cannot create ({e.strerror})")
    user = _read_concepts(args.concepts) if args.concepts else None  # before loading anything heavy

    spec = resolve_model(args.model)
    records = None
    if spec.embedded:
        from unlearn.targets.resolve import resolve_paths

        _, tdir, _, _, bcfg = resolve_paths(
            args.model, "tinyfacts", "forget10", need_oracle=False, log=lambda *a: None
        )
        digest = read_json(Path(tdir) / "card.json")["digest"]
        from unlearn.targets.build import data_dir

        records = read_jsonl(data_dir(bcfg) / "full.jsonl")
        import torch

        if bcfg.threads and not torch.cuda.is_available():
            torch.set_num_threads(bcfg.threads)  # tiny matrices: extra threads only thrash
        name = "tinyfacts" if spec.embedded == "tinyfacts" else safe_name(spec.embedded)
        fmt = PromptFormat()
    else:
        if user is None:
            _fail(f"{args.model}: the default concept set exists only for the embedded target (tiny); pass --concepts")
        tdir, name = spec.target, safe_name(spec.target)
    tok = load_tokenizer(tdir)
    model = load_causal_lm(tdir).eval()
    if not spec.embedded:
        fmt = default_prompt_format(tok)
        try:
            digest = cv.weights_digest(tdir)
        except Exception:  # a hub id: the digest of its cached snapshot is not at hand
            digest = None
    concepts = user if user is not None else cv.tinyfacts_concepts(records)
    if args.action == "validate" and not any(c["questions"] for c in concepts.values()):
        _fail("validate needs questions: give --concepts {concept: {tokens: [...], questions: [[q, a], ...]}}")

    t0 = time.time()
    bar = None if args.no_progress else (lambda it: tqdm(it, desc="locate (layers)", leave=False))
    cands = cv.locate(model, tok, {k: v["words"] for k, v in concepts.items()}, layers=layers,
                      top_k=args.top_k or None, min_score=args.min_score, progress=bar)  # fmt: skip
    t_locate = time.time() - t0
    th = cv.Thresholds()
    t1 = time.time()
    if args.action == "validate":
        qs = sorted({q for c in cands for q, _ in concepts[c["concept"]]["questions"]})
        if records is not None:
            qs = sorted(set(qs) | {r["question"] for r in records})
        before = dict(zip(qs, cv._answers(model, tok, fmt, qs, 16)))  # the unablated answers, once for all
        for c in tqdm(cands, desc="validate", disable=args.no_progress, leave=False):
            con = concepts[c["concept"]]
            if not con["questions"]:
                continue
            un = (cv.unrelated_for(c["concept"], con, records) if user is None
                  else _unrelated(c["concept"], concepts, args.seed))  # fmt: skip
            c["validation"] = {}
            for m in modes:
                r = cv.validate(model, tok, fmt, c, con["questions"], un, mode=m, noise_std=args.noise_std,
                                n_draws=args.draws, seed=args.seed, thresholds=th, before=before)  # fmt: skip
                c["validation"][m] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
            c["passed"] = all(v["passed"] for v in c["validation"].values())
    t_validate = time.time() - t1
    for c in cands:
        c["kind"] = concepts[c["concept"]]["kind"]
        c.setdefault("passed", None)  # None: not validated
    order = ["concept", "kind", "layer", "column", "score", "overlap", "n_concept_tokens", "top_k", "norm", "passed",
             "validation", "related_tokens", "related_token_ids", "top_tokens"]  # fmt: skip
    vectors = [{k: c[k] for k in order if k in c} for c in cands]
    kinds = sorted({v["kind"] for v in concepts.values()})
    summary = {
        k: {"concepts": sum(v["kind"] == k for v in concepts.values()),
            "located": sum(c["kind"] == k for c in vectors),
            "validated": sum(c["kind"] == k and bool(c["passed"]) for c in vectors)}
        for k in kinds
    }  # fmt: skip
    doc = {
        "format": cv.FORMAT_VERSION,
        "model": args.model,
        "model_digest": digest,
        "created_with": f"unlearn concept-vectors {args.action} --model {args.model}"
        + (f" --concepts {Path(args.concepts).name}" if args.concepts else ""),
        "settings": cv.settings_dict(
            layers=layers if layers is not None else cv.default_layers(len(cv.arch(model).blocks)),
            top_k=args.top_k or cv.default_top_k(cv.arch(model).unembedding().shape[0]),
            min_score=args.min_score,
            min_chars=3,
            per_concept=1,
            prompt_format=fmt.template if fmt.kind == "plain" else "chat",
            max_new_tokens=16,
            **(
                {"modes": modes, "noise_std": args.noise_std, "draws": args.draws, "seed": args.seed, "thresholds": th}
                if args.action == "validate"
                else {}
            ),
        ),  # fmt: skip
        "summary": summary,
        "vectors": vectors,
    }
    cv.save_vectors(out / f"{name}.json", doc)
    atomic_write_text(out / f"{name}.csv", _csv(vectors))
    for k, s in summary.items():
        val = f", {s['validated']} validated" if args.action == "validate" else ""
        print(f"{k}: {s['concepts']} concepts, {s['located']} located{val}")
    print(f"locate {t_locate:.1f}s" + (f", validate {t_validate:.1f}s" if args.action == "validate" else ""))
    print(f"wrote {out / f'{name}.json'} and {name}.csv")
    return 0
