"""Time to first token per turn for every native family, with and without key/value cache reuse.

    python bench/families.py [--turns 1,20] [--runs 3] [--json FILE]

The tiny models of the test suite (tests/tiny_families.py: each family's published config, tokenizer,
chat template and processor files where they were found, shrunk to a few layers, random weights)
hold a conversation of 20 turns: a picture in turn 1, a second one in turn 3, 6-token greedy answers
kept in the history. With weights this small the figure is what the engine costs around the model:
the prompt rendered and the pictures processed each turn, and how many tokens (and pictures) the
model must run again. Every run starts with nothing cached; the median of the runs is quoted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlchat.core.conversation import Conversation, GenerationParams  # noqa: E402
from vlchat.core.images import load_image  # noqa: E402
from vlchat.demo.shapes import Scene, draw_scene  # noqa: E402
from common import report  # noqa: E402

FAMILIES = {"llava-1.5": "llava", "llava-next": "llava_next", "smolvlm": "idefics3", "qwen2.5-vl": "qwen2_5_vl",
            "minicpm-v-4.6": "minicpmv4_6", "minicpm-v-2.6": "minicpm-2.6", "minicpm-o-2.6": "minicpm-o-2.6"}


def build(builder: str, folder: Path) -> Path:
    """A family's tiny model: tests/tiny_families.py's, or for MiniCPM 2.6 (vlchat's native engine)
    the fidelity checkpoint of tests/reference/minicpm (the one proven against the authors' chat())."""
    if builder.startswith("minicpm-"):
        from tests.reference.minicpm import tiny

        return tiny.build(folder, variant="o" if builder == "minicpm-o-2.6" else "v")
    from tests import tiny_families

    return tiny_families.BUILDERS[builder](folder)
PARAMS = GenerationParams(max_new_tokens=6)
QUESTIONS = ("What colour is the shape?", "What shape is it?", "How many shapes are there?", "Describe the picture.")


def conversation_times(engine, pictures, turns: list[int]) -> dict[int, tuple[float, int, int]]:
    """(seconds to the first token, prompt tokens, reused tokens) at each of ``turns``."""
    engine.drop_cache()
    conversation = Conversation()
    found = {}
    for turn in range(1, max(turns) + 1):
        refs = [pictures[0]] if turn == 1 else [pictures[1]] if turn == 3 else []
        conversation.add_user(QUESTIONS[turn % len(QUESTIONS)], refs)
        stream = engine.stream(conversation, PARAMS)
        text = "".join(stream)
        if turn in turns:
            stats = stream.stats
            found[turn] = (stats.timings().first_token_s, stats.prompt_tokens, stats.cached_tokens)
        conversation.add_assistant(text, model=engine.name)
    return found


def measure(turns: tuple[int, ...] = (1, 20), runs: int = 3) -> dict:
    from vlchat.config import Settings
    from vlchat.engines import make_engine

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pictures = []
        for i, scene in enumerate((Scene("circle", "red", "blue", 1), Scene("square", "green", "white", 2))):
            path = root / f"picture-{i}.png"
            draw_scene(scene, size=256, rng=random.Random(i)).save(path)
            pictures.append(load_image(path).ref)
        for family, builder in FAMILIES.items():
            folder = build(builder, root / builder)
            row = {}
            for reuse in (True, False):
                engine = make_engine(Settings(model=str(folder), quant="none", device="cpu", dtype="float32",
                                              kv_cache_reuse=reuse))
                engine.load()
                conversation_times(engine, pictures, [1])  # warm up
                samples = [conversation_times(engine, pictures, list(turns)) for _ in range(runs)]
                engine.unload()
                ms = {t: statistics.median(s[t][0] for s in samples) * 1000 for t in turns}
                row["with reuse" if reuse else "without reuse"] = {
                    "first_token_ms": {str(t): round(v, 2) for t, v in ms.items()},
                    "prompt_tokens": {str(t): samples[-1][t][1] for t in turns},
                    "reused_tokens": {str(t): samples[-1][t][2] for t in turns},
                    "last_over_first": round(ms[turns[-1]] / ms[turns[0]], 3),
                }
            results[family] = row
    return {"turns": list(turns), "runs": runs, "families": results}


def print_table(result: dict) -> None:
    turns = [str(t) for t in result["turns"]]
    print(f"{'time to first token (ms)':<36}" + "".join(f"{'turn ' + t:>10}" for t in turns) + f"{'last/first':>12}")
    for family, row in result["families"].items():
        for mode, r in row.items():
            print(f"{family + ', ' + mode:<36}" + "".join(f"{r['first_token_ms'][t]:>10.1f}" for t in turns)
                  + f"{r['last_over_first']:>12.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", default="1,20")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from vlchat.engines.transformers import quiet_libraries

    quiet_libraries()
    result = measure(tuple(int(t) for t in args.turns.split(",")), args.runs)
    return report(result, print_table, args.json)


if __name__ == "__main__":
    sys.exit(main())
