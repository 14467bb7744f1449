"""Issue 16, items 22 and 28: what `vlchat caption` says at the end of a run, and empty answers
from a server, as a user runs the command (the installed command, the test server)."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import vlchat_command
from tests.openai_server import OpenAITestServer
from vlchat.demo.shapes import Scene, draw_scene

pytestmark = pytest.mark.timeout(240)

FAST = ("--max-new-tokens", "16", "--device", "cpu", "--quant", "none")


def draw(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        draw_scene(Scene("circle", "red", "blue", 1), size=96, rng=random.Random(i)).save(path)
        paths.append(path)
    return paths


def summary(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if re.match(r"vlchat: (stopped; )?\d+ pictures?:", line)]
    return line


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_limit_says_what_is_left_and_subfolders_get_a_hint(tmp_path, run_vlchat):
    folder = tmp_path / "pics"
    draw(folder, 5)
    draw(folder / "more", 1)
    out = tmp_path / "c.jsonl"
    result = run_vlchat("caption", folder, "-o", out, "--limit", "2", *FAST)
    assert result.returncode == 0, result.stderr
    line = summary(result.stderr)
    assert line.startswith("vlchat: 5 pictures: 2 captioned") and "3 left for the next run (--limit 2)" in line
    assert "vlchat: note: 1 sub-folder not looked in (add --recursive)" in result.stderr
    assert "1 request" not in result.stderr


def test_empty_answers_are_errors_retried_once_recorded_once(tmp_path, run_vlchat, demo_engine):
    folder = tmp_path / "pics"
    pictures = draw(folder, 4)
    out = tmp_path / "c.jsonl"
    with OpenAITestServer(demo_engine) as server:
        server.empty_answers = 2  # a server that drops requests: a role chunk and [DONE]
        first = run_vlchat("caption", folder, "-o", out, "--endpoint", server.url, "--model", "demo",
                           "--concurrency", "1", "--max-new-tokens", "16")
        assert first.returncode == 0, first.stderr
        assert "2 captioned, 2 failed" in summary(first.stderr)
        assert "1 request at a time" in first.stderr
        rows = records(out)
        assert [bool(r.get("caption")) for r in rows].count(True) == 2 and all(r.get("caption") != "" for r in rows)
        failed = sorted(r["path"] for r in rows if r.get("error"))
        assert len(failed) == 2 and all("without sending any of it" in r["error"] for r in rows if r.get("error"))

        again = run_vlchat("caption", folder, "-o", out, "--endpoint", server.url, "--model", "demo", "--max-new-tokens", "16")
        assert "2 already done, 2 failed in an earlier run (--retry-errors tries them again)" in summary(again.stderr)
        assert len(records(out)) == 4

        server.empty_answers = 1  # one of the two fails again
        retry = run_vlchat("caption", folder, "-o", out, "--endpoint", server.url, "--model", "demo",
                           "--concurrency", "1", "--max-new-tokens", "16", "--retry-errors")
        assert "1 captioned, 1 failed" in summary(retry.stderr), retry.stderr
        rows = records(out)
        assert len(rows) == 5  # the new caption; the picture that failed again keeps its one error record
        errors = [r["path"] for r in rows if r.get("error")]
        assert len(errors) == len(set(errors)) == 2
    captioned = {r["path"] for r in rows if r.get("caption")}
    assert len(captioned) == 3 and captioned <= {str(p) for p in pictures}


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux for a real narrow terminal")
def test_the_progress_bar_fits_a_narrow_terminal_and_leaves_no_trace(tmp_path):
    """In a 48-column terminal the bar never wraps, so nothing of it is left behind: the screen
    after the run holds the notes and the summary, and no piece of a bar."""
    folder = tmp_path / "pics"
    draw(folder, 6)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # a line said above the bar
    out = tmp_path / "c.jsonl"
    done = tmp_path / "done"
    session = f"vlchat-caption-{os.getpid()}"
    command = " ".join(shlex.quote(str(a)) for a in [*vlchat_command(), "caption", folder, "-o", out, *FAST])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "48", "-y", "20",
                    # COLUMNS from a shared tmux server's environment would override the real width (rich honours it)
                    f"env -u COLUMNS -u LINES HF_HUB_OFFLINE=1 {command}; touch {shlex.quote(str(done))}; sleep 60"], check=True)
    try:
        deadline = time.monotonic() + 200
        while not done.exists():
            assert time.monotonic() < deadline, "the caption run did not end"
            time.sleep(0.2)
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert "6 captioned, 1 failed" in screen.replace("\n", ""), screen
    assert "━" not in screen and "[#" not in screen and "##" not in screen and "pictures/s  " not in screen, screen
    assert len(records(out)) == 7
