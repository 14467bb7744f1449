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
    # "name": the model's own name (for a server, as the server knows it); "model": the --model
    # setting a resume takes back. With a server, that is the server's name too: the default
    # setting ("demo") only meant "the server's model", and a resume must ask for the same one.
    record["name"] = info.name if info is not None else settings.model
    endpoint = getattr(info, "endpoint", None)
    if not endpoint and settings.endpoint:
        endpoint = _shown_endpoint(settings.endpoint)
    if endpoint:
        record["endpoint"] = endpoint
        if info is not None:
            record["model"] = info.name
    return record


def _shown_endpoint(url: str) -> str:
    """The endpoint as it is saved and compared: normalised (…/v1), without credentials."""
    from vlchat.core.errors import InputError
    from vlchat.engines.openai import display_endpoint, normalize_endpoint

    try:
        return display_endpoint(normalize_endpoint(url))
    except InputError:
        return display_endpoint(url)


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
    # The same server named again (--endpoint as the session has it) is not a new choice of model.
    same_server = (
        not unset("endpoint") and unset("model") and bool(remembered.get("endpoint")) and bool(settings.endpoint)
        and _shown_endpoint(str(remembered["endpoint"])) == _shown_endpoint(settings.endpoint)
    )
    chose_model = not (unset("model") and (unset("endpoint") or same_server))
    for key in MODEL_KEYS:
        if key == "model" and chose_model:
            continue
        value = remembered.get(key)
        if key == "model" and remembered.get("endpoint") and remembered.get("name"):
            value = remembered["name"]  # the server's name for it (older sessions stored "demo" here)
        if unset(key) and value is not None:
            setattr(settings, key, value)
    if not chose_model and remembered.get("endpoint") and not same_server:
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
