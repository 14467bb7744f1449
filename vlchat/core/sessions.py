"""Sessions: one conversation per folder on disk, saved atomically, locked while open, never lost.

A session folder holds ``session.json`` (the format is documented in ``sessions/README.md`` and
``sessions/session.schema.json`` at the top of the repository) and ``images/``, where each attached
picture is copied once under its sha256. Inside ``session.json`` a picture is named only by its
place in ``images/``; the path it was first read from is kept as information and never read again,
so a session works after the originals move and cannot be made to read files outside its folder.

How the app plugs in::

    store = SessionStore(store_root(settings))
    session = store.resolve(name_or_none)        # --resume; or store.create(model=..., params=...)
    ref = session.attach(loaded_image)           # copies the picture in; then session.save()
    session.conversation.add_user(question, [ref]) ; session.save()
    ... stream ... ; session.conversation.add_assistant(text, ...) ; session.save()
    session.close()                              # releases the lock

Every error here is a ``VlchatError`` with one line that names the file. A ``session.json`` that
cannot be read as a vlchat session is never overwritten, moved or deleted by this module.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from vlchat.core.conversation import Conversation, GenerationParams, ImageRef, Message
from vlchat.core.errors import InputError, VlchatError
from vlchat.core.text import clean

StrPath = str | os.PathLike

SCHEMA_VERSION = 1
FORMAT = "vlchat-session"
SESSION_FILE = "session.json"
IMAGES_DIR = "images"
LOCK_FILE = ".lock"
TITLE_MAX = 60

# The picture formats vlchat reads, as stored: the extension is part of the file name in images/.
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
_SHA = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{12}")


# -- errors -------------------------------------------------------------------------------------
class SessionError(InputError):
    """A session cannot be used as asked (exit 2: the person can fix it)."""


class SessionNotFoundError(SessionError):
    """No session by that name, id or path."""


class AmbiguousSessionError(SessionError):
    """A name or id prefix that fits more than one session."""


class SessionDamagedError(SessionError):
    """``session.json`` is cut short, not JSON, not a vlchat session, or inconsistent. Left as it is."""


class SessionTooNewError(SessionError):
    """Written by a newer vlchat whose format this one does not know. Left as it is."""


class SessionLockedError(SessionError):
    """Another process has the session open for writing."""

    def __init__(self, message: str, hint: str | None = None, *, pid: int | None = None):
        self.pid = pid
        super().__init__(message, hint)


class SessionReadOnlyError(SessionError):
    """The session was opened read-only, so it is not saved."""


class SessionSaveError(VlchatError):
    """Saving failed (full disk, read-only folder, I/O error). The conversation in memory is untouched."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, *, errno_: int | None = None):
        self.errno = errno_
        super().__init__(message, hint)


def _show(path: StrPath) -> str:
    return clean(os.fsdecode(path), keep_newlines=False)


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
    return f"{IMAGES_DIR}/{sha256}.{_EXTENSIONS.get(fmt.upper(), 'bin')}"


def fsync_dir(folder: StrPath) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: StrPath, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new one, never half.

    A temporary file in the same folder is written and fsynced, renamed over ``path``, and the folder
    is fsynced so the rename survives a power cut. Raises OSError; the temporary file is removed.
    Files are private (0600) unless ``mode`` says otherwise: conversations are personal.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def _save_error(what: str, path: StrPath, error: OSError) -> SessionSaveError:
    code = error.errno
    reason = clean(error.strerror or str(error), keep_newlines=False)
    if code in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some disk space; the conversation is still open and is saved again after the next answer"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "the folder cannot be written; choose another with --sessions-dir or VLCHAT_SESSIONS_DIR (the conversation is still open)"
    elif code in (errno.ENOTDIR, errno.ENOENT):
        hint = "the sessions folder is not a usable folder; choose another with --sessions-dir or VLCHAT_SESSIONS_DIR"
    else:
        hint = "check the disk; the conversation is still open and is saved again after the next answer"
    return SessionSaveError(f"could not save {what} to {_show(path)}: {reason}", hint, errno_=code)


