"""Pasting pictures, with a test that plays the terminal: the real `vlchat` (demo model) runs on a
pty whose other end is this test. It answers the app's start probe and its OSC 5522 clipboard
reads as kitty does (kitty/clipboard.py: OK, DATA chunks of 4096 bytes, DONE, the id sent back),
sends paste events (the list of types with a one-time password), and reads the screen the app
draws through a VT emulator (pyte).

Then, in tmux under Xvfb, a picture put on the X clipboard with xclip is pasted with ctrl+v.
"""

from __future__ import annotations

import base64
import fcntl
import os
import pty
import random
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from vlchat.demo.shapes import Scene, draw_scene

pyte = pytest.importorskip("pyte")

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
OSC_READ = re.compile(rb"\x1b\]5522;([^\x1b\x07]*)(?:\x1b\\|\x07)")
QUERIES = re.compile(rb"\x1b\[c|\x1b\[\?5522\$p|\x1b\]5522;[^\x1b\x07]*(?:\x1b\\|\x07)")


def b64(data: bytes | str) -> str:
    return base64.standard_b64encode(data.encode() if isinstance(data, str) else data).decode()


def vlchat_argv() -> list[str]:
    script = Path(sys.executable).parent / "vlchat"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vlchat.cli"]


def picture_bytes(colour: str, shape: str = "square", seed: int = 3) -> bytes:
    import io

    buffer = io.BytesIO()
    draw_scene(Scene(shape, colour, "white", 1), size=256, rng=random.Random(seed)).save(buffer, format="PNG")
    return buffer.getvalue()


