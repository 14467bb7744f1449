"""The real `vlchat` program in a real terminal (tmux): ask, read the answer off the screen, stop a
long answer with Esc, quit with /quit, and no traceback anywhere.

Textual draws on stderr, so stderr cannot go to a file here (the file would hold the screen);
instead the pane keeps everything the program printed after it left the screen, and its whole
history is searched for a traceback.
"""

from __future__ import annotations

import os
import re
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

ROOT = Path(__file__).resolve().parents[2]


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
        for attempt in range(3):
            # Right after close() the old server may still be going away: try again briefly.
            started = subprocess.run(
                ["tmux", "-L", self.socket, "-f", "/dev/null", "new-session", "-d", "-s", self.session,
                 "-x", str(width), "-y", str(height), command],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if started.returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"tmux could not start: {started.stderr}")
        self.tmux("set-option", "-t", self.session, "history-limit", "5000")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def history(self) -> str:
        return self.tmux("capture-pane", "-p", "-S", "-", "-t", self.session)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.session, "-l", text)

    def settled(self, quiet: float, timeout: float, what: str = "") -> str:
        """The screen once it has not changed for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        screen, since = self.screen(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.screen()
            if now != screen:
                screen, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return screen
        raise AssertionError(f"timed out waiting for {what}; the screen was still changing:\n{screen}")

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


def answering(screen: str) -> bool:
    """An answer is being written: its foot still reads "…", or the status line says so."""
    return "answering…" in screen or any(line.rstrip().endswith("▌ …") for line in screen.splitlines())


def context_used(screen: str) -> int | None:
    """The status line's "ctx N/LIMIT": how many tokens the conversation takes."""
    found = re.search(r"ctx (\d+)/", screen)
    return int(found.group(1)) if found else None


def ready(screen: str) -> bool:
    return "1/1" in screen and "ctx " in screen and "loading" not in screen


def test_ask_read_the_answer_and_quit(terminal, shape_picture):
    terminal.start(f"--model demo --image-protocol halfblock {shlex.quote(str(shape_picture))}")
    terminal.wait_for(ready, what="the picture and the loaded model")
    terminal.type("What colour is the shape?")
    terminal.keys("Enter")
    # A frame can show "is red" before the answer has ended; the status line's timing comes at the end.
    screen = terminal.wait_for(lambda s: "is red" in s and "first token" in s, what="the answer, ended")
    assert "What colour is the shape?" in screen
    terminal.type("/quit")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
    assert "Traceback" not in terminal.history()


def test_escape_stops_a_long_answer(terminal, shape_picture, endless_model):
    terminal.start(
        f"--model {shlex.quote(str(endless_model))} --max-new-tokens 100000 --image-protocol halfblock "
        f"{shlex.quote(str(shape_picture))}"
    )
    before_answer = context_used(terminal.wait_for(ready, what="the picture and the loaded model"))
    terminal.type("Describe the picture.")
    terminal.keys("Enter")
    terminal.wait_for(answering, what="the answer to start")
    time.sleep(1.0)
    terminal.keys("Escape")
    terminal.wait_for(lambda s: "■ stopped" in s and not answering(s), timeout=20, what="the answer to stop")
    # The status line's context count takes in the stopped answer (counted after it ends).
    terminal.wait_for(
        lambda s: (context_used(s) or 0) > (before_answer or 0), timeout=20, what="the context count to take in the answer"
    )
    # Stopped for real: the screen comes to rest (the final answer's layout may land a frame
    # later on a slow machine), which it never would while tokens still came in: a streaming
    # answer is redrawn at least once a second (FRAME_MAX_S).
    screen = terminal.settled(quiet=2.0, timeout=20, what="the screen to stop changing")
    assert "■ stopped" in screen
    terminal.type("/quit")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
    assert "Traceback" not in terminal.history()


