"""The engine for a local model, made in this process: which engine class a model needs, and that
engine built from the settings. ``make_engine`` (the package) and a model's own process
(``process._serve``) both build local engines here, so neither imports the other."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlchat.config import Settings
    from vlchat.engines.base import ChatEngine
    from vlchat.engines.registry import ModelSpec


def engine_class(spec: "ModelSpec"):
    """The engine for a model: by its registry family, else by the model_type in its config.json.

    A hub model not downloaded yet has no config to read; its family is then what the registry
    says, or the generic engine, which handles every model with a chat template.
    """
    from vlchat.engines.remote import read_config, uses_chat_api

    family = spec.family
    config = read_config(spec.source) if (spec.is_local or family == "auto" or spec.remote_code) else None
    if family == "auto" and config:
        family = str(config.get("model_type", "auto"))
    from vlchat.engines.minicpm import FAMILY as MINICPM, is_minicpm26

    if family == MINICPM or is_minicpm26(config):
        from vlchat.engines.minicpm import MiniCPMEngine

        return MiniCPMEngine
    if spec.remote_code or (config and uses_chat_api(config)):
        from vlchat.engines.remote import RemoteCodeEngine

        return RemoteCodeEngine
    if family == "blip":
        from vlchat.engines.blip import BlipEngine

        return BlipEngine
    from vlchat.engines.blip2 import FAMILIES as BLIP_FAMILIES

    if family in BLIP_FAMILIES:
        from vlchat.engines.blip2 import Blip2Engine

        return Blip2Engine
    from vlchat.engines.joycaption import JoyCaptionEngine, is_joycaption

    if family == "joycaption" or (family == "llava" and config and is_joycaption(spec.source, config)):
        return JoyCaptionEngine
    from vlchat.engines.transformers import TransformersEngine

    return TransformersEngine


def make_local_engine(settings: "Settings", model: str | None = None, *, spec: "ModelSpec | None" = None) -> "ChatEngine":
    """The engine for a local model (``model``, else the settings' model) in this process; nothing
    is loaded yet. ``spec``: the model already resolved, so it is not resolved twice."""
    if spec is None:
        from vlchat.engines.registry import resolve

        spec = resolve(model or settings.model)
    cls = engine_class(spec)
    quant = settings.quant
    if quant == "auto" and spec.quant != "auto":
        quant = spec.quant if spec.quant != "4bit" else "auto"  # 4-bit needs CUDA; auto picks it there
    return cls(
        spec.name,
        quant=quant,
        device=settings.device,
        dtype=settings.dtype,
        trust_remote_code=settings.trust_remote_code,
        spec=spec,
        kv_cache_reuse=settings.kv_cache_reuse,
    )
