"""Time to first token as a conversation about a picture grows, with and without prefix reuse.

    python bench/ttft.py [--turns 1,5,10,20] [--runs 3] [--device cpu] [--json FILE]

A conversation on the demo model: a picture in turn 1, then one question per turn, each answer kept
in the history. The time to the first token (from the call, so rendering the prompt and processing
the picture count too) is taken at the turns named; every run starts with no cache kept, so turn 1
is a cold first question. The median of several runs is quoted, and the ratio of the last turn to turn 1 shows whether follow-ups stay as fast as the
first question.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlchat.core.conversation import Conversation, GenerationParams  # noqa: E402
from vlchat.core.images import load_image  # noqa: E402
from vlchat.demo import SAMPLES_DIR  # noqa: E402
from vlchat.demo.shapes import QUESTION_TYPES, QUESTIONS  # noqa: E402
from common import write_json  # noqa: E402

PARAMS = GenerationParams(max_new_tokens=32)


def one_conversation(engine, turns: list[int], sizes: dict | None = None) -> dict[int, float]:
    """Seconds to the first token at each of ``turns``; ``sizes`` gets (prompt tokens, reused tokens)."""
    picture = load_image(SAMPLES_DIR / "three-yellow-stars.png").ref
    engine.drop_cache()  # turn 1 is a cold first question, not a repeat of the last run's
    conversation = Conversation()
    found = {}
    for turn in range(1, max(turns) + 1):
        kind = QUESTION_TYPES[turn % len(QUESTION_TYPES)]
        conversation.add_user(QUESTIONS[kind][turn % len(QUESTIONS[kind])], [picture] if turn == 1 else [])
        stream = engine.stream(conversation, PARAMS)
        text = "".join(stream)
        if turn in turns:
            found[turn] = stream.stats.timings().first_token_s
            if sizes is not None:
                sizes[turn] = (stream.stats.prompt_tokens, stream.stats.cached_tokens)
        conversation.add_assistant(text, model=engine.name)
    return found


def measure(device: str = "cpu", turns: tuple[int, ...] = (1, 5, 10, 20), runs: int = 3) -> dict:
    from vlchat.engines.transformers import TransformersEngine

    results = {}
    for reuse in (True, False):
        engine = TransformersEngine("demo", quant="none", device=device, kv_cache_reuse=reuse)
        engine.load()
        one_conversation(engine, [1])  # warm up
        sizes: dict = {}
        samples = [one_conversation(engine, list(turns), sizes) for _ in range(runs)]
        engine.unload()
        medians = {t: statistics.median(s[t] for s in samples) for t in turns}
        results["with reuse" if reuse else "without reuse"] = {
            "first_token_ms": {str(t): round(v * 1000, 2) for t, v in medians.items()},
            "prompt_tokens": {str(t): sizes[t][0] for t in turns},
            "reused_tokens": {str(t): sizes[t][1] for t in turns},
            f"turn{turns[-1]}_over_turn1": round(medians[turns[-1]] / medians[turns[0]], 3),
        }
    return {"device": device, "runs": runs, **results}


def print_table(result: dict) -> None:
    turns = list(result["with reuse"]["first_token_ms"])
    print(f"{'time to first token (ms)':<28}" + "".join(f"{'turn ' + t:>10}" for t in turns) + f"{'last/first':>12}")
    for name in ("with reuse", "without reuse"):
        row = result[name]
        ratio = next(v for k, v in row.items() if k.endswith("_over_turn1"))
        print(f"{name:<28}" + "".join(f"{row['first_token_ms'][t]:>10.1f}" for t in turns) + f"{ratio:>12.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", default="1,5,10,20")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.device, tuple(int(t) for t in args.turns.split(",")), args.runs)
    print_table(result)
    print("goal: last/first at most 1.5 with reuse")
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
