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
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.core.safe_files import (
    StrPath,
    atomic_write,
    atomic_write_at,
    fsync_dir,
    is_link_error,
    json_bytes,
    open_folder_nofollow,
    read_file_nofollow,
    read_regular_file,
    shown_path,
)
from vlchat.core.session_errors import (
    AmbiguousSessionError,
    SessionDamagedError,
    SessionError,
    SessionLockedError,
    SessionNotFoundError,
    SessionReadOnlyError,
    SessionSaveError,
    SessionTooNewError,
    SessionWriteRefusedError,
    save_error,
)
from vlchat.core.session_folder import Picture, RefOnly, Session
from vlchat.core.session_format import (
    EXTENSIONS,
    FORMAT,
    IMAGES_DIR,
    INT_MAX,
    SCHEMA_VERSION,
    SEED_MAX,
    SESSION_FILE,
    SESSION_ID,
    TIME_MAX,
    TITLE_MAX,
    check_picture_path,
    check_session_data,
    current_session_data,
    current_session_data_and_version,
    iso_from_epoch,
    migrate,
    now_iso,
    parse_iso,
    picture_file,
    read_session_data,
    short_title,
)
from vlchat.core.session_lock import LOCK_FILE, SessionLock
from vlchat.core.text import clean

# Every name vlchat and its tests import from here; the code lives in the modules imported above.
__all__ = [
    "StrPath",
    "SCHEMA_VERSION",
    "FORMAT",
    "SESSION_FILE",
    "IMAGES_DIR",
    "LOCK_FILE",
    "TITLE_MAX",
    "SessionError",
    "SessionNotFoundError",
    "AmbiguousSessionError",
    "SessionDamagedError",
    "SessionTooNewError",
    "SessionLockedError",
    "SessionWriteRefusedError",
    "SessionReadOnlyError",
    "SessionSaveError",
    "shown_path",
    "json_bytes",
    "now_iso",
    "parse_iso",
    "iso_from_epoch",
    "short_title",
    "picture_file",
    "fsync_dir",
    "atomic_write",
    "is_link_error",
    "open_folder_nofollow",
    "read_file_nofollow",
    "read_regular_file",
    "atomic_write_at",
    "SessionLock",
    "Picture",
    "check_picture_path",
    "Session",
    "RefOnly",
    "read_session_data",
    "INT_MAX",
    "SEED_MAX",
    "TIME_MAX",
    "check_session_data",
    "current_session_data",
    "migrate",
    "load_session",
    "SessionInfo",
    "default_root",
    "store_root",
    "SessionStore",
]

_show = shown_path
_SHA = re.compile(r"[0-9a-f]{64}")



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
            sha256=sha, format=fmt if fmt in EXTENSIONS else "PNG", width=width, height=height,
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
            came_from = f" (it came from {_show(picture.source)})" if picture.source else ""
            session.problems.append(
                f"the picture {picture.name} is missing from the session folder ({picture.file}); the conversation "
                f"goes on without it. Attach it again to show it to the model{came_from}"
            )


def load_session(folder: StrPath, *, read_only: bool = False) -> Session:
    """Open the session in ``folder``: locked for writing unless ``read_only``; migrated if older."""
    folder = Path(folder)
    file = folder / SESSION_FILE
    data, version = current_session_data_and_version(file)
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
        raise save_error("a backup of the older session", backup, error) from None
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
            raise save_error("a new session", self.root, error) from None
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
        if not by_id and len(wanted) >= 4 and SESSION_ID.fullmatch(wanted.ljust(12, "0")):
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
            raise save_error("the deletion of the session", folder, error) from None
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

