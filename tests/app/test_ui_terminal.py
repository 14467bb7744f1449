"""Picture protocol detection against a pretend terminal (a pty whose other end answers, or not),
the theme files, and the `vlchat` command line for the app."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vlchat.ui.terminal import detect, parse_replies

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import os, select, sys
    from vlchat.ui.terminal import detect
    graphics = detect("auto", env={"TERM": sys.argv[1], **({"TMUX": "1"} if sys.argv[2] == "tmux" else {})})
    # Whatever the terminal said must not be left over for the app to read as keys.
    readable, _, _ = select.select([0], [], [], 0.4)
    leftover = os.read(0, 1000) if readable else b""
    print("RESULT", graphics.protocol, graphics.cell_width, graphics.cell_height, repr(leftover), flush=True)
    """
)


def pretend_terminal(term: str, answer, where: str = "plain", child: str = CHILD) -> tuple[str, bytes]:
    """Run detect() on a pty; ``answer(queries) -> bytes | None`` plays the terminal."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, "-c", child, term, where], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    seen = b""
    answered = False
    output = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and b"RESULT" not in output:
            readable, _, _ = select.select([master], [], [], 0.1)
            if not readable:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            output += chunk
            seen += chunk
            if not answered and b"\x1b[c" in seen:
                answered = True
                reply = answer(seen)
                if reply:
                    os.write(master, reply)
        while b"\n" not in output.split(b"RESULT", 1)[-1] and time.monotonic() < deadline:
            readable, _, _ = select.select([master], [], [], 0.1)
            if readable:
                output += os.read(master, 4096)
    finally:
        child.wait(timeout=10)
        os.close(master)
    line = output.split(b"RESULT", 1)[-1].split(b"\n", 1)[0].decode()
    return line.strip(), seen


def test_a_terminal_that_reports_sixel_gets_sixel():
    result, _ = pretend_terminal("xterm-256color", lambda q: b"\x1b[6;20;10t\x1b[?62;4;22c")
    assert result.split()[:4] == ["sixel", "10", "20", "b''"]


def test_kitty_is_used_in_kitty():
    reply = b"\x1b_Gi=31;OK\x1b\\\x1b[?62;22c"
    result, _ = pretend_terminal("xterm-kitty", lambda q: reply)
    assert result.startswith("kitty")


def test_a_silent_terminal_falls_back_to_half_blocks_quickly():
    started = time.monotonic()
    result, _ = pretend_terminal("xterm-256color", lambda q: None)
    assert result.startswith("halfblock")
    assert time.monotonic() - started < 10


def test_a_half_answer_is_not_left_in_the_input():
    # Only the graphics reply comes back (the device attributes reply never does): half-blocks,
    # and the reply that did arrive is swallowed, not typed into the app.
    result, _ = pretend_terminal("xterm-256color", lambda q: b"\x1b_Gi=31;EINVAL:bad\x1b\\\x1b[?62")
    assert result.split()[0] == "halfblock"
    assert result.endswith("b''")


def test_inside_tmux_sixel_only_when_tmux_draws_it_and_never_kitty():
    # tmux 3.4+ built with sixel answers the device attributes with 4 itself.
    result, seen = pretend_terminal("tmux-256color", lambda q: b"\x1b[?1;2;4c", where="tmux")
    assert result.startswith("sixel")
    assert b"\x1b_G" not in seen  # no kitty query: tmux would eat it or pass it to the wrong pane
    # Older tmux (or one built without sixel), or no answer at all: half-blocks, nothing left in the input.
    result, _ = pretend_terminal("tmux-256color", lambda q: b"\x1b[?1;2c", where="tmux")
    assert result.startswith("halfblock") and result.endswith("b''")
    result, _ = pretend_terminal("screen-256color", lambda q: None, where="tmux")
    assert result.startswith("halfblock")


PASTE_CHILD = CHILD.replace(
    'print("RESULT", graphics.protocol,',
    'print("RESULT", graphics.paste.paste_events, graphics.paste.osc_read, graphics.protocol,',
)
KITTY_LISTING = b"\x1b]5522;type=read:status=OK:id=vlchat-probe\x1b\\\x1b]5522;type=read:status=DATA:id=vlchat-probe:mime=Lg==;aW1hZ2UvcG5nCg==\x1b\\\x1b]5522;type=read:status=DONE:id=vlchat-probe\x1b\\"


def test_the_one_probe_finds_the_clipboard_protocol_and_leaves_nothing_behind():
    # kitty 0.44.1+: paste events and reads; its replies all come before the device attributes.
    result, seen = pretend_terminal("xterm-kitty", lambda q: b"\x1b[?5522;2$y" + KITTY_LISTING + b"\x1b[?62;22c", child=PASTE_CHILD)
    assert result.split()[:2] == ["True", "True"] and result.endswith("b''")
    assert seen.count(b"\x1b[c") == 1 and seen.count(b"\x1b[?5522$p") == 1  # one probe, not a second
    # An older kitty: reads, but no paste events; a terminal without the protocol: neither.
    result, _ = pretend_terminal("xterm-kitty", lambda q: b"\x1b[?5522;0$y" + KITTY_LISTING + b"\x1b[?62;22c", child=PASTE_CHILD)
    assert result.split()[:2] == ["False", "True"] and result.endswith("b''")
    result, _ = pretend_terminal("xterm-256color", lambda q: b"\x1b[?62;22c", child=PASTE_CHILD)
    assert result.split()[:2] == ["False", "False"]
    # Inside tmux, only when tmux itself answers (it passes the protocol through); a forced
    # picture protocol still probes the clipboard, once.
    result, _ = pretend_terminal("tmux-256color", lambda q: b"\x1b[?1;2c", where="tmux", child=PASTE_CHILD)
    assert result.split()[:2] == ["False", "False"]
    forced = PASTE_CHILD.replace('detect("auto"', 'detect("halfblock"')
    result, seen = pretend_terminal("xterm-256color", lambda q: b"\x1b[?5522;1$y" + KITTY_LISTING + b"\x1b[?62c", child=forced)
    assert result.split()[:3] == ["True", "True", "halfblock"] and result.endswith("b''")


def test_forced_protocols_and_replies():
    assert detect("text").protocol == "text"
    assert detect("none").protocol == "none"
    assert detect("auto").protocol == "halfblock"  # pytest's stdout is not a terminal
    assert parse_replies("\x1b_Gi=31;OK\x1b\\\x1b[?1;2c") == (True, False, None, True)
    from vlchat.core.errors import InputError

    with pytest.raises(InputError, match="unknown picture protocol"):
        detect("ascii-art")


def test_bundled_themes_are_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("VLCHAT_CONFIG_DIR", str(tmp_path))
    from vlchat.ui.themes import load_themes

    themes, problems = load_themes()
    names = {t.name for t in themes}
    assert {"vlchat-dark", "vlchat-light", "vlchat-contrast"} <= names
    assert problems == []
    assert {t.name: t.dark for t in themes}["vlchat-light"] is False


# -- the command line ------------------------------------------------------------------------------
def test_help_shows_the_app_and_its_options(run_vlchat):
    result = run_vlchat("--help")
    assert result.returncode == 0
    for text in ("vlchat [IMAGE...]", "--theme", "--image-protocol", "vlchat demo", "ask"):
        assert text in result.stdout


def test_app_needs_a_terminal_and_good_pictures(run_vlchat, tmp_path):
    missing = run_vlchat(str(tmp_path / "nope.jpg"))
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "nope.jpg does not exist" in missing.stderr
    typo = run_vlchat("aks", "photo.jpg")
    assert typo.returncode == 2 and "it is spelled `vlchat ask`" in typo.stderr
    piped = run_vlchat("--model", "demo")
    assert piped.returncode == 2 and "needs a terminal" in piped.stderr and "Traceback" not in piped.stderr
    bad = run_vlchat("--image-protocol", "ascii")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
