"""Theme files (TOML) -> Textual themes, and the small state file that remembers the last choice.

Bundled themes live in the top-level ``themes/`` folder; ``vlchat/ui/themes`` links to it, so
wheels carry the files as package data. A person's own themes go in ``<config dir>/themes``. A broken theme
file is skipped with one line naming it, never a crash.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import fields
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.theme import Theme

from vlchat.config import config_dir
from vlchat.core.text import clean

DEFAULT_THEME = "vlchat-dark"
_COLOUR_KEYS = ("primary", "secondary", "warning", "error", "success", "accent", "foreground",
                "background", "surface", "panel", "boost")
_KNOWN_KEYS = {f.name for f in fields(Theme)}


class ThemeFileError(ValueError):
    pass


def bundled_themes_dir() -> Path | None:
    here = Path(__file__).resolve()
    # A source checkout has the top-level folder; an installed wheel has vlchat/ui/themes.
    for candidate in (here.parent / "themes", here.parents[2] / "themes"):
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    return None


def user_themes_dir() -> Path:
    return config_dir() / "themes"


def theme_from_toml(path: Path) -> Theme:
    """One theme file as a Textual Theme, or ThemeFileError with one line that says what is wrong."""
    name = clean(str(path), keep_newlines=False)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ThemeFileError(f"theme file {name} cannot be read: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ThemeFileError(f"theme file {name} is not valid TOML ({error})") from None
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ThemeFileError(f"theme file {name} has an unknown key {unknown[0]!r}")
    if not isinstance(data.get("name"), str) or not data["name"].strip():
        raise ThemeFileError(f"theme file {name} needs a name")
    if not isinstance(data.get("primary"), str):
        raise ThemeFileError(f"theme file {name} needs a primary colour")
    for key in _COLOUR_KEYS:
        if key in data:
            try:
                Color.parse(data[key])
            except (ColorParseError, TypeError, ValueError):
                raise ThemeFileError(f"theme file {name}: {key} = {data[key]!r} is not a colour") from None
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise ThemeFileError(f"theme file {name}: [variables] must map names to colour strings")
    if "dark" in data and not isinstance(data["dark"], bool):
        raise ThemeFileError(f"theme file {name}: dark must be true or false")
    data["name"] = clean(data["name"], keep_newlines=False).strip()
    try:
        return Theme(**data)
    except (TypeError, ValueError) as error:
        raise ThemeFileError(f"theme file {name} is not a valid theme ({error})") from None


def load_themes(extra_dirs: list[Path] | None = None) -> tuple[list[Theme], list[str]]:
    """Bundled then user themes (a user theme may replace a bundled one), and one line per bad file."""
    folders = [d for d in (bundled_themes_dir(), user_themes_dir(), *(extra_dirs or [])) if d]
    themes: dict[str, Theme] = {}
    problems: list[str] = []
    for folder in folders:
        try:
            paths = sorted(folder.glob("*.toml"))
        except OSError:
            continue
        for path in paths:
            try:
                theme = theme_from_toml(path)
            except ThemeFileError as error:
                problems.append(str(error))
                continue
            themes[theme.name] = theme
    return list(themes.values()), problems


# -- remembered choices ------------------------------------------------------------------------
def state_file() -> Path:
    return config_dir() / "state.json"


def read_state() -> dict:
    try:
        data = json.loads(state_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember(**values: str) -> None:
    """Merge into the state file atomically; a failure to write is not worth bothering anyone."""
    path = state_file()
    data = read_state()
    data.update(values)
    from vlchat.core.sessions import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, indent=1).encode("utf-8"), mode=0o644)
    except OSError:
        pass
