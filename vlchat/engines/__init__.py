"""Everything that turns a conversation into tokens. ``make_engine`` picks the engine for the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlchat.config import Settings
    from vlchat.engines.base import ChatEngine


def make_engine(settings: "Settings") -> "ChatEngine":
    """The engine the settings ask for; nothing is loaded yet (call ``load``).

    With an endpoint the model runs on that server (OpenAIEngine). The default model name ("demo")
    is then used only if the server has a model by that name; otherwise it means "the server's
    model, if it serves exactly one".
    """
    if settings.endpoint:
        from vlchat.demo import DEMO_NAME
        from vlchat.engines.openai import OpenAIEngine

        return OpenAIEngine.from_settings(settings, settings.model, model_is_default=settings.model == DEMO_NAME)

    from vlchat.engines.transformers import TransformersEngine

    return TransformersEngine(
        settings.model,
        quant=settings.quant,
        device=settings.device,
        dtype=settings.dtype,
        trust_remote_code=settings.trust_remote_code,
        kv_cache_reuse=settings.kv_cache_reuse,
    )
