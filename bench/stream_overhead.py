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
runs alternate between the two sides; the ratio quoted is the median of the runs' paired ratios
(the ratio of the two medians is recorded too).

    python bench/stream_overhead.py [--tokens 256] [--runs 11] [--device cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
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
from common import report  # noqa: E402

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


def measure(device: str = "cpu", tokens: int = 256, runs: int = 11, warmup: int = 2) -> dict:
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

        def plain() -> tuple[float, float]:
            sync()
            started, cpu = time.perf_counter(), time.process_time()

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
            return tokens / (time.perf_counter() - started), tokens / (time.process_time() - cpu)

        def streamed() -> tuple[float, float]:
            sink = io.StringIO()
            sync()
            started, cpu = time.perf_counter(), time.process_time()
            stream = engine.stream(conversation, params)
            write_stream(stream, sink)
            sync()
            elapsed = time.perf_counter() - started
            assert stream.stats.tokens == tokens, stream.stats.tokens
            texts["streamed"] = sink.getvalue()
            return tokens / elapsed, tokens / (time.process_time() - cpu)

        for _ in range(warmup):
            plain(), streamed()
        plain_rates, stream_rates = [], []
        for n in range(runs):
            # Alternate which side goes first, so a slow patch of a shared machine hits both alike.
            if n % 2 == 0:
                plain_rates.append(plain())
                stream_rates.append(streamed())
            else:
                stream_rates.append(streamed())
                plain_rates.append(plain())
        engine.unload()
    same_text = texts["streamed"] == texts["plain"].strip()
    plain_median = statistics.median(p[0] for p in plain_rates)
    stream_median = statistics.median(s[0] for s in stream_rates)
    # The ratio quoted is the median of each run's pair (taken a second apart), which a machine
    # whose load drifts over the whole benchmark disturbs less than the ratio of the two medians.
    paired = statistics.median(s[0] / p[0] for s, p in zip(stream_rates, plain_rates))
    plain_cpu = statistics.median(p[1] for p in plain_rates)
    stream_cpu = statistics.median(s[1] for s in stream_rates)
    plain_best = max(p[0] for p in plain_rates)
    stream_best = max(s[0] for s in stream_rates)
    return {
        "device": device,
        "tokens": tokens,
        "runs": runs,
        "plain_generate_tokens_per_s": round(plain_median, 2),
        "vlchat_stream_tokens_per_s": round(stream_median, 2),
        "ratio": round(paired, 4),
        "ratio_of_medians": round(stream_median / plain_median, 4),
        "goal": GOAL,
        "same_text": same_text,
        # Robustness checks for a shared machine: the best run of each side (what timeit quotes:
        # slower runs are mostly other programs' doing), and tokens per second of CPU time used
        # by the whole process (both threads), which other programs hardly change.
        "ratio_of_best": round(stream_best / plain_best, 4),
        "ratio_cpu_time": round(stream_cpu / plain_cpu, 4),
        "plain_samples": [round(p[0], 1) for p in plain_rates],
        "stream_samples": [round(s[0], 1) for s in stream_rates],
    }


def print_table(result: dict) -> None:
    print(f"{'path':<28}{'tokens/s (median)':>20}")
    print(f"{'plain model.generate':<28}{result['plain_generate_tokens_per_s']:>20.1f}")
    print(f"{'vlchat ask streaming':<28}{result['vlchat_stream_tokens_per_s']:>20.1f}")
    verdict = "ok" if result["ratio"] >= GOAL else "UNDER GOAL"
    print(f"ratio (streaming / plain, median of pairs): {result['ratio']:.3f}   goal >= {GOAL}  {verdict}   "
          f"({result['tokens']} tokens, {result['runs']} runs each, {result['device']}; "
          f"same text: {'yes' if result['same_text'] else 'NO'})")
    print(f"checks: ratio of medians {result['ratio_of_medians']:.3f}, of the best runs {result['ratio_of_best']:.3f}, "
          f"of tokens per CPU-second {result['ratio_cpu_time']:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = measure(args.device, args.tokens, args.runs)
    return report(result, print_table, args.json)


if __name__ == "__main__":
    sys.exit(main())
