"""Streaming overhead: tokens/s through the `vlchat ask` streaming path against plain `model.generate`.

Same model (the demo model, with its end-of-answer token turned off so both sides produce exactly
the same number of tokens), same prompt, same token count, greedy, and the same span of work on
both sides: from the conversation to the answer's text.

- plain: ``engine.prepare`` + ``model.generate`` + one ``tokenizer.decode`` of the new tokens;
- streamed: ``engine.stream`` read piece by piece into a text sink, as `vlchat ask` writes stdout.

Both generate on a thread of their own, as the engine does: torch's CPU threading behaves
differently on the main thread than on others (by an order of magnitude on a busy machine), so a
main-thread baseline would measure that, not streaming. The engine keeps no cache between runs
(kv_cache_reuse off), or every streamed run after the first would skip its prompt. Warm-up, then
runs alternate between the two sides; medians are compared.

    python bench/stream_overhead.py [--tokens 256] [--runs 7] [--device cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlchat.commands.ask import write_stream  # noqa: E402
from vlchat.core.conversation import Conversation, GenerationParams  # noqa: E402
from vlchat.core.images import load_image  # noqa: E402
from vlchat.demo import SAMPLES_DIR, endless_copy  # noqa: E402
from vlchat.engines.transformers import TransformersEngine  # noqa: E402

GOAL = 0.97


def on_a_thread(work):
    """Run ``work()`` on a new thread, as the engine runs generate(), and return its result."""
    result: list = []
    failure: list = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as error:  # noqa: BLE001 - re-raised below
            failure.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]


def measure(device: str = "cpu", tokens: int = 256, runs: int = 7, warmup: int = 2) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        engine = TransformersEngine(str(endless_copy(Path(tmp))), quant="none", device=device, kv_cache_reuse=False)
        engine.load()
        conversation = Conversation()
        conversation.add_user("Describe the picture.", [load_image(SAMPLES_DIR / "red-circle.png").ref])
        params = GenerationParams(max_new_tokens=tokens)
        texts: dict[str, str] = {}

        def sync() -> None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        def plain() -> float:
            sync()
            started = time.perf_counter()

            def work():
                inputs = engine.prepare(conversation)
                kwargs = engine.generation_kwargs(inputs, params)
                with torch.inference_mode():
                    out = engine.model.generate(**kwargs)
                new = out[0, inputs["input_ids"].shape[-1] :]
                assert new.shape[-1] == tokens, new.shape
                return engine.tokenizer.decode(new.tolist(), skip_special_tokens=True)

            texts["plain"] = on_a_thread(work)
            sync()
            return tokens / (time.perf_counter() - started)

        def streamed() -> float:
            sink = io.StringIO()
            sync()
            started = time.perf_counter()
            stream = engine.stream(conversation, params)
            write_stream(stream, sink)
            sync()
            elapsed = time.perf_counter() - started
            assert stream.stats.tokens == tokens, stream.stats.tokens
            texts["streamed"] = sink.getvalue()
            return tokens / elapsed

        for _ in range(warmup):
            plain(), streamed()
        plain_rates, stream_rates = [], []
        for n in range(runs):
            # Alternate which side goes first, so a slow patch of a shared machine hits both alike.
            pair = (plain, streamed) if n % 2 == 0 else (streamed, plain)
            for side in pair:
                (plain_rates if side is plain else stream_rates).append(side())
        engine.unload()
    same_text = texts["streamed"] == texts["plain"].strip()
    plain_median = statistics.median(plain_rates)
    stream_median = statistics.median(stream_rates)
    return {
        "device": device,
        "tokens": tokens,
        "runs": runs,
        "plain_generate_tokens_per_s": round(plain_median, 2),
        "vlchat_stream_tokens_per_s": round(stream_median, 2),
        "ratio": round(stream_median / plain_median, 4),
        "goal": GOAL,
        "same_text": same_text,
    }


def print_table(result: dict) -> None:
    print(f"{'path':<28}{'tokens/s (median)':>20}")
    print(f"{'plain model.generate':<28}{result['plain_generate_tokens_per_s']:>20.1f}")
    print(f"{'vlchat ask streaming':<28}{result['vlchat_stream_tokens_per_s']:>20.1f}")
    verdict = "ok" if result["ratio"] >= GOAL else "UNDER GOAL"
    print(f"ratio (streaming / plain): {result['ratio']:.3f}   goal >= {GOAL}  {verdict}   "
          f"({result['tokens']} tokens, {result['runs']} runs each, {result['device']}; "
          f"same text: {'yes' if result['same_text'] else 'NO'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = measure(args.device, args.tokens, args.runs)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
