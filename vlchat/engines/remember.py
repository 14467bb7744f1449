"""What a session remembers of the settings it ran with, and how a resume takes them back.

Shared by `vlchat ask --session` and the app (`--resume`, autosave), so both write and read the
same record. The API key is never part of it; the endpoint is stored without credentials.
"""

from __future__ import annotations

from typing import Any

# Settings a session remembers; a resumed session keeps them unless the command line, the
# environment (VLCHAT_*) or the config file says otherwise.
MODEL_KEYS = ("model", "quant", "device", "dtype")
PARAM_KEYS = ("max_new_tokens", "temperature", "top_p", "seed")


def model_record(settings: Any, info: Any = None) -> dict[str, Any]:
    """The session's ``model`` object: the settings' names, the model's own name, and the server."""
    record: dict[str, Any] = {key: getattr(settings, key) for key in MODEL_KEYS}
    # "name" is the documented field (sessions/README.md); "model" is the setting it came from.
    record["name"] = info.name if info is not None else settings.model
    endpoint = getattr(info, "endpoint", None)
    if not endpoint and settings.endpoint:
        from vlchat.engines.openai import display_endpoint

        endpoint = display_endpoint(settings.endpoint)
    if endpoint:
        record["endpoint"] = endpoint
    return record


def apply_remembered(session: Any, settings: Any, sources: dict[str, str]) -> list[str]:
    """Take back the model, server and sampling the session used, where nothing newer chose them.

    Returns the notes the person should see. A server named only by the session file is used
    without the API key: a session folder can come from anyone, and the key goes only to a server
    chosen on this machine (--endpoint, VLCHAT_ENDPOINT, the config file).
    """
    notes: list[str] = []

    def unset(key: str) -> bool:
        return sources.get(key, "default") == "default"

    remembered = session.model or {}
    chose_model = not (unset("model") and unset("endpoint"))
    for key in MODEL_KEYS:
        if key == "model" and chose_model:
            continue
        if unset(key) and remembered.get(key) is not None:
            setattr(settings, key, remembered[key])
    if not chose_model and remembered.get("endpoint"):
        settings.endpoint = str(remembered["endpoint"])
        if settings.api_key:
            from vlchat.core.text import clean
            from vlchat.engines.openai import display_endpoint

            settings.api_key = None
            shown = clean(display_endpoint(settings.endpoint), keep_newlines=False)
            notes.append(
                f"your API key is not sent to {shown}: that server was named by the session file, "
                f"not by you (pass --endpoint {shown} to send it)"
            )
    for key in PARAM_KEYS:
        if unset(key):
            setattr(settings, key, getattr(session.params, key))
    return notes
