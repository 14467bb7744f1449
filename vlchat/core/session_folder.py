"""A session: a conversation with its folder, its pictures copied in, saved atomically."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlchat.core.conversation import Conversation, GenerationParams, ImageRef, Message
from vlchat.core.errors import InputError
from vlchat.core.safe_files import (
    atomic_write,
    atomic_write_at,
    is_link_error,
    open_folder_nofollow,
    read_file_nofollow,
    read_regular_file,
    shown_path,
)
from vlchat.core.session_errors import (
    SessionDamagedError,
    SessionReadOnlyError,
    SessionSaveError,
    SessionTooNewError,
    save_error,
)
from vlchat.core.session_format import (
    EXTENSIONS,
    FORMAT,
    IMAGES_DIR,
    SCHEMA_VERSION,
    SESSION_FILE,
    now_iso,
    picture_file,
    read_session_data,
    short_title,
)
from vlchat.core.session_lock import SessionLock
from vlchat.core.text import clean

_show = shown_path


class _NotAFolderError(OSError):
    """images/ is a link or a file where vlchat's folder should be."""


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
        return shown_path(base) or f"{self.sha256[:12]}.{EXTENSIONS.get(self.format, 'bin')}"

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
            raise save_error(f"the picture {_show(source.name)}", target, error) from None
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
            raise save_error(f"the session {clean(title, keep_newlines=False)!r}", self.file, error) from None
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
            raise save_error("the session", self.file, error) from None
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
