"""The lock that keeps a session open for writing in one process at a time."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from vlchat.core.safe_files import CLOEXEC, NOFOLLOW, NONBLOCK, is_link_error, shown_path
from vlchat.core.session_errors import (
    FULL_ERRNOS,
    UNWRITABLE_ERRNOS,
    SessionError,
    SessionLockedError,
    SessionSaveError,
    SessionWriteRefusedError,
)
from vlchat.core.text import clean

LOCK_FILE = ".lock"

_show = shown_path


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
        flags = os.O_RDWR | NOFOLLOW | CLOEXEC
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as error:
            raise self._cannot_open(error) from None
        try:
            fd = os.open(self.path, flags | NONBLOCK)
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
        if error.errno in UNWRITABLE_ERRNOS:
            return SessionWriteRefusedError(
                message, "copy the session folder somewhere writable to go on with it; `vlchat export` reads it where it is"
            )
        if error.errno in FULL_ERRNOS:
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