class PlayedTerminal:
    """A pty that answers like kitty: device attributes, the paste-events mode, OSC 5522 reads."""

    def __init__(self, tmp_path: Path, *, paste_events: bool = True, columns: int = 120, rows: int = 40):
        self.paste_events = paste_events
        self.clipboard: dict[str, bytes] = {}
        self.read_answer = None  # a function (request meta, mimes) -> bytes to send instead of the data
        self.passwords: set[str] = set()
        self.requests: list[dict[str, str]] = []
        self.mode_5522 = False
        self.screen = pyte.Screen(columns, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.lock = threading.Lock()
        self.raw = b""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = {
            k: v for k, v in os.environ.items() if k not in ("TMUX", "DISPLAY", "WAYLAND_DISPLAY", "COLUMNS", "LINES")
        }
        env.update(
            TERM="xterm-256color",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
            HF_HUB_OFFLINE="1",
            VLCHAT_CONFIG_DIR=str(tmp_path / "config"),
        )
        argv = [*vlchat_argv(), "--model", "demo", "--image-protocol", "halfblock", "--sessions-dir", str(tmp_path / "sessions")]
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True, start_new_session=True)
        os.close(slave)
        self.master = master
        self.pending = b""
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    # -- the terminal's side ---------------------------------------------------------------------
    def _read(self) -> None:
        while not self.closed:
            try:
                readable, _, _ = select.select([self.master], [], [], 0.1)
                if not readable:
                    continue
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.raw += chunk
                try:
                    self.stream.feed(chunk)
                except Exception:
                    pass
            self.pending += chunk
            self._answer()

    def _answer(self) -> None:
        last = 0
        for match in QUERIES.finditer(self.pending):
            last = match.end()
            query = match.group(0)
            if query == b"\x1b[c":
                self.send(b"\x1b[?62;22c")
            elif query == b"\x1b[?5522$p":
                self.send(b"\x1b[?5522;%d$y" % (2 if self.paste_events else 0))
            else:
                self._osc(OSC_READ.match(query).group(1).decode())
        keep = self.pending[last:]
        # Keep a possible start of a query for the next chunk.
        self.pending = keep[keep.rfind(b"\x1b"):] if b"\x1b" in keep else b""

    def _osc(self, body: str) -> None:
        meta_text, _, payload = body.partition(";")
        meta = dict(record.split("=", 1) for record in meta_text.split(":"))
        for key in ("pw", "name"):
            if key in meta:
                meta[key] = base64.b64decode(meta[key]).decode()
        mimes = base64.b64decode(payload).decode().split()
        self.requests.append({**meta, "mimes": " ".join(mimes)})
        ident = f":id={meta['id']}" if "id" in meta else ""
        if meta.get("type") != "read":
            return
        if mimes == ["."]:
            listing = " ".join(self.clipboard).encode() + b"\n"
            self.send_osc(f"type=read:status=OK{ident}")
            self.send_osc(f"type=read:status=DATA{ident}:mime={b64('.')};{b64(listing)}")
            self.send_osc(f"type=read:status=DONE{ident}")
            return
        if self.read_answer is not None:
            self.send(self.read_answer(ident))
            return
        one_time = meta.get("pw") in self.passwords and meta.get("name") == "Paste event"
        self.passwords.discard(meta.get("pw", ""))
        if not one_time and not self.allow_reads:
            self.send_osc(f"type=read:status=EPERM{ident}")
            return
        self.send_osc(f"type=read:status=OK{ident}")
        for mime in mimes:
            data = self.clipboard.get(mime, b"")
            for start in range(0, len(data), 4096):
                self.send_osc(f"type=read:status=DATA{ident}:mime={b64(mime)};{b64(data[start:start + 4096])}")
        self.send_osc(f"type=read:status=DONE{ident}")

    allow_reads = True

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def send_osc(self, body: str) -> None:
        self.send(b"\x1b]5522;" + body.encode() + b"\x1b\\")

    def paste_key(self, otp: str = "one-time-7f3a") -> None:
        """What kitty sends for its paste key while the paste-events mode is on."""
        assert self.mode_on(), "the app did not turn on the paste-events mode"
        self.passwords.add(otp)
        pw = f":pw={b64(otp)}"
        listing = (" ".join(self.clipboard) + "\n").encode()
        self.send_osc(f"type=read:status=OK{pw}")
        self.send_osc(f"type=read:status=DATA:mime={b64('.')}{pw};{b64(listing)}")
        self.send_osc(f"type=read:status=DONE{pw}")

    def mode_on(self) -> bool:
        with self.lock:
            raw = self.raw
        return raw.rfind(b"\x1b[?5522h") > raw.rfind(b"\x1b[?5522l")

    # -- what the person sees and does ---------------------------------------------------------------
    def text(self) -> str:
        with self.lock:
            return "\n".join(self.screen.display)

    def wait_for(self, predicate, timeout: float = 120.0, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.text()
            if predicate(screen):
                return screen
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n{screen}")

    def type(self, text: str) -> None:
        self.send(text.encode())

    def close(self) -> None:
        if self.process.poll() is None:
            self.send(b"\x11")  # ctrl+q
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.closed = True
        self.reader.join(timeout=5)
        os.close(self.master)


def ready(screen: str) -> bool:
    return "ctx " in screen and "loading" not in screen


def prompt_is_clean(screen: str) -> bool:
    """The prompt shows its placeholder: nothing was typed into it."""
    return any(placeholder in screen for placeholder in ("Ask about picture", "Ask anything", "Ask, or /image"))


@pytest.fixture
def played(tmp_path):
    terminals = []

    def start(**kwargs) -> PlayedTerminal:
        terminal = PlayedTerminal(tmp_path, **kwargs)
        terminals.append(terminal)
        return terminal

    yield start
    for terminal in terminals:
        terminal.close()
        assert b"Traceback" not in terminal.raw
        assert not terminal.mode_on(), "the paste-events mode was left on: the shell's paste would break"


def test_a_picture_pasted_with_the_terminals_paste_key_is_answered_about(played, tmp_path):
    term = played()
    term.wait_for(ready, what="the loaded model")
    term.wait_for(lambda s: term.mode_on(), timeout=10, what="the paste-events mode")
    pasted = picture_bytes("green")
    term.clipboard = {"image/png": pasted, "text/plain": b"not this"}
    term.paste_key()
    # The line, and the picture in the preview (1/1).
    term.wait_for(lambda s: "Pasted a picture (PNG, 256x256)" in s and "1/1" in s, what="the pasted picture")
    read = term.requests[-1]
    assert read["mimes"] == "image/png" and read["name"] == "Paste event"  # the one-time password, no prompt
    term.wait_for(prompt_is_clean, timeout=60, what="the prompt, clean")
    term.type("What colour is the shape?\r")
    screen = term.wait_for(lambda s: "is green" in s and "first token" in s, what="the answer about the pasted picture")
    assert "What colour is the shape?" in screen
    # Saved into the session by its content, like a picture attached with /image.
    deadline = time.monotonic() + 60
    while not any(f.read_bytes() == pasted for f in (tmp_path / "sessions").rglob("*.png")):
        assert time.monotonic() < deadline, "the pasted picture never reached the session folder"
        time.sleep(0.2)


def test_a_text_paste_event_stays_text(played):
    term = played()
    term.wait_for(ready, what="the loaded model")
    term.wait_for(lambda s: term.mode_on(), timeout=10, what="the paste-events mode")
    term.clipboard = {"text/plain": b"just some words"}
    term.paste_key()
    screen = term.wait_for(lambda s: "just some words" in s, what="the text in the prompt")
    assert "Pasted a picture" not in screen
    assert term.requests[-1]["mimes"] == "text/plain" and term.requests[-1]["name"] == "Paste event"


def test_files_copied_in_a_file_manager_paste_as_pictures(played, tmp_path):
    path = tmp_path / "copied shot.png"
    path.write_bytes(picture_bytes("green"))
    term = played()
    term.wait_for(ready, what="the loaded model")
    term.wait_for(lambda s: term.mode_on(), timeout=10, what="the paste-events mode")
    uri = "file://" + str(path).replace(" ", "%20")
    term.clipboard = {"text/uri-list": f"# copied\r\n{uri}\r\n".encode(), "text/plain": str(path).encode()}
    term.paste_key()
    term.wait_for(lambda s: "copied shot.png" in s and "1/1" in s, what="the copied file attached")
    assert term.requests[-1]["mimes"] == "text/uri-list"


@pytest.mark.parametrize(
    "answer, line",
    [
        (lambda ident: b"\x1b]5522;type=read:status=EPERM" + ident.encode() + b"\x1b\\", "did not allow reading the clipboard"),
        (
            lambda ident: b"\x1b]5522;type=read:status=OK" + ident.encode() + b"\x1b\\\x1b]5522;type=read:status=DATA"
            + ident.encode() + b":mime=aW1hZ2UvcG5n;%%%not*base64%%%\x1b\\\x1b]5522;type=read:status=DONE" + ident.encode() + b"\x1b\\",
            "malformed",
        ),
        (
            lambda ident: b"\x1b]5522;type=read:status=OK" + ident.encode() + b"\x1b\\\x1b]5522;type=read:status=DATA"
            + ident.encode() + b":mime=aW1hZ2UvcG5n;" + base64.b64encode(os.urandom(120_000)) + b"\x1b\\"
            + b"\x1b]5522;type=read:status=DONE" + ident.encode() + b"\x1b\\",
            "malformed or too large",
        ),
    ],
    ids=["denied", "malformed", "oversized"],
)
def test_a_failed_read_gives_one_line_and_a_clean_prompt(played, answer, line):
    term = played(paste_events=False)
    term.wait_for(ready, what="the loaded model")
    term.clipboard = {"image/png": picture_bytes("green")}
    term.read_answer = answer
    term.send(b"\x16")  # ctrl+v
    term.wait_for(lambda s: line in s, timeout=60, what="the one line")
    assert term.requests[-2]["mimes"] == "." and term.requests[-1]["mimes"] == "image/png"
    # Once the notifications that cover it are gone, the prompt shows its placeholder: empty.
    screen = term.wait_for(prompt_is_clean, timeout=60, what="the prompt, clean")
    assert screen.count(line) == 1, screen
    assert "Pasted a picture" not in screen and "1/1" not in screen
    # The app still takes keys as keys: nothing of the reply is left in its input.
    term.type("hello")
    screen = term.wait_for(lambda s: "hello" in s, timeout=30, what="typed text")
    prompt_rows = [row for row in screen.splitlines() if "hello" in row]
    assert prompt_rows and all(re.fullmatch(r"[^A-Za-z0-9+/=]*hello[^A-Za-z0-9+/=]*", row.strip()) for row in prompt_rows)


def test_a_read_the_terminal_never_answers_says_so_and_times_out_cleanly(played):
    term = played(paste_events=False)
    term.wait_for(ready, what="the loaded model")
    term.clipboard = {"image/png": picture_bytes("green")}
    late: list[str] = []
    term.read_answer = lambda ident: late.append(ident) or b""  # the person never answers kitty's prompt
    term.send(b"\x16")  # ctrl+v
    term.wait_for(lambda s: "Reading the clipboard's picture" in s, timeout=60, what="the line saying the terminal may ask")
    term.wait_for(lambda s: "did not answer in time" in s, timeout=90, what="the time-out line")
    # The answer comes after all: it is swallowed, not typed into the prompt, and attaches nothing.
    data = picture_bytes("green")
    ident = late[0]
    term.send_osc(f"type=read:status=OK{ident}")
    term.send_osc(f"type=read:status=DATA{ident}:mime={b64('image/png')};{b64(data[:4096])}")
    term.send_osc(f"type=read:status=DONE{ident}")
    term.type("ok")
    screen = term.wait_for(lambda s: re.search(r"▊ ok\s", s), timeout=60, what="the typed keys alone in the prompt")
    assert "Pasted a picture" not in screen and "1/1" not in screen


def test_dropping_a_picture_path_attaches_it_and_text_stays_text(played, tmp_path):
    folder = tmp_path / "my pictures"
    folder.mkdir()
    path = folder / "drop me.png"
    path.write_bytes(picture_bytes("green"))
    term = played(paste_events=False)
    term.wait_for(ready, what="the loaded model")
    term.send(b"\x1b[200~" + shlex.quote(str(path)).encode() + b"\x1b[201~")
    screen = term.wait_for(lambda s: "1/1" in s, what="the dropped picture attached")
    assert "drop me.png" in screen
    term.wait_for(prompt_is_clean, timeout=60, what="the prompt, clean")
    term.send(b"\x1b[200~/far/away/laptop.png\x1b[201~")
    term.wait_for(lambda s: "not on this machine" in s and "scp" in s, what="the missing file's line")
    term.send(b"\x1b[200~two words\x1b[201~")
    screen = term.wait_for(lambda s: "two words" in s, what="the text paste in the prompt")
    assert "1/1" in screen
    term.send(b"\x15")  # ctrl+u: the prompt empty again
    term.wait_for(lambda s: "two words" not in s, what="the prompt emptied")
    # Esc right after a drop keeps the path as text, and attaches nothing.
    other = folder / "keep as text.png"
    other.write_bytes(picture_bytes("green", seed=4))
    term.send(b"\x1b[200~" + shlex.quote(str(other)).encode() + b"\x1b[201~\x1b")
    screen = term.wait_for(lambda s: "keep as text.png" in s, what="the path as text in the prompt")
    assert "1/1" in screen and "2/2" not in screen


# -- the local clipboard: X11 with xclip, the app in tmux ---------------------------------------------
@pytest.mark.skipif(
    not (shutil.which("Xvfb") and shutil.which("xclip") and shutil.which("tmux")),
    reason="needs Xvfb, xclip and tmux (.ci/run installs them)",
)
def test_ctrl_v_pastes_the_x_clipboards_picture_in_tmux(tmp_path):
    # Xvfb picks a free display and writes its number on a pipe once it is ready.
    ready_read, ready_write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(ready_write), "-nolisten", "tcp"], pass_fds=(ready_write,),
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "xvfb.log", "wb"),
    )
    os.close(ready_write)
    got, deadline = b"", time.monotonic() + 30
    while not got.endswith(b"\n") and time.monotonic() < deadline:
        readable, _, _ = select.select([ready_read], [], [], 1)
        chunk = os.read(ready_read, 64) if readable else b""
        if readable and not chunk:
            break
        got += chunk
    # (the pipe stays open while Xvfb runs: it writes the number and its newline apart, and dies
    # if the second write finds the pipe closed)
    number = got.decode().strip()
    if not number:
        xvfb.kill()
        os.close(ready_read)
        raise AssertionError(f"Xvfb did not start: {(tmp_path / 'xvfb.log').read_text()[-800:]}")
    display = f":{number}"
    socket = f"vlchat-paste-{os.getpid()}"
    xclip = None
    try:
        picture = tmp_path / "clip.png"
        picture.write_bytes(picture_bytes("green"))
        env = dict(os.environ, DISPLAY=display)
        deadline = time.monotonic() + 30
        # The number comes a moment before the server takes connections.
        while b"open display" in subprocess.run(["xclip", "-selection", "clipboard", "-o"], env=env, capture_output=True, timeout=10).stderr:
            assert time.monotonic() < deadline, f"Xvfb does not take connections: {xvfb.poll()} {(tmp_path / 'xvfb.log').read_text()[-800:]}"
            time.sleep(0.1)
        # xclip keeps serving the selection from the background until another owner takes it.
        xclip = subprocess.Popen(
            ["xclip", "-selection", "clipboard", "-t", "image/png", "-i", str(picture)], env=env,
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "xclip.log", "wb"),
        )
        deadline = time.monotonic() + 30
        while b"image/png" not in subprocess.run(["xclip", "-selection", "clipboard", "-t", "TARGETS", "-o"], env=env, capture_output=True).stdout:
            assert time.monotonic() < deadline, f"the picture never reached the X clipboard: {(tmp_path / 'xclip.log').read_text()} {xclip.poll()}"
            time.sleep(0.1)
        exports = " ".join(
            f"{k}={shlex.quote(v)}"
            for k, v in {
                "DISPLAY": display,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
                "HF_HUB_OFFLINE": "1",
                "VLCHAT_CONFIG_DIR": str(tmp_path / "config"),
            }.items()
        )
        argv = " ".join(shlex.quote(a) for a in vlchat_argv())
        command = f"env -u COLUMNS -u LINES {exports} {argv} --model demo --image-protocol halfblock --sessions-dir {shlex.quote(str(tmp_path / 's'))}; echo vlchat exited $?; sleep 600"
        subprocess.run(["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", "p", "-x", "120", "-y", "40", command], check=True, timeout=20)

        def screen() -> str:
            return subprocess.run(["tmux", "-L", socket, "capture-pane", "-p", "-t", "p"], capture_output=True, text=True, timeout=20).stdout

        def wait_for(predicate, what: str, timeout: float = 120) -> str:
            end = time.monotonic() + timeout
            text = ""
            while time.monotonic() < end:
                text = screen()
                if predicate(text):
                    return text
                time.sleep(0.2)
            raise AssertionError(f"timed out waiting for {what}:\n{text}")

        wait_for(ready, "the loaded model")
        # What the start probe found, as --print-config shows it in the same terminal.
        subprocess.run(
            ["tmux", "-L", socket, "new-window", "-d", "-t", "p", "-n", "config", f"env {exports} {argv} --print-config; sleep 600"],
            check=True, timeout=20,
        )
        end = time.monotonic() + 60
        config = ""
        while "# paste:" not in config:
            assert time.monotonic() < end, f"--print-config showed no paste line:\n{config}"
            time.sleep(0.2)
            config = subprocess.run(["tmux", "-L", socket, "capture-pane", "-p", "-t", "p:config"], capture_output=True, text=True, timeout=20).stdout
        assert "# paste: ctrl+v reads the local clipboard (xclip) [tmux does not pass the clipboard protocol through]" in config
        subprocess.run(["tmux", "-L", socket, "send-keys", "-t", "p:0", "C-v"], timeout=20)
        wait_for(lambda s: "Pasted a picture (PNG, 256x256)" in s and "1/1" in s, "the pasted picture")
        subprocess.run(["tmux", "-L", socket, "send-keys", "-t", "p", "-l", "What colour is the shape?"], timeout=20)
        subprocess.run(["tmux", "-L", socket, "send-keys", "-t", "p", "Enter"], timeout=20)
        wait_for(lambda s: "is green" in s and "first token" in s, "the answer about the pasted picture")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, timeout=20)
        if xclip is not None:
            xclip.kill()
            xclip.wait(timeout=10)
        xvfb.terminate()
        xvfb.wait(timeout=10)
        os.close(ready_read)
