"""The prompt's placeholder: what the question will be about, and the keys to send it, in the
words that fit the prompt's width (whole phrases dropped, never cut)."""

from __future__ import annotations

from vlchat.ui.keys import key_display


def placeholder_text(picture: int | None, total: int, width: int, keys: dict[str, str] | None = None) -> str:
    """The placeholder for a prompt ``width`` cells wide, about picture ``picture`` of ``total``
    (None: there is no picture). ``keys``: binding id -> keys bound now."""
    keys = keys or {}
    send = key_display(keys.get("send", "enter")).split(" or ")[0]
    newline = key_display(keys.get("newline", "ctrl+j")).split(" or ")[0]
    if picture is None:
        subject, short = "Ask anything, or attach a picture with /image PATH", "Ask, or /image PATH"
    else:
        subject = short = f"Ask about picture {picture}/{total}"
    candidates = [
        f"{subject} ({send} sends, {newline} new line, /help)",
        f"{subject} ({send} sends, /help)",
        f"{subject} (/help)",
        subject,
        f"{short} (/help)",
        short,
    ]
    for candidate in candidates:
        if len(candidate) <= width:
            return candidate
    return short if len(short) <= width else ""