# -- the lock ---------------------------------------------------------------------------------------
class SessionLock:
    """An exclusive lock on a session folder, held for as long as the session is open for writing.

    The lock is ``flock`` on an open ``.lock`` file that records the holder's pid. The kernel drops
    a flock when its process dies, however it dies (kill -9 included), so a lock left by a dead
    process is simply taken over; the pid in the file is only there to name the holder.
    """

    def __init__(self, folder: Path, title: str | None = None):
        self.path = folder / LOCK_FILE
        self.title = title
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        for _attempt in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise _save_error("the session lock", self.path, error) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                pid = self._read_pid(fd)
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = f"pid {pid}" if pid else "another process"
                    what = f"the session {self.title!r}" if self.title else f"the session in {_show(self.path.parent)}"
                    raise SessionLockedError(
                        f"{what} is open elsewhere ({holder})",
                        "close it there, or open it read-only to look at it (`vlchat export` reads it while it is open)",
                        pid=pid,
                    ) from None
                raise _save_error("the session lock", self.path, error) from None
            # The holder may have removed the file between our open and our flock: then we hold a
            # lock on a file nobody else can see. Only a lock on the file at the path counts.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return
        raise SessionLockedError(f"could not lock the session in {_show(self.path.parent)}", "try again")

    @staticmethod
    def _read_pid(fd: int) -> int | None:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            return int(text.split()[0]) if text else None
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None


# -- what is stored -------------------------------------------------------------------------------
@dataclass
class Picture:
    """One picture stored in the session: its file inside the folder and where it first came from."""

    sha256: str
    format: str
    width: int
    height: int
    source: str  # the path it was attached from; information only, never read
    bytes: int
    added: str

    @property
    def file(self) -> str:
        return picture_file(self.sha256, self.format)

    @property
    def name(self) -> str:
        """The original file name, cleaned, for showing and for export."""
        base = os.path.basename(self.source.replace("\\", "/")) if self.source else ""
        return clean(base, keep_newlines=False) or f"{self.sha256[:12]}.{_EXTENSIONS.get(self.format, 'bin')}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
            "source": self.source,
            "added": self.added,
        }


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
    if stem != sha256 or ext not in _EXTENSIONS.values():
        return f"{_show(relative)} is not named by the picture's sha256"
    return None


