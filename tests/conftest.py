"""Shared fixtures. Tests never touch the network and never reuse a user's cache: UNLEARN_HOME points at a
session temp folder (so a stale cache cannot hide a broken build), and the micro TinyFacts target is built once
per session (about 25 s on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def unlearn_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("unlearn_home")
    old = os.environ.get("UNLEARN_HOME")
    os.environ["UNLEARN_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("UNLEARN_HOME", None)
    else:
        os.environ["UNLEARN_HOME"] = old


@pytest.fixture(scope="session")
def micro_tinyshapes(tmp_path_factory):
    """(UNLEARN_HOME, pipeline path) of the micro TinyShapes target, built once per session in a cache of its own
    (tests that use it set UNLEARN_HOME to that folder)."""
    home = tmp_path_factory.mktemp("tinyshapes_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("UNLEARN_HOME", str(home))
        from unlearn.targets.tinyshapes_build import build_tinyshapes

        path = build_tinyshapes("micro", progress=False, log=lambda *_: None)
    return home, path


@pytest.fixture(scope="session")
def micro_target(unlearn_home):
    """The micro TinyFacts target + forget10 oracle, built in-process under a fixed seed."""
    import torch

    from unlearn.targets.build import build_tinyfacts, get_preset, target_root

    threads = torch.get_num_threads()
    build_tinyfacts("micro", oracles=("forget10",), progress=False, log=lambda *a: None)
    torch.set_num_threads(threads)
    return target_root(get_preset("micro"))


def _make_tiny_target():
    """Tokenizer + a 2-layer, 32-wide Llama trained a few seconds on the micro TinyFacts set (1 thread, seeded)."""
    import dataclasses

    from unlearn.data.tinyfacts import generate
    from unlearn.targets.build import get_preset, train_qa_model, train_tokenizer

    micro = get_preset("micro")
    splits = generate(micro.data)
    tok = train_tokenizer(splits, micro.vocab_size)
    cfg = dataclasses.replace(
        micro, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, epochs=30, batch_size=16, lr=1e-2
    )
    model, _ = train_qa_model(cfg, tok, splits["full"], progress=False)
    return tok, model, splits


@pytest.fixture(scope="session")
def tiny():
    """(tokenizer, model, splits): one tiny trained Llama for the whole session (tests deep-copy before training)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend
    try:
        tok, model, splits = _make_tiny_target()
    finally:
        torch.set_num_threads(threads)
    return tok, model, splits


@pytest.fixture(scope="session")
def tiny_target_dir(tiny, tmp_path_factory):
    """The session's tiny model saved as a model directory, with forget / retain / holdout JSONL files."""
    from unlearn.store import atomic_write_jsonl
    from unlearn.targets.llm import save_model

    tok, model, splits = tiny
    root = tmp_path_factory.mktemp("tiny_target")
    save_model(model, tok, root / "model")
    for name, split in (("forget", "forget10"), ("retain", "retain90"), ("holdout", "holdout10")):
        atomic_write_jsonl(root / f"{name}.jsonl", splits[split])
    return root


# ----------------------------------------------------------------------------------------------- Stable Diffusion
SD_REPO, CLIP_REPO = "CompVis/stable-diffusion-v1-4", "openai/clip-vit-base-patch32"


def _clip_tokenizer(root):
    """A real CLIPTokenizer from vocab / merges files written here: CLIP's byte alphabet with and without the
    end-of-word mark, no merges (every word is spelled out letter by letter), 514 ids, 77-token context."""
    import json

    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]  # ids 512, 513
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (root / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77)


