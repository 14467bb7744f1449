"""Where `vlchat caption` writes: JSON lines, a JSON array, CSV, or a .txt beside each picture.

Every store reads back what an earlier run wrote, so a run started again skips the pictures
already captioned with the same model and prompt (by content: a picture moved or renamed is still
done), and never overwrites a file it cannot read as its own.

A record is one picture: path, sha256, caption, model, prompt, tokens, seconds; or, for a picture
that could not be captioned, path, sha256 (when the file could be read), model, prompt, error.
The path is absolute, so a run started from another folder still knows what is done; a name that
is not UTF-8 is kept exactly (see ``json_bytes``; in CSV, as its own bytes).

Nothing here writes through a link, and nothing in an existing file is cut or replaced before
the file is known to be vlchat's own.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from vlchat.core.errors import InputError, VlchatError
from vlchat.core.safe_files import atomic_write, is_link_error, json_bytes, read_file_nofollow, shown_path

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


_shown = shown_path
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class CaptionWriteError(VlchatError):
    """The caption file cannot be written (full disk, I/O error): every picture would fail, so the run stops."""


class PictureWriteError(VlchatError):
    """This picture's caption cannot be written where it goes (its .txt or its folder): it alone is
    left out, the run goes on."""


def _write_failed(path: str | os.PathLike, error: OSError) -> CaptionWriteError:
    return CaptionWriteError(
        f"could not write to {_shown(path)}: {error.strerror or error}",
        "free some disk space or fix the folder, then run the same command again: it goes on where it stopped",
    )


def _open_output(path: Path) -> int:
    """The output file for reading and appending, made if missing; never through a link, never a
    pipe or device. Nothing in it is changed here."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o644)
    except OSError as error:
        if is_link_error(error):
            raise InputError(f"{_shown(path)} is a link; vlchat writes caption files only to the file itself",
                             "give the path of the file it points to with -o, or choose another name") from None
        raise InputError(f"cannot write {_shown(path)}: {error.strerror or error}", "check the folder and its permissions") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InputError(f"{_shown(path)} is not a regular file", "choose another -o FILE")
    os.set_blocking(fd, True)
    return fd


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
        if record.get("error") or not str(record.get("caption") or "").strip():
            # An empty caption is a failure too: older vlchat kept a server's empty stream as one.
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
        self._fd: int | None = _open_output(self.path)
        try:
            data = _read_all(self._fd)
            keep = self._read(data)  # raises, changing nothing, if the file is not ours
            if keep < len(data):
                os.ftruncate(self._fd, keep)  # only our own last line, cut short by a kill
            os.lseek(self._fd, 0, os.SEEK_END)
            if keep and data[keep - 1 : keep] != b"\n":
                _write_all(self._fd, b"\n")  # a last record saved without its newline
        except OSError as error:
            self.close()
            raise InputError(f"cannot write {_shown(self.path)}: {error.strerror or error}", "check the folder and its permissions") from None
        except BaseException:
            self.close()
            raise

    def _read(self, data: bytes) -> int:
        """Read earlier records; return how many bytes of the file to keep (a line of ours cut short
        by a crash is dropped; any other line that is not a record refuses the whole file)."""
        keep = 0
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, 1):
            last = number == len(lines)
            if not raw.strip():
                keep += len(raw) + (0 if last else 1)
                continue
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError):
                record = None
                # Only a line that is not JSON at all and starts as every line vlchat writes can be
                # our own, cut short: valid JSON of any other shape is someone else's.
                if last and raw.startswith(b'{"path": "'):
                    break
            if not _is_record(record):
                raise _not_ours(self.path, f"line {number} is not a caption record")
            self.done.add(record)
            keep += len(raw) + (0 if last else 1)
        return keep

    def write(self, record: dict[str, Any]) -> None:
        assert self._fd is not None
        try:
            _write_all(self._fd, json_bytes(record) + b"\n")
        except OSError as error:
            raise _write_failed(self.path, error) from None
        self.written += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class CsvStore(Store):
    """A header and one row a picture, appended and flushed as each finishes.

    The file is UTF-8; a file name that is not UTF-8 is written as its own bytes (as ``ls`` shows it).
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)
        self._fd: int | None = _open_output(self.path)
        try:
            fresh = self._read(_read_all(self._fd))
            os.lseek(self._fd, 0, os.SEEK_END)
            if fresh:
                self._append_row(dict(zip(CSV_COLUMNS, CSV_COLUMNS)))
        except OSError as error:
            self.close()
            raise InputError(f"cannot write {_shown(self.path)}: {error.strerror or error}", "check the folder and its permissions") from None
        except BaseException:
            self.close()
            raise

    def _read(self, data: bytes) -> bool:
        """Read earlier rows; True when the file is new (empty). Changes nothing unless it is ours."""
        text = data.decode("utf-8", "surrogateescape")
        if not text.strip():
            if text:
                raise _not_ours(self.path, "it holds only blank space")
            return True
        complete = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(complete or text))
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise _not_ours(self.path, "its header is not " + ",".join(CSV_COLUMNS))
        if not complete:
            raise _not_ours(self.path, "it has no header line")
        rows = list(reader)
        if complete != text:
            # a row cut short when the run was killed: the file is ours (its header says so), so
            # the piece is dropped and that picture captioned again
            os.ftruncate(self._fd, len(complete.encode("utf-8", "surrogateescape")))
        for row in rows:
            self.done.add({k: v for k, v in row.items() if v not in (None, "")})
        return False

    def _append_row(self, row: dict[str, Any]) -> None:
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n").writerow(row)
        _write_all(self._fd, buffer.getvalue().encode("utf-8", "surrogateescape"))

    def write(self, record: dict[str, Any]) -> None:
        assert self._fd is not None
        try:
            self._append_row({key: record.get(key, "") for key in CSV_COLUMNS})
        except OSError as error:
            raise _write_failed(self.path, error) from None
        self.written += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
            text = read_file_nofollow(self.path).decode("utf-8")
        except FileNotFoundError:
            text = ""
        except OSError as error:
            if is_link_error(error):
                raise InputError(f"{_shown(self.path)} is a link; vlchat writes caption files only to the file itself",
                                 "give the path of the file it points to with -o, or choose another name") from None
            raise _not_ours(self.path, f"it cannot be read: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise _not_ours(self.path, "it is not UTF-8 text") from None
        if text.strip():
            try:
                data = json.loads(text)
            except (ValueError, RecursionError):
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
        try:
            atomic_write(self.path, json_bytes(self.records, indent=1) + b"\n", mode=0o644)
        except OSError as error:
            raise _write_failed(self.path, error) from None
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
            lines = read_file_nofollow(Path(folder) / MANIFEST).decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []  # missing, or not ours (a link is never read): nothing there counts as written by vlchat
        for line in lines:
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
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
            data = read_file_nofollow(txt)
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
        try:
            info = os.lstat(txt)
        except OSError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            return f"{_shown(txt)} is a folder, so the caption has nowhere to go"
        if info is not None and not self.overwrite and self._ours(txt) is None:
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
        manifest = Path(folder) / MANIFEST
        try:
            self._append_manifest(manifest, json_bytes(entry) + b"\n")
            if not record.get("error"):
                atomic_write(txt, data, mode=0o644)
        except OSError as error:
            raise PictureWriteError(
                f"could not write the caption of {_shown(picture)} to {_shown(txt)}: {error.strerror or error}",
                "fix that folder, then run the same command again",
            ) from None
        if not record.get("error"):
            self._manifest(folder)[txt.name] = entry
        self.written += 1

    @staticmethod
    def _append_manifest(manifest: Path, line: bytes) -> None:
        """One line onto the manifest, never through a link (a link there is someone else's file)."""
        try:
            fd = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o644)
        except OSError as error:
            if is_link_error(error):
                raise OSError(errno.ELOOP, f"{MANIFEST} there is a link, and vlchat does not write through links") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise OSError(errno.EINVAL, f"{MANIFEST} there is not a file of its own, and vlchat does not write to it")
            _write_all(fd, line)
        finally:
            os.close(fd)

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