# -- the session -----------------------------------------------------------------------------------
@dataclass
class Session:
    """A conversation with its folder. Change ``conversation``; call ``save()`` to make it durable."""

    folder: Path
    id: str
    title: str = "Untitled"
    title_is_auto: bool = True
    created: str = field(default_factory=now_iso)
    updated: str = ""
    conversation: Conversation = field(default_factory=Conversation)
    model: dict[str, Any] = field(default_factory=dict)
    params: GenerationParams = field(default_factory=GenerationParams)
    pictures: dict[str, Picture] = field(default_factory=dict)
    read_only: bool = False
    problems: list[str] = field(default_factory=list)
    migrated_from: int | None = None
    _lock: SessionLock | None = field(default=None, repr=False)
    _disk_stamp: tuple[int, int, int] | None = field(default=None, repr=False)
    _refused: set[str] = field(default_factory=set, repr=False)
    _line_cache: dict[int, Any] = field(default_factory=dict, repr=False)

    # -- paths --------------------------------------------------------------------------------
    @property
    def file(self) -> Path:
        return self.folder / SESSION_FILE

    @property
    def images_dir(self) -> Path:
        return self.folder / IMAGES_DIR

    def picture_path(self, sha256: str) -> Path | None:
        """The stored file of a picture, or None when it is missing or refused."""
        picture = self.pictures.get(sha256)
        if picture is None or sha256 in self._refused:
            return None
        path = self.folder / picture.file
        try:
            info = os.lstat(path)
        except OSError:
            return None
        return path if stat.S_ISREG(info.st_mode) else None

    def _runtime_ref(self, picture: Picture) -> ImageRef:
        # A refused picture gets a path that cannot exist, so nothing ever reads what it pointed at.
        path = self.folder / picture.file
        if picture.sha256 in self._refused:
            path = self.folder / IMAGES_DIR / "refused" / picture.file.split("/")[-1]
        return ImageRef(picture.sha256, str(path), picture.format, picture.width, picture.height)

    # -- pictures -------------------------------------------------------------------------------
    def attach(self, item: Any) -> ImageRef:
        """Copy a picture (a LoadedImage, or a path to load) into ``images/`` once; return its reference.

        Put the returned reference into the conversation: it names the copy in the session, so the
        conversation no longer depends on the original file. Call ``save()`` afterwards.
        """
        from vlchat.core.images import ImageNotFoundError, LoadedImage, load_image, sha256_file

        loaded = item if isinstance(item, (LoadedImage, _RefOnly)) else load_image(item)
        ref = loaded.ref
        if ref.sha256 in self.pictures and self.picture_path(ref.sha256):
            return self._runtime_ref(self.pictures[ref.sha256])
        if self.read_only:
            raise SessionReadOnlyError(f"the session {self.title!r} is open read-only", "pictures are not added to it")
        source = Path(ref.path)
        try:
            data = source.read_bytes()
        except OSError:
            data = b""
        import hashlib

        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ImageNotFoundError(
                f"{_show(source)} has changed or gone since it was loaded, so it cannot be copied into the session",
                "attach it again",
            )
        picture = Picture(
            sha256=ref.sha256,
            format=ref.format.upper(),
            width=ref.width,
            height=ref.height,
            source=os.path.abspath(ref.path),
            bytes=len(data),
            added=now_iso(),
        )
        target = self.folder / picture.file
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            existing = os.lstat(target) if os.path.lexists(target) else None
            if existing is None or not stat.S_ISREG(existing.st_mode) or sha256_file(target) != ref.sha256:
                if existing is not None and not stat.S_ISREG(existing.st_mode):
                    os.unlink(target)  # a link or other non-file squatting on our name; never follow it
                atomic_write(target, data)
        except OSError as error:
            raise _save_error(f"the picture {_show(source.name)}", target, error) from None
        self.pictures[ref.sha256] = picture
        self._refused.discard(ref.sha256)
        return self._runtime_ref(picture)

    def pending_pictures(self) -> list[ImageRef]:
        """Pictures attached but not yet sent with a question (shown in the preview on resume)."""
        used = {ref.sha256 for ref in self.conversation.images()}
        return [self._runtime_ref(p) for sha, p in self.pictures.items() if sha not in used]

    def missing_pictures(self) -> list[Picture]:
        return [p for sha, p in self.pictures.items() if self.picture_path(sha) is None]

    def open_picture(self, ref: ImageRef):
        """Decode a picture of this session from its stored copy only (never from the original path)."""
        from vlchat.core.images import ImageNotFoundError, open_ref

        path = self.picture_path(ref.sha256)
        if path is None:
            picture = self.pictures.get(ref.sha256)
            name = picture.name if picture else ref.sha256[:12]
            raise ImageNotFoundError(
                f"the picture {name} is missing from the session folder {_show(self.images_dir)}",
                "attach the picture again",
            )
        return open_ref(ImageRef(ref.sha256, str(path), ref.format, ref.width, ref.height))

    # -- title --------------------------------------------------------------------------------
    def rename(self, title: str) -> None:
        """Give the session a title of its own (it then no longer follows the first question); saves."""
        title = " ".join(clean(title, keep_newlines=False).split())
        if not title:
            raise InputError("the title is empty", "give a few words, e.g. /save Holiday photos")
        old = (self.title, self.title_is_auto)
        self.title, self.title_is_auto = title, False
        try:
            self.save()
        except BaseException:
            self.title, self.title_is_auto = old
            raise

    def _auto_title(self) -> str:
        first = next((m for m in self.conversation.messages if m.role == "user"), None)
        return short_title(first.text) if first is not None else self.title

    # -- reading numbers ------------------------------------------------------------------------
    @property
    def turns(self) -> int:
        return sum(1 for m in self.conversation.messages if m.role == "user")

    @property
    def model_name(self) -> str:
        last = self.conversation.last("assistant")
        return (last.model if last and last.model else None) or str(self.model.get("name") or "")

    # -- saving ---------------------------------------------------------------------------------
    def to_dict(self, *, updated: str | None = None, title: str | None = None) -> dict[str, Any]:
        """session.json as a dict (see sessions/README.md)."""
        return dict(self._header(updated, title), conversation={"messages": [self._message_dict(m) for m in self.conversation.messages]})

    def _header(self, updated: str | None, title: str | None) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "title": self.title if title is None else title,
            "title_is_auto": self.title_is_auto,
            "created": self.created,
            "updated": updated or self.updated or self.created,
            "model": dict(self.model),
            "params": self.params.to_dict(),
            "pictures": {sha: p.to_dict() for sha, p in self.pictures.items()},
        }

    def _message_dict(self, message: Message) -> dict[str, Any]:
        data = message.to_dict()
        if message.images:
            data["images"] = [self._stored_ref(ref) for ref in message.images]
        return data

    def _message_lines(self) -> list[str]:
        """Each message as one line of JSON, re-encoding only messages that changed since the last save.

        Encoding is most of an autosave's CPU time; comparing a message's dict with the one encoded
        last time is several times cheaper, and catches any change, in place or not.
        """
        cache = self._line_cache
        fresh: dict[int, tuple[Message, dict[str, Any], str]] = {}
        lines = []
        for message in self.conversation.messages:
            data = self._message_dict(message)
            hit = cache.get(id(message))
            line = hit[2] if hit is not None and hit[0] is message and hit[1] == data else _ENCODE(data)
            fresh[id(message)] = (message, data, line)
            lines.append(line)
        self._line_cache = fresh
        return lines

    def _stored_ref(self, ref: ImageRef) -> dict[str, Any]:
        picture = self.pictures.get(ref.sha256)
        fmt = picture.format if picture else ref.format.upper()
        return {
            "sha256": ref.sha256,
            "path": picture_file(ref.sha256, fmt),
            "format": fmt,
            "width": ref.width,
            "height": ref.height,
        }

    def save(self, *, touch: bool = True) -> None:
        """Write session.json atomically. On failure raise SessionSaveError and change nothing in memory.

        ``touch=False`` keeps ``updated`` as it is (for rewrites that are no change to the conversation).
        """
        if self.read_only:
            raise SessionReadOnlyError(
                f"the session {clean(self.title, keep_newlines=False)!r} is open read-only, so it is not saved",
                "open it where it is not open elsewhere to keep changes",
            )
        # Pictures put into the conversation without attach() are copied in now, so none is lost.
        for ref in self.conversation.unique_images():
            if ref.sha256 not in self.pictures:
                self._attach_or_note_missing(ref)
        self._refuse_to_overwrite_foreign_file()
        updated = now_iso() if touch or not self.updated else self.updated
        if updated <= (self.updated or ""):
            updated = self.updated  # the clock went back; never let `updated` run backwards
        title = self._auto_title() if self.title_is_auto else self.title
        data = _dumps(self._header(updated, title), self._message_lines())
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.file, data)
            info = os.stat(self.file)
        except OSError as error:
            raise _save_error(f"the session {clean(title, keep_newlines=False)!r}", self.file, error) from None
        self.updated, self.title = updated, title
        self._disk_stamp = (info.st_ino, info.st_size, info.st_mtime_ns)

    def _attach_or_note_missing(self, ref: ImageRef) -> None:
        from vlchat.core.images import ImageError

        try:
            self.attach(_RefOnly(ref))
        except ImageError:
            # The original is gone: the conversation is still saved, and says which picture it lacks.
            self.pictures[ref.sha256] = Picture(
                ref.sha256, ref.format.upper(), ref.width, ref.height, os.path.abspath(ref.path), 0, now_iso()
            )
            self.problems.append(f"the picture {self.pictures[ref.sha256].name} could not be copied into the session")

    def _refuse_to_overwrite_foreign_file(self) -> None:
        """If session.json changed on disk since we read or wrote it and is no longer a vlchat session, stop."""
        try:
            info = os.stat(self.file)
        except FileNotFoundError:
            return
        except OSError as error:
            raise _save_error("the session", self.file, error) from None
        if (info.st_ino, info.st_size, info.st_mtime_ns) == self._disk_stamp:
            return
        try:
            data = read_session_data(self.file)
        except (SessionDamagedError, SessionTooNewError) as error:
            raise SessionDamagedError(
                f"{error.message}; it changed on disk while the session was open, so vlchat does not overwrite it",
                "move that file away and the next save writes a fresh one (the conversation is still open)",
            ) from None
        if data.get("id") != self.id:
            raise SessionDamagedError(
                f"{_show(self.file)} now holds another session ({_show(str(data.get('id')))}), so vlchat does not overwrite it",
                "move that folder away; the conversation is still open",
            )

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close must not leave the lock held in a long-lived app
        try:
            self.close()
        except Exception:
            pass


