"""Session folders on real files: saving, finding, locking, damage, migration, full disks."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlchat.core.conversation import GenerationParams
from vlchat.core.images import ImageNotFoundError, load_image
from vlchat.core.sessions import (
    AmbiguousSessionError,
    SessionDamagedError,
    SessionLockedError,
    SessionNotFoundError,
    SessionReadOnlyError,
    SessionSaveError,
    SessionStore,
    SessionTooNewError,
    load_session,
    short_title,
    store_root,
)
from vlchat.demo import SAMPLES_DIR

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "sessions" / "example"
V0 = Path(__file__).resolve().parents[1] / "data" / "session-v0"


@pytest.fixture
def store(tmp_path):
    return SessionStore(tmp_path / "sessions")


def make_session(store, picture, turns=2, model="demo"):
    session = store.create(model={"name": model}, params=GenerationParams(max_new_tokens=64))
    for n in range(turns):
        loaded = picture("circle", ["red", "green", "blue"][n % 3], "yellow")
        ref = session.attach(loaded)
        session.conversation.add_user(f"What colour is shape number {n}?", [ref])
        session.save()
        session.conversation.add_assistant(f"The shape is {['red', 'green', 'blue'][n % 3]}.", model=model)
        session.save()
    return session


def single_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- saving and opening ----------------------------------------------------------------------------
def test_round_trip_keeps_every_message_and_picture(store, picture):
    session = make_session(store, picture, turns=3)
    session.close()
    again = store.open(session.id)
    assert [m.text for m in again.conversation.messages] == [m.text for m in session.conversation.messages]
    assert again.params.max_new_tokens == 64 and again.model == {"name": "demo"}
    assert again.turns == 3 and len(again.pictures) == 3 and again.problems == []
    for ref in again.conversation.images():
        assert again.open_picture(ref).size == (256, 256)
    again.close()


def test_every_change_is_saved_even_in_place_edits_of_earlier_messages(store, picture):
    session = make_session(store, picture, turns=3)
    session.conversation.messages[1].text = "Edited in place."
    session.conversation.messages[3].stopped = True
    session.save()
    session.close()
    again = store.open(session.id)
    assert again.conversation.messages[1].text == "Edited in place." and again.conversation.messages[3].stopped
    assert again.to_dict() == json.loads(again.file.read_text())
    again.close()


def test_session_works_after_the_original_pictures_are_gone(store, picture):
    loaded = picture("square", "green", "red")
    session = store.create()
    session.conversation.add_user("What shape is it?", [session.attach(loaded)])
    session.save()
    session.close()
    os.unlink(loaded.ref.path)
    again = store.open(session.id)
    ref = again.conversation.images()[0]
    assert Path(ref.path).parent == again.images_dir  # the conversation names the copy, not the original
    assert again.open_picture(ref).getpixel((2, 2)) == loaded.image.getpixel((2, 2))
    from vlchat.core.images import open_ref

    assert open_ref(ref, [again.images_dir]).size == loaded.image.size  # as the engine opens it
    again.close()


def test_a_picture_is_stored_once_under_its_sha256(store, picture):
    loaded = picture("star", "yellow", "blue")
    session = store.create()
    first = session.attach(loaded)
    stored = session.images_dir / f"{loaded.ref.sha256}.png"
    before = stored.stat().st_mtime_ns
    second = session.attach(loaded.ref.path)  # a path works as well as a LoadedImage
    session.conversation.add_user("How many shapes are there?", [first])
    session.conversation.add_user("And now?", [second])
    session.save()
    assert first == second
    assert sorted(p.name for p in session.images_dir.iterdir()) == [stored.name]
    assert stored.stat().st_mtime_ns == before
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == loaded.ref.sha256
    data = json.loads(session.file.read_text())
    assert data["conversation"]["messages"][0]["images"][0]["path"] == f"images/{stored.name}"
    assert data["pictures"][loaded.ref.sha256]["source"] == loaded.ref.path
    session.close()


def test_picture_attached_but_not_asked_about_is_kept_pending(store, picture):
    session = store.create()
    loaded = picture("triangle", "green", "blue")
    session.attach(loaded)
    session.save()
    session.close()
    again = store.open(session.id)
    assert [r.sha256 for r in again.pending_pictures()] == [loaded.ref.sha256]
    again.close()


def test_a_picture_put_in_the_conversation_without_attach_is_copied_in_on_save(store, picture):
    loaded = picture("circle", "red", "blue")
    session = store.create()
    session.conversation.add_user("What colour is the shape?", [loaded.ref])
    session.save()
    assert (session.images_dir / f"{loaded.ref.sha256}.png").is_file()
    session.close()


def test_title_is_the_first_question_shortened_until_renamed(store):
    session = store.create()
    assert session.title == "Untitled"
    question = "What is written on the blue sign in the upper left corner, and does it say anything about parking on Sundays?"
    session.conversation.add_user(question)
    session.save()
    assert session.title == short_title(question)
    assert session.title.endswith("…") and len(session.title) <= 60 and question.startswith(session.title[:-1])
    session.conversation.add_user("Another question")
    session.save()
    assert session.title == short_title(question)
    session.rename("Parking sign")
    session.close()
    again = store.open("Parking sign")
    assert again.title == "Parking sign" and not again.title_is_auto
    again.conversation.add_user("third")
    again.save()
    assert again.title == "Parking sign"
    again.close()
    assert short_title("  two\nlines\x1b[31m ") == "two lines[31m"


def test_saved_files_follow_the_json_schema(store, picture):
    import jsonschema

    schema = json.loads((REPO / "sessions" / "session.schema.json").read_text())
    session = make_session(store, picture)
    session.conversation.set_system("Be brief.")
    session.conversation.add_assistant("Stopped halfw", model="demo", stopped=True)
    session.save()
    jsonschema.validate(json.loads(session.file.read_text()), schema)
    jsonschema.validate(json.loads((EXAMPLE / "session.json").read_text()), schema)
    session.close()


def test_the_example_session_opens(tmp_path):
    session = load_session(EXAMPLE, read_only=True)
    assert session.title == "Blue squares and a green triangle" and session.problems == []
    assert session.turns == 3 and len(session.pictures) == 2
    assert session.conversation.system == "Answer in one short sentence."
    assert session.conversation.messages[-1].stopped
    for ref in session.conversation.images():
        assert session.open_picture(ref).size == (384, 384)
    assert not (EXAMPLE / ".lock").exists()


# -- finding ---------------------------------------------------------------------------------------
def test_find_by_id_prefix_title_path_and_most_recent(store, picture):
    a = make_session(store, picture, turns=1)
    a.rename("Holiday photos")
    a.close()
    time.sleep(0.01)
    b = make_session(store, picture, turns=1)
    b.close()
    assert store.find(a.id) == a.folder
    assert store.find(a.id[:6]) == a.folder
    assert store.find("Holiday photos") == a.folder
    assert store.find(str(a.folder)) == a.folder
    assert store.find(str(a.file)) == a.folder
    assert store.find(None) == b.folder  # most recent
    with store.open() as latest:
        assert latest.id == b.id
    assert [i.id for i in store.list()] == [b.id, a.id]
    row = store.list()[1]
    assert (row.title, row.turns, row.pictures, row.model) == ("Holiday photos", 1, 1, "demo")
    with pytest.raises(SessionNotFoundError) as caught:
        store.find("no such session")
    assert "no such session" in single_line(caught.value) and "vlchat sessions" in str(caught.value)
    with pytest.raises(SessionNotFoundError) as caught:
        store.find(str(store.root / "nowhere"))
    assert "no session at" in str(caught.value) and "nowhere" in str(caught.value)
    b2 = store.open(b.id)
    b2.rename("Before/after")  # a title with a slash is still found by its title
    b2.close()
    assert store.find("Before/after") == b.folder


def test_a_title_two_sessions_share_takes_the_most_recent_and_says_so(store):
    first, second = store.create(), store.create()
    first.rename("Twin")
    second.rename("Twin")
    first.close(), second.close()
    latest = store.list()[0]
    folder, note = store.choose("Twin")
    assert folder == latest.folder and store.find("tw") == latest.folder  # a part of the title too
    assert f"2 sessions fit 'Twin'; using the most recent, {latest.id}" in note


def test_an_id_needs_four_characters_and_the_error_says_so(store):
    session = store.create()
    session.close()
    assert store.find(session.id[:4]) == session.folder
    with pytest.raises(SessionNotFoundError) as caught:
        store.find(session.id[:3])
    assert "at least its first 4 characters" in single_line(caught.value)


def test_no_sessions_yet_says_where_it_looked(store):
    with pytest.raises(SessionNotFoundError) as caught:
        store.resolve(None)
    assert str(store.root) in single_line(caught.value)


def test_root_comes_from_settings_or_the_environment(tmp_path, monkeypatch):
    from vlchat.config import load_settings

    monkeypatch.setenv("VLCHAT_SESSIONS_DIR", str(tmp_path / "from-env"))
    settings, _ = load_settings({}, path=tmp_path / "none.toml")
    assert store_root(settings) == tmp_path / "from-env"
    settings, _ = load_settings({"sessions_dir": str(tmp_path / "flag")}, path=tmp_path / "none.toml")
    assert store_root(settings) == tmp_path / "flag"
    monkeypatch.delenv("VLCHAT_SESSIONS_DIR")
    settings, _ = load_settings({}, path=tmp_path / "none.toml")
    from vlchat.config import data_dir

    assert store_root(settings) == data_dir() / "sessions"


def test_delete_removes_only_what_vlchat_wrote(store, picture):
    session = make_session(store, picture, turns=2)
    session.close()
    store.delete(session.id)
    assert not session.folder.exists()
    with pytest.raises(SessionNotFoundError):
        store.find(session.id)
    keep = make_session(store, picture, turns=1)
    keep.close()
    (keep.folder / "notes.txt").write_text("mine")
    with pytest.raises(Exception) as caught:
        store.delete(keep.id)
    assert "notes.txt" in single_line(caught.value)
    assert (keep.folder / "notes.txt").read_text() == "mine"


# -- damage ----------------------------------------------------------------------------------------
def _valid_session_bytes(store, picture) -> tuple[Path, bytes]:
    session = make_session(store, picture, turns=1)
    session.close()
    return session.folder, session.file.read_bytes()


DAMAGE = {
    "truncated": (lambda good: good[: len(good) // 2], "cut short"),
    "not json": (lambda good: b"this is not json {", "not valid JSON"),
    "binary": (lambda good: b"\x89PNG\r\n\x1a\n\x00\x00\xff", "not text"),
    "empty": (lambda good: b"", "empty"),
    "another program": (lambda good: b'{"name": "my-app", "version": 1, "messages": []}', "not a vlchat session"),
    "a list": (lambda good: b"[1, 2, 3]", "not a vlchat session"),
    "broken field": (lambda good: good.replace(b'"conversation"', b'"conversaton"'), "broken field"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_session_json_is_named_and_never_touched(store, picture, case):
    folder, good = _valid_session_bytes(store, picture)
    damage, words = DAMAGE[case]
    bad = damage(good)
    file = folder / "session.json"
    file.write_bytes(bad)

    for attempt in (lambda: store.open(str(folder)), lambda: store.open(str(folder), read_only=True),
                    lambda: load_session(folder), lambda: store.delete(str(folder))):
        with pytest.raises(SessionDamagedError) as caught:
            attempt()
        line = single_line(caught.value)
        assert str(file) in line and words in line, line
        assert file.read_bytes() == bad
    rows = store.list()
    assert rows[0].error and str(file) in rows[0].error and file.read_bytes() == bad
    assert not (folder / ".lock").exists()
    assert folder.exists() and sorted(p.name for p in folder.iterdir()) == ["images", "session.json"]


def test_file_damaged_while_open_is_not_overwritten_by_a_later_save(store, picture):
    session = make_session(store, picture, turns=1)
    bad = b'{"conversation": {"mess'
    session.file.write_bytes(bad)
    session.conversation.add_user("One more question")
    with pytest.raises(SessionDamagedError) as caught:
        session.save()
    assert str(session.file) in single_line(caught.value)
    assert session.file.read_bytes() == bad
    assert session.conversation.messages[-1].text == "One more question"  # still in memory
    # Another program's file put in its place is not overwritten either.
    other = b'{"format": "something-else"}'
    session.file.write_bytes(other)
    with pytest.raises(SessionDamagedError):
        session.save()
    assert session.file.read_bytes() == other
    # Once the person moves it away, the next save writes the whole conversation again.
    session.file.rename(session.folder / "moved-away.json")
    session.save()
    assert json.loads(session.file.read_text())["conversation"]["messages"][-1]["text"] == "One more question"
    assert (session.folder / "moved-away.json").read_bytes() == other
    session.close()


def test_newer_schema_version_is_refused_and_left_alone(store, picture):
    folder, good = _valid_session_bytes(store, picture)
    data = json.loads(good)
    data["schema_version"] = 7
    newer = json.dumps(data).encode()
    (folder / "session.json").write_bytes(newer)
    for read_only in (False, True):
        with pytest.raises(SessionTooNewError) as caught:
            store.open(str(folder), read_only=read_only)
        line = single_line(caught.value)
        assert "newer vlchat" in line and "format 7" in line and "upgrade vlchat" in line.lower()
    assert (folder / "session.json").read_bytes() == newer
    assert store.list()[0].error


def test_older_schema_is_migrated_with_a_backup(tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(V0, folder)
    original = (folder / "session.json").read_bytes()

    looked = load_session(folder, read_only=True)  # reading alone changes nothing on disk
    assert looked.migrated_from == 0 and looked.title == "Old squares"
    assert (folder / "session.json").read_bytes() == original
    assert not list(folder.glob("*.bak"))

    session = load_session(folder)
    assert session.migrated_from == 0
    assert (folder / "session.v0.json.bak").read_bytes() == original
    data = json.loads((folder / "session.json").read_text())
    assert data["schema_version"] == 1 and data["format"] == "vlchat-session"
    assert data["created"] == "2023-11-14T22:13:20.500Z" and data["updated"] == "2023-11-14T22:13:50.750Z"
    assert data["model"] == {"name": "demo"}
    ref = data["conversation"]["messages"][0]["images"][0]
    assert ref["path"] == f"images/{ref['sha256']}.png"
    assert data["pictures"][ref["sha256"]]["source"] == "/home/ada/old/two-blue-squares.png"
    assert [m.text for m in session.conversation.messages] == ["How many shapes are there?", "There are two shapes."]
    assert session.open_picture(session.conversation.images()[0]).size == (384, 384)
    session.close()
    again = load_session(folder)  # already current: no second backup
    assert sorted(p.name for p in folder.glob("*.bak*")) == ["session.v0.json.bak"]
    again.close()


# -- pictures: missing, or pointing outside --------------------------------------------------------
def test_missing_picture_still_opens_and_names_the_picture(store, picture):
    session = make_session(store, picture, turns=2)
    session.close()
    gone = session.conversation.images()[0]
    os.unlink(session.images_dir / f"{gone.sha256}.png")
    again = store.open(session.id)
    assert len(again.conversation.messages) == 4
    name = Path(session.pictures[gone.sha256].source).name
    assert any("missing" in p and name in p for p in again.problems), again.problems
    with pytest.raises(ImageNotFoundError) as caught:
        again.open_picture(again.conversation.images()[0])
    assert name in str(caught.value)
    again.open_picture(again.conversation.images()[1])  # the other one is fine
    again.save()  # and the conversation can go on
    again.close()


def _session_with_picture_path(store, picture, rewrite) -> tuple[Path, Path]:
    session = make_session(store, picture, turns=1)
    session.close()
    data = json.loads(session.file.read_text())
    sha = next(iter(data["pictures"]))
    stored = session.images_dir / f"{sha}.png"
    rewrite(data, sha, session.folder, stored)
    session.file.write_text(json.dumps(data))
    return session.folder, stored


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "index-dotdot"])
def test_picture_reference_outside_the_folder_is_refused(store, picture, tmp_path, how):
    outside = tmp_path / "outside.png"

    def rewrite(data, sha, folder, stored):
        # The file outside has the very same bytes, so only the path rule can refuse it.
        shutil.copyfile(stored, outside)
        ref = data["conversation"]["messages"][0]["images"][0]
        if how == "dotdot":
            ref["path"] = "images/../../../outside.png"
        elif how == "absolute":
            ref["path"] = str(outside)
        elif how == "index-dotdot":
            data["pictures"][sha]["file"] = "../outside.png"
        if how in ("dotdot", "absolute", "index-dotdot"):
            stored.unlink()
        else:
            stored.unlink()
            stored.symlink_to(outside)

    folder, stored = _session_with_picture_path(store, picture, rewrite)
    session = load_session(folder)
    assert any("refused" in p for p in session.problems), session.problems
    ref = session.conversation.images()[0]
    assert session.picture_path(ref.sha256) is None
    with pytest.raises(ImageNotFoundError):
        session.open_picture(ref)
    from vlchat.core.images import open_ref

    with pytest.raises(ImageNotFoundError):
        open_ref(ref)  # the reference the engine gets cannot reach the outside file either
    assert len(session.conversation.messages) == 2  # the words are all there
    session.close()


# -- two processes ----------------------------------------------------------------------------------
HOLD = """
import sys, time
from vlchat.core.sessions import load_session
session = load_session(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def test_second_process_is_told_the_session_is_open_elsewhere(store, picture):
    session = make_session(store, picture, turns=1)
    session.close()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(session.folder)], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(SessionLockedError) as caught:
            store.open(session.id)
        line = single_line(caught.value)
        assert f"open elsewhere (pid {holder.pid})" in line and "read-only" in line
        assert caught.value.pid == holder.pid
        before = session.file.read_bytes()
        looking = store.open(session.id, read_only=True)
        assert looking.turns == 1
        looking.conversation.add_user("sneaky")
        with pytest.raises(SessionReadOnlyError):
            looking.save()
        with pytest.raises(SessionLockedError):
            store.delete(session.id)
        assert session.file.read_bytes() == before
        # kill -9: the lock dies with its process and is taken over.
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        taken = store.open(session.id)
        assert (taken.folder / ".lock").read_text().strip() == str(os.getpid())
        taken.close()
        assert not (taken.folder / ".lock").exists()
    finally:
        holder.kill()
        holder.wait(10)


