"""`/caption` in the real program in a real terminal (tmux): the job's progress on the status
line, a question answered while it runs, and the file `vlchat caption` writes for the same folder,
model and prompt."""

from __future__ import annotations

import json
import random
import shlex

import pytest

from tests.e2e.test_e2e_tmux import ready, shape_picture, terminal  # noqa: F401 (fixtures)
from vlchat.demo.shapes import PLURALS, Scene, draw_scene

pytestmark = pytest.mark.timeout(240)

PROMPT = "Describe the picture in one sentence."


def test_caption_from_the_chat_in_a_terminal(terminal, shape_picture, tmp_path, run_vlchat):  # noqa: F811
    folder = tmp_path / "pics"
    folder.mkdir()
    rng = random.Random(11)
    for i in range(40):
        colour, background = rng.sample(["red", "green", "yellow", "purple", "blue", "white"], 2)
        draw_scene(Scene(rng.choice(list(PLURALS)), colour, background, 1), size=128, rng=random.Random(i)).save(folder / f"{i:03d}.png")
    out = tmp_path / "app.jsonl"
    terminal.start(f"--model demo --device cpu --quant none --max-new-tokens 24 --image-protocol halfblock {shlex.quote(str(shape_picture))}")
    terminal.wait_for(ready, what="the picture and the loaded model")
    terminal.type(f"/caption {shlex.quote(str(folder))} -o {shlex.quote(str(out))} --prompt {shlex.quote(PROMPT)}")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "captioning " in s and "/40 pictures" in s, what="the job's progress on the status line")
    terminal.type("What colour is the shape?")
    terminal.keys("Enter")
    screen = terminal.wait_for(lambda s: "is red" in s and "Done: 40/40 pictures: 40 captioned" in s, timeout=150,
                               what="the answer and the job's end")
    assert "captioning " not in screen.splitlines()[-1]
    terminal.type("/quit")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
    assert "Traceback" not in terminal.history()

    made = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    cli = tmp_path / "cli.jsonl"
    result = run_vlchat("caption", folder, "-o", cli, "--prompt", PROMPT, "--max-new-tokens", "24", "--device", "cpu", "--quant", "none")
    assert result.returncode == 0, result.stderr
    by_cli = {r["path"]: r for r in map(json.loads, cli.read_text().splitlines())}
    # The app runs its model in a process of its own, one picture at a time through the chat's
    # stream, whose token count takes in the end-of-answer token; the CLI's batches do not.
    keep = ("sha256", "caption", "model", "prompt")
    assert len(made) == 40
    assert {p: [r[k] for k in keep] for p, r in made.items()} == {p: [r[k] for k in keep] for p, r in by_cli.items()}