def test_two_questions_two_pictures_resume_and_export(terminal, shape_picture, tmp_path, run_vlchat):
    import json

    sessions = tmp_path / "sessions"
    second = tmp_path / "other.png"
    draw_scene(Scene("square", "green", "white", 1), size=256, rng=random.Random(2)).save(second)

    def messages() -> list:
        files = list(sessions.glob("*/session.json"))
        return json.loads(files[0].read_text())["conversation"]["messages"] if files else []

    def wait_saved(count: int) -> None:
        deadline = time.monotonic() + 90
        while len(messages()) < count:
            assert time.monotonic() < deadline, f"the session on disk never had {count} messages:\n{terminal.screen()}"
            time.sleep(0.2)

    common = f"--model demo --image-protocol halfblock --sessions-dir {shlex.quote(str(sessions))}"
    terminal.start(f"{common} {shlex.quote(str(shape_picture))}")
    terminal.wait_for(ready, what="the picture and the loaded model")
    terminal.type("What colour is the shape?")
    terminal.keys("Enter")
    wait_saved(2)
    terminal.type(f"/image {second}")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "2/2" in s, what="the second picture")
    terminal.type("What shape is it?")
    terminal.keys("Enter")
    wait_saved(4)
    terminal.type("/quit")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
    assert "Traceback" not in terminal.history()
    answers = [m["text"] for m in messages() if m["role"] == "assistant"]

    shape_picture.unlink()  # the session keeps its own copies
    terminal.close()
    terminal.start(f"--resume {common}")
    screen = terminal.wait_for(lambda s: "What shape is it?" in s and "ctx " in s, what="the resumed session")
    assert "What colour is the shape?" in screen
    assert all(answer[:30] in screen for answer in answers)
    assert "2/2" in screen and "other.png" in screen
    terminal.type("/quit")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
    assert "Traceback" not in terminal.history()

    out = tmp_path / "export" / "talk.md"
    result = run_vlchat("export", "--sessions-dir", sessions, "-o", out)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "What colour is the shape?" in text and "What shape is it?" in text
    assert all(answer in text for answer in answers)
    assets = sorted(p.name for p in (tmp_path / "export" / "talk_assets").iterdir())
    assert len(assets) == 2
    assert all(f"(talk_assets/{name})" in text for name in assets)


def test_kill_9_in_the_middle_of_an_answer_loses_nothing_before_it(terminal, shape_picture, endless_model, tmp_path):
    import json
    import signal

    sessions = tmp_path / "sessions"
    common = (f"--model {shlex.quote(str(endless_model))} --image-protocol halfblock "
              f"--sessions-dir {shlex.quote(str(sessions))}")

    def messages() -> list:
        files = list(sessions.glob("*/session.json"))
        return json.loads(files[0].read_text())["conversation"]["messages"] if files else []

    terminal.start(f"{common} --max-new-tokens 4 {shlex.quote(str(shape_picture))}")
    terminal.wait_for(ready, what="the picture and the loaded model")
    terminal.type("Describe the picture.")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "4 tokens" in s, what="the first, short answer")
    terminal.type("/set max_tokens 100000")
    terminal.keys("Enter")
    terminal.type("What colour is the shape?")
    terminal.keys("Enter")
    terminal.wait_for(answering, what="the second answer to stream")
    time.sleep(1.0)
    assert [m["role"] for m in messages()] == ["user", "assistant", "user"]
    first_answer = messages()[1]["text"]
    pane = terminal.tmux("display", "-p", "-t", terminal.session, "#{pane_pid}").strip()
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", pane], capture_output=True, text=True).stdout.split()
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    terminal.wait_for(lambda s: "vlchat exited 137" in s, timeout=30, what="vlchat to be killed")

    data = messages()  # readable, and everything before the answer being written is there
    assert [m["text"] for m in data[:3]] == ["Describe the picture.", first_answer, "What colour is the shape?"]
    terminal.close()
    terminal.start(f"--resume {common} --max-new-tokens 3")
    terminal.wait_for(
        lambda s: all(text in s for text in ("Describe the picture.", first_answer[:20], "What colour is the shape?")),
        what="the resumed session with every turn before the kill",
    )
    terminal.type("/quit")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")


