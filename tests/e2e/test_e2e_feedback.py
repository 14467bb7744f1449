"""The real `vlchat` in a real terminal (tmux): Ctrl+C while an answer is written, and a model
process killed mid-answer. Keys a terminal sends and processes the kernel kills are what matter here."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.e2e.test_e2e_tmux import answering, ready, shape_picture, terminal  # noqa: F401 - fixtures

pytestmark = [pytest.mark.timeout(240)]


def test_ctrl_c_stops_a_streaming_answer_and_keeps_the_app(terminal, shape_picture, endless_model):  # noqa: F811
    terminal.start(
        f"--model {shlex.quote(str(endless_model))} --max-new-tokens 100000 --image-protocol halfblock "
        f"{shlex.quote(str(shape_picture))}"
    )
    terminal.wait_for(ready, what="the picture and the loaded model")
    terminal.type("Describe the picture.")
    terminal.keys("Enter")
    terminal.wait_for(answering, what="the answer to start")
    terminal.keys("C-c")
    screen = terminal.wait_for(lambda s: "■ stopped" in s and not answering(s), timeout=20, what="Ctrl+C to stop the answer")
    assert "Do you want to quit?" not in screen
    terminal.settled(quiet=2.0, timeout=20, what="the screen to stop changing")
    # Nothing streaming: Ctrl+C keeps its old behaviour (the hint to quit with ctrl+q); the app stays.
    terminal.keys("C-c")
    terminal.wait_for(lambda s: "Do you want to quit?" in s, timeout=20, what="the quit hint")
    terminal.type("/quit")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
    assert "Traceback" not in terminal.history()


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
        children = [int(p) for p in out.split()]
        found += children
        todo += children
    return found


def test_a_killed_model_process_is_reported_with_its_log(terminal, shape_picture, endless_model, request, monkeypatch):  # noqa: F811
    cache = Path(tempfile.mkdtemp(prefix="vc", dir="/tmp"))  # short: the path is read off one line of the screen
    request.addfinalizer(lambda: shutil.rmtree(cache, ignore_errors=True))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # the tmux server, and so vlchat, start with it
    terminal.start(
        f"--model {shlex.quote(str(endless_model))} --max-new-tokens 4 --image-protocol halfblock "
        f"{shlex.quote(str(shape_picture))}",
        width=200, height=50,
    )
    terminal.wait_for(ready, what="the picture and the loaded model")
    terminal.type("Describe the picture.")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "cut at 4 tokens" in s, what="the first, short answer")
    terminal.type("/set max_tokens 100000")
    terminal.keys("Enter")
    terminal.type("And again?")
    terminal.keys("Enter")
    terminal.wait_for(answering, what="the second answer to stream")
    pane = int(terminal.tmux("display", "-p", "-t", terminal.session, "#{pane_pid}").strip())
    models = []
    for pid in descendants(pane):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"vlchat.engines.process" in cmdline.read():
                    models.append(pid)
        except OSError:
            pass
    assert len(models) == 1, models
    os.kill(models[0], signal.SIGKILL)
    screen = terminal.wait_for(lambda s: "ended unexpectedly" in s and not answering(s), timeout=30, what="the report")
    log = cache / "vlchat" / "model-process.log"
    assert log.is_file() and "vlchat model process" in log.read_text()
    assert "signal 9" in screen and str(log) in screen
    assert "model.generate" not in screen  # a warning's source line is not the process's last word
    assert "Traceback" not in terminal.history()