def test_stale_lock_file_of_a_dead_process_is_taken_over(store):
    session = store.create()
    session.close()
    (session.folder / ".lock").write_text("999999\n")
    again = store.open(session.id)
    again.conversation.add_user("still works")
    again.save()
    again.close()


def test_same_process_twice_is_locked_too(store):
    session = store.create()
    with pytest.raises(SessionLockedError):
        store.open(session.id)
    session.close()


KEEP_SAVING = """
import sys
from vlchat.core.sessions import SessionStore
store = SessionStore(sys.argv[1])
session = store.create()
n = 0
while True:
    session.conversation.add_user("question %d " % n + "x" * 2000)
    session.conversation.add_assistant("answer %d" % n, model="demo")
    session.save()
    n += 1
    if n == 5:
        print(session.id, flush=True)
"""


def test_kill_9_while_saving_in_a_loop_always_leaves_a_readable_file(store):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for delay in (0.05, 0.2, 0.37):
        process = subprocess.Popen([sys.executable, "-c", KEEP_SAVING, str(store.root)], stdout=subprocess.PIPE, env=env)
        session_id = process.stdout.readline().decode().strip()
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        session = store.open(session_id)
        messages = session.conversation.messages
        assert len(messages) >= 10 and len(messages) % 2 == 0
        assert [m.text for m in messages[::2]] == [f"question {n} " + "x" * 2000 for n in range(len(messages) // 2)]
        assert not list(session.folder.glob("*.tmp"))  # a save cut short leaves no litter once reopened
        session.close()


# -- full disk, read-only folder ----------------------------------------------------------------------
def test_full_disk_save_fails_cleanly_and_keeps_the_conversation(store, picture, monkeypatch):
    session = make_session(store, picture, turns=1)
    on_disk = session.file.read_bytes()
    title, updated, count = session.title, session.updated, len(session.conversation.messages)
    session.conversation.add_user("A question while the disk is full")

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(SessionSaveError) as caught:
        session.save()
    line = single_line(caught.value)
    assert "No space left on device" in line and str(session.file) in line and "free some disk space" in line.lower()
    assert session.file.read_bytes() == on_disk
    assert (session.title, session.updated) == (title, updated)
    assert len(session.conversation.messages) == count + 1
    assert [p.name for p in session.folder.iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.undo()
    session.save()  # the disk has room again: everything is written
    assert json.loads(session.file.read_text())["conversation"]["messages"][-1]["text"] == "A question while the disk is full"
    session.close()


def test_write_failing_in_open_is_a_save_error_too(store, monkeypatch):
    session = store.create()
    import tempfile

    def refuse(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    session.conversation.add_user("hello")
    with pytest.raises(SessionSaveError) as caught:
        session.save()
    assert "Read-only file system" in single_line(caught.value) and "--sessions-dir" in str(caught.value)
    monkeypatch.undo()
    session.close()


def test_sessions_dir_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for root in (blocker / "sessions", blocker, Path("/proc/vlchat-sessions")):
        with pytest.raises(SessionSaveError) as caught:
            SessionStore(root).create()
        assert "could not save" in single_line(caught.value)
    assert blocker.read_text() == "not a folder"


def test_session_folder_gone_read_only_keeps_conversation(store, picture, tmp_path):
    session = make_session(store, picture, turns=1)
    # Swap the folder for a file (a real failure for root too): saving cannot work any more.
    moved = tmp_path / "moved"
    session.folder.rename(moved)
    session.folder.write_text("in the way")
    session.conversation.add_user("Still here?")
    with pytest.raises(SessionSaveError) as caught:
        session.save()
    assert str(session.folder) in single_line(caught.value)
    assert session.conversation.messages[-1].text == "Still here?"
    assert session.folder.read_text() == "in the way"
    session.close()
