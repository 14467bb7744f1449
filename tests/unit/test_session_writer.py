"""The session writer on real folders, without the app: what lands on disk, and what it reports."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.core.session_writer import SessionCallbacks, SessionWriter, Snapshot, open_or_read_only
from vlchat.core.sessions import SessionStore

pytestmark = pytest.mark.timeout(60)


class Reports:
    """What the writer said, in order, as the app would receive it."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.threads: set[str] = set()

    def _add(self, *event) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append(event)

    def callbacks(self) -> SessionCallbacks:
        return SessionCallbacks(
            saved=lambda session, stored, created: self._add("saved", session, stored, created),
            save_failed=lambda line: self._add("failed", line),
            note=lambda text, error: self._add("note", text, error),
            switched=lambda session, notes, errors: self._add("switched", session, notes, errors),
        )

    def of(self, kind: str) -> list[tuple]:
        return [e for e in self.events if e[0] == kind]


@pytest.fixture
def store(tmp_path):
    return SessionStore(tmp_path / "sessions")


def snapshot(*questions: str, pictures=()) -> Snapshot:
    conversation = Conversation()
    for n, question in enumerate(questions):
        conversation.add_user(question, [p.ref for p in pictures] if n == 0 else [])
        conversation.add_assistant(f"Answer {n}.", model="demo")
    return Snapshot(messages=list(conversation.messages), params=GenerationParams(), model={"name": "demo"})


def on_disk(store) -> list[dict]:
    return [json.loads((folder / "session.json").read_text()) for folder in store.folders()]


def test_a_save_makes_a_session_with_its_pictures_copied_in(store, picture):
    reports = Reports()
    writer = SessionWriter(store, reports.callbacks())
    shape = picture("circle", "red", "blue")
    writer.save(snapshot("What colour is the shape?", pictures=[shape]), "answer")
    assert writer.flush(30)
    [data] = on_disk(store)
    assert [m["text"] for m in data["conversation"]["messages"]] == ["What colour is the shape?", "Answer 0."]
    [(_, session, stored, created)] = reports.of("saved")
    assert created and session is writer.session
    assert stored[shape.ref.sha256].path.startswith(str(session.folder))
    assert reports.threads == {"vlchat-sessions"}  # reported from its own thread, never the caller's
    writer.close()
    assert not (session.folder / ".lock").exists()


def test_an_empty_conversation_leaves_no_folder(store):
    writer = SessionWriter(store, Reports().callbacks())
    writer.save(Snapshot(params=GenerationParams()), "system")
    assert writer.flush(30)
    assert list(store.folders()) == [] and writer.session is None


def test_saves_queued_behind_a_slow_one_collapse_into_the_newest(store):
    reports = Reports()
    writer = SessionWriter(store, reports.callbacks())
    questions = [f"Question {n}?" for n in range(30)]
    for n in range(1, len(questions) + 1):
        writer.save(snapshot(*questions[:n]), "answer")
    assert writer.flush(30) and writer.idle
    [data] = on_disk(store)
    assert len(data["conversation"]["messages"]) == 60
    assert len(reports.of("saved")) < 30  # not one write per snapshot
    writer.close()


def test_a_new_conversation_starts_a_new_session_and_closes_the_old(store):
    writer = SessionWriter(store, Reports().callbacks())
    writer.save(snapshot("First?"), "answer")
    writer.new_conversation()
    writer.save(snapshot("Second?"), "answer")
    assert writer.flush(30)
    titles = sorted(d["title"] for d in on_disk(store))
    assert titles == ["First?", "Second?"]
    first = next(f for f in store.folders() if f != writer.session.folder)
    assert not (first / ".lock").exists()  # the old one was closed, its lock released
    writer.close()


def test_a_session_open_elsewhere_opens_read_only(store):
    other = store.create(model={"name": "demo"}, title="Held")
    try:
        session, locked = open_or_read_only(store, other.folder)
        assert session.read_only and "open elsewhere" in locked.message
        session.close()

        reports = Reports()
        writer = SessionWriter(store, reports.callbacks())
        writer.open(Snapshot(), other.folder)
        assert writer.flush(30)
        [(_, opened, notes, errors)] = reports.of("switched")
        assert errors == [] and opened.read_only
        assert notes == [f"{locked.message}: opened read-only; nothing you add here is saved."]
        writer.close()
    finally:
        other.close()


def test_deleting_the_open_session_says_a_new_conversation_begins(store):
    reports = Reports()
    writer = SessionWriter(store, reports.callbacks())
    writer.save(snapshot("Keep me?"), "answer")
    assert writer.flush(30)
    folder = writer.session.folder
    writer.delete(folder, "Keep me?", is_open=True)
    assert writer.flush(30)
    assert not folder.exists() and writer.session is None
    [(_, session, notes, errors)] = reports.of("switched")
    assert session is None and errors == [] and notes == ["Deleted the session 'Keep me?'. This is a new conversation."]


def test_export_writes_markdown_and_says_where(store, tmp_path, picture):
    reports = Reports()
    writer = SessionWriter(store, reports.callbacks())
    snap = snapshot("What colour is the shape?", pictures=[picture()])
    writer.save(snap, "export")
    writer.export(snap, str(tmp_path / "out.md"))
    assert writer.flush(30)
    assert "What colour is the shape?" in (tmp_path / "out.md").read_text()
    [(_, text, error)] = reports.of("note")
    assert not error and text.startswith(f"Exported to {tmp_path / 'out.md'} and 1 picture in ")
    writer.close()


def test_exporting_before_anything_is_saved_says_so(store, tmp_path):
    reports = Reports()
    writer = SessionWriter(store, reports.callbacks())
    writer.export(Snapshot(), str(tmp_path / "out.md"))
    assert writer.flush(30)
    assert reports.of("note") == [("note", "Nothing to export yet: ask a question first.", True)]
    assert not (tmp_path / "out.md").exists()


def test_the_writer_imports_no_textual():
    code = "import sys, vlchat.core.session_writer; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "False"
