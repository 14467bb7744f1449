"""The real `vlchat` in a real terminal (tmux): Ctrl+C while an answer is written, and a model
process killed mid-answer. Keys a terminal sends and processes the kernel kills are what matter here."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess

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
