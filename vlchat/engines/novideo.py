"""Processors of video-capable families (Qwen2-VL, Qwen2.5-VL, MiniCPM-V 4.6) without torchvision.

transformers 5.23 builds these processors only when their video processor can be built, and that
needs torchvision, even for a conversation that holds only pictures. vlchat never passes videos,
so when torchvision is missing it builds the processor from its image processor, tokenizer and chat
template alone, with a stand-in for the video half that refuses to be used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def needs_torchvision(error: BaseException) -> bool:
    text = str(error)
    return "torchvision" in text.lower() or "VIDEO_PROCESSOR_MAPPING" in text


class NoVideo:
    """Stands where the video processor would: its settings mirror the image processor's."""

    def __init__(self, image_processor: Any) -> None:
        self.slice_mode = False
        self.downsample_mode = getattr(image_processor, "downsample_mode", "16x")
        self.merge_size = getattr(image_processor, "merge_size", 2)
        self.temporal_patch_size = getattr(image_processor, "temporal_patch_size", 2)

    def __call__(self, *args, **kwargs):
        raise RuntimeError("videos need torchvision, which is not installed")

    def to_dict(self) -> dict:
        return {}


def model_file(source: str, name: str, kwargs: dict[str, Any] | None = None) -> Path | None:
    """A file of a local model folder, or of a hub model (from the cache, downloaded unless offline)."""
    kwargs = kwargs or {}
    folder = Path(source)
    if folder.is_dir():
        path = folder / name
        return path if path.is_file() else None
    from transformers.utils import cached_file

    found = cached_file(
        source, name, _raise_exceptions_for_missing_entries=False, local_files_only=kwargs.get("local_files_only", False)
    )
    return Path(found) if found else None


def processor_class_name(source: str, kwargs: dict[str, Any]) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = model_file(source, name, kwargs)
        if path is None:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("processor_class"), str):
            return data["processor_class"]
    return None


def picture_only_processor(source: str, kwargs: dict[str, Any]):
    """The model's own processor class, built without its video processor. None when it cannot be."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    name = processor_class_name(source, kwargs)
    base = getattr(transformers, name, None) if name else None
    if base is None or "video_processor" not in base.get_attributes():
        return None

    class PictureOnly(base):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name, argument):
            if isinstance(argument, NoVideo):
                return NoVideo
            return super().check_argument_for_proper_class(argument_name, argument)

    PictureOnly.__name__ = PictureOnly.__qualname__ = base.__name__
    image_processor = AutoImageProcessor.from_pretrained(source, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    template = None
    jinja = model_file(source, "chat_template.jinja", kwargs)
    if jinja is not None:
        template = jinja.read_text(encoding="utf-8")
    else:
        path = model_file(source, "chat_template.json", kwargs)
        if path is not None:
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    template = template or getattr(tokenizer, "chat_template", None)
    parts = {"image_processor": image_processor, "tokenizer": tokenizer, "video_processor": NoVideo(image_processor)}
    return PictureOnly(**{k: parts[k] for k in base.get_attributes()}, chat_template=template)
