"""The real `vlchat` program in a real terminal (tmux): ask, read the answer off the screen, stop a
long answer with Esc, quit with /quit, and no traceback anywhere.

Textual draws on stderr, so stderr cannot go to a file here (the file would hold the screen);
instead the pane keeps everything the program printed after it left the screen, and its whole
history is searched for a traceback.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from vlchat.demo.shapes import Scene, draw_scene

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        shutil.which("tmux") is None,
        reason="tmux is not installed; this test drives vlchat in a real terminal through tmux",
    ),
]

ROOT = Path(__file__).resolve().parents[1]


def vlchat_script() -> str:
    script = Path(sys.executable).parent / "vlchat"
    return shlex.quote(str(script)) if script.exists() else f"{shlex.quote(sys.executable)} -m vlchat.cli"


class Terminal:
    """One tmux server of our own (its own socket), one window of 120x40."""

    def __init__(self, tmp_path: Path):
        self.socket = f"vlchat-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.session = "e2e"
        self.tmp_path = tmp_path

    def tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=20)
        return result.stdout

    def start(self, vlchat_args: str, width: int = 120, height: int = 40) -> None:
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
            "HF_HUB_OFFLINE": "1",
            "VLCHAT_CONFIG_DIR": str(self.tmp_path / "config"),
        }
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        # COLUMNS/LINES from the environment would override the window size the app sees.
        command = f"env -u COLUMNS -u LINES {exports} {vlchat_script()} {vlchat_args}; echo \"vlchat exited $?\"; sleep 600"
        subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", "new-session", "-d", "-s", self.session,
             "-x", str(width), "-y", str(height), command],
            check=True,
            timeout=20,
        )
        self.tmux("set-option", "-t", self.session, "history-limit", "5000")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def history(self) -> str:
        return self.tmux("capture-pane", "-p", "-S", "-", "-t", self.session)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.session, "-l", text)

    def wait_for(self, predicate, timeout: float = 90.0, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.2)
        size = self.tmux("display", "-p", "-t", self.session, "#{window_width}x#{window_height}")
        raise AssertionError(f"timed out waiting for {what} (window {size.strip()}); the screen was:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=20)


@pytest.fixture
def terminal(tmp_path):
    term = Terminal(tmp_path)
    yield term
    term.close()


@pytest.fixture
def shape_picture(tmp_path) -> Path:
    path = tmp_path / "shape.png"  # a name without a colour in it: "red" on screen is the answer
    draw_scene(Scene("circle", "red", "blue", 1), size=256, rng=random.Random(1)).save(path)
    return path


def ready(screen: str) -> bool:
    return "1/1" in screen and "ctx " in screen and "loading" not in screen


def test_ask_read_the_answer_and_quit(terminal, shape_picture):
    terminal.start(f"--model demo --image-protocol halfblock {shlex.quote(str(shape_picture))}")
    terminal.wait_for(ready, what="the picture and the loaded model")
    terminal.type("What colour is the shape?")
    terminal.keys("Enter")
    screen = terminal.wait_for(lambda s: "is red" in s, what="the answer")
    assert "What colour is the shape?" in screen
    assert "first token" in screen
    terminal.type("/quit")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
    assert "Traceback" not in terminal.history()


def test_escape_stops_a_long_answer(terminal, shape_picture, endless_model):
    terminal.start(
        f"--model {shlex.quote(str(endless_model))} --max-new-tokens 100000 --image-protocol halfblock "
        f"{shlex.quote(str(shape_picture))}"
    )
    terminal.wait_for(ready, what="the picture and the loaded model")
    terminal.type("Describe the picture.")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "esc Stop" in s, what="the answer to start")
    time.sleep(1.0)
    terminal.keys("Escape")
    screen = terminal.wait_for(lambda s: "stopped" in s and "esc Stop" not in s, timeout=20, what="the answer to stop")
    # Stopped for real: nothing moves on the screen any more.
    before = terminal.screen()
    time.sleep(1.0)
    assert terminal.screen() == before
    terminal.type("/quit")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
    assert "Traceback" not in terminal.history()