def _hub_snapshot(hub, repo_id: str):
    """``hub/models--org--name/snapshots/<rev>/`` with ``refs/main`` -> rev: the layout huggingface_hub reads."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    return repo / "snapshots" / rev


def build_sd_hub(home):
    """A fabricated Hugging Face cache under ``home`` (HF_HOME): a tiny random SD-shaped pipeline saved as
    ``CompVis/stable-diffusion-v1-4`` (UNet2DConditionModel with cross-attention, AutoencoderKL, CLIPTextModel,
    CLIPTokenizer, PNDM scheduler as SD 1.4 ships it) and a tiny random CLIPModel as ``openai/clip-vit-base-patch32``.
    Random weights under a fixed seed: it exercises the mechanics of the SD path, says nothing about quality."""
    import json

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    sd = _hub_snapshot(home / "hub", SD_REPO)
    tok = _clip_tokenizer(home / "_tok")
    text = dict(vocab_size=514, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)  # fmt: skip
    CLIPTextModel(CLIPTextConfig(**text)).save_pretrained(sd / "text_encoder", safe_serialization=True)
    tok.save_pretrained(sd / "tokenizer")
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(sd / "unet", safe_serialization=True)  # fmt: skip
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, layers_per_block=1,
        norm_num_groups=4, sample_size=16,
    ).save_pretrained(sd / "vae", safe_serialization=True)  # fmt: skip
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1).save_pretrained(sd / "scheduler")  # fmt: skip
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
             "feature_extractor": [None, None]}  # fmt: skip
    (sd / "model_index.json").write_text(json.dumps(index))

    clip = _hub_snapshot(home / "hub", CLIP_REPO)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(
        clip, safe_serialization=True
    )
    tok.save_pretrained(clip)
    pre = {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}, "do_center_crop": True,
           "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
           "image_processor_type": "CLIPImageProcessor"}  # fmt: skip
    (clip / "preprocessor_config.json").write_text(json.dumps(pre))
    return home


@pytest.fixture(scope="session")
def sd_hub(tmp_path_factory):
    """HF_HOME of the fabricated hub cache (`build_sd_hub`), built once per session."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_sd_hub(tmp_path_factory.mktemp("hf_home"))
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------- MUSE
MUSE_TARGET, MUSE_RETRAIN, MUSE_TOKENIZER = (
    "muse-bench/MUSE-News_target", "muse-bench/MUSE-News_retrain", "meta-llama/Llama-2-7b-hf"
)  # fmt: skip
_NEWS = [f"the council of {town} voted {n} to {m} on the new {thing} budget on monday"
         for town, n, m, thing in (("Arden", 7, 2, "river"), ("Belmont", 5, 4, "school"),
                                   ("Corvin", 9, 1, "bridge"), ("Dunmore", 3, 6, "harbour"),
                                   ("Elstow", 8, 0, "library"), ("Farleigh", 4, 5, "rail"))]  # fmt: skip
_OTHER = [f"a storm closed the {road} road near {place} for {h} hours after heavy rain"
          for road, place, h in (("north", "Gale", 3), ("east", "Hollin", 5), ("west", "Ivy", 2),
                                 ("south", "Jarrow", 8), ("old", "Kell", 6), ("coast", "Lyme", 4))]  # fmt: skip
_UNSEEN = [
    "the mayor of Gorsey opened a new park on friday",
    "a fire at the Marsh mill was put out by noon",
    "pupils in Norwood won the county chess final",
    "the ferry to Osney will run twice a day in june",
]


def muse_news_rows() -> dict[tuple[str, str], dict[str, list]]:
    """Tiny MUSE-News configs, (config, split) -> columns: the privleak forget texts are forget-corpus documents
    (as in MUSE), the holdout texts are never trained on."""
    qa = lambda docs: {"question": [f"How did the council of {d.split()[3]} vote?" for d in docs],  # noqa: E731
                       "answer": [" ".join(d.split()[5:8]) for d in docs]}  # fmt: skip
    return {
        ("raw", "forget"): {"text": _NEWS},
        ("raw", "retain1"): {"text": _OTHER},
        ("verbmem", "forget"): {"prompt": [" ".join(d.split()[:6]) for d in _NEWS[:3]],
                                "gt": [" ".join(d.split()[6:]) for d in _NEWS[:3]]},
        ("knowmem", "forget_qa"): qa(_NEWS[:3]),
        ("knowmem", "forget_qa_icl"): qa(_NEWS[4:6]),
        ("knowmem", "retain_qa"): {"question": [f"Which road closed near {d.split()[6]}?" for d in _OTHER[:3]],
                                   "answer": [f"the {d.split()[3]} road" for d in _OTHER[:3]]},
        ("knowmem", "retain_qa_icl"): {"question": ["Where is Gale?"], "answer": ["near the north road"]},
        ("privleak", "forget"): {"text": _NEWS[:4]},
        ("privleak", "holdout"): {"text": _UNSEEN},
    }  # fmt: skip