class _RefOnly:
    """A LoadedImage stand-in for a picture known only by its reference (its original file is read)."""

    def __init__(self, ref: ImageRef):
        self.ref = ref


RefOnly = _RefOnly  # the public name, for the app's session writer


_ENCODE = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode


def _dumps(header: dict[str, Any], message_lines: list[str]) -> bytes:
    """session.json text: one field, picture or message per line.

    Readable and diffable like indented JSON, but each line comes from json's C encoder (indent=
    falls back to the pure-Python one, which alone took most of the 20 ms autosave budget at 500 turns).
    """
    dumps = _ENCODE
    lines = ["{"]
    for key, value in header.items():
        if key == "pictures" and value:
            inner = ",\n".join(f"  {dumps(sha)}: {dumps(entry)}" for sha, entry in value.items())
            lines.append(f' "pictures": {{\n{inner}\n }},')
        else:
            lines.append(f" {dumps(key)}: {dumps(value)},")
    if message_lines:
        inner = ",\n  ".join(message_lines)
        lines.append(f' "conversation": {{"messages": [\n  {inner}\n ]}}')
    else:
        lines.append(' "conversation": {"messages": []}')
    lines.append("}\n")
    return "\n".join(lines).encode("utf-8")


# -- reading --------------------------------------------------------------------------------------
def read_session_data(path: Path) -> dict[str, Any]:
    """The JSON of a session.json that is a vlchat session of a version we read, or a one-line error."""
    name = _show(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SessionNotFoundError(f"no session file at {name}", "list sessions with `vlchat sessions`") from None
    except IsADirectoryError:
        raise SessionDamagedError(f"{name} is a folder, not a session file", "") from None
    except OSError as error:
        raise SessionDamagedError(f"cannot read {name}: {clean(error.strerror or str(error), keep_newlines=False)}", "check its permissions") from None
    if not raw.strip():
        raise SessionDamagedError(f"{name} is empty, so the session in it is lost or was never written",
                                  "it is left as it is; restore it from a backup or remove the folder")
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError:
        raise SessionDamagedError(f"{name} is not a vlchat session (it is not text)", "it is left as it is") from None
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


def _session_from_data(folder: Path, data: dict[str, Any], *, read_only: bool) -> Session:
    name = _show(folder / SESSION_FILE)
    try:
        session_id = str(data["id"])
        conversation = Conversation.from_dict(data["conversation"])
        params = GenerationParams.from_dict(data.get("params") or {})
        model = data.get("model") or {}
        if not isinstance(model, dict):
            raise TypeError("model")
        pictures_data = data.get("pictures") or {}
        if not isinstance(pictures_data, dict):
            raise TypeError("pictures")
        session = Session(
            folder=folder,
            id=session_id,
            title=clean(str(data.get("title") or "Untitled"), keep_newlines=False),
            title_is_auto=bool(data.get("title_is_auto", False)),
            created=str(data["created"]),
            updated=str(data.get("updated") or data["created"]),
            conversation=conversation,
            model=dict(model),
            params=params,
            read_only=read_only,
        )
        parse_iso(session.created), parse_iso(session.updated)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise SessionDamagedError(
            f"{name} is a vlchat session with a broken field ({clean(str(error), keep_newlines=False)})",
            "it is left as it is; fix the field or restore a backup",
        ) from None
    _check_pictures(session, pictures_data, data["conversation"].get("messages", []))
    return session


def _check_pictures(session: Session, pictures_data: dict[str, Any], raw_messages: list[Any]) -> None:
    """Fill session.pictures, refusing any picture path that could lead outside the folder."""
    images_dir = session.images_dir
    images_ok = True
    if os.path.lexists(images_dir) and not stat.S_ISDIR(os.lstat(images_dir).st_mode):
        images_ok = False
        session.problems.append(f"{IMAGES_DIR}/ in {_show(session.folder)} is not a folder (a link?); its pictures are refused")
    # Every picture named anywhere: the index, and each message (whose own path is checked too).
    claimed: dict[str, tuple[Any, dict[str, Any]]] = {}
    for sha, entry in pictures_data.items():
        if isinstance(entry, dict):
            claimed.setdefault(str(sha), (entry.get("file"), entry))
    for raw, message in zip(raw_messages, session.conversation.messages):
        for raw_ref, ref in zip(raw.get("images", []) or [], message.images):
            claimed.setdefault(ref.sha256, (raw_ref.get("path"), {}))
            why = check_picture_path(raw_ref.get("path"), ref.sha256) if _SHA.fullmatch(ref.sha256) else "its sha256 is not a sha256"
            if why:
                session._refused.add(ref.sha256)
                session.problems.append(f"a picture reference is refused: {why}")
    for sha, (relative, entry) in claimed.items():
        fmt = str(entry.get("format") or next(
            (r.format for r in session.conversation.images() if r.sha256 == sha), "")).upper()
        why = check_picture_path(relative, sha) if _SHA.fullmatch(sha) else "its sha256 is not a sha256"
        if why is None and relative != picture_file(sha, fmt):
            why = f"{_show(relative)} does not match its format {fmt or '(none)'}"
        if why and sha not in session._refused:
            session.problems.append(f"a picture reference is refused: {why}")
        if why or not images_ok:
            session._refused.add(sha)
        try:
            width = int(entry.get("width") or 0)
            height = int(entry.get("height") or 0)
            size = int(entry.get("bytes") or 0)
        except (TypeError, ValueError):
            width = height = size = 0
        session.pictures[sha] = Picture(
            sha256=sha, format=fmt if fmt in _EXTENSIONS else "PNG", width=width, height=height,
            source=str(entry.get("source") or ""), bytes=size, added=str(entry.get("added") or session.created),
        )
        if sha not in session._refused:
            path = session.folder / relative
            if os.path.islink(path):
                session._refused.add(sha)
                session.problems.append(f"a picture reference is refused: {_show(relative)} is a link")
    # The conversation's references now point into this folder (or, if refused, nowhere).
    for message in session.conversation.messages:
        message.images = [session._runtime_ref(session.pictures[ref.sha256]) for ref in message.images]
    for picture in session.missing_pictures():
        if picture.sha256 not in session._refused:
            session.problems.append(
                f"the picture {picture.name} is missing from the session ({picture.file}); the rest of the conversation is intact"
            )


def load_session(folder: StrPath, *, read_only: bool = False) -> Session:
    """Open the session in ``folder``: locked for writing unless ``read_only``; migrated if older."""
    folder = Path(folder)
    file = folder / SESSION_FILE
    data = read_session_data(file)
    lock = None
    if not read_only:
        lock = SessionLock(folder, clean(str(data.get("title") or ""), keep_newlines=False) or None)
        lock.acquire()
    try:
        version = data["schema_version"]
        if version < SCHEMA_VERSION:
            data = migrate(data)
        session = _session_from_data(folder, data, read_only=read_only)
        session._lock = lock
        if lock is not None:
            _remove_stale_temporary_files(folder)
        if version < SCHEMA_VERSION:
            session.migrated_from = version
            if read_only:
                session.problems.append(f"{_show(file)} is in the older format {version}; it is upgraded when opened for writing")
            else:
                _backup_and_upgrade(session, file, version)
        else:
            info = os.stat(file)
            session._disk_stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        return session
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _remove_stale_temporary_files(folder: Path) -> None:
    """Temporary files of saves that were killed before their rename; we hold the lock, so none is live."""
    for pattern in (f".{SESSION_FILE}.*.tmp", f"{IMAGES_DIR}/.*.tmp"):
        for stray in folder.glob(pattern):
            try:
                stray.unlink()
            except OSError:
                pass


def _backup_and_upgrade(session: Session, file: Path, version: int) -> None:
    original = file.read_bytes()
    backup = file.with_name(f"session.v{version}.json.bak")
    n = 1
    while backup.exists() and backup.read_bytes() != original:
        backup = file.with_name(f"session.v{version}.json.bak.{n}")
        n += 1
    try:
        if not backup.exists():
            atomic_write(backup, original)
    except OSError as error:
        raise _save_error("a backup of the older session", backup, error) from None
    info = os.stat(file)
    session._disk_stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
    session.save(touch=False)  # migrating is not a change to the conversation


# -- listing ----------------------------------------------------------------------------------------
@dataclass
class SessionInfo:
    """One row of `vlchat sessions`."""

    folder: Path
    id: str
    title: str
    created: str
    updated: str
    turns: int
    pictures: int
    model: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "title": self.title, "created": self.created, "updated": self.updated,
            "turns": self.turns, "pictures": self.pictures, "model": self.model,
            "path": str(self.folder), "error": self.error,
        }


