"""Session save and load times for a long session: 500 turns (1000 messages) and 20 pictures.

An autosave is what happens after every answer: the conversation grew by one answer, the pictures
are already in images/, and session.json is written atomically (temporary file, fsync, rename,
fsync of the folder). A load is opening the session for writing (lock, parse, check every picture).
Both are timed as medians of several runs, in a folder on the same disk as the default sessions
folder unless --dir says otherwise.

    python bench/sessions.py [--turns 500] [--pictures 20] [--runs 15] [--dir DIR] [--json FILE]

Goals (issue 4): autosave under 20 ms, load under 200 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlchat.core.conversation import GenerationParams, Timings  # noqa: E402
from vlchat.core.images import load_image  # noqa: E402
from vlchat.core.sessions import SessionStore, load_session  # noqa: E402
from vlchat.demo.shapes import COLOURS, SHAPES, Scene, draw_scene  # noqa: E402

GOAL_SAVE_MS = 20.0
GOAL_LOAD_MS = 200.0

ANSWER = (
    "The picture shows {n} {colour} {shape}s on a plain background. "
    "Here is how you could count them in code:\n\n```python\n"
    "shapes = detect(picture)\nprint(len(shapes))  # {n}\n```\n\n"
    "They are spread evenly; none of them overlaps another, and the background is a single colour "
    "with no texture, which makes the count reliable. " * 2
)


def build(root: Path, turns: int, pictures: int) -> str:
    rng = random.Random(4)
    folder = root / "pictures"
    folder.mkdir(parents=True)
    loaded = []
    for n in range(pictures):
        colour, background = rng.sample(list(COLOURS), 2)
        scene = Scene(rng.choice(SHAPES), colour, background, 1 + n % 3)
        path = folder / f"picture-{n:02d}.png"
        draw_scene(scene, size=384, rng=random.Random(n)).save(path)
        loaded.append(load_image(path))
    store = SessionStore(root / "sessions")
    session = store.create(model={"name": "demo"}, params=GenerationParams())
    every = max(1, turns // pictures)
    params = GenerationParams()
    for turn in range(turns):
        refs = [session.attach(loaded[turn // every])] if turn % every == 0 and turn // every < pictures else []
        session.conversation.add_user(f"Question {turn}: how many shapes are in this picture, and of what colour?", refs)
        session.conversation.add_assistant(
            ANSWER.format(n=turn % 3 + 1, colour="red", shape="circle"), model="demo", params=params,
            tokens=180, timings=Timings(0.21, 2.4, 75.0),
        )
    session.save()
    session.close()
    return session.id


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def measure(root: Path, turns: int, pictures: int, runs: int) -> dict:
    session_id = build(root, turns, pictures)
    store = SessionStore(root / "sessions")
    folder = store.find(session_id)

    loads = []
    for _ in range(runs):
        started = time.perf_counter()
        session = load_session(folder)
        loads.append(time.perf_counter() - started)
        session.close()

    session = load_session(folder)
    assert session.turns == turns and len(session.pictures) == pictures and not session.problems
    saves = []
    for n in range(runs):
        # What the app does after an answer: one more turn, then an autosave.
        session.conversation.add_user(f"One more question {n}?")
        session.conversation.add_assistant(ANSWER.format(n=1, colour="blue", shape="square"), model="demo")
        started = time.perf_counter()
        session.save()
        saves.append(time.perf_counter() - started)
    session.close()
    size = (folder / "session.json").stat().st_size
    return {
        "turns": turns,
        "pictures": pictures,
        "runs": runs,
        "session_json_bytes": size,
        "save_ms": median_ms(saves),
        "load_ms": median_ms(loads),
        "save_goal_ms": GOAL_SAVE_MS,
        "load_goal_ms": GOAL_LOAD_MS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--pictures", type=int, default=20)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--dir", type=Path, help="where to build the session (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = measure(Path(tmp), args.turns, args.pictures, args.runs)
    print(f"session: {result['turns']} turns, {result['pictures']} pictures, "
          f"session.json {result['session_json_bytes'] / 1024:.0f} KiB; median of {result['runs']} runs")
    print(f"{'':10}{'median':>10}{'goal':>10}{'median/goal':>13}")
    for name, key in (("autosave", "save"), ("load", "load")):
        value, goal = result[f"{key}_ms"], result[f"{key}_goal_ms"]
        verdict = "ok" if value < goal else "OVER"
        print(f"{name:10}{value:>8.1f}ms{goal:>8.0f}ms{value / goal:>12.2f}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
