"""session.json: its format's names and times, and reading it (whole, checked field by field,
brought up to the current format) without ever writing it. The format is documented in
``sessions/README.md`` and ``sessions/session.schema.json`` at the top of the repository."""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlchat.core.conversation import GenerationParams
from vlchat.core.safe_files import StrPath, is_link_error, read_file_nofollow, shown_path
from vlchat.core.session_errors import SessionDamagedError, SessionNotFoundError, SessionTooNewError
from vlchat.core.text import clean

SCHEMA_VERSION = 1
FORMAT = "vlchat-session"
SESSION_FILE = "session.json"
IMAGES_DIR = "images"
TITLE_MAX = 60

# The picture formats vlchat reads, as stored: the extension is part of the file name in images/.
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
SESSION_ID = re.compile(r"[0-9a-f]{12}")

_show = shown_path


# -- small helpers ----------------------------------------------------------------------------------
def now_iso() -> str:
    """UTC time to the millisecond, as stored in session.json: 2026-11-21T05:38:36.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso_from_epoch(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def short_title(question: str, limit: int = TITLE_MAX) -> str:
    """The first question on one line, cut at a word boundary to ``limit`` characters."""
    text = " ".join(clean(question, keep_newlines=False).split())
    if len(text) <= limit:
        return text or "Untitled"
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,.;:-") + "…"


def picture_file(sha256: str, fmt: str) -> str:
    """Where a picture lives inside a session folder, relative to it: images/<sha256>.<ext>."""
    return f"{IMAGES_DIR}/{sha256}.{EXTENSIONS.get(fmt.upper(), 'bin')}"

def check_picture_path(relative: Any, sha256: str) -> str | None:
    """Why a stored picture path is refused, or None when it is images/<that sha256>.<known ext>.

    Anything else (``..``, an absolute path, another folder, another name) could make vlchat read
    a file outside the session, so it is refused rather than interpreted.
    """
    if not isinstance(relative, str) or not relative:
        return "it has no file name"
    if relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative) or os.path.isabs(relative):
        return f"{_show(relative)!s} is an absolute path"
    parts = relative.replace("\\", "/").split("/")
    if ".." in parts:
        return f"{_show(relative)} points outside the session folder"
    if len(parts) != 2 or parts[0] != IMAGES_DIR:
        return f"{_show(relative)} is not a file in {IMAGES_DIR}/"
    stem, _, ext = parts[1].partition(".")
    if stem != sha256 or ext not in EXTENSIONS.values():
        return f"{_show(relative)} is not named by the picture's sha256"
    return None



# -- reading --------------------------------------------------------------------------------------
def read_session_data(path: Path) -> dict[str, Any]:
    """The JSON of a session.json that is a vlchat session of a version we read, or a one-line error."""
    name = _show(path)
    try:
        raw = read_file_nofollow(path)
    except FileNotFoundError:
        raise SessionNotFoundError(f"no session file at {name}", "list sessions with `vlchat sessions`") from None
    except IsADirectoryError:
        raise SessionDamagedError(f"{name} is a folder, not a session file", "") from None
    except OSError as error:
        if is_link_error(error):
            raise SessionDamagedError(f"{name} is a link; vlchat does not follow links inside a session folder",
                                      "it is left as it is; put the file itself there") from None
        raise SessionDamagedError(f"cannot read {name}: {clean(error.strerror or str(error), keep_newlines=False)}", "check its permissions") from None
    if not raw.strip():
        raise SessionDamagedError(f"{name} is empty, so the session in it is lost or was never written",
                                  "it is left as it is; restore it from a backup or remove the folder")
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError:
        raise SessionDamagedError(f"{name} is not a vlchat session (it is not text)", "it is left as it is") from None
    except RecursionError:
        raise SessionDamagedError(f"{name} is not a vlchat session (its JSON is nested too deeply)", "it is left as it is") from None
    except json.JSONDecodeError as error:
        # vlchat always writes a whole object: one that stops before its closing brace was cut short.
        body = text.strip()
        if body.startswith("{") and (error.pos >= len(text.rstrip()) or not body.endswith("}")):
            what = "is cut short (incomplete JSON)"
        else:
            what = f"is not valid JSON (line {error.lineno}, column {error.colno})"
        raise SessionDamagedError(f"{name} {what}", "it is left as it is; restore it from a backup or move it away") from None
    if not isinstance(data, dict):
        raise SessionDamagedError(f"{name} is JSON but not a vlchat session", "it is left as it is")
    version = data.get("schema_version")
    ours = data.get("format") == FORMAT or (version == 0 and isinstance(data.get("messages"), list) and "id" in data)
    if not ours or not isinstance(version, int) or isinstance(version, bool):
        raise SessionDamagedError(
            f"{name} is JSON but not a vlchat session (another program's file?)", "it is left as it is"
        )
    if version > SCHEMA_VERSION:
        raise SessionTooNewError(
            f"{name} was written by a newer vlchat (session format {version}; this vlchat reads up to {SCHEMA_VERSION})",
            "upgrade vlchat to open it (pip install -U vlchat); the file is left as it is",
        )
    if version < 0:
        raise SessionDamagedError(f"{name} has an impossible schema_version {version}", "it is left as it is")
    return data


# -- checking ----------------------------------------------------------------------------------------
# The same rules as sessions/session.schema.json, in code: jsonschema is only a test dependency,
# and a test checks that both refuse the same files. A picture path that breaks its pattern is not
# checked here: that picture alone is refused (see check_picture_path), the rest still opens.
INT_MAX = 2**31 - 1
SEED_MAX = 2**64 - 1
TIME_MAX = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime can hold
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_FORMATS = tuple(EXTENSIONS)
_QUANTS = ("auto", "4bit", "8bit", "none")
_DTYPES = ("auto", "bfloat16", "float16", "float32")


class _Broken(Exception):
    """One field that breaks the format: where it is and what is wrong with it."""


def _brief(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:39] + "…"


def _fail(where: str, what: str) -> None:
    raise _Broken(f"{where}: {what}")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(where, f"{_brief(value)} is not an object")
    return value


def _integer(owner: dict[str, Any], key: str, where: str, low: int, high: int, *, null: bool = False) -> None:
    value = owner[key]
    if value is None and null:
        return
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = owner[key] = int(value)  # 64.0 is 64, as JSON Schema counts it
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(where, f"{_brief(value)} is not a whole number")
    if not low <= value <= high:
        _fail(where, f"{value} is not between {low} and {high}")


def _number(value: Any, where: str, low: float, high: float, *, null: bool = False, above_low: bool = False) -> None:
    if value is None and null:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        _fail(where, f"{_brief(value)} is not a number")
    if not (low < value if above_low else low <= value) or value > high:
        _fail(where, f"{value} is out of range")


def _text(value: Any, where: str, *, null: bool = False, plain: bool = False, min_length: int = 0) -> None:
    if value is None and null:
        return
    if not isinstance(value, str):
        _fail(where, f"{_brief(value)} is not text")
    if len(value) < min_length:
        _fail(where, "it is empty")
    if plain and (_CONTROL.search(value) or len(value) > 4096):
        _fail(where, f"{_brief(value)} holds control characters or is too long")


def _time(value: Any, where: str) -> None:
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        _fail(where, f"{_brief(value)} is not a UTC time like 2025-11-20T09:15:02.120Z")
    try:
        parse_iso(value)
    except ValueError:
        _fail(where, f"{_brief(value)} is not a date")


def _check_params(value: Any, where: str) -> None:
    params = _object(value, where)
    if "max_new_tokens" in params:
        _integer(params, "max_new_tokens", f"{where}.max_new_tokens", 1, INT_MAX)
    if "temperature" in params:
        _number(params["temperature"], f"{where}.temperature", 0, 5)
    if "top_p" in params:
        _number(params["top_p"], f"{where}.top_p", 0, 1, above_low=True)
    if "seed" in params:
        _integer(params, "seed", f"{where}.seed", 0, SEED_MAX, null=True)


def _check_ref(value: Any, where: str) -> None:
    ref = _object(value, where)
    for key in ("sha256", "path", "format", "width", "height"):
        if key not in ref:
            _fail(where, f"{key} is missing")
    _text(ref["sha256"], f"{where}.sha256")
    _text(ref["path"], f"{where}.path")
    if ref["format"] not in _FORMATS:
        _fail(f"{where}.format", f"{_brief(ref['format'])} is not one of {', '.join(_FORMATS)}")
    _integer(ref, "width", f"{where}.width", 0, INT_MAX)
    _integer(ref, "height", f"{where}.height", 0, INT_MAX)


def _check_message(value: Any, where: str) -> None:
    message = _object(value, where)
    for key in ("role", "text", "created"):
        if key not in message:
            _fail(where, f"{key} is missing")
    if message["role"] not in ("system", "user", "assistant"):
        _fail(f"{where}.role", f"{_brief(message['role'])} is not system, user or assistant")
    _text(message["text"], f"{where}.text")
    _number(message["created"], f"{where}.created", -TIME_MAX, TIME_MAX)
    if "images" in message:
        images = message["images"]
        if not isinstance(images, list):
            _fail(f"{where}.images", f"{_brief(images)} is not a list")
        for n, ref in enumerate(images):
            _check_ref(ref, f"{where}.images[{n}]")
    if "model" in message:
        _text(message["model"], f"{where}.model", null=True, plain=True)
    if message.get("params") is not None:
        _check_params(message["params"], f"{where}.params")
    if "stopped" in message and not isinstance(message["stopped"], bool):
        _fail(f"{where}.stopped", f"{_brief(message['stopped'])} is not true or false")
    if "tokens" in message:
        _integer(message, "tokens", f"{where}.tokens", 0, INT_MAX, null=True)
    if message.get("timings") is not None:
        timings = _object(message["timings"], f"{where}.timings")
        for key in ("first_token_s", "total_s", "tokens_per_s"):
            if key in timings:
                _number(timings[key], f"{where}.timings.{key}", 0, float(TIME_MAX), null=True)


def check_session_data(data: dict[str, Any], path: StrPath) -> dict[str, Any]:
    """``data`` (a session.json of the current format) if every field is what the format says;
    else a SessionDamagedError naming the first broken field. Whole numbers written as 64.0 are
    made ints. Fields vlchat does not know are not checked."""
    try:
        for key in ("id", "title", "title_is_auto", "created", "updated", "model", "params", "pictures", "conversation"):
            if key not in data:
                _fail(key, "it is missing")
        if not isinstance(data["id"], str) or not SESSION_ID.fullmatch(data["id"]):
            _fail("id", f"{_brief(data['id'])} is not 12 hex digits")
        _text(data["title"], "title", min_length=1)
        if not isinstance(data["title_is_auto"], bool):
            _fail("title_is_auto", f"{_brief(data['title_is_auto'])} is not true or false")
        _time(data["created"], "created")
        _time(data["updated"], "updated")
        model = _object(data["model"], "model")
        for key in ("name", "model", "device"):
            if key in model:
                _text(model[key], f"model.{key}", null=True, plain=True)
        for key, allowed in (("quant", _QUANTS), ("dtype", _DTYPES)):
            if model.get(key) is not None and model[key] not in allowed:
                _fail(f"model.{key}", f"{_brief(model[key])} is not one of {', '.join(allowed)}")
        if "endpoint" in model:
            _text(model["endpoint"], "model.endpoint", plain=True)
        _check_params(data["params"], "params")
        pictures = _object(data["pictures"], "pictures")
        for sha, entry in pictures.items():
            where = f"pictures.{sha[:12]}"
            entry = _object(entry, where)
            for key in ("file", "format", "width", "height"):
                if key not in entry:
                    _fail(where, f"{key} is missing")
            _text(entry["file"], f"{where}.file")
            if entry["format"] not in _FORMATS:
                _fail(f"{where}.format", f"{_brief(entry['format'])} is not one of {', '.join(_FORMATS)}")
            _integer(entry, "width", f"{where}.width", 0, INT_MAX)
            _integer(entry, "height", f"{where}.height", 0, INT_MAX)
            if "bytes" in entry:
                _integer(entry, "bytes", f"{where}.bytes", 0, 2**63 - 1, null=True)
            if "source" in entry:
                _text(entry["source"], f"{where}.source")
            if "added" in entry:
                _time(entry["added"], f"{where}.added")
        conversation = _object(data["conversation"], "conversation")
        messages = conversation.get("messages")
        if not isinstance(messages, list):
            _fail("conversation.messages", f"{_brief(messages)} is not a list")
        for n, message in enumerate(messages):
            _check_message(message, f"conversation.messages[{n}]")
    except _Broken as broken:
        raise SessionDamagedError(
            f"{_show(path)} is a vlchat session with a broken field ({broken})",
            "it is left as it is; fix the field or restore a backup",
        ) from None
    return data


def current_session_data(path: StrPath) -> dict[str, Any]:
    """session.json read, brought up to the current format and checked field by field; or a
    one-line SessionError. Nothing is written."""
    return current_session_data_and_version(Path(path))[0]


def current_session_data_and_version(path: Path) -> tuple[dict[str, Any], int]:
    data = read_session_data(path)
    version = data["schema_version"]
    if version < SCHEMA_VERSION:
        try:
            data = migrate(data)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, OSError) as error:
            raise SessionDamagedError(
                f"{_show(path)} is an older vlchat session with a broken field ({clean(str(error), keep_newlines=False)[:80]})",
                "it is left as it is; fix the field or restore a backup",
            ) from None
    return check_session_data(data, path), version


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older session.json up to SCHEMA_VERSION, one version at a time."""
    version = data["schema_version"]
    if version == 0:
        data = _migrate_0_to_1(data)
    return data