def test_the_app_against_a_server_streams_stops_and_resumes_there(terminal, shape_picture, openai_server, tmp_path):
    """vlchat on a laptop in front of a model served elsewhere: the same app, the same keys."""
    import json

    sessions = tmp_path / "sessions"
    common = f"--image-protocol halfblock --sessions-dir {shlex.quote(str(sessions))}"
    terminal.start(f"--endpoint {openai_server.url} --model demo-endless --max-new-tokens 100000 {common} "
                   f"{shlex.quote(str(shape_picture))}")
    terminal.wait_for(lambda s: "1/1" in s and "demo-endless" in s and "loading" not in s, what="the server's model")
    terminal.type("Describe the picture.")
    terminal.keys("Enter")
    terminal.wait_for(answering, what="the answer to stream from the server")
    time.sleep(1.0)
    gone_before = len(openai_server.disconnects)
    pressed = time.monotonic()
    terminal.keys("Escape")
    terminal.wait_for(lambda s: "■ stopped" in s and not answering(s), timeout=20, what="the answer to stop")
    deadline = time.monotonic() + 5
    while len(openai_server.disconnects) == gone_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(openai_server.disconnects) > gone_before, "the server never saw the connection close"
    assert openai_server.disconnects[-1] - pressed < 1.0  # the server stops generating within a second
    terminal.type("/quit")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
    assert "Traceback" not in terminal.history()

    saved = json.loads(next(sessions.glob("*/session.json")).read_text())
    assert saved["model"]["endpoint"] == openai_server.url
    # Resumed with no --endpoint: the session goes back to its server; /model picks another of its models.
    terminal.close()
    terminal.start(f"--resume {common}")
    terminal.wait_for(lambda s: "Describe the picture." in s and "stopped" in s and "demo-endless" in s
                      and "loading" not in s, what="the resumed session on its server")
    asked = sum(1 for r in openai_server.requests if r["method"] == "POST")
    terminal.type("/model demo")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "Now talking to demo" in s, what="the switch to the server's demo model")
    # The session remembers --max-new-tokens 100000: after its own ramble the demo model may ramble on.
    terminal.type("/set max_tokens 16")
    terminal.keys("Enter")
    terminal.type("What colour is the shape?")
    terminal.keys("Enter")

    def saved_messages() -> list:
        return json.loads(next(sessions.glob("*/session.json")).read_text())["conversation"]["messages"]

    deadline = time.monotonic() + 60
    while len(saved_messages()) < 4:
        assert time.monotonic() < deadline, f"the answer was never saved:\n{terminal.screen()}"
        time.sleep(0.2)
    answer = saved_messages()[-1]
    # What the tiny demo model says after its own long, stopped ramble is its business; that it
    # came from the server's demo model, and shows on the screen, is ours.
    assert answer["role"] == "assistant" and answer["model"] == "demo" and answer["text"]
    screen = terminal.wait_for(lambda s: answer["text"][:20] in s, what="the answer on the screen")
    status = [line for line in screen.splitlines() if "server-side" in line]
    assert status and "ctx " in status[0] and "/2048" in status[0] and "mem ?" not in status[0], screen
    assert sum(1 for r in openai_server.requests if r["method"] == "POST") == asked + 1
    terminal.type("/quit")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
    assert "Traceback" not in terminal.history()
    saved = json.loads(next(sessions.glob("*/session.json")).read_text())
    assert saved["model"]["endpoint"] == openai_server.url and saved["model"]["name"] == "demo"


@pytest.mark.parametrize("size", [(80, 24), (100, 24)], ids=["80x24", "100x24"])
def test_keys_in_a_real_terminal_with_the_prompt_focused(terminal, shape_picture, size):
    """ctrl+y, F1 and Up as a terminal sends them, the prompt focused; the status line and the
    footer fit the window whole."""
    width, height = size
    terminal.start(f"--model demo --image-protocol halfblock {shlex.quote(str(shape_picture))}", width=width, height=height)
    terminal.wait_for(ready, what="the picture and the loaded model")
    terminal.type("What colour is the shape?")
    terminal.keys("Enter")
    # the status line takes in the answer's figures once it has ended
    screen = terminal.wait_for(lambda s: "is red" in s and "tok/s" in s.splitlines()[-2], what="the answer, ended")
    status, footer = screen.splitlines()[-2:]
    assert len(status.rstrip()) <= width and "ctx " in status and "tok/s" in status
    assert footer.rstrip().endswith("^p palette") and "f1 Help" in footer
    terminal.keys("C-y")
    terminal.wait_for(lambda s: "Copied the last answer" in s, timeout=10, what="ctrl+y to copy")
    terminal.keys("F1")
    terminal.wait_for(lambda s: "Esc closes" in s and "Tab or →" in s, timeout=10, what="the help screen")
    terminal.keys("Escape")
    terminal.wait_for(lambda s: "Esc closes" not in s, timeout=10, what="the help screen to close")
    terminal.keys("Up")
    terminal.wait_for(lambda s: "▊ What colour is the shape?" in s, timeout=10, what="the question back from the history")
    terminal.keys("C-q")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
    assert "Traceback" not in terminal.history()