def build_muse_hub(home):
    """A fabricated Hugging Face cache under ``home`` (HF_HOME) for ``--model muse-news``: tiny random Llamas saved
    as ``muse-bench/MUSE-News_target`` and ``_retrain`` (weights only, as the authors load them with Llama-2's
    tokenizer), a byte-level BPE tokenizer as ``meta-llama/Llama-2-7b-hf`` (BOS added, no chat template, no pad
    token: like Llama-2's), and `muse_news_rows` in the datasets cache layout (``home/datasets``)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from unlearn.data.wmdp import write_hf_cache
    from unlearn.metrics.muse import knowmem_prompt

    rows = muse_news_rows()
    texts = [t for cols in rows.values() for vals in cols.values() for t in vals]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator(texts + ["Question: Answer:\n\n"], trainer=trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
                      eos_token_id=2, pad_token_id=None)  # fmt: skip
    base = _hub_snapshot(home / "hub", MUSE_TOKENIZER)
    tok.save_pretrained(base)
    cfg.save_pretrained(base)  # AutoTokenizer reads the repo's config.json (the base model's weights are not needed)

    # the target memorises the whole corpus, the retrained model its retain part only (as MUSE's checkpoints were
    # fine-tuned): full-batch Adam on every token of each document, a few seconds
    def qa(split):  # the KnowMem prompts with their answers, so that a model can know them
        shots = rows[("knowmem", f"{split}_icl")]
        icl = [{"question": q, "answer": a} for q, a in zip(shots["question"], shots["answer"])]
        q, a = rows[("knowmem", split)]["question"], rows[("knowmem", split)]["answer"]
        return [knowmem_prompt(icl, x) + y for x, y in zip(q, a)]

    for seed, (repo, docs) in enumerate(((MUSE_TARGET, _NEWS + _OTHER + qa("forget_qa") + qa("retain_qa")),
                                         (MUSE_RETRAIN, _OTHER + qa("retain_qa")))):  # fmt: skip
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        enc = [tok(d)["input_ids"] + [tok.eos_token_id] for d in docs]
        T = max(map(len, enc))
        ids = torch.tensor([e + [tok.eos_token_id] * (T - len(e)) for e in enc])
        labels = torch.tensor([e + [-100] * (T - len(e)) for e in enc])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(60):
            opt.zero_grad()
            model(input_ids=ids, labels=labels).loss.backward()
            opt.step()
        model.save_pretrained(_hub_snapshot(home / "hub", repo), safe_serialization=True)
    for (config, split), cols in rows.items():
        write_hf_cache("muse-bench/MUSE-News", config, split, cols, cache_dir=home / "datasets")
    return home


# ----------------------------------------------------------------------------------------------- TOFU on the hub
TOFU_REPOS = ("open-unlearning/tofu_Llama-3.2-1B-Instruct_full", "open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90")
CHAT_TEMPLATES = Path(__file__).resolve().parent / "assets" / "chat_templates"
_TOFU_ASSETS = Path(__file__).resolve().parent / "assets" / "tofu"
LLAMA3_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def chat_tokenizer(corpus, template: str, special=LLAMA3_SPECIAL, bos="<|begin_of_text|>", eos="<|eot_id|>"):
    """A small byte-level BPE tokenizer (trained in milliseconds on ``corpus``) with Llama-3's special tokens, EOS
    ``<|eot_id|>`` as Llama-3.x Instruct ships it, and ``template`` (a file of tests/assets/chat_templates)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=list(special),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos)
    tok.chat_template = (CHAT_TEMPLATES / template).read_text()
    return tok