def _migrate_0_to_1(old: dict[str, Any]) -> dict[str, Any]:
    """Format 0 (vlchat before sessions had a picture index): float times, a model name, top-level
    messages whose pictures name their original path; the copies were already in images/<sha>.<ext>."""
    pictures: dict[str, Any] = {}
    messages = []
    for message in old.get("messages", []):
        message = dict(message)
        images = []
        for ref in message.get("images", []) or []:
            sha, fmt = str(ref.get("sha256", "")), str(ref.get("format", "")).upper()
            pictures.setdefault(sha, {
                "file": picture_file(sha, fmt), "format": fmt, "width": ref.get("width"),
                "height": ref.get("height"), "bytes": None, "source": str(ref.get("path", "")),
                "added": iso_from_epoch(float(message.get("created", 0.0))),
            })
            images.append(dict(ref, path=picture_file(sha, fmt), format=fmt))
        if images:
            message["images"] = images
        messages.append(message)
    model = old.get("model")
    return {
        "format": FORMAT,
        "schema_version": 1,
        "id": old["id"],
        "title": old.get("title") or "Untitled",
        "title_is_auto": False,
        "created": iso_from_epoch(float(old.get("created", 0.0))),
        "updated": iso_from_epoch(float(old.get("updated", old.get("created", 0.0)))),
        "model": {"name": model} if isinstance(model, str) else dict(model or {}),
        "params": old.get("params") or GenerationParams().to_dict(),
        "pictures": pictures,
        "conversation": {"messages": messages},
    }

