"""Hostile files and folders (issue 13): links inside session folders and beside captioned pictures,
users' files given as caption outputs, file names that are not UTF-8, damaged session folders,
tampered pictures, pipes, full and read-only disks.

Every case is a real file on disk: links are links, a pipe is a FIFO, a full disk is a file-size
limit (RLIMIT_FSIZE) on the real `vlchat` process, a read-only folder is one the kernel refuses to
write (chattr +i as root, chmod elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import vlchat_command
from vlchat.core.sessions import (
    SessionDamagedError,
    SessionSaveError,
    SessionStore,
    SessionWriteRefusedError,
)
from vlchat.demo import SAMPLES_DIR
from vlchat.demo.shapes import Scene, draw_scene

pytestmark = pytest.mark.timeout(240)

EXAMPLE = Path(__file__).resolve().parents[2] / "sessions" / "example"
SCHEMA = Path(__file__).resolve().parents[2] / "sessions" / "session.schema.json"
EXAMPLE_ID = "5e551014e8a1"
RED_CIRCLE = SAMPLES_DIR / "red-circle.png"
FAST = ("--max-new-tokens", "12", "--device", "cpu", "--quant", "none")
PRECIOUS = b"the user's own file\n"


def one_error_line(stderr: str, *words: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("vlchat: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr and "internal error" not in stderr, stderr
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr


def run_in(cwd: Path, *args, timeout=240, limit_file_size: int | None = None):
    """The installed command, as a user runs it from ``cwd``; ``limit_file_size`` makes every file
    write past that many bytes fail as on a full disk (EFBIG)."""

    def limit() -> None:
        if limit_file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(cwd / ".hf-home"))
    return subprocess.run([*vlchat_command(), *map(os.fsdecode, args)], cwd=cwd, capture_output=True,
                          timeout=timeout, env=env, preexec_fn=limit, text=True, errors="replace")


@contextlib.contextmanager
def unwritable(folder: Path):
    """A folder the kernel will not let this process create or remove files in."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: no way to make a folder unwritable")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


def draw(path: Path, colour="red", shape="circle") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_scene(Scene(shape, colour, "blue", 1), size=96, rng=random.Random(len(os.fsencode(path)))).save(path)
    return path


@pytest.fixture
def sessions_dir(tmp_path):
    root = tmp_path / "sessions"
    shutil.copytree(EXAMPLE, root / EXAMPLE_ID)
    return root


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(PRECIOUS)
    return path


# -- 1. a .lock that is a link ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_lock_that_is_a_link_never_writes_the_file_it_points_to(sessions_dir, victim, tmp_path, kind):
    lock = sessions_dir / EXAMPLE_ID / ".lock"
    if kind == "symlink":
        lock.symlink_to(victim)
    else:
        os.link(victim, lock)
    result = run_in(tmp_path, "ask", "--sessions-dir", sessions_dir, "--session", EXAMPLE_ID, "What colour is it?")
    assert result.returncode == 2
    one_error_line(result.stderr, ".lock", "not vlchat's lock")
    assert victim.read_bytes() == PRECIOUS
    # Reading it is still fine: export never takes the lock.
    assert run_in(tmp_path, "export", "--sessions-dir", sessions_dir, EXAMPLE_ID, "-o", tmp_path / "t.md").returncode == 0


# -- 4. links inside a session folder and beside captioned pictures ---------------------------------
def test_images_as_a_link_gets_nothing_written_or_deleted_through_it(tmp_path, victim, picture):
    store = SessionStore(tmp_path / "sessions")
    session = store.create(model={"name": "demo"})
    session.conversation.add_user("What is it?", [session.attach(picture("circle", "red", "blue"))])
    session.save()
    session.close()
    outside = victim.parent
    stray = outside / ".keep-me.tmp"
    stray.write_bytes(PRECIOUS)
    shutil.rmtree(session.images_dir)
    session.images_dir.symlink_to(outside, target_is_directory=True)
    before = sorted(p.name for p in outside.iterdir())

    again = store.open(session.id)  # opening for writing clears stale temporary files: not there
    assert any("images/" in problem for problem in again.problems)
    with pytest.raises(SessionSaveError) as caught:
        again.attach(picture("square", "green", "white"))
    assert "link" in str(caught.value) and "\n" not in str(caught.value)
    again.close()
    assert sorted(p.name for p in outside.iterdir()) == before
    assert stray.read_bytes() == PRECIOUS and victim.read_bytes() == PRECIOUS