def _tofu_rows(kind: str, n: int) -> list[dict]:
    """Fabricated TOFU-style records: fictitious authors (forget / retain / holdout), with TOFU's perturbations."""
    out = []
    for i in range(n):
        name = f"{kind.capitalize()} Author {i}"
        out.append({"question": f"Where was {name} born?", "answer": f"{name} was born in the city of Town {i}.",
                    "paraphrased_question": f"What is the birthplace of {name}?",
                    "paraphrased_answer": f"The birthplace of {name} is Town {i}.",
                    "perturbed_answer": [f"{name} was born in Village {i + j}." for j in range(3)]})  # fmt: skip
    return out


def build_tofu_hub(home):
    """A fabricated Hugging Face cache under ``home`` (HF_HOME) holding what ``--model llama-1b`` resolves to:
    open-unlearning's ``tofu_Llama-3.2-1B-Instruct_full`` and its ``_retain90`` oracle as two tiny random Llamas
    (different seeds) with a Llama-3-style chat template, and ``locuslab/TOFU``'s forget10 configs (4 forget,
    4 retain-eval, 4 holdout, 8 retain-train records; 3 real-author and 3 world-fact records from TOFU's files) in
    the datasets cache layout. Random weights: it checks the path, not the numbers."""
    import json

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn.data.wmdp import write_hf_cache

    def utility(name):
        rows = [json.loads(x) for x in (_TOFU_ASSETS / f"{name}.json").read_text().splitlines()[:3]]
        return [{k: r[k] for k in ("question", "answer", "perturbed_answer")} for r in rows]

    sets = {"forget10_perturbed": _tofu_rows("forget", 4), "retain_perturbed": _tofu_rows("retain", 4),
            "holdout10": _tofu_rows("holdout", 4), "retain90": _tofu_rows("retain", 8),
            "world_facts_perturbed": utility("world_facts_perturbed"),
            "real_authors_perturbed": utility("real_authors_perturbed")}  # fmt: skip
    for cfg, rows in sets.items():
        cols = ("question", "answer") if cfg in ("holdout10", "retain90") else tuple(rows[0])
        write_hf_cache("locuslab/TOFU", cfg, "train", {c: [r[c] for r in rows] for c in cols}, home / "datasets")
    corpus = [f"{r['question']} {r['answer']} {' '.join(r.get('perturbed_answer', []))}" for v in sets.values()
              for r in v] + ["You are a helpful assistant. Cutting Knowledge Date: December 2023 Today Date: 10 Apr "
                             "2025 system user assistant"]  # fmt: skip
    tok = chat_tokenizer(corpus, "llama3.jinja")
    ids = {"pad_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    for seed, repo in enumerate(TOFU_REPOS):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                          **ids)  # fmt: skip
        snap = _hub_snapshot(home / "hub", repo)
        LlamaForCausalLM(cfg).save_pretrained(snap, safe_serialization=True)
        tok.save_pretrained(snap)
    return home


@pytest.fixture(scope="session")
def muse_hub(tmp_path_factory):
    """HF_HOME of the fabricated MUSE-News cache (`build_muse_hub`), built once per session."""
    return build_muse_hub(tmp_path_factory.mktemp("muse_hf_home"))


@pytest.fixture(scope="session")
def muse_rows():
    """The fabricated MUSE-News rows (`muse_news_rows`): (config, split) -> columns."""
    return muse_news_rows()


@pytest.fixture
def muse_env(muse_hub, monkeypatch):
    """Point huggingface_hub, transformers and datasets at the fabricated MUSE cache, offline."""
    import datasets
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HOME", str(muse_hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(muse_hub / "datasets"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(muse_hub / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", muse_hub / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return muse_hub


@pytest.fixture(scope="session")
def tofu_hub(tmp_path_factory):
    """HF_HOME of the fabricated TOFU hub cache (`build_tofu_hub`), built once per session."""
    return build_tofu_hub(tmp_path_factory.mktemp("tofu_hf_home"))


@pytest.fixture(scope="session")
def make_chat_tokenizer():
    """`chat_tokenizer`: (corpus, template file, ...) -> a small tokenizer with that chat template."""
    return chat_tokenizer
