"""Where `vlchat caption` writes: JSON lines, a JSON array, CSV, or a .txt beside each picture.

Every store reads back what an earlier run wrote, so a run started again skips the pictures
already captioned with the same model and prompt (by content: a picture moved or renamed is still
done), and never overwrites a file it cannot read as its own.

A record is one picture: path, sha256, caption, model, prompt, tokens, seconds; or, for a picture
that could not be captioned, path, sha256 (when the file could be read), model, prompt, error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from vlchat.core.errors import InputError
from vlchat.core.sessions import atomic_write
from vlchat.core.text import clean

FORMATS = ("jsonl", "json", "csv", "txt-sidecar")
CSV_COLUMNS = ("path", "sha256", "caption", "model", "prompt", "tokens", "seconds", "error")
MANIFEST = ".vlchat-captions.jsonl"  # beside sidecar .txt files: which of them vlchat wrote
JSON_SAVE_EVERY_S = 10.0


def format_for(output: str | None, requested: str | None) -> str:
    """--format if given, else what the output file's name says (.json, .csv), else JSON lines."""
    if requested:
        return requested
    suffix = Path(output or "").suffix.lower()
    return {".json": "json", ".csv": "csv"}.get(suffix, "jsonl")


def _shown(path: str | os.PathLike) -> str:
    return clean(os.fsdecode(path), keep_newlines=False)


def _not_ours(path: str | os.PathLike, why: str) -> InputError:
    return InputError(
        f"{_shown(path)} is not a vlchat caption file ({why}), so it is left as it is",
        "choose another -o FILE, or move that file away",
    )


class Done:
    """What earlier runs did: captions by (sha256, model, prompt), with the paths they were written
    for; errors by (path, model, prompt)."""

    def __init__(self) -> None:
        self.captioned: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.paths: set[tuple[str, str, str, str]] = set()
        self.failed: set[tuple[str, str, str]] = set()

    def add(self, record: dict[str, Any]) -> None:
        model, prompt = str(record.get("model", "")), str(record.get("prompt", ""))
        path = os.path.abspath(str(record.get("path", "")))
        if record.get("error"):
            self.failed.add((path, model, prompt))
        elif record.get("sha256"):
            sha = str(record["sha256"])
            self.captioned[(sha, model, prompt)] = record
            self.paths.add((path, sha, model, prompt))

    def caption_for(self, sha256: str, model: str, prompt: str) -> dict[str, Any] | None:
        """The record of a picture with these bytes, captioned with this model and prompt, wherever it was."""
        return self.captioned.get((sha256, model, prompt))

    def has_path(self, path: str, sha256: str, model: str, prompt: str) -> bool:
        return (os.path.abspath(path), sha256, model, prompt) in self.paths

    def has_error(self, path: str, model: str, prompt: str) -> bool:
        return (os.path.abspath(path), model, prompt) in self.failed

    def __len__(self) -> int:
        return len(self.captioned) + len(self.failed)


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("path"), str) and ("caption" in value or "error" in value)


