"""Key names as Textual spells them, for checking the keys a config file binds ([bindings])."""

from __future__ import annotations

import unicodedata

from textual.keys import KEY_TO_UNICODE_NAME, Keys

MODIFIERS = frozenset({"ctrl", "shift", "alt", "meta", "super", "hyper"})
# The names Textual gives keys (escape, f1, pageup, …), without their modifiers.
NAMED = frozenset(k.value.rpartition("+")[2] for k in Keys if not k.value.startswith("<")) | {"minus", "plus", "slash"}


def known_key(key: str) -> bool:
    """True for a key Textual can report: modifiers (ctrl, alt, …) joined with + to one key name
    (a single character, a named key such as f1 or pageup, or a character's name such as comma)."""
    *modifiers, name = key.split("+")
    if not name or len(set(modifiers)) != len(modifiers) or not set(modifiers) <= MODIFIERS:
        return False
    if len(name) == 1:
        return name.isprintable() and not name.isspace()
    if name in NAMED or name in KEY_TO_UNICODE_NAME:
        return True
    try:
        character = unicodedata.lookup(name.replace("_", " ").upper())
    except KeyError:
        return False
    # Punctuation and the symbols on keyboards (euro_sign); not every character with a name
    # ("banana" is an emoji no key types).
    return unicodedata.category(character)[0] == "P" or unicodedata.category(character) in ("Sc", "Sm", "Sk")


def unknown_keys(keys: str) -> list[str]:
    """The names in a comma-separated list of keys that are no key ("ctrl+shift+banana")."""
    return [key.strip() for key in keys.split(",") if not known_key(key.strip())]


_NAMES = {
    "left": "←", "right": "→", "up": "↑", "down": "↓", "escape": "Esc", "enter": "Enter", "tab": "Tab",
    "backspace": "Backspace", "delete": "Delete", "pageup": "PgUp", "pagedown": "PgDn", "space": "Space",
}


def key_display(keys: str) -> str:
    """A comma-separated list of Textual key names as a person reads them: "alt+left,f7" -> "alt+← or F7"."""
    shown = []
    for key in keys.split(","):
        *modifiers, name = key.strip().split("+")
        if name in _NAMES:
            name = _NAMES[name]
        elif len(name) > 1 and name[0] == "f" and name[1:].isdigit():
            name = name.upper()
        shown.append("+".join([*modifiers, name]))
    return " or ".join(shown)