def _info(folder: Path) -> SessionInfo:
    try:
        data = read_session_data(folder / SESSION_FILE)
        if data["schema_version"] < SCHEMA_VERSION:
            data = migrate(data)
        messages = data["conversation"]["messages"]
        model = next((m.get("model") for m in reversed(messages) if m.get("role") == "assistant" and m.get("model")), None)
        model = model or (data.get("model") or {}).get("name") or ""
        return SessionInfo(
            folder=folder, id=str(data["id"]), title=clean(str(data.get("title") or "Untitled"), keep_newlines=False),
            created=str(data["created"]), updated=str(data.get("updated") or data["created"]),
            turns=sum(1 for m in messages if m.get("role") == "user"),
            pictures=len(data.get("pictures") or {}), model=clean(str(model), keep_newlines=False),
        )
    except SessionError as error:
        return SessionInfo(folder, folder.name, "", "", "", 0, 0, "", error=str(error))
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        return SessionInfo(folder, folder.name, "", "", "", 0, 0, "",
                           error=f"{_show(folder / SESSION_FILE)} is a vlchat session with a broken field ({clean(str(error), keep_newlines=False)}).")


# -- the store ------------------------------------------------------------------------------------
def default_root() -> Path:
    from vlchat.config import data_dir

    return data_dir() / "sessions"