class Store:
    """The common shape: ``done`` read at open, ``write(record)`` as each picture finishes, ``close()``."""

    path: Path | None = None

    def __init__(self) -> None:
        self.done = Done()
        self.written = 0

    def prepare(self, picture: str) -> None:
        """Learn what is known about this picture before ``done`` and ``blocked`` are asked."""

    def blocked(self, picture: str) -> str | None:
        """Why this picture must not be captioned into this store (None: it may)."""
        return None

    def write(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def where(self) -> str:
        return _shown(self.path) if self.path else "beside the pictures"


class JsonLinesStore(Store):
    """One JSON object a line, appended and flushed as each picture finishes."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)
        self._handle = None
        keep = self._read()
        try:
            self._handle = open(self.path, "r+b" if self.path.exists() else "wb")
            self._handle.seek(keep)
            self._handle.truncate()
            if keep:
                self._handle.seek(keep - 1)
                if self._handle.read(1) != b"\n":
                    self._handle.write(b"\n")  # a last record saved without its newline
            self._handle.flush()
        except OSError as error:
            raise InputError(f"cannot write {_shown(self.path)}: {error.strerror or error}", "check the folder and its permissions") from None

    def _read(self) -> int:
        """Read earlier records; return how many bytes of the file to keep (a line cut short by a
        crash is dropped)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as error:
            raise InputError(f"cannot read {_shown(self.path)}: {error.strerror or error}", "check its permissions") from None
        keep = 0
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, 1):
            last = number == len(lines)
            if not raw.strip():
                keep += len(raw) + (0 if last else 1)
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not _is_record(record):
                if last and raw.startswith(b'{"path"'):
                    break  # our own line, cut short when the run was killed: captioned again
                raise _not_ours(self.path, f"line {number} is not a caption record")
            self.done.add(record)
            keep += len(raw) + (0 if last else 1)
        return keep

    def write(self, record: dict[str, Any]) -> None:
        assert self._handle is not None
        self._handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._handle.flush()
        self.written += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class CsvStore(Store):
    """A header and one row a picture, appended and flushed as each finishes."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)
        fresh = self._read()
        try:
            self._handle = open(self.path, "a", encoding="utf-8", newline="")
        except OSError as error:
            raise InputError(f"cannot write {_shown(self.path)}: {error.strerror or error}", "check the folder and its permissions") from None
        self._writer = csv.DictWriter(self._handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        if fresh:
            self._writer.writeheader()
            self._handle.flush()

    def _read(self) -> bool:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return True
        except (OSError, UnicodeDecodeError) as error:
            raise _not_ours(self.path, f"it cannot be read as text: {error}") from None
        if not text.strip():
            self.path.write_text("")
            return True
        if not text.endswith("\n"):
            # a row cut short when the run was killed: drop it, it is captioned again
            text = text[: text.rfind("\n") + 1]
            if not text:
                raise _not_ours(self.path, "it has no header line")
            with open(self.path, "r+", encoding="utf-8") as handle:
                handle.truncate(len(text.encode("utf-8")))
        reader = csv.DictReader(io.StringIO(text))
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise _not_ours(self.path, "its header is not " + ",".join(CSV_COLUMNS))
        for row in reader:
            self.done.add({k: v for k, v in row.items() if v not in (None, "")})
        return False

    def write(self, record: dict[str, Any]) -> None:
        self._writer.writerow({key: record.get(key, "") for key in CSV_COLUMNS})
        self._handle.flush()
        self.written += 1

    def close(self) -> None:
        self._handle.close()


class JsonArrayStore(Store):
    """A JSON array of records, rewritten atomically (at the end, and every few seconds on the way),
    so the file is always a whole array: earlier ones are read back and kept."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self._saved_at = time.monotonic()
        self._dirty = False
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as error:
            raise _not_ours(self.path, f"it cannot be read as text: {error}") from None
        if text.strip():
            try:
                data = json.loads(text)
            except ValueError:
                raise _not_ours(self.path, "it is not JSON") from None
            if not isinstance(data, list) or not all(_is_record(r) for r in data):
                raise _not_ours(self.path, "it is not a list of caption records")
            self.records = data
            for record in data:
                self.done.add(record)
        if not self.path.parent.is_dir():
            raise InputError(f"the folder of {_shown(self.path)} does not exist", "create it first, or choose another -o FILE")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.written += 1
        self._dirty = True
        if time.monotonic() - self._saved_at >= JSON_SAVE_EVERY_S:
            self._save()

    def _save(self) -> None:
        data = json.dumps(self.records, ensure_ascii=False, indent=1) + "\n"
        atomic_write(self.path, data.encode("utf-8"), mode=0o644)
        self._saved_at = time.monotonic()
        self._dirty = False

    def close(self) -> None:
        if self._dirty or not self.path.exists():
            self._save()