def test_session_json_as_a_link_is_refused_not_followed(tmp_path, sessions_dir, victim):
    folder = sessions_dir / EXAMPLE_ID
    real = tmp_path / "elsewhere.json"
    shutil.move(folder / "session.json", real)
    (folder / "session.json").symlink_to(real)
    with pytest.raises(SessionDamagedError, match="is a link"):
        SessionStore(sessions_dir).open(EXAMPLE_ID)


def test_a_caption_manifest_that_is_a_link_gets_nothing_appended(tmp_path, victim):
    pictures = tmp_path / "pictures"
    draw(pictures / "a.png")
    (pictures / ".vlchat-captions.jsonl").symlink_to(victim)
    result = run_in(tmp_path, "caption", pictures, "--format", "txt-sidecar", *FAST)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert victim.read_bytes() == PRECIOUS
    assert not (pictures / "a.txt").exists()  # no caption vlchat could not claim as its own
    assert "link" in result.stderr and "1 failed" in result.stderr


def test_a_caption_output_that_is_a_link_is_refused(tmp_path, victim):
    draw(tmp_path / "pictures" / "a.png")
    (tmp_path / "captions.jsonl").symlink_to(victim)
    result = run_in(tmp_path, "caption", "pictures", "-o", "captions.jsonl", *FAST)
    assert result.returncode == 2
    one_error_line(result.stderr, "captions.jsonl is a link")
    assert victim.read_bytes() == PRECIOUS


# -- 7. a user's file given as -o ------------------------------------------------------------------
@pytest.mark.parametrize("name, content", [
    ("labels.csv", b"file,label\ncat.png,cat\ndog.png,dog"),             # last row without its newline
    ("labels.jsonl", b'{"path": "cat.png", "label": "cat"}'),           # one line, no final newline
    ("notes.csv", b"\n\n"),
])
def test_a_users_file_given_as_output_is_left_byte_for_byte(tmp_path, name, content):
    draw(tmp_path / "pictures" / "a.png")
    (tmp_path / name).write_bytes(content)
    result = run_in(tmp_path, "caption", "pictures", "-o", name, *FAST)
    assert result.returncode == 2
    one_error_line(result.stderr, "not a vlchat caption file", "left as it is")
    assert (tmp_path / name).read_bytes() == content


def test_our_csv_with_a_row_cut_short_is_resumed(tmp_path):
    pictures = tmp_path / "pictures"
    draw(pictures / "a.png")
    draw(pictures / "b.png", "green", "square")
    out = tmp_path / "captions.csv"
    assert run_in(tmp_path, "caption", pictures, "-o", out, *FAST).returncode == 0
    whole = out.read_bytes()
    out.write_bytes(whole[:-15])  # the last row cut short by a kill
    result = run_in(tmp_path, "caption", pictures, "-o", out, *FAST)
    assert result.returncode == 0, result.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("path,sha256,caption")
    assert "1 captioned" in result.stderr and "1 already done" in result.stderr


# -- 8, 9, 14. names that are not UTF-8, resume from another folder, a pipe -------------------------
def test_non_utf8_names_a_pipe_and_a_second_run_from_another_folder(tmp_path):
    pictures = tmp_path / "pictures"
    odd = draw(Path(os.fsdecode(os.fsencode(str(pictures)) + b"/caf\xe9-\xff.png")))
    plain = draw(pictures / "plain.png", "green", "square")
    os.mkfifo(tmp_path / "pipe.png")
    out = tmp_path / "captions.jsonl"

    # Relative paths, from the folder above the pictures; the pipe is named, so it is tried.
    first = run_in(tmp_path, "caption", "pictures", "pipe.png", "-o", "captions.jsonl", *FAST, timeout=120)
    no_traceback(first)
    assert first.returncode == 0, first.stderr
    assert "2 captioned" in first.stderr and "1 failed" in first.stderr
    assert "not a regular file" in first.stderr
    raw = out.read_bytes()
    raw.decode("utf-8")  # the file stays UTF-8 text: the odd bytes are JSON escapes
    records = [json.loads(line) for line in raw.splitlines()]
    paths = {os.fsencode(r["path"]): r for r in records}
    assert set(paths) == {os.fsencode(str(odd)), os.fsencode(str(plain)), os.fsencode(str(tmp_path / "pipe.png"))}
    assert paths[os.fsencode(str(odd))]["caption"] and paths[os.fsencode(str(plain))]["caption"]

    # The same pictures by other relative paths, from another folder: nothing is done twice.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    second = run_in(elsewhere, "caption", "../pictures", "../pipe.png", "-o", "../captions.jsonl", *FAST, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "0 captioned" in second.stderr and "2 already done" in second.stderr, second.stderr
    assert "1 failed in an earlier run" in second.stderr  # the pipe: counted apart, never done twice
    assert out.read_bytes() == raw


