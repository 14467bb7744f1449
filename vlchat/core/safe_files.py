"""Files read and written safely: never through a link where a folder may come from someone else,
never from a pipe or device, and replaced atomically (old file or new, never half). Paths shown as text
are cleaned of control characters. Used for sessions, captions and exports."""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any

from vlchat.core.text import clean

StrPath = str | os.PathLike


def shown_path(path: StrPath) -> str:
    """A path or file name as it may be shown or written as text: control characters removed, and
    bytes that are not UTF-8 (held as surrogate escapes, PEP 383) shown as U+FFFD."""
    text = os.fsdecode(path)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return clean(text, keep_newlines=False)



def json_bytes(value: Any, *, indent: int | None = None) -> bytes:
    """JSON as UTF-8 bytes that any text (file names that are not UTF-8 included) survives.

    A file name that is not UTF-8 is held in Python as surrogate escapes (PEP 383, as
    ``os.fsdecode`` gives it); those cannot be encoded as UTF-8, so each is written as the JSON
    escape ``\\udcXX``, which ``json.loads`` turns back into the same string and ``os.fsencode``
    into the original bytes. Everything else is written as it is.
    """
    return json.dumps(value, ensure_ascii=False, indent=indent).encode("utf-8", "backslashreplace")



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
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def is_link_error(error: OSError) -> bool:
    """Whether an ``O_NOFOLLOW`` open failed because the last part of the path is a link."""
    return error.errno in (errno.ELOOP, errno.EMLINK) and NOFOLLOW != 0


def open_folder_nofollow(path: StrPath) -> int:
    """A file descriptor of the folder at ``path``; OSError (ELOOP) if it is a link, ENOTDIR if not a folder."""
    return os.open(path, os.O_RDONLY | _DIRECTORY | NOFOLLOW | CLOEXEC)


def _read_to_end(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def read_file_nofollow(path: StrPath, *, dir_fd: int | None = None) -> bytes:
    """The bytes of a regular file, never through a link at its name and never from a pipe or device.

    Raises OSError: ELOOP for a link, EISDIR for a folder, EINVAL for anything else that is not a file.
    """
    fd = os.open(path, os.O_RDONLY | NOFOLLOW | NONBLOCK | CLOEXEC, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "it is a folder", os.fsdecode(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file (a pipe, socket or device)", os.fsdecode(path))
        return _read_to_end(fd)
    finally:
        os.close(fd)


def read_regular_file(path: StrPath) -> bytes:
    """The bytes of a regular file (a link to one is followed: it is the person's own picture),
    never of a pipe or device, which could block or never end."""
    fd = os.open(path, os.O_RDONLY | NONBLOCK | CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file", os.fsdecode(path))
        return _read_to_end(fd)
    finally:
        os.close(fd)



def atomic_write_at(dir_fd: int, name: str, data: bytes, *, mode: int | None = None) -> None:
    """``atomic_write`` into the folder open as ``dir_fd``: the temporary file is made there with
    O_EXCL|O_NOFOLLOW and renamed over ``name`` there, so a link swapped in for the folder or the
    file is never written through."""
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o600, dir_fd=dir_fd)
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

