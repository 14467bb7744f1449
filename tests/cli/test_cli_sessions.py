"""`vlchat sessions`, `vlchat export` and `vlchat ask --session` as a person runs them, with real files
and the real demo model, including `kill -9` in the middle of a streamed answer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import vlchat_command
from vlchat.core.sessions import SessionStore, load_session
from vlchat.demo import SAMPLES_DIR

pytestmark = pytest.mark.timeout(300)

EXAMPLE = Path(__file__).resolve().parents[2] / "sessions" / "example"
RED_CIRCLE = SAMPLES_DIR / "red-circle.png"
STARS = SAMPLES_DIR / "three-yellow-stars.png"


def one_error_line(stderr: str, *words: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("vlchat: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def sessions_dir(tmp_path):
    root = tmp_path / "sessions"
    root.mkdir()
    return root


@pytest.fixture
def with_example(sessions_dir):
    shutil.copytree(EXAMPLE, sessions_dir / "5e551014e8a1")
    return sessions_dir


# -- vlchat sessions --------------------------------------------------------------------------------
def test_sessions_table_and_json(run_vlchat, with_example):
    result = run_vlchat("sessions", "--sessions-dir", with_example)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["TITLE", "UPDATED", "TURNS", "PICTURES", "MODEL", "ID"]
    assert row.startswith("Blue squares and a green triangle  ")
    assert row.split()[-4:] == ["3", "2", "demo", "5e551014e8a1"]

    result = run_vlchat("sessions", "--json", env={"VLCHAT_SESSIONS_DIR": str(with_example)})
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["title"] == "Blue squares and a green triangle" and record["turns"] == 3
    assert record["pictures"] == 2 and record["model"] == "demo" and record["updated"] == "2025-11-20T09:16:03.520Z"
    assert record["path"] == str(with_example / "5e551014e8a1") and record["error"] is None


def test_sessions_flag_before_the_command_too(run_vlchat, with_example):
    result = run_vlchat("--sessions-dir", with_example, "sessions")
    assert result.returncode == 0 and "Blue squares" in result.stdout


def test_no_sessions_yet(run_vlchat, sessions_dir):
    result = run_vlchat("sessions", "--sessions-dir", sessions_dir / "none")
    assert result.returncode == 0
    assert "no sessions yet" in result.stdout and "vlchat ask --session new" in result.stdout
    assert json.loads(run_vlchat("sessions", "--json", "--sessions-dir", sessions_dir / "none").stdout) == []


def test_damaged_session_is_warned_about_and_left_alone(run_vlchat, with_example):
    bad = with_example / "broken" / "session.json"
    bad.parent.mkdir()
    bad.write_bytes(b'{"format": "vlchat-session", "schema_ver')
    result = run_vlchat("sessions", "--sessions-dir", with_example)
    assert result.returncode == 0
    assert "Blue squares" in result.stdout
    assert f"vlchat: warning: {bad} is cut short" in result.stderr
    result = run_vlchat("export", str(bad.parent), "-o", with_example.parent / "x.md", "--sessions-dir", with_example)
    assert result.returncode == 2
    one_error_line(result.stderr, str(bad), "cut short")
    by_name = run_vlchat("ask", "--session", "brok", "--sessions-dir", with_example, "What shape is it?")
    assert by_name.returncode == 2
    one_error_line(by_name.stderr, str(bad), "cut short")
    assert bad.read_bytes() == b'{"format": "vlchat-session", "schema_ver'


# -- vlchat export ----------------------------------------------------------------------------------
def test_export_by_id_prefix_then_cat(run_vlchat, with_example, tmp_path):
    out = tmp_path / "out" / "chat.md"
    result = run_vlchat("export", "5e55", "-o", out, "--sessions-dir", with_example)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out} and 2 pictures in {out.parent / 'chat_assets'}"
    text = out.read_text()
    assert text.startswith("# Blue squares and a green triangle\n")
    assert "![two-blue-squares.png](chat_assets/01-two-blue-squares.png)" in text
    assert not (with_example / "5e551014e8a1" / ".lock").exists()  # export only reads
    again = run_vlchat("export", "Blue squares and a green triangle", "-o", out, "--sessions-dir", with_example)
    assert again.returncode == 0 and out.read_text() == text


def test_export_default_name_is_the_title_in_the_current_folder(run_vlchat, with_example, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = run_vlchat("export", "--sessions-dir", with_example, cwd=work)  # the most recent session
    assert result.returncode == 0, result.stderr
    assert (work / "blue-squares-and-a-green-triangle.md").is_file()
    assert (work / "blue-squares-and-a-green-triangle_assets" / "02-green-triangle.png").is_file()


def test_export_refuses_to_overwrite_another_file(run_vlchat, with_example, tmp_path):
    out = tmp_path / "README.md"
    out.write_text("precious")
    result = run_vlchat("export", "5e55", "-o", out, "--sessions-dir", with_example)
    assert result.returncode == 2
    one_error_line(result.stderr, "README.md", "--force")
    assert out.read_text() == "precious"
    forced = run_vlchat("export", "5e55", "-o", out, "--force", "--sessions-dir", with_example)
    assert forced.returncode == 0 and out.read_text().startswith("# Blue squares")


def test_export_of_an_unknown_session(run_vlchat, with_example, tmp_path):
    result = run_vlchat("export", "nothing-like-it", "--sessions-dir", with_example, cwd=tmp_path)
    assert result.returncode == 2
    one_error_line(result.stderr, "nothing-like-it", "vlchat sessions")


def test_help_of_session_commands_does_not_import_torch():
    import sys

    code = (
        "import sys, contextlib, io\n"
        "import vlchat.cli as cli\n"
        "for argv in (['sessions', '--help'], ['export', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try: cli.main(argv)\n"
        "        except SystemExit: pass\n"
        "print([m for m in ('torch', 'transformers', 'textual') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# -- vlchat ask --session ---------------------------------------------------------------------------
def test_ask_session_holds_a_multi_turn_conversation(run_vlchat, sessions_dir, tmp_path):
    picture = tmp_path / "mine.png"
    shutil.copyfile(RED_CIRCLE, picture)
    first = run_vlchat("ask", "--session", "new", "--sessions-dir", sessions_dir, picture, "What colour is the shape?", "--json")
    assert first.returncode == 0, first.stderr
    record = json.loads(first.stdout)
    assert record["answer"] == "The shape is red."
    session_id = record["session"]["id"]
    assert record["session"]["title"] == "What colour is the shape?"
    picture.unlink()  # the session has its own copy

    second = run_vlchat("ask", "--session", session_id[:6], "--sessions-dir", sessions_dir, STARS, "How many shapes are there?")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "There are three shapes."
    third = run_vlchat("ask", "--session", "What colour is the shape?", "--sessions-dir", sessions_dir, "What colour is the background?")
    assert third.returncode == 0, third.stderr
    assert "white" in third.stdout or "background" in third.stdout  # about the latest picture

    session = SessionStore(sessions_dir).open(session_id, read_only=True)
    texts = [m.text for m in session.conversation.messages]
    assert texts[:4] == ["What colour is the shape?", "The shape is red.", "How many shapes are there?", "There are three shapes."]
    assert texts[4] == "What colour is the background?" and len(texts) == 6
    assert [m.model for m in session.conversation.messages if m.role == "assistant"] == ["demo"] * 3
    assert all(m.tokens and m.timings and not m.stopped for m in session.conversation.messages if m.role == "assistant")
    assert len(session.pictures) == 2 and session.problems == []
    assert session.model["name"] == "demo"

    listed = run_vlchat("sessions", "--sessions-dir", sessions_dir)
    assert listed.stdout.splitlines()[1].split()[-4:] == ["3", "2", "demo", session_id]
    out = tmp_path / "t.md"
    exported = run_vlchat("export", session_id, "-o", out, "--sessions-dir", sessions_dir)
    assert exported.returncode == 0, exported.stderr
    text = out.read_text()
    assert "![mine.png](t_assets/01-mine.png)" in text and "There are three shapes." in text
    assert (tmp_path / "t_assets" / "01-mine.png").read_bytes() == RED_CIRCLE.read_bytes()


def test_ask_session_that_is_open_elsewhere_is_refused(run_vlchat, sessions_dir):
    store = SessionStore(sessions_dir)
    held = store.create()
    try:
        before = held.file.read_bytes()
        result = run_vlchat("ask", "--session", held.id, "--sessions-dir", sessions_dir, RED_CIRCLE, "What shape is it?")
        assert result.returncode == 2
        one_error_line(result.stderr, f"open elsewhere (pid {os.getpid()})", "read-only")
        assert held.file.read_bytes() == before and result.stdout == ""
    finally:
        held.close()


def test_ask_unknown_session_changes_nothing(run_vlchat, sessions_dir):
    result = run_vlchat("ask", "--session", "nope", "--sessions-dir", sessions_dir, RED_CIRCLE, "What shape is it?")
    assert result.returncode == 2
    one_error_line(result.stderr, "nope")
    assert list(sessions_dir.iterdir()) == []


def _start_endless(sessions_dir, session, picture, endless_model, question="Describe the picture."):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [*vlchat_command(), "ask", "--session", session, "--sessions-dir", str(sessions_dir), str(picture),
         question, "--model", str(endless_model), "--max-new-tokens", "3000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0,  # unbuffered: nothing read is lost
    )


def _read_some(process, at_least=12) -> bytes:
    """Wait until the answer is streaming: at least a few bytes of it on stdout."""
    data = b""
    while len(data) < at_least:
        piece = process.stdout.read(at_least - len(data))
        assert piece, process.stderr.read().decode()
        data += piece
    return data


def test_kill_9_in_the_middle_of_an_answer_loses_nothing_before_it(run_vlchat, sessions_dir, endless_model):
    first = run_vlchat("ask", "--session", "new", "--sessions-dir", sessions_dir, RED_CIRCLE, "What colour is the shape?", "--json")
    assert first.returncode == 0, first.stderr
    first_record = json.loads(first.stdout)
    session_id, first_answer = first_record["session"]["id"], first_record["answer"]
    folder = sessions_dir / session_id

    process = _start_endless(sessions_dir, session_id, STARS, endless_model)
    try:
        _read_some(process)  # the answer is streaming
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL

    json.loads((folder / "session.json").read_text())  # the file parses
    session = load_session(folder)  # and the dead process's lock is taken over
    texts = [m.text for m in session.conversation.messages]
    assert texts == ["What colour is the shape?", first_answer, "Describe the picture."]
    assert first_answer == "The shape is red."
    assert len(session.pictures) == 2 and session.problems == []
    for ref in session.conversation.images():
        assert hashlib.sha256((session.folder / f"images/{ref.sha256}.png").read_bytes()).hexdigest() == ref.sha256
        session.open_picture(ref)
    session.close()
    # The conversation goes on from there.
    # The session remembers the endless model it was killed with; the demo model answers now.
    again = run_vlchat(
        "ask", "--session", session_id, "--sessions-dir", sessions_dir, "How many shapes are there?", "--model", "demo"
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "There are three shapes."


def test_ctrl_c_keeps_the_partial_answer_marked_stopped(sessions_dir, endless_model):
    process = _start_endless(sessions_dir, "new", RED_CIRCLE, endless_model)
    try:
        first = _read_some(process)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert b"Traceback" not in err and b"saved in the session" in err, err.decode()
    (info,) = SessionStore(sessions_dir).list()
    session = SessionStore(sessions_dir).open(info.id, read_only=True)
    question, answer = session.conversation.messages
    assert question.text == "Describe the picture." and question.images
    assert answer.stopped and answer.role == "assistant" and len(answer.text) >= 10
    assert answer.text == (first + out).decode().strip()  # exactly what the person saw


@pytest.mark.parametrize("args, words", [(["--model", "no-such-model"], ["no-such-model"]),
                                         (["--temperature", "-1"], ["temperature"])])
def test_ask_new_session_with_a_bad_option_makes_no_session(run_vlchat, sessions_dir, args, words):
    result = run_vlchat("ask", "--session", "new", "--sessions-dir", sessions_dir, RED_CIRCLE, "What shape is it?", *args)
    assert result.returncode == 2
    one_error_line(result.stderr, *words)
    assert list(sessions_dir.iterdir()) == []
