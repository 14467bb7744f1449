"""`/caption DIR` in the app: the job runs with the model already loaded, writes the records
`vlchat caption` writes for the same folder, model and prompt, and a question asked meanwhile is
answered."""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from tests.conftest import vlchat_command
from tests.toolkit import app_for, command, notifications, run_async, settle, status_text, transcript_text, until
from vlchat.demo.shapes import PLURALS, Scene, draw_scene

pytestmark = pytest.mark.timeout(180)

PROMPT = "Describe the picture in one sentence."


def draw(folder, count=40):
    rng = random.Random(7)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour, background = rng.sample(["red", "green", "yellow", "purple", "blue", "white"], 2)
        scene = Scene(rng.choice(list(PLURALS)), colour, background, rng.randint(1, 3))
        draw_scene(scene, size=128, rng=random.Random(i)).save(folder / f"{i:03d}.png")


def rows(path) -> dict[str, dict]:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return {r["path"]: r for r in map(json.loads, text.splitlines())}


def partway(status: str, total: int) -> bool:
    """The status line shows the job with some pictures done and some left."""
    import re

    found = re.search(rf"captioning (\d+)/{total} pictures", status)
    return bool(found) and 0 < int(found.group(1)) < total


def same_records(a: dict, b: dict) -> bool:
    keep = ("path", "sha256", "caption", "model", "prompt", "tokens")
    return {k: {f: v.get(f) for f in keep} for k, v in a.items()} == {k: {f: v.get(f) for f in keep} for k, v in b.items()}


@run_async
async def test_caption_in_the_app_writes_what_the_cli_writes_and_answers_a_question_meanwhile(demo_engine, picture, tmp_path):
    folder = tmp_path / "pics"
    draw(folder)
    out = tmp_path / "app.jsonl"
    app = app_for(demo_engine, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        # typed and submitted one after the other: Pilot's key presses wait for the app to be idle,
        # which it is not until the job ends
        app.chat.handle_input(f"/caption {folder} -o {out} --prompt '{PROMPT}'")
        assert "captioning" in status_text(app)
        await until(pilot, lambda: partway(status_text(app), 40), timeout=60)
        # asked while the job runs: answered between its batches
        assert app.chat.caption_job is not None
        app.chat.handle_input("What colour is the shape?")
        await until(pilot, lambda: app.chat.generating is None and app.chat.caption_job is None, timeout=120)
        answer = app.chat.conversation.last("assistant")
        assert answer is not None and "red" in answer.text.lower() and not answer.stopped
        await until(pilot, lambda: "Done: 40/40 pictures: 40 captioned" in transcript_text(app), timeout=10)
        assert "captioning" not in status_text(app)
    made = rows(out)
    assert len(made) == 40 and len(out.read_text().splitlines()) == 40

    cli_out = tmp_path / "cli.jsonl"
    env = {"HF_HUB_OFFLINE": "1", "PATH": __import__("os").environ["PATH"], "HOME": str(tmp_path)}
    common = ["--prompt", PROMPT, "--max-new-tokens", "24", "--device", "cpu", "--quant", "none"]
    result = subprocess.run([*vlchat_command(), "caption", str(folder), "-o", str(cli_out), *common],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert same_records(made, rows(cli_out))
    # the CLI goes on with the app's file: nothing left to do
    again = subprocess.run([*vlchat_command(), "caption", str(folder), "-o", str(out), *common],
                           capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0 and "40 already done" in again.stderr, again.stderr
    assert len(out.read_text().splitlines()) == 40


@run_async
async def test_caption_stop_ends_the_job_and_caption_again_goes_on(demo_engine, tmp_path):
    folder = tmp_path / "pics"
    draw(folder, 80)
    out = tmp_path / "app.jsonl"
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await command(pilot, f"/caption {folder}")
        await until(pilot, lambda: "ask one first, or give --prompt" in notifications(app), timeout=10)
        app.chat.handle_input(f"/caption {folder} -o {out} --prompt '{PROMPT}'")
        await until(pilot, lambda: partway(status_text(app), 80), timeout=60)
        app.chat.handle_input("/caption stop")
        await until(pilot, lambda: getattr(app.chat, "caption_job", None) is None, timeout=60)
        await until(pilot, lambda: "Stopped:" in transcript_text(app), timeout=10)
        first = len(rows(out))
        assert first < 80
        await settle(pilot)
        await command(pilot, f"/caption {folder} -o {out} --prompt '{PROMPT}'")
        await until(pilot, lambda: f"Done: 80/80 pictures: {80 - first} captioned, {first} already done" in transcript_text(app), timeout=120)
    assert len(rows(out)) == 80 and len(out.read_text().splitlines()) == 80
