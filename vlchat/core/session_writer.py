"""The app's session work on disk: one thread of its own, one queue, results through callbacks.

The UI thread never waits on the disk: it hands the writer a ``Snapshot`` of the conversation
(copies of the lists, never the lists themselves) and goes on. Jobs run one after another in the
order they were asked for; a save not yet started is replaced by a newer one of the same
conversation. Each job belongs to an *epoch*, the conversation it was made in: ``new_conversation``,
``open`` and deleting the open session start a new one, and the writer closes the old session before
it touches the new one, so no write lands in the wrong folder.

Callbacks run on the writer's thread; whoever receives them hands them on to its own thread.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from vlchat.core.conversation import Conversation, ImageRef
from vlchat.core.errors import VlchatError
from vlchat.core.text import clean


def open_or_read_only(store: Any, ref: Any) -> tuple[Any, Any]:
    """The session ``ref`` names, locked for writing; read-only when another vlchat holds its lock.
    Returns (session, the lock error or None) so the caller can say it was opened read-only."""
    from vlchat.core.session_errors import SessionLockedError

    try:
        return store.open(ref), None
    except SessionLockedError as error:
        return store.open(ref, read_only=True), error


@dataclass
class Snapshot:
    """The conversation as it is on screen at one moment, in copies the writer may keep."""

    messages: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    params: Any = None
    model: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)  # sha256 -> the path a picture was first attached from


@dataclass
class SessionJob:
    kind: str  # save | switch | delete | export
    epoch: int
    snapshot: Snapshot = field(default_factory=Snapshot)
    reason: str = ""
    title: str | None = None
    target: Any = None  # switch: a folder; delete: ("open"|"other", folder, title); export: a path or None


@dataclass
class SessionCallbacks:
    """What the writer reports. ``saved(session, stored, created)``: ``stored`` maps sha256 to the
    copy inside the session folder. ``switched(session, notes, errors)``: the open session is now
    ``session`` (None: a new conversation); with errors it did not change."""

    saved: Callable[[Any, dict, bool], None]
    save_failed: Callable[[str], None]
    note: Callable[[str, bool], None]
    switched: Callable[[Any, list, list], None]


class SessionWriter:
    def __init__(self, store: Any, callbacks: SessionCallbacks, session: Any = None) -> None:
        self.store = store
        self.session = session  # the open session (written by the writer's thread)
        self._report = callbacks
        self._lock = threading.Condition()  # guards the queue, the epoch and idleness
        self._jobs: list[SessionJob] = []
        self._busy = False
        self._thread: threading.Thread | None = None
        self.epoch = 0  # the conversation on screen
        self._session_epoch = 0  # the conversation self.session holds

    # -- asking for work (any thread; the app's UI thread in practice) -----------------------------
    def save(self, snapshot: Snapshot, reason: str = "", title: str | None = None) -> None:
        self._queue(SessionJob("save", self.epoch, snapshot, reason=reason, title=title))

    def new_conversation(self) -> None:
        """The conversation on screen is a new one: the old session stays on disk, closed."""
        self.epoch += 1

    def open(self, snapshot: Snapshot, folder: Any) -> None:
        """Switch to another session; the open conversation is saved (if it can be) and closed first."""
        self.epoch += 1
        self._queue(SessionJob("switch", self.epoch, snapshot, target=folder))

    def delete(self, folder: Any, title: str, *, is_open: bool) -> None:
        if is_open:  # the open session: closed (its lock released) first
            self.epoch += 1
        self._queue(SessionJob("delete", self.epoch, target=("open" if is_open else "other", folder, title)))

    def export(self, snapshot: Snapshot, target: str | None) -> None:
        self._queue(SessionJob("export", self.epoch, snapshot, target=target))

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written."""
        with self._lock:
            return not self._jobs and not self._busy

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued job is done; False if that took longer than ``timeout``."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def close(self, timeout: float = 10) -> None:
        """At exit: write what is queued (a save takes milliseconds) and release the session's lock."""
        if self.flush(timeout):
            with self._lock:
                self._busy = True  # nothing else runs while the session is closed
            try:
                if self.session is not None:
                    self.session.close()
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    # -- the thread ----------------------------------------------------------------------------------
    def _queue(self, job: SessionJob) -> None:
        if self.store is None:  # sessions are off
            return
        with self._lock:
            last = self._jobs[-1] if self._jobs else None
            if job.kind == "save" and last is not None and last.kind == "save" and last.epoch == job.epoch:
                # A newer snapshot of the same conversation replaces one not yet written.
                job.title = job.title or last.title
                job.reason = "picture" if "picture" in (job.reason, last.reason) else job.reason
                self._jobs[-1] = job
                return
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vlchat-sessions", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: bool(self._jobs))
                job = self._jobs.pop(0)
                self._busy = True
            try:
                self._do(job)
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def _do(self, job: SessionJob) -> None:
        try:
            getattr(self, f"_do_{job.kind}")(job)
        except Exception as error:  # a bug or an odd OSError: one line, the conversation stays
            line = f"{type(error).__name__}: {clean(str(error), keep_newlines=False)}"
            if job.kind in ("switch", "delete"):
                self._session_epoch = max(self._session_epoch, job.epoch)
                self._report.switched(self.session, [], [line])
            else:
                self._report.save_failed(line)

    def _enter_epoch(self, epoch: int) -> bool:
        """Make self.session belong to ``epoch``; False for a job of a conversation already left."""
        if epoch < self._session_epoch:
            return False
        if epoch > self._session_epoch:
            if self.session is not None:
                self.session.close()  # the old conversation stays on disk, unlocked
                self.session = None
            self._session_epoch = epoch
        return True

    # -- the jobs ------------------------------------------------------------------------------------
    def _do_save(self, job: SessionJob) -> bool:
        if not self._enter_epoch(job.epoch):
            return True
        snap = job.snapshot
        created = False
        if self.session is None:
            asked = any(m.role == "user" for m in snap.messages)
            if not asked and not (job.reason == "picture" and snap.pending) and not job.title:
                return True  # nothing worth a session yet (an empty app leaves no folder behind)
            try:
                self.session = self.store.create(model=snap.model, params=snap.params)
            except VlchatError as error:
                self._report.save_failed(str(error))
                return False
            created = True
        session = self.session
        if session.read_only:
            if job.title:
                self._report.note("This session is open read-only (it is open elsewhere), so it cannot be renamed here.", True)
            return True
        stored = self._store_pictures(session, snap)
        session.conversation = Conversation(messages=list(snap.messages))
        session.params = snap.params
        session.model = dict(snap.model)
        try:
            if job.title:
                session.rename(job.title)
            else:
                session.save()
        except VlchatError as error:
            self._report.save_failed(str(error))
            return False
        if job.title:
            self._report.note(f"Session renamed to {clean(session.title, keep_newlines=False)!r}; it is saved in {clean(str(session.folder), keep_newlines=False)}", False)
        self._report.saved(session, stored, created)
        return True

    def _store_pictures(self, session: Any, snap: Snapshot) -> dict[str, ImageRef]:
        from vlchat.core.session_folder import RefOnly

        stored: dict[str, ImageRef] = {}
        inside = str(session.folder) + os.sep
        for ref in [*(r for m in snap.messages for r in m.images), *snap.pending]:
            if ref.sha256 not in stored and not ref.path.startswith(inside):
                try:
                    stored[ref.sha256] = session.attach(RefOnly(ref))
                except VlchatError as error:
                    self._report.save_failed(str(error))
            picture = session.pictures.get(ref.sha256)
            if picture is not None and os.path.basename(picture.source).startswith(ref.sha256) and ref.sha256 in snap.sources:
                # Copied from another session's folder (after /clear or /load): keep the name it was attached with.
                picture.source = snap.sources[ref.sha256]
        return stored

    def _do_switch(self, job: SessionJob) -> None:
        from vlchat.core.session_errors import SessionError

        unsaved = self.session is None and any(m.role == "user" for m in job.snapshot.messages)
        if self._session_epoch < job.epoch and (unsaved or (self.session is not None and not self.session.read_only)):
            # The conversation being left is saved first; if that fails it stays open here.
            previous = replace(job, kind="save", epoch=self._session_epoch, title=None)
            if not self._do_save(previous):
                self._session_epoch = job.epoch
                self._report.switched(self.session, [], ["The session was not switched: the open conversation could not be saved, so it stays open."])
                return
        notes: list[str] = []
        try:
            new, locked = open_or_read_only(self.store, job.target)
        except SessionError as error:
            self._session_epoch = job.epoch  # keep the conversation that is open
            self._report.switched(self.session, [], [str(error)])
            return
        if locked is not None:
            notes.append(f"{locked.message}: opened read-only; nothing you add here is saved.")
        self._enter_epoch(job.epoch)
        self.session = new
        self._report.switched(new, notes, [])

    def _do_delete(self, job: SessionJob) -> None:
        which, folder, title = job.target
        if which == "open" and not self._enter_epoch(job.epoch):
            return
        try:
            self.store.delete(folder)
        except VlchatError as error:
            if which == "open":
                # Still the open conversation: take its folder (and lock) back and keep saving there.
                try:
                    self.session = self.store.open(folder)
                except VlchatError:
                    self.session = None
                self._report.switched(self.session, [], [f"Not deleted: {error}"])
            else:
                self._report.note(f"Not deleted: {error}", True)
            return
        shown = clean(str(title or folder), keep_newlines=False)
        if which == "open":
            self._report.switched(None, [f"Deleted the session {shown!r}. This is a new conversation."], [])
        else:
            self._report.note(f"Deleted the session in {shown}.", False)

    def _do_export(self, job: SessionJob) -> None:
        from vlchat.core.export import default_name, export_markdown

        if job.epoch != self._session_epoch or self.session is None:
            self._report.note("Nothing to export yet: ask a question first.", True)
            return
        session = self.session
        target = Path(os.path.expanduser(job.target)) if job.target else Path.cwd() / default_name(session)
        try:
            result = export_markdown(session, target)
        except VlchatError as error:
            self._report.note(f"Not exported: {error}", True)
            return
        count = len(result.pictures)
        where = f" and {count} picture{'s' if count != 1 else ''} in {result.assets_dir}" if count else ""
        missing = f" ({len(result.missing)} missing from the session)" if result.missing else ""
        self._report.note(clean(f"Exported to {result.path.resolve()}{where}{missing}", keep_newlines=False), False)

