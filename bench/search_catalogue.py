"""A model catalogue that looks like a real hub's, for measuring search quality and scale.

Two parts:

* ``anchors()``: 141 hand-written models (``search_anchors.txt``) named the way Hugging Face and Ollama name them
  (``Qwen2.5-7B-Instruct``, ``qwen2.5-coder_7b``, ``Mixtral-8x7B-Instruct-v0.1``,
  ``mistral-7b-instruct-v0.2.Q4_K_M``, ``DeepSeekCoder``, ``通义千问-7B`` ...), each with a family,
  an owner, tags and a description. The labelled queries (``search_queries.jsonl``) name their
  relevant models among these.
* ``fine_tunes(n)``: ``n`` generated models of the kind that fill a hub around those: fine-tunes,
  merges and quantisations of the same bases (``dolphin-Qwen2.5-7B-Instruct-dpo-v2-GGUF``,
  ``llama3-8b-finetuned-legal-v1``). They share the anchors' words, so a query has to find its
  model among hundreds that also match, as on a real hub; none of them is named exactly like an
  anchor.

Everything is seeded: the same arguments give the same catalogue.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from controlplane.server.search import ModelDoc
from controlplane.v1 import models_pb2

SAFETENSORS = models_pb2.MODEL_FORMAT_SAFETENSORS
GGUF = models_pb2.MODEL_FORMAT_GGUF
ONNX = models_pb2.MODEL_FORMAT_ONNX
PT = models_pb2.MODEL_FORMAT_PT
PENDING = models_pb2.VERSION_STATUS_PENDING
READY = models_pb2.VERSION_STATUS_READY
DEPRECATED = models_pb2.VERSION_STATUS_DEPRECATED
_FORMATS = {"safetensors": SAFETENSORS, "gguf": GGUF, "onnx": ONNX, "pt": PT}
_STATUSES = {"ready": READY, "pending": PENDING, "deprecated": DEPRECATED}

# The hand-written models, one a line: name | family | owner | tags | formats | status | description.
ANCHORS_FILE = Path(__file__).resolve().parent / "search_anchors.txt"

FINE_TUNERS = [
    "",
    "",
    "",
    "dolphin",
    "Nous-Hermes",
    "OpenHermes",
    "tulu",
    "Sauerkraut",
    "bagel",
    "airoboros",
    "WizardLM",
    "Hermes",
    "einstein",
    "calme",
    "saiga",
    "neural",
    "Smaug",
    "magnum",
]
# (base name as fine-tuners write it, family, tags)
BASES = [
    ("Qwen2.5-7B-Instruct", "qwen", ("chat",)),
    ("qwen2.5-7b", "qwen", ("base",)),
    ("Qwen2.5-1.5B", "qwen", ("base",)),
    ("Qwen2.5-Coder-7B-Instruct", "qwen", ("code",)),
    ("qwen2.5-coder-1.5b", "qwen", ("code",)),
    ("Qwen2-7B", "qwen", ("base",)),
    ("Qwen2.5-72B", "qwen", ("base",)),
    ("Llama-3.1-8B-Instruct", "llama", ("chat",)),
    ("llama-3.1-8b", "llama", ("base",)),
    ("Meta-Llama-3-8B-Instruct", "llama", ("chat",)),
    ("llama3-8b", "llama", ("base",)),
    ("Llama-3.2-3B-Instruct", "llama", ("chat",)),
    ("Llama-2-7b-hf", "llama", ("base",)),
    ("llama-2-13b-chat", "llama", ("chat",)),
    ("Llama-3.3-70B-Instruct", "llama", ("chat",)),
    ("Mistral-7B-Instruct-v0.2", "mistral", ("chat",)),
    ("mistral-7b-v0.1", "mistral", ("base",)),
    ("Mistral-Nemo-Base-2407", "mistral", ("base",)),
    ("Mixtral-8x7B-Instruct-v0.1", "mistral", ("chat", "moe")),
    ("mixtral-8x7b", "mistral", ("base", "moe")),
    ("gemma-2-9b-it", "gemma", ("chat",)),
    ("gemma-2-2b", "gemma", ("base",)),
    ("gemma-7b", "gemma", ("base",)),
    ("Phi-3-mini-4k-instruct", "phi", ("chat",)),
    ("phi-3.5-mini", "phi", ("chat",)),
    ("phi-2", "phi", ("base",)),
    ("deepseek-coder-6.7b-instruct", "deepseek", ("code",)),
    ("deepseek-coder-1.3b-base", "deepseek", ("code",)),
    ("DeepSeek-R1-Distill-Qwen-7B", "deepseek", ("reasoning",)),
    ("DeepSeek-R1-Distill-Llama-8B", "deepseek", ("reasoning",)),
    ("deepseek-llm-7b-base", "deepseek", ("base",)),
    ("Yi-1.5-9B", "yi", ("base",)),
    ("SOLAR-10.7B-v1.0", "solar", ("base",)),
    ("TinyLlama-1.1B", "llama", ("base",)),
    ("bert-base-uncased", "bert", ("base",)),
    ("bert-base-multilingual-cased", "bert", ("multilingual",)),
    ("roberta-base", "roberta", ("base",)),
    ("distilbert-base-uncased", "bert", ("base",)),
    ("whisper-small", "whisper", ("audio", "speech")),
    ("whisper-large-v3", "whisper", ("audio", "speech")),
    ("t5-base", "t5", ("base",)),
    ("vit-base-patch16-224", "vit", ("vision",)),
    ("resnet-50", "resnet", ("vision",)),
    ("all-MiniLM-L6-v2", "sentence-transformers", ("embedding",)),
    ("bge-small-en-v1.5", "bge", ("embedding",)),
    ("gpt2", "gpt2", ("base",)),
    ("stable-diffusion-v1-5", "stable-diffusion", ("image-generation",)),
]
TUNES = [
    "",
    "",
    "sft",
    "dpo",
    "orpo",
    "lora",
    "merged",
    "abliterated",
    "uncensored",
    "slerp",
    "chat",
    "instruct",
    "finetuned-legal",
    "finetuned-medical",
    "finetuned-finance",
    "finetuned-sql",
    "finetuned-ko",
    "finetuned-ja",
    "finetuned-de",
    "finetuned-code",
    "finetuned-math",
    "roleplay",
    "summarization",
    "ner",
    "sentiment",
    "squad",
    "imdb",
    "alpaca",
]
QUANTS = ["", "", "", "", "GGUF", "AWQ", "GPTQ-Int4", "gguf-q4_k_m", "Q8_0", "exl2-4.0bpw", "mlx-4bit", "bnb-4bit"]
OWNERS = ["thebloke", "bartowski", "mlabonne", "unsloth", "teknium", "nousresearch", "lmstudio-community", "team-ml"]
DOMAINS = {
    "legal": "contracts and case law",
    "medical": "clinical notes",
    "finance": "financial reports",
    "sql": "text-to-SQL",
    "ko": "Korean",
    "ja": "Japanese",
    "de": "German",
    "code": "programming",
    "math": "math word problems",
}


@dataclass(frozen=True)
class Catalogue:
    docs: list[ModelDoc]
    versions: int  # model versions the catalogue stands for (formats and statuses come from them)


def _split(field: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in field.split(",") if part.strip())


def anchors() -> list[ModelDoc]:
    """The hand-written models the labelled queries look for."""
    docs = []
    for line in ANCHORS_FILE.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, family, owner, tags, formats, status, description = (part.strip() for part in line.split("|"))
        docs.append(
            ModelDoc(
                name=name,
                description=description,
                family=family,
                tags=_split(tags),
                owner=owner,
                formats=frozenset(_FORMATS[f] for f in _split(formats)),
                statuses=frozenset([_STATUSES[status]]),
            )
        )
    return docs


def fine_tunes(count: int, taken: set[str], seed: int = 18) -> list[ModelDoc]:
    """``count`` generated fine-tunes and quantisations, none named (ignoring case) as in ``taken``."""
    rng = random.Random(seed)
    seen = {name.casefold() for name in taken}
    docs: list[ModelDoc] = []
    while len(docs) < count:
        tuner, (base, family, base_tags) = rng.choice(FINE_TUNERS), rng.choice(BASES)
        tune, quant = rng.choice(TUNES), rng.choice(QUANTS)
        version = rng.choice(["", "", "v0.1", "v1", "v2", "v3", "2.0", str(rng.randrange(1000, 10000))])
        separator = rng.choice(["-", "-", "-", "_"])
        parts = [p for p in (tuner, base, tune, version, quant) if p]
        name = separator.join(parts) if len(parts) > 1 else f"{base}-{rng.randrange(100000)}"
        if name.casefold() in seen:
            continue
        seen.add(name.casefold())
        domain = tune.removeprefix("finetuned-") if tune.startswith("finetuned-") else ""
        what = f"fine-tuned on {DOMAINS[domain]}" if domain else (f"{tune} fine-tune" if tune else "fine-tune")
        description = f"{tuner + ' ' if tuner else ''}{what} of {base}"
        if quant:
            description += f", {quant} quantisation"
        tags = [*base_tags]
        if quant:
            tags.append("quantized")
        if "gguf" in quant.casefold() or quant.startswith("Q8"):
            tags.append("gguf")
        if domain:
            tags.append(domain)
        formats = {GGUF} if "gguf" in tags else {rng.choice([SAFETENSORS, SAFETENSORS, PT, ONNX])}
        statuses = {rng.choice([READY, READY, READY, PENDING, DEPRECATED])}
        docs.append(
            ModelDoc(
                name=name,
                description=description,
                family=family,
                tags=tuple(tags),
                owner=rng.choice(OWNERS),
                formats=frozenset(formats),
                statuses=frozenset(statuses),
            )
        )
    return docs


def catalogue(models: int, seed: int = 18) -> Catalogue:
    """The anchors and enough fine-tunes to make ``models`` models, with 1 to 8 versions each
    (4.5 on average: 22,222 models stand for ~100,000 versions)."""
    base = anchors()
    docs = base + fine_tunes(max(0, models - len(base)), {doc.name for doc in base}, seed)
    rng = random.Random(seed + 1)
    versions = sum(rng.randint(1, 8) for _ in docs)
    return Catalogue(docs=docs, versions=versions)