def sidecar_for(picture: str) -> Path:
    """``photo.jpg`` -> ``photo.txt``: the name training tools look for."""
    return Path(picture).with_suffix(".txt")


def _text_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SidecarStore(Store):
    """A .txt with the caption beside each picture, and in each folder a hidden manifest
    (``.vlchat-captions.jsonl``) naming the .txt files vlchat wrote, with what it wrote in them:
    a .txt vlchat did not write (or that was edited since) is never replaced unless ``overwrite``."""

    def __init__(self, *, overwrite: bool = False):
        super().__init__()
        self.overwrite = overwrite
        # folder -> {txt name -> manifest record (the latest)}
        self._manifests: dict[str, dict[str, dict[str, Any]]] = {}
        self._claimed: dict[str, str] = {}  # .txt path -> the picture this run captions into it

    def _manifest(self, folder: str) -> dict[str, dict[str, Any]]:
        if folder in self._manifests:
            return self._manifests[folder]
        entries: dict[str, dict[str, Any]] = {}
        try:
            lines = (Path(folder) / MANIFEST).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill: that .txt counts as not ours until rewritten
            if isinstance(record, dict) and isinstance(record.get("txt"), str) and record.get("text_sha256"):
                entries[record["txt"]] = record
        self._manifests[folder] = entries
        return entries

    def _ours(self, txt: Path) -> dict[str, Any] | None:
        """The manifest record of this .txt if vlchat wrote it as it is now."""
        entry = self._manifest(str(txt.parent)).get(txt.name)
        if entry is None:
            return None
        try:
            data = txt.read_bytes()
        except OSError:
            return None
        return entry if entry.get("text_sha256") == _text_sha(data) else None

    def prepare(self, picture: str) -> None:
        """Read what is known about this picture's .txt, so ``done`` answers for it."""
        txt = sidecar_for(picture)
        entry = self._ours(txt)
        if entry is not None:
            self.done.add(entry)

    def blocked(self, picture: str) -> str | None:
        txt = sidecar_for(picture)
        other = self._claimed.get(str(txt))
        if other is not None and os.path.realpath(other) != os.path.realpath(picture):
            return f"{_shown(txt)} is already the caption of {_shown(other)} in this run"
        if txt.exists() and not self.overwrite and self._ours(txt) is None:
            return f"{_shown(txt)} exists and vlchat did not write it (--overwrite replaces it)"
        self._claimed[str(txt)] = picture
        return None

    def write(self, record: dict[str, Any]) -> None:
        picture = record["path"]
        txt = sidecar_for(picture)
        folder = str(txt.parent)
        entry = {"txt": txt.name, **record}
        data = b""
        if not record.get("error"):
            data = (record["caption"] + "\n").encode("utf-8")
            entry["text_sha256"] = _text_sha(data)
        # The manifest line first: a .txt on disk is only ever one the manifest already claims,
        # so a kill between the two leaves a caption to redo, never a .txt we would not own.
        with open(Path(folder) / MANIFEST, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if not record.get("error"):
            self._manifest(folder)[txt.name] = entry
            atomic_write(txt, data, mode=0o644)
        self.written += 1

    def where(self) -> str:
        return "a .txt beside each picture"


def open_store(fmt: str, output: str | None, *, overwrite: bool = False) -> Store:
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}", "use " + ", ".join(FORMATS))
    if fmt == "txt-sidecar":
        return SidecarStore(overwrite=overwrite)
    if not output:
        raise InputError("no output file given", "add -o captions.jsonl (or --format txt-sidecar for a .txt beside each picture)")
    if os.path.isdir(output):
        raise InputError(f"{_shown(output)} is a folder", "give a file name for -o, e.g. -o captions.jsonl")
    parent = Path(output).parent
    if not parent.is_dir():
        raise InputError(f"the folder of {_shown(output)} does not exist", "create it first, or choose another -o FILE")
    if fmt == "jsonl":
        return JsonLinesStore(output)
    if fmt == "csv":
        return CsvStore(output)
    return JsonArrayStore(output)
