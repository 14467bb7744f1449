"""`vlchat caption --like SESSION`: the model, system prompt, last question and sampling of a saved
session, over a whole folder: the records are those of the same settings given as flags."""

from __future__ import annotations

import json
import random
import re

import pytest

from vlchat.demo.shapes import Scene, draw_scene

pytestmark = pytest.mark.timeout(180)

FAST = ("--device", "cpu", "--quant", "none")
QUESTION = "What colour is the shape?"


def records(path) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_like_a_session_takes_its_question_system_prompt_and_sampling(tmp_path, run_vlchat):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i, (colour, background) in enumerate([("red", "blue"), ("green", "white"), ("yellow", "black")]):
        draw_scene(Scene("circle", colour, background, 1), size=128, rng=random.Random(i)).save(folder / f"{i}.png")
    asked = run_vlchat("ask", "--session", "new", folder / "0.png", QUESTION, "--system", "Answer briefly.",
                       "--max-new-tokens", "12", *FAST)
    assert asked.returncode == 0, asked.stderr
    session = re.search(r"session (\S+) ", asked.stderr).group(1)

    liked = tmp_path / "liked.jsonl"
    result = run_vlchat("caption", folder, "-o", liked, "--like", session, *FAST)
    assert result.returncode == 0, result.stderr
    flagged = tmp_path / "flagged.jsonl"
    same = run_vlchat("caption", folder, "-o", flagged, "--prompt", QUESTION, "--system", "Answer briefly.",
                      "--max-new-tokens", "12", "--model", "demo", *FAST)
    assert same.returncode == 0, same.stderr
    like_rows, flag_rows = records(liked), records(flagged)
    assert len(like_rows) == 3
    assert {p: (r["caption"], r["prompt"], r["model"], r["tokens"]) for p, r in like_rows.items()} == \
        {p: (r["caption"], r["prompt"], r["model"], r["tokens"]) for p, r in flag_rows.items()}
    assert all(r["prompt"] == QUESTION and r["model"] == "demo" for r in like_rows.values())
    assert "red" in like_rows[str(folder / "0.png")]["caption"].lower()

    missing = run_vlchat("caption", folder, "-o", tmp_path / "x.jsonl", "--like", "no-such-session", *FAST)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
