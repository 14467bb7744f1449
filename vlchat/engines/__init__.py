"""Everything that turns a conversation into tokens. ``make_engine`` picks the engine for the settings."""

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


def make_engine(settings: "Settings", model: str | None = None, *, separate: bool = False) -> "ChatEngine":
    """The engine the settings ask for (or for ``model`` instead); nothing is loaded yet (call ``load``).

    With an endpoint the model runs on that server (OpenAIEngine). The default model name ("demo")
    is then used only if the server has a model by that name; otherwise it means "the server's
    model, if it serves exactly one".

    ``separate``: a local model runs in a process of its own (ProcessEngine), as the app runs it, so
    that drawing the screen never takes the interpreter from the model. The name is still resolved
    here, so an unknown model is an error at once.
    """
    if settings.endpoint:
        from vlchat.demo import DEMO_NAME
        from vlchat.engines.openai import OpenAIEngine

        name = model or settings.model
        return OpenAIEngine.from_settings(settings, name, model_is_default=model is None and name == DEMO_NAME)

    from vlchat.engines.registry import resolve

    spec = resolve(model or settings.model)
    from vlchat.engines import process

    if separate and process.supported():
        return process.ProcessEngine(settings, model)
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