def store_root(settings: Any = None) -> Path:
    """Where sessions live: --sessions-dir / VLCHAT_SESSIONS_DIR (through settings), else the user data folder."""
    chosen = getattr(settings, "sessions_dir", None) if settings is not None else os.environ.get("VLCHAT_SESSIONS_DIR")
    return Path(os.path.expanduser(chosen)) if chosen else default_root()


class SessionStore:
    """The sessions folder: one sub-folder per session."""

    def __init__(self, root: StrPath | None = None):
        self.root = Path(root) if root is not None else default_root()

    # -- making and opening ---------------------------------------------------------------------
    def create(
        self,
        *,
        model: dict[str, Any] | None = None,
        params: GenerationParams | None = None,
        system: str | None = None,
        title: str | None = None,
    ) -> Session:
        """A new, empty session, locked and saved (so it exists on disk from the start)."""
        try:
            if self.root.exists() and not self.root.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder")
            self.root.mkdir(parents=True, exist_ok=True)
            for _attempt in range(100):
                session_id = secrets.token_hex(6)
                folder = self.root / session_id
                try:
                    folder.mkdir()
                    break
                except FileExistsError:
                    continue
        except OSError as error:
            raise _save_error("a new session", self.root, error) from None
        session = Session(folder=folder, id=session_id, model=dict(model or {}), params=params or GenerationParams())
        if system:
            session.conversation.set_system(system)
        if title:
            session.title, session.title_is_auto = " ".join(clean(title, keep_newlines=False).split()), False
        lock = SessionLock(folder)
        lock.acquire()
        session._lock = lock
        try:
            session.save()
        except BaseException:
            session.close()
            shutil.rmtree(folder, ignore_errors=True)  # ours, just made, nothing in it worth keeping
            raise
        return session

    def open(self, ref: str | StrPath | None = None, *, read_only: bool = False) -> Session:
        """Open a session by name, id, path, or (None) the most recent one."""
        return load_session(self.find(ref), read_only=read_only)

    resolve = open

    # -- finding --------------------------------------------------------------------------------
    def folders(self) -> Iterator[Path]:
        try:
            entries = sorted(self.root.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return iter(())
        except OSError as error:
            raise SessionError(f"cannot read the sessions folder {_show(self.root)}: {error.strerror}", "check its permissions") from None
        return (p for p in entries if (p / SESSION_FILE).exists() and p.is_dir())

    def list(self) -> list[SessionInfo]:
        """Every session, most recently updated first; unreadable ones carry ``error`` and sort last."""
        infos = [_info(folder) for folder in self.folders()]
        good = sorted((i for i in infos if not i.error), key=lambda i: i.updated, reverse=True)
        return good + [i for i in infos if i.error]

    def most_recent(self) -> SessionInfo | None:
        return next((i for i in self.list() if not i.error), None)

    def find(self, ref: str | StrPath | None = None) -> Path:
        """The folder of the session a person means: a path, an id or its prefix, an exact title; None: the latest."""
        if ref is None or (isinstance(ref, str) and not ref.strip()):
            latest = self.most_recent()
            if latest is None:
                raise SessionNotFoundError(
                    f"there are no sessions yet in {_show(self.root)}",
                    "start one with `vlchat ask --session new PICTURE QUESTION` or in the app",
                )
            return latest.folder
        text = os.fspath(ref)
        as_path = Path(os.path.expanduser(text))
        looks_like_path = isinstance(ref, os.PathLike) or os.sep in text or text.startswith((".", "~")) or text.endswith(".json")
        if as_path.name == SESSION_FILE and as_path.is_file():
            return as_path.parent
        if as_path.is_dir() and (as_path / SESSION_FILE).exists():
            return as_path
        if isinstance(ref, os.PathLike):
            raise self._no_session_at(text)
        infos = [i for i in self.list() if not i.error]
        wanted = text.strip()
        by_id = [i for i in infos if i.id == wanted]
        if not by_id and len(wanted) >= 4 and _ID.fullmatch(wanted.ljust(12, "0")):
            by_id = [i for i in infos if i.id.startswith(wanted.lower())]
        by_title = [i for i in infos if i.title == wanted] or [i for i in infos if i.title.casefold() == wanted.casefold()]
        matches = list({i.folder: i for i in by_id + by_title}.values())
        if len(matches) == 1:
            return matches[0].folder
        if len(matches) > 1:
            listed = ", ".join(f"{m.id} ({m.title})" for m in matches[:5])
            raise AmbiguousSessionError(f"{_show(wanted)!r} fits {len(matches)} sessions: {listed}",
                                        "give more of the id")
        for info in self.list():
            # A damaged session is still named by its folder: say what is wrong with it.
            if info.error and (info.folder.name == wanted or (len(wanted) >= 4 and info.folder.name.startswith(wanted))):
                raise SessionDamagedError(info.error.rstrip("."))
        if looks_like_path:  # a title may hold a slash, so titles were tried first
            raise self._no_session_at(text)
        raise SessionNotFoundError(
            f"no session called {_show(wanted)!r} in {_show(self.root)}",
            "see them with `vlchat sessions`; give a title, an id (or its first letters) or a folder",
        )

    @staticmethod
    def _no_session_at(text: str) -> SessionNotFoundError:
        return SessionNotFoundError(f"no session at {_show(text)} (no {SESSION_FILE} there)",
                                    "give a session folder, or a title or id from `vlchat sessions`")

    # -- changing -------------------------------------------------------------------------------
    def rename(self, ref: str | StrPath, title: str) -> Session:
        with self.open(ref) as session:
            session.rename(title)
            return session

    def delete(self, ref: str | StrPath) -> Path:
        """Delete a session folder: only what vlchat put there, only if it is a readable session not open elsewhere."""
        folder = self.find(ref)
        session = load_session(folder)  # refuses damaged, too-new and locked sessions
        try:
            known = {SESSION_FILE, LOCK_FILE, IMAGES_DIR}
            for picture in session.pictures.values():
                path = folder / picture.file
                if os.path.lexists(path) and picture.sha256 not in session._refused:
                    os.unlink(path)
            for backup in folder.glob("session.v*.json.bak*"):
                backup.unlink()
            for stray in folder.glob(f".{SESSION_FILE}.*.tmp"):
                stray.unlink()  # left by a save that was killed before its rename
            os.unlink(folder / SESSION_FILE)
            try:
                (folder / IMAGES_DIR).rmdir()
            except OSError:
                pass
        except OSError as error:
            raise _save_error("the deletion of the session", folder, error) from None
        finally:
            session.close()
        try:
            folder.rmdir()
        except OSError:
            left = sorted(p.name for p in folder.iterdir() if p.name not in known)
            raise SessionError(
                f"the session is deleted, but {_show(folder)} still holds files vlchat did not write ({', '.join(map(_show, left[:3]))})",
                "remove the folder yourself if you do not need them",
            ) from None
        fsync_dir(self.root)
        return folder

