"""Everything that turns a conversation into tokens. ``make_engine`` picks the engine for the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlchat.config import Settings
    from vlchat.engines.base import ChatEngine


def make_engine(settings: "Settings") -> "ChatEngine":
    """The engine the settings ask for; nothing is loaded yet (call ``load``)."""
    from vlchat.engines.transformers import TransformersEngine

    return TransformersEngine(
        settings.model,
        quant=settings.quant,
        device=settings.device,
        dtype=settings.dtype,
        trust_remote_code=settings.trust_remote_code,
        kv_cache_reuse=settings.kv_cache_reuse,
    )
