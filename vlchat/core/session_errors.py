"""The errors of sessions: each one line that names the file, with a hint of what to do."""

from __future__ import annotations

import errno

from vlchat.core.errors import InputError, VlchatError
from vlchat.core.safe_files import StrPath, shown_path
from vlchat.core.text import clean

_show = shown_path


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


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
UNWRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def _save_hint(code: int | None, *, still_open: bool) -> str:
    if code in FULL_ERRNOS:
        return ("free some disk space; the conversation is still open and is saved again after the next answer" if still_open
                else "free some disk space and run it again; what was saved before is kept")
    if code in UNWRITABLE_ERRNOS:
        return ("the folder cannot be written; choose another with --sessions-dir or VLCHAT_SESSIONS_DIR (the conversation is still open)"
                if still_open else "the folder cannot be written; copy the session somewhere writable, or choose another sessions folder with --sessions-dir")
    if code in (errno.ENOTDIR, errno.ENOENT):
        return "the sessions folder is not a usable folder; choose another with --sessions-dir or VLCHAT_SESSIONS_DIR"
    return ("check the disk; the conversation is still open and is saved again after the next answer" if still_open
            else "check the disk and run it again")


def save_error(what: str, path: StrPath, error: OSError) -> SessionSaveError:
    code = error.errno
    reason = clean(error.strerror or str(error), keep_newlines=False)
    return SessionSaveError(f"could not save {what} to {_show(path)}: {reason}", _save_hint(code, still_open=True), errno_=code)

