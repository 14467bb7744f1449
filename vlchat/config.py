"""Settings: defaults < TOML file in the user config folder < VLCHAT_* environment < command-line flags.

Every setting is a documented field of ``Settings``; ``load_settings`` also says where each value
came from, which `vlchat --print-config` shows.
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from vlchat.core.errors import InputError
from vlchat.core.text import clean

APP_NAME = "vlchat"


def config_dir() -> Path:
    from platformdirs import user_config_dir

    return Path(os.environ.get("VLCHAT_CONFIG_DIR") or user_config_dir(APP_NAME))


def data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME))


def config_file() -> Path:
    return Path(os.environ.get("VLCHAT_CONFIG") or config_dir() / "config.toml")


@dataclass
class Settings:
    model: str = field(default="demo", metadata={"doc": "model name, hub id or local folder"})
    quant: str = field(default="auto", metadata={"doc": "4bit, 8bit, none, or auto (4bit on CUDA)"})
    device: str = field(default="auto", metadata={"doc": "auto, cuda, mps or cpu"})
    dtype: str = field(default="auto", metadata={"doc": "auto, bfloat16, float16 or float32"})
    trust_remote_code: bool = field(default=False, metadata={"doc": "let a model run its own Python code"})
    max_new_tokens: int = field(default=512, metadata={"doc": "longest answer, in tokens"})
    temperature: float = field(default=0.0, metadata={"doc": "0 is greedy"})
    top_p: float = field(default=1.0, metadata={"doc": "nucleus sampling; 1 turns it off"})
    seed: int | None = field(default=None, metadata={"doc": "seed for sampled answers"})
    system: str | None = field(default=None, metadata={"doc": "system prompt for new conversations"})
    theme: str = field(default="vlchat-dark", metadata={"doc": "colour theme of the app"})
    image_protocol: str = field(
        default="auto", metadata={"doc": "how pictures are drawn: auto, kitty, sixel, halfblock, text or none"}
    )
    sessions_dir: str | None = field(default=None, metadata={"doc": "where sessions are kept"})
    endpoint: str | None = field(
        default=None, metadata={"doc": "URL of an OpenAI-compatible server (vLLM, Ollama, llama.cpp), e.g. http://localhost:8000/v1"}
    )
    # repr=False and "secret": the key never shows in a repr, a config dump or an error message.
    api_key: str | None = field(
        default=None, repr=False, metadata={"doc": "API key for the server at endpoint (never shown or saved)", "secret": True}
    )
    image_max_side: int | None = field(
        default=None, metadata={"doc": "shrink pictures sent to a server to at most this many pixels a side; unset keeps them as they are"}
    )
    connect_timeout: float = field(default=10.0, metadata={"doc": "seconds to wait for a server to accept the connection"})
    token_timeout: float = field(
        default=120.0, metadata={"doc": "seconds to wait for a server's next piece of the answer (the first includes reading the pictures)"}
    )
    answer_timeout: float = field(
        default=1800.0, metadata={"doc": "seconds a server may take for a whole answer, from the request to its last piece"}
    )
    kv_cache_reuse: bool = field(default=True, metadata={"doc": "reuse the model's cache across turns"})
    bindings: dict[str, str] = field(
        default_factory=dict, metadata={"doc": "key binding id -> keys, e.g. stop = \"escape,ctrl+c\""}
    )


SETTING_NAMES = tuple(f.name for f in fields(Settings))
SECRET_SETTINGS = frozenset(f.name for f in fields(Settings) if f.metadata.get("secret"))
HIDDEN = "(set, hidden)"


def public_dict(settings: Settings) -> dict[str, Any]:
    """The settings as a dict that is safe to write anywhere: secrets are only said to be set."""
    data = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if f.name in SECRET_SETTINGS and value is not None:
            value = HIDDEN
        elif f.name == "endpoint" and value:
            value = redact_url(value)
        data[f.name] = value
    return data
_TYPES = {f.name: f.type for f in fields(Settings)}


def _coerce(name: str, value: Any, where: str) -> Any:
    """The value as the setting's type, or one clear line naming the setting and where it was set."""
    kind = str(_TYPES[name])
    expected = {"bool": "true or false", "int": "a whole number", "float": "a number"}.get(
        kind.split(" ")[0], "text"
    )
    if name == "bindings":
        expected = 'a table of binding id = "keys"'
    try:
        if "None" in kind and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))):
            return None
        if name == "bindings":
            if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
                raise ValueError
            return {str(k): str(v) for k, v in value.items()}
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(value, bool) or isinstance(value, (dict, list)):
            if not kind.startswith("str"):
                raise ValueError
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        shown = "a value that is hidden" if name in SECRET_SETTINGS else clean(repr(value), keep_newlines=False)
        raise InputError(
            f"setting {name} from {where} is {shown}, not {expected}",
            f"fix it in {where}",
        ) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML file; a missing file is no settings, a broken one is a clear error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the config file {clean(str(path), keep_newlines=False)}: {error}", "fix or remove it") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InputError(
            f"the config file {clean(str(path), keep_newlines=False)} is not valid TOML ({error})",
            "fix that line, or move the file away to start from the defaults",
        ) from None
    unknown = sorted(set(data) - set(SETTING_NAMES))
    if unknown:
        raise InputError(
            f"unknown setting {unknown[0]!r} in {clean(str(path), keep_newlines=False)}",
            f"known settings: {', '.join(SETTING_NAMES)}",
        )
    return data


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> tuple[Settings, dict[str, str]]:
    """The effective settings, and for each one where it came from."""
    env = os.environ if env is None else env
    path = path or config_file()
    settings = Settings()
    sources = {name: "default" for name in SETTING_NAMES}
    for name, value in read_config_file(path).items():
        setattr(settings, name, _coerce(name, value, str(path)))
        sources[name] = f"config file {path}"
    for name in SETTING_NAMES:
        variable = f"VLCHAT_{name.upper()}"
        if variable in env and name != "bindings":
            setattr(settings, name, _coerce(name, env[variable], f"${variable}"))
            sources[name] = f"${variable}"
    for name, value in (flags or {}).items():
        if value is None or name not in sources:
            continue
        flag = "--" + name.replace("_", "-")
        setattr(settings, name, _coerce(name, value, flag))
        sources[name] = f"flag {flag}"
    remembered = remembered_theme()
    if remembered and not sources["theme"].startswith(("flag", "$")):
        # The app's /theme remembers its choice; it wins over the config file, not over a flag or $VLCHAT_THEME.
        settings.theme = remembered
        sources["theme"] = f"chosen with /theme, remembered in {state_file()}"
    return settings, sources