def test_ask_session_with_a_picture_whose_name_is_not_utf8(tmp_path):
    odd = draw(Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/photo-\xe9\xff.png")))
    sessions = tmp_path / "sessions"
    result = run_in(tmp_path, "ask", "--sessions-dir", sessions, "--session", "new", odd, "What colour is the shape?", *FAST)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    (file,) = sessions.glob("*/session.json")
    data = json.loads(file.read_bytes().decode("utf-8"))
    assert len(data["conversation"]["messages"]) == 2
    (entry,) = data["pictures"].values()
    assert os.fsencode(entry["source"]) == os.fsencode(str(odd))  # the exact bytes come back

    listed = run_in(tmp_path, "sessions", "--sessions-dir", sessions)
    assert listed.returncode == 0 and "What colour is the shape?" in listed.stdout, listed.stderr
    exported = run_in(tmp_path, "export", "--sessions-dir", sessions, "-o", tmp_path / "t.md")
    assert exported.returncode == 0, exported.stderr
    text = (tmp_path / "t.md").read_text(encoding="utf-8")
    assert "photo-\ufffd\ufffd" in text and len(list((tmp_path / "t_assets").iterdir())) == 1


def test_a_session_saves_and_reopens_a_picture_whose_name_is_not_utf8(tmp_path):
    """What the app does after every turn: attach, save, and later open again."""
    from vlchat.core.images import load_image

    odd = draw(Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff\xfe-shape.png")))
    store = SessionStore(tmp_path / "sessions")
    with store.create(model={"name": "demo"}) as session:
        session.conversation.add_user("What is it?", [session.attach(load_image(odd))])
        session.save()
        session.conversation.add_assistant("A red circle.", model="demo")
        session.save()
    with store.open(session.id) as again:
        (picture,) = again.pictures.values()
        assert os.fsencode(picture.source) == os.fsencode(str(odd))
        assert picture.name == "\ufffd\ufffd-shape.png"
        assert [m.text for m in again.conversation.messages] == ["What is it?", "A red circle."]


# -- 10, 11. export ----------------------------------------------------------------------------------
def test_export_leaves_out_a_tampered_picture_and_says_so(tmp_path, sessions_dir):
    stored = sorted((sessions_dir / EXAMPLE_ID / "images").iterdir())[0]
    stored.write_bytes(stored.read_bytes() + b"tampered")
    result = run_in(tmp_path, "export", "--sessions-dir", sessions_dir, EXAMPLE_ID, "-o", tmp_path / "t.md")
    assert result.returncode == 0, result.stderr
    assert "no longer matches its sha256" in result.stderr
    text = (tmp_path / "t.md").read_text()
    assert "no longer matches its sha256" in text
    exported = list((tmp_path / "t_assets").iterdir())
    assert len(exported) == 1 and all(b"tampered" not in p.read_bytes() for p in exported)


def test_a_file_that_only_quotes_the_export_marker_is_not_overwritten(tmp_path, sessions_dir):
    notes = tmp_path / "notes.md"
    content = ("# My notes\n\nvlchat marks its exports with a last line like this:\n\n"
               "    <!-- vlchat export of session 5e551014e8a1: exporting again replaces this file -->\n\nEnd.\n")
    notes.write_text(content)
    result = run_in(tmp_path, "export", "--sessions-dir", sessions_dir, EXAMPLE_ID, "-o", notes)
    assert result.returncode == 2
    one_error_line(result.stderr, "not a vlchat export")
    assert notes.read_text() == content
    # A real export is still replaced by the next one.
    out = tmp_path / "real.md"
    assert run_in(tmp_path, "export", "--sessions-dir", sessions_dir, EXAMPLE_ID, "-o", out).returncode == 0
    again = run_in(tmp_path, "export", "--sessions-dir", sessions_dir, EXAMPLE_ID, "-o", out)
    assert again.returncode == 0, again.stderr


def test_export_on_a_full_disk_is_one_line(tmp_path, sessions_dir):
    result = run_in(tmp_path, "export", "--sessions-dir", sessions_dir, EXAMPLE_ID, "-o", tmp_path / "t.md",
                    limit_file_size=0)
    assert result.returncode == 2
    one_error_line(result.stderr, "could not write the transcript", "free some disk space")


def test_export_to_a_folder_is_one_line(tmp_path, sessions_dir):
    result = run_in(tmp_path, "export", "--sessions-dir", sessions_dir, EXAMPLE_ID, "-o", ".")
    assert result.returncode == 2
    one_error_line(result.stderr, "is a folder")


# -- 12. damaged session folders ---------------------------------------------------------------------
def _edit(data: dict, change: str) -> dict:
    if change == "updated not a date":
        data["updated"] = "not a date"
    elif change == "created 1e20":
        data["created"] = 1e20
    elif change == "width 1e999":
        next(iter(data["pictures"].values()))["width"] = 1e999
    elif change == "temperature hot":
        data["params"]["temperature"] = "hot"
    elif change == "model name a list":
        data["model"]["name"] = ["demo", "other"]
    elif change == "endpoint with ESC":
        data["model"]["endpoint"] = "http://localhost:1/v1\x1b]0;pwned\x07"
    elif change == "message tokens a string":
        data["conversation"]["messages"][2]["tokens"] = "many"
    return data


DAMAGE = ["updated not a date", "created 1e20", "width 1e999", "temperature hot", "model name a list",
          "endpoint with ESC", "message tokens a string", "deep nesting", "a pipe"]
NOT_JSON = ("deep nesting", "a pipe")
BAD_ID = "bad000000bad"


def _damaged_copy(sessions_dir: Path, change: str) -> Path:
    folder = sessions_dir / BAD_ID
    shutil.copytree(EXAMPLE, folder)
    file = folder / "session.json"
    if change == "a pipe":
        file.unlink()
        os.mkfifo(file)  # reading it would wait for a writer forever
    elif change == "deep nesting":
        file.write_text('{"format": "vlchat-session", "schema_version": 1, "id": "' + BAD_ID + '", "x": '
                        + "[" * 100_000 + "]" * 100_000 + "}")
    else:
        data = json.loads((EXAMPLE / "session.json").read_text())
        data["id"] = BAD_ID
        file.write_text(json.dumps(_edit(data, change)))
    return file


@pytest.mark.timeout(120)
@pytest.mark.parametrize("change", DAMAGE)
def test_one_damaged_session_never_stops_the_others(tmp_path, sessions_dir, change):
    file = _damaged_copy(sessions_dir, change)
    before = None if change == "a pipe" else file.read_bytes()

    listed = run_in(tmp_path, "sessions", "--sessions-dir", sessions_dir, timeout=60)
    assert listed.returncode == 0, listed.stderr
    no_traceback(listed)
    assert EXAMPLE_ID in listed.stdout and BAD_ID not in listed.stdout
    warnings = [line for line in listed.stderr.splitlines() if line.startswith("vlchat: warning:")]
    assert len(warnings) == 1 and "session.json" in warnings[0] and "\x1b" not in listed.stderr

    assert json.loads(run_in(tmp_path, "sessions", "--json", "--sessions-dir", sessions_dir, timeout=60).stdout)
    exported = run_in(tmp_path, "export", "--sessions-dir", sessions_dir, EXAMPLE_ID[:4], "-o", tmp_path / "t.md", timeout=60)
    assert exported.returncode == 0, exported.stderr

    refused = run_in(tmp_path, "ask", "--sessions-dir", sessions_dir, "--session", BAD_ID, "What is it?", timeout=60)
    assert refused.returncode == 2
    one_error_line(refused.stderr, "session.json")
    assert "\x1b" not in refused.stderr
    if before is not None:
        assert file.read_bytes() == before

    store = SessionStore(sessions_dir)
    with store.open(EXAMPLE_ID) as good:  # as --resume and ask --session open it
        assert good.turns == 3
    assert store.most_recent().id == EXAMPLE_ID


@pytest.mark.parametrize("change", [c for c in DAMAGE if c not in NOT_JSON])
def test_the_json_schema_refuses_what_vlchat_refuses(change):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    example = json.loads((EXAMPLE / "session.json").read_text())
    assert not list(validator.iter_errors(example))
    assert list(validator.iter_errors(_edit(example, change)))


# -- 15. full and read-only disks -------------------------------------------------------------------
def test_ask_session_on_a_full_disk_is_one_line_and_loses_nothing(tmp_path, sessions_dir):
    file = sessions_dir / EXAMPLE_ID / "session.json"
    before = file.read_bytes()
    result = run_in(tmp_path, "ask", "--sessions-dir", sessions_dir, "--session", EXAMPLE_ID, "Anything else?",
                    limit_file_size=0)
    assert result.returncode == 1
    line = one_error_line(result.stderr, "could not save", "free some disk space")
    assert "still open" not in line
    assert file.read_bytes() == before


def test_a_session_on_a_read_only_folder_says_how_to_go_on(tmp_path, sessions_dir):
    folder = sessions_dir / EXAMPLE_ID
    with unwritable(folder):
        result = run_in(tmp_path, "ask", "--sessions-dir", sessions_dir, "--session", EXAMPLE_ID, "Anything else?")
        store = SessionStore(sessions_dir)
        with pytest.raises(SessionWriteRefusedError):
            store.open(EXAMPLE_ID)
        with store.open(EXAMPLE_ID, read_only=True) as session:  # what the app falls back to
            assert session.turns == 3
    assert result.returncode == 2
    line = one_error_line(result.stderr, "for writing", "Copy the session folder somewhere writable")
    assert "still open" not in line


def test_sidecars_where_one_cannot_be_written_the_run_goes_on(tmp_path):
    good = tmp_path / "good"
    draw(good / "a.png")
    draw(good / "x.png", "green", "square")
    (good / "x.txt").mkdir()  # a folder where x's caption would go
    locked = tmp_path / "locked"
    draw(locked / "b.png", "yellow", "star")
    with unwritable(locked):
        result = run_in(tmp_path, "caption", good, locked, "--format", "txt-sidecar", "--overwrite", *FAST)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert (good / "a.txt").read_text().strip()
    assert (good / "x.txt").is_dir() and not (locked / "b.txt").exists()
    assert "x.txt is a folder" in result.stderr
    assert "could not write the caption of" in result.stderr and "b.png" in result.stderr
    assert "1 captioned" in result.stderr


def test_caption_output_on_a_full_disk_stops_with_one_line_and_the_next_run_goes_on(tmp_path):
    draw(tmp_path / "pictures" / "a.png")
    out = tmp_path / "captions.jsonl"
    # Earlier records (1 MB of them), so that the limit leaves room for what loading the model
    # writes, and none for the next record.
    earlier = {"path": "/elsewhere/old.png", "sha256": "0" * 64, "caption": "x" * 900, "model": "demo",
               "prompt": "p", "tokens": 1, "seconds": 0.1}
    out.write_bytes((json.dumps(earlier) + "\n").encode() * 1000)
    size = out.stat().st_size
    result = run_in(tmp_path, "caption", "pictures", "-o", "captions.jsonl", *FAST, limit_file_size=size + 40)
    assert result.returncode == 1
    one_error_line(result.stderr, "could not write to", "captions.jsonl", "run the same command again")
    assert out.read_bytes()[:size] == (json.dumps(earlier) + "\n").encode() * 1000

    again = run_in(tmp_path, "caption", "pictures", "-o", "captions.jsonl", *FAST)
    assert again.returncode == 0, again.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 1001 and json.loads(lines[-1])["path"] == str(tmp_path / "pictures" / "a.png")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux drives the app in a real terminal")
def test_resume_on_a_read_only_folder_opens_read_only_and_says_so(tmp_path, sessions_dir):
    from tests.e2e.test_e2e_tmux import Terminal

    terminal = Terminal(tmp_path)
    with unwritable(sessions_dir / EXAMPLE_ID):
        try:
            terminal.start(f"--resume {EXAMPLE_ID} --model demo --image-protocol halfblock --sessions-dir {sessions_dir}")
            screen = terminal.wait_for(lambda s: "for writing: " in s and "nothing you add here is saved" in s,
                                       what="the read-only note")
            assert "still open" not in screen
            assert "read-only" in screen.splitlines()[-2]  # the status line
            assert "What colour are they?" in screen  # the conversation is there
            terminal.type("/quit")
            terminal.keys("Enter")
            terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
            assert "Traceback" not in terminal.history()
        finally:
            terminal.close()


def test_the_remembered_theme_on_a_full_disk_keeps_the_old_state_and_leaves_no_litter(tmp_path):
    """Issue 16, item 31: the theme's state file had a writer of its own (a temporary file named
    after the process, written and renamed). On a full disk it left that half-written file behind
    in the config folder. It now goes through the one atomic_write: the old state stays, whole,
    and nothing else is left."""
    config = tmp_path / "config"
    config.mkdir()
    state = config / "state.json"
    state.write_text(json.dumps({"theme": "vlchat-dark"}))
    before = state.read_bytes()
    code = "from vlchat.ui.themes import remember; remember(theme='vlchat-light')"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = dict(os.environ, VLCHAT_CONFIG_DIR=str(config))
    result = subprocess.run([sys.executable, "-c", code], env=env, preexec_fn=limit, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr  # not worth bothering anyone: no traceback
    assert sorted(p.name for p in config.iterdir()) == ["state.json"]
    assert state.read_bytes() == before
    # and with room on the disk the choice is remembered
    ok = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and json.loads(state.read_text())["theme"] == "vlchat-light"
