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
import hashlib
import json
import math
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


class SessionWriteRefusedError(SessionLockedError):
    """The session can be read but not opened for writing: its folder cannot be written (read-only
    disk, no permission), or its ``.lock`` is not vlchat's (a link, a folder, another file)."""


class SessionReadOnlyError(SessionError):
    """The session was opened read-only, so it is not saved."""


class SessionSaveError(VlchatError):
    """Saving failed (full disk, read-only folder, I/O error). The conversation in memory is untouched."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, *, errno_: int | None = None):
        self.errno = errno_
        super().__init__(message, hint)

    def for_command(self) -> "SessionSaveError":
        """The same failure, with the hint for a command that ends here (nothing stays open)."""
        return SessionSaveError(self.message, _save_hint(self.errno, still_open=False), errno_=self.errno)


def shown_path(path: StrPath) -> str:
    """A path or file name as it may be shown or written as text: control characters removed, and
    bytes that are not UTF-8 (held as surrogate escapes, PEP 383) shown as U+FFFD."""
    text = os.fsdecode(path)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return clean(text, keep_newlines=False)


_show = shown_path


def json_bytes(value: Any, *, indent: int | None = None) -> bytes:
    """JSON as UTF-8 bytes that any text (file names that are not UTF-8 included) survives.

    A file name that is not UTF-8 is held in Python as surrogate escapes (PEP 383, as
    ``os.fsdecode`` gives it); those cannot be encoded as UTF-8, so each is written as the JSON
    escape ``\\udcXX``, which ``json.loads`` turns back into the same string and ``os.fsencode``
    into the original bytes. Everything else is written as it is.
    """
    return json.dumps(value, ensure_ascii=False, indent=indent).encode("utf-8", "backslashreplace")


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


# Files inside a session folder are opened without following links: a session folder may come
# from someone else, and a link in it (images/, .lock, a picture) must not make vlchat read,
# write or delete anything outside it.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def is_link_error(error: OSError) -> bool:
    """Whether an ``O_NOFOLLOW`` open failed because the last part of the path is a link."""
    return error.errno in (errno.ELOOP, errno.EMLINK) and _NOFOLLOW != 0


def open_folder_nofollow(path: StrPath) -> int:
    """A file descriptor of the folder at ``path``; OSError (ELOOP) if it is a link, ENOTDIR if not a folder."""
    return os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)


def read_file_nofollow(path: StrPath, *, dir_fd: int | None = None) -> bytes:
    """The bytes of a regular file, never through a link at its name and never from a pipe or device.

    Raises OSError: ELOOP for a link, EISDIR for a folder, EINVAL for anything else that is not a file.
    """
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "it is a folder", os.fsdecode(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file (a pipe, socket or device)", os.fsdecode(path))
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_regular_file(path: StrPath) -> bytes:
    """The bytes of a regular file (a link to one is followed: it is the person's own picture),
    never of a pipe or device, which could block or never end."""
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file", os.fsdecode(path))
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class _NotAFolderError(OSError):
    """images/ is a link or a file where vlchat's folder should be."""


def atomic_write_at(dir_fd: int, name: str, data: bytes, *, mode: int | None = None) -> None:
    """``atomic_write`` into the folder open as ``dir_fd``: the temporary file is made there with
    O_EXCL|O_NOFOLLOW and renamed over ``name`` there, so a link swapped in for the folder or the
    file is never written through."""
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    try:
        os.fsync(dir_fd)
    except OSError:
        pass


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _save_hint(code: int | None, *, still_open: bool) -> str:
    if code in _FULL:
        return ("free some disk space; the conversation is still open and is saved again after the next answer" if still_open
                else "free some disk space and run it again; what was saved before is kept")
    if code in _UNWRITABLE:
        return ("the folder cannot be written; choose another with --sessions-dir or VLCHAT_SESSIONS_DIR (the conversation is still open)"
                if still_open else "the folder cannot be written; copy the session somewhere writable, or choose another sessions folder with --sessions-dir")
    if code in (errno.ENOTDIR, errno.ENOENT):
        return "the sessions folder is not a usable folder; choose another with --sessions-dir or VLCHAT_SESSIONS_DIR"
    return ("check the disk; the conversation is still open and is saved again after the next answer" if still_open
            else "check the disk and run it again")


def _save_error(what: str, path: StrPath, error: OSError) -> SessionSaveError:
    code = error.errno
    reason = clean(error.strerror or str(error), keep_newlines=False)
    return SessionSaveError(f"could not save {what} to {_show(path)}: {reason}", _save_hint(code, still_open=True), errno_=code)


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
            fd = self._open()
            if fd is None:
                continue
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
                raise self._cannot_open(error) from None
            # The holder may have removed the file between our open and our flock: then we hold a
            # lock on a file nobody else can see. Only a lock on the file at the path counts.
            try:
                here, there = os.fstat(fd), os.lstat(self.path)
                same = (here.st_ino, here.st_dev) == (there.st_ino, there.st_dev)
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._write_pid(fd)
            self.fd = fd
            return
        raise SessionLockedError(f"could not lock the session in {_show(self.path.parent)}", "try again")

    def _open(self) -> int | None:
        """The lock file, made here or known to be a lock file vlchat made; None if it just vanished.

        Never through a link, and never a file that is not a lock: the pid is written into it.
        """
        flags = os.O_RDWR | _NOFOLLOW | _CLOEXEC
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as error:
            raise self._cannot_open(error) from None
        try:
            fd = os.open(self.path, flags | _NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as error:
            if is_link_error(error):
                raise self._not_ours("a link") from None
            if error.errno == errno.EISDIR:
                raise self._not_ours("a folder") from None
            raise self._cannot_open(error) from None
        info = os.fstat(fd)
        why = None
        if not stat.S_ISREG(info.st_mode):
            why = "not a regular file"
        elif info.st_nlink != 1:
            why = "a file with other names (a hard link)"
        elif info.st_size > 64 or not re.fullmatch(rb"\s*\d*\s*", os.pread(fd, 64, 0)):
            why = "a file that does not hold a process id"
        if why:
            os.close(fd)
            raise self._not_ours(why)
        return fd

    def _write_pid(self, fd: int) -> None:
        # The pid only names the holder (the flock is the lock): a full disk must not stop the open.
        data = f"{os.getpid()}\n".encode()
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError:
            pass

    def _not_ours(self, what: str) -> SessionWriteRefusedError:
        return SessionWriteRefusedError(
            f"{_show(self.path)} is {what}, not vlchat's lock, so vlchat does not write to it or open the session for writing",
            "remove that .lock if you trust the folder, then open the session again (`vlchat export` reads it as it is)",
        )

    def _cannot_open(self, error: OSError) -> SessionError | SessionSaveError:
        reason = clean(error.strerror or str(error), keep_newlines=False)
        message = f"cannot open the session in {_show(self.path.parent)} for writing: {reason}"
        if error.errno in _UNWRITABLE:
            return SessionWriteRefusedError(
                message, "copy the session folder somewhere writable to go on with it; `vlchat export` reads it where it is"
            )
        if error.errno in _FULL:
            return SessionSaveError(message, "free some disk space and open it again", errno_=error.errno)
        return SessionSaveError(message, "check the disk and the folder", errno_=error.errno)

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
        return shown_path(base) or f"{self.sha256[:12]}.{_EXTENSIONS.get(self.format, 'bin')}"

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
        from vlchat.core.images import ImageNotFoundError, LoadedImage, load_image

        loaded = item if isinstance(item, (LoadedImage, _RefOnly)) else load_image(item)
        ref = loaded.ref
        if ref.sha256 in self.pictures and self.picture_path(ref.sha256):
            return self._runtime_ref(self.pictures[ref.sha256])
        if self.read_only:
            raise SessionReadOnlyError(f"the session {self.title!r} is open read-only", "pictures are not added to it")
        source = Path(ref.path)
        try:
            data = read_regular_file(source)
        except OSError:
            data = b""
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
        name = picture.file.split("/")[-1]
        try:
            images = self._open_images_dir(create=True)
            try:
                try:
                    same = hashlib.sha256(read_file_nofollow(name, dir_fd=images)).hexdigest() == ref.sha256
                except OSError:
                    same = False  # missing, or a link or other non-file squatting on our name: replaced
                if not same:
                    atomic_write_at(images, name, data)
            finally:
                os.close(images)
        except _NotAFolderError as error:
            raise SessionSaveError(
                f"could not save the picture {_show(source.name)} in {_show(self.folder)}: {error.strerror}, and vlchat does not write through it",
                "move that images link or file away, then attach the picture again (the conversation is still open)",
                errno_=error.errno,
            ) from None
        except OSError as error:
            raise _save_error(f"the picture {_show(source.name)}", target, error) from None
        self.pictures[ref.sha256] = picture
        self._refused.discard(ref.sha256)
        return self._runtime_ref(picture)

    def _open_images_dir(self, *, create: bool = False) -> int:
        """A descriptor of images/, refusing a link (or anything not a folder) in its place."""
        if create:
            try:
                os.mkdir(self.images_dir, 0o700)
            except FileExistsError:
                pass
        try:
            return open_folder_nofollow(self.images_dir)
        except OSError as error:
            if is_link_error(error) or error.errno == errno.ENOTDIR:
                raise _NotAFolderError(errno.ENOTDIR, f"{IMAGES_DIR}/ is a link or a file, not a folder of its own",
                                       os.fsdecode(self.images_dir)) from None
            raise

    def read_picture(self, sha256: str) -> bytes | None:
        """The stored bytes of a picture if they are still the picture's (their sha256 matches);
        None when it is missing, refused, or no longer what was attached. Never read through a link."""
        picture = self.pictures.get(sha256)
        if picture is None or sha256 in self._refused:
            return None
        try:
            images = self._open_images_dir()
        except OSError:
            return None
        try:
            data = read_file_nofollow(picture.file.split("/")[-1], dir_fd=images)
        except OSError:
            return None
        finally:
            os.close(images)
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

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
            info = os.lstat(self.file)
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
            info = os.lstat(self.file)
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
    # A lone surrogate (a file name that is not UTF-8, see json_bytes) becomes its JSON escape.
    return "\n".join(lines).encode("utf-8", "backslashreplace")


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
_FORMATS = tuple(_EXTENSIONS)
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
        if not isinstance(data["id"], str) or not _ID.fullmatch(data["id"]):
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
    return _current_session_data(Path(path))[0]


def _current_session_data(path: Path) -> tuple[dict[str, Any], int]:
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
    data, version = _current_session_data(file)
    lock = None
    if not read_only:
        lock = SessionLock(folder, clean(str(data.get("title") or ""), keep_newlines=False) or None)
        lock.acquire()
    try:
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
            info = os.lstat(file)
            session._disk_stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        return session
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _remove_stale_temporary_files(folder: Path) -> None:
    """Temporary files of saves that were killed before their rename; we hold the lock, so none is live.

    Only in the session folder and in an images/ that is a folder of its own (not a link to one).
    """
    for stray in folder.glob(f".{SESSION_FILE}.*.tmp"):
        try:
            stray.unlink()
        except OSError:
            pass
    try:
        images = open_folder_nofollow(folder / IMAGES_DIR)
    except OSError:
        return
    try:
        for name in os.listdir(images):
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    os.unlink(name, dir_fd=images)
                except OSError:
                    pass
    finally:
        os.close(images)


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
    info = os.lstat(file)
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
        data = current_session_data(folder / SESSION_FILE)
        messages = data["conversation"]["messages"]
        model = next((m.get("model") for m in reversed(messages) if m.get("role") == "assistant" and m.get("model")), None)
        model = model or (data.get("model") or {}).get("name") or ""
        return SessionInfo(
            folder=folder, id=str(data["id"]), title=shown_path(str(data.get("title") or "Untitled")),
            created=str(data["created"]), updated=str(data.get("updated") or data["created"]),
            turns=sum(1 for m in messages if m.get("role") == "user"),
            pictures=len(data.get("pictures") or {}), model=clean(str(model), keep_newlines=False),
        )
    except SessionError as error:
        return SessionInfo(folder, folder.name, "", "", "", 0, 0, "", error=str(error))
    except Exception as error:  # noqa: BLE001 - one bad folder must never stop the listing of the others
        return SessionInfo(folder, folder.name, "", "", "", 0, 0, "",
                           error=f"{_show(folder / SESSION_FILE)} is a vlchat session with a broken field "
                                 f"({type(error).__name__}: {clean(str(error), keep_newlines=False)[:80]}).")


# -- the store ------------------------------------------------------------------------------------
def _holds_session(folder: Path) -> bool:
    """Whether a folder of the store has a session.json (one that cannot even be looked at counts,
    so that it is listed as damaged rather than stopping the listing)."""
    try:
        return stat.S_ISDIR(os.stat(folder).st_mode) and os.path.lexists(folder / SESSION_FILE)
    except OSError:
        return False


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
        try:
            lock.acquire()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # ours, just made, empty
            raise
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
        return (p for p in entries if _holds_session(p))

    def list(self) -> list[SessionInfo]:
        """Every session, most recently updated first; unreadable ones carry ``error`` and sort last."""
        infos = [_info(folder) for folder in self.folders()]
        good = sorted((i for i in infos if not i.error), key=lambda i: i.updated, reverse=True)
        return good + [i for i in infos if i.error]

    def most_recent(self) -> SessionInfo | None:
        return next((i for i in self.list() if not i.error), None)

    def find(self, ref: str | StrPath | None = None) -> Path:
        """The folder of the session a person means: a path, an id or its prefix, a title; None: the latest."""
        return self.choose(ref)[0]

    def choose(self, ref: str | StrPath | None = None) -> tuple[Path, str | None]:
        """As ``find``, with a note to show when a title fitted several sessions and the most recent
        was taken (each `vlchat demo` makes another session with the same title)."""
        if ref is None or (isinstance(ref, str) and not ref.strip()):
            latest = self.most_recent()
            if latest is None:
                raise SessionNotFoundError(
                    f"there are no sessions yet in {_show(self.root)}",
                    "start one with `vlchat ask --session new PICTURE QUESTION` or in the app",
                )
            return latest.folder, None
        text = os.fspath(ref)
        as_path = Path(os.path.expanduser(text))
        looks_like_path = isinstance(ref, os.PathLike) or os.sep in text or text.startswith((".", "~")) or text.endswith(".json")
        if as_path.name == SESSION_FILE and as_path.is_file():
            return as_path.parent, None
        if as_path.is_dir() and (as_path / SESSION_FILE).exists():
            return as_path, None
        if isinstance(ref, os.PathLike):
            raise self._no_session_at(text)
        infos = [i for i in self.list() if not i.error]
        wanted = text.strip()
        by_id = [i for i in infos if i.id == wanted]
        if not by_id and len(wanted) >= 4 and _ID.fullmatch(wanted.ljust(12, "0")):
            by_id = [i for i in infos if i.id.startswith(wanted.lower())]
        if len(by_id) == 1:
            return by_id[0].folder, None
        if len(by_id) > 1:
            listed = ", ".join(f"{m.id} ({_show(m.title)})" for m in by_id[:5])
            raise AmbiguousSessionError(f"{_show(wanted)!r} fits {len(by_id)} sessions: {listed}",
                                        "give more of the id")
        folded = wanted.casefold()
        by_title = ([i for i in infos if i.title == wanted] or [i for i in infos if i.title.casefold() == folded]
                    or ([i for i in infos if folded in i.title.casefold()] if wanted else []))
        if by_title:
            # infos are most recent first: an ambiguous title means the latest of them, said aloud
            chosen = by_title[0]
            note = None
            if len(by_title) > 1:
                note = (f"{len(by_title)} sessions fit {_show(wanted)!r}; using the most recent, {chosen.id} "
                        f"({_show(chosen.title)}); name another by its id (`vlchat sessions` lists them)")
            return chosen.folder, note
        for info in self.list():
            # A damaged session is still named by its folder: say what is wrong with it.
            if info.error and (info.folder.name == wanted or (len(wanted) >= 4 and info.folder.name.startswith(wanted))):
                raise SessionDamagedError(info.error.rstrip("."))
        if looks_like_path:  # a title may hold a slash, so titles were tried first
            raise self._no_session_at(text)
        raise SessionNotFoundError(
            f"no session called {_show(wanted)!r} in {_show(self.root)}",
            "see them with `vlchat sessions`; give a title or part of one, an id (at least its first 4 characters) or a folder",
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
            try:
                images = open_folder_nofollow(folder / IMAGES_DIR)  # never delete through a link
            except OSError:
                images = None
            try:
                for picture in session.pictures.values():
                    if images is not None and picture.sha256 not in session._refused:
                        try:
                            os.unlink(picture.file.split("/")[-1], dir_fd=images)
                        except FileNotFoundError:
                            pass
            finally:
                if images is not None:
                    os.close(images)
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