def state_file() -> Path:
    """Where the app remembers choices made in it (the theme)."""
    return config_dir() / "state.json"


def remembered_theme() -> str | None:
    import json

    try:
        data = json.loads(state_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    theme = data.get("theme") if isinstance(data, dict) else None
    return clean(theme, keep_newlines=False) if isinstance(theme, str) and theme.strip() else None


# A query parameter whose name says it holds a credential (?api_key=, ?token=, ?sig=, ?password=...).
_SECRET_NAME = re.compile(r"key|token|secret|pass|pwd|auth|sig|cred", re.I)
# Values that are keys whatever their parameter is called (OpenAI, Hugging Face, GitHub, Slack, AWS).
_SECRET_VALUE = re.compile(r"^(sk-|hf_|ghp_|github_pat_|xox[a-z]-|AKIA)")
REDACTED = "***"


def secret_query_item(name: str, value: str) -> bool:
    return bool(_SECRET_NAME.search(name) or _SECRET_VALUE.match(value))


def redact_url(url: str, placeholder: str | None = REDACTED) -> str:
    """The URL with its credentials (user:password@, secret-looking query values) replaced by
    ``placeholder``, or left out when it is None; everything else is kept as it was."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return REDACTED if placeholder is not None else ""
    netloc = parts.netloc
    if "@" in netloc:
        host = netloc.rpartition("@")[2]
        netloc = f"{placeholder}@{host}" if placeholder is not None else host
    query = parts.query
    if query:
        kept = []
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            plain_name = urllib.parse.unquote_plus(name)
            if secret_query_item(plain_name, urllib.parse.unquote_plus(value)):
                if placeholder is None:
                    continue
                item = f"{name}={placeholder}"
            kept.append(item)
        query = "&".join(kept)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def settings_from(args: Any):
    """The settings for a parsed command line (an argparse Namespace): defaults < config file <
    VLCHAT_* < the flags given on it. Returns (settings, where each came from)."""
    flags = {name: getattr(args, name) for name in SETTING_NAMES if hasattr(args, name)}
    return load_settings(flags)


def describe_settings(settings: Settings, sources: Mapping[str, str]) -> str:
    """The lines `vlchat --print-config` prints: name = value  # where it came from."""
    lines = []
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is None:
            shown = "(not set)"
        elif f.name in SECRET_SETTINGS:
            shown = HIDDEN
        elif f.name == "endpoint":
            shown = repr(clean(redact_url(str(value)), keep_newlines=False))
        else:
            shown = repr(value) if not isinstance(value, dict) else value or "{}"
        lines.append(f"{f.name} = {shown}    # {sources[f.name]}; {f.metadata['doc']}")
    return "\n".join(lines)
