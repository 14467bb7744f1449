"""Everything that turns a conversation into tokens. ``make_engine`` picks the engine for the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlchat.engines.factory import engine_class, make_local_engine

if TYPE_CHECKING:
    from vlchat.config import Settings
    from vlchat.engines.base import ChatEngine

__all__ = ["engine_class", "make_engine", "make_local_engine"]

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
    return make_local_engine(settings, model, spec=spec)
