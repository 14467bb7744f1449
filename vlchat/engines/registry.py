"""Model names -> where to load them from and how.

A name is a short registry name (``demo``), a local folder, or a Hugging Face hub id. The full
table of named models arrives with the model-families work; the demo model is here from the start.
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


# owner/name, as the hub allows them (letters, digits, -, _, .), at most 96 characters each side
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")


def resolve(name: str) -> ModelSpec:
    """Turn what a person typed into a ModelSpec, or say clearly why it names no model."""
    name = name.strip()
    if name == DEMO_NAME:
        return ModelSpec(DEMO_NAME, str(MODEL_DIR), "llava", DEMO_LABEL, is_local=True)
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
        return ModelSpec(name, name, "auto")
    if name.startswith((".", "/", "~")) or os.sep in name:
        raise InputError(
            f"no model folder at {clean(name, keep_newlines=False)}",
            "check the path, or give a hub id such as llava-hf/llava-1.5-7b-hf",
        )
    raise InputError(
        f"unknown model {clean(name, keep_newlines=False)!r}",
        "use 'demo', a hub id such as llava-hf/llava-1.5-7b-hf, or a local model folder",
    )
