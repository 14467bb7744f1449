"""Model names -> where to load them from and how.

A name is a short registry name (``llava-1.5-7b``, ``demo``), a local folder, or a Hugging Face hub
id. Registry entries carry what a person wants to know before a multi-gigabyte download: the family
(which decides how the conversation becomes a prompt), the default quantization and roughly how
much memory the weights take at 4-bit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vlchat.core.errors import InputError
from vlchat.core.text import clean
from vlchat.demo import DEMO_LABEL, DEMO_NAME, MODEL_DIR


@dataclass(frozen=True)
class ModelSpec:
    name: str  # what the person typed, or the registry name
    source: str  # a local folder or a hub id, as from_pretrained takes it
    family: str  # "llava", ... or "auto" when the model's config decides
    label: str = ""  # shown beside the name ("demo model")
    is_local: bool = False
    quant: str = "auto"  # the quantization this model is best run in when the person does not say
    memory_4bit_gb: float | None = None  # weights at nf4 as vlchat loads them (bench/memory.py); not the KV cache
    remote_code: bool = False  # needs --trust-remote-code


@dataclass(frozen=True)
class NamedModel:
    name: str
    hub_id: str
    family: str
    label: str
    memory_4bit_gb: float | None
    quant: str = "4bit"
    remote_code: bool = False

    def spec(self) -> ModelSpec:
        return ModelSpec(
            self.name,
            self.hub_id,
            self.family,
            self.label,
            quant=self.quant,
            memory_4bit_gb=self.memory_4bit_gb,
            remote_code=self.remote_code,
        )


# Memory figures: the exact bytes of the weights quantized as vlchat quantizes them (nf4, the parts in
# KEEP_UNQUANTIZED in 16-bit), computed by bench/memory.py from each model's config.json, in GB
# (10^9 bytes), rounded up to a tenth.
REGISTRY: tuple[NamedModel, ...] = (
    NamedModel("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", "llava", "LLaVA 1.5 7B", 4.6),
    NamedModel("llava-1.5-13b", "llava-hf/llava-1.5-13b-hf", "llava", "LLaVA 1.5 13B", 7.9),
    NamedModel("llava-next-7b", "llava-hf/llava-v1.6-mistral-7b-hf", "llava_next", "LLaVA-NeXT (1.6) Mistral 7B", 4.8),
    NamedModel(
        "joycaption",
        "fancyfeast/llama-joycaption-beta-one-hf-llava",
        "joycaption",
        "JoyCaption Beta One (Llama 3.1 8B)",
        6.7,
    ),
    NamedModel("minicpm-v-4.6", "openbmb/MiniCPM-V-4.6", "minicpmv4_6", "MiniCPM-V 4.6", 1.9),
    NamedModel("minicpm-o-2.6", "openbmb/MiniCPM-o-2_6", "minicpm-2.6", "MiniCPM-o 2.6 (native; vision only)", 6.6),
    NamedModel("minicpm-v-2.6", "openbmb/MiniCPM-V-2_6", "minicpm-2.6", "MiniCPM-V 2.6 (native)", 6.6),
    NamedModel("blip2-opt-2.7b", "Salesforce/blip2-opt-2.7b", "blip-2", "BLIP-2 OPT 2.7B", 3.8),
    NamedModel("instructblip-7b", "Salesforce/instructblip-vicuna-7b", "instructblip", "InstructBLIP Vicuna 7B", 6.3),
    # BLIP is small (0.25-0.47B parameters, most of them its vision tower): it runs unquantized by default
    NamedModel("blip-large", "Salesforce/blip-image-captioning-large", "blip", "BLIP captioner, large (captions only)",
               0.8, quant="none"),
    NamedModel("blip-base", "Salesforce/blip-image-captioning-base", "blip", "BLIP captioner, base (captions only)",
               0.3, quant="none"),
    NamedModel("blip-vqa", "Salesforce/blip-vqa-base", "blip", "BLIP question answering, base", 0.4, quant="none"),
    NamedModel("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "Qwen2.5-VL 7B Instruct", 7.0),
    NamedModel("smolvlm", "HuggingFaceTB/SmolVLM-Instruct", "idefics3", "SmolVLM Instruct (2B)", 2.2),
)
NAMED = {model.name: model for model in REGISTRY}
# The hub id of a named model, looked up the other way, keeps its family (JoyCaption is a plain
# llava model to transformers; only its registry entry knows its template quirks).
BY_HUB_ID = {model.hub_id.lower(): model for model in REGISTRY}


# owner/name, as the hub allows them (letters, digits, -, _, .), at most 96 characters each side
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")


def names() -> list[str]:
    return [DEMO_NAME, *NAMED]


def resolve(name: str) -> ModelSpec:
    """Turn what a person typed into a ModelSpec, or say clearly why it names no model."""
    name = name.strip()
    if name == DEMO_NAME:
        return ModelSpec(DEMO_NAME, str(MODEL_DIR), "llava", DEMO_LABEL, is_local=True, memory_4bit_gb=0.01)
    if name.lower() in NAMED:
        return NAMED[name.lower()].spec()
    expanded = Path(os.path.expanduser(name))
    if expanded.is_dir():
        if not (expanded / "config.json").is_file():
            raise InputError(
                f"{clean(name, keep_newlines=False)} is a folder but holds no config.json, so it is not a model folder",
                "point --model at the folder that has config.json in it",
            )
        return ModelSpec(name, str(expanded.resolve()), "auto", is_local=True)
    if expanded.exists():
        raise InputError(
            f"{clean(name, keep_newlines=False)} is a file, not a model folder or a hub id",
            "give the folder that holds the model's config.json",
        )
    if _HUB_ID.match(name):
        known = BY_HUB_ID.get(name.lower())
        if known:
            return ModelSpec(name, name, known.family, known.label, quant=known.quant,
                             memory_4bit_gb=known.memory_4bit_gb, remote_code=known.remote_code)
        return ModelSpec(name, name, "auto")
    if name.startswith((".", "/", "~")) or os.sep in name:
        raise InputError(
            f"no model folder at {clean(name, keep_newlines=False)}",
            "check the path, or give a hub id such as llava-hf/llava-1.5-7b-hf",
        )
    import difflib

    close = difflib.get_close_matches(name.lower(), names(), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise InputError(
        f"unknown model {clean(name, keep_newlines=False)!r}",
        f"{hint}see `vlchat models` for the named models, or give a hub id such as llava-hf/llava-1.5-7b-hf, "
        "or a local model folder",
    )
