"""Streaming overhead: tokens/s through the `vlchat ask` streaming path against plain `model.generate`.

Same model (the demo model, with its end-of-answer token turned off so both sides produce exactly
the same number of tokens), same prompt, same token count, greedy. Runs alternate between the two
paths and the medians are compared.

    python bench/stream_overhead.py [--tokens 256] [--runs 7] [--device cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlchat.commands.ask import write_stream  # noqa: E402
from vlchat.core.conversation import Conversation, GenerationParams  # noqa: E402
from vlchat.core.images import load_image  # noqa: E402
from vlchat.demo import SAMPLES_DIR, endless_copy  # noqa: E402
from vlchat.engines.transformers import TransformersEngine  # noqa: E402



def measure(device: str, tokens: int, runs: int) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        engine = TransformersEngine(str(endless_copy(Path(tmp))), quant="none", device=device)
        engine.load()
        conversation = Conversation()
        conversation.add_user("Describe the picture.", [load_image(SAMPLES_DIR / "red-circle.png").ref])
        params = GenerationParams(max_new_tokens=tokens)

        def plain() -> float:
            inputs = engine.prepare(conversation)
            kwargs = engine.generation_kwargs(inputs, params)
            started = time.perf_counter()
            with torch.inference_mode():
                out = engine.model.generate(**kwargs)
            elapsed = time.perf_counter() - started
            assert out.shape[-1] - inputs["input_ids"].shape[-1] == tokens
            return tokens / elapsed

        def streamed() -> float:
            sink = io.StringIO()
            started = time.perf_counter()
            stream = engine.stream(conversation, params)
            write_stream(stream, sink)
            elapsed = time.perf_counter() - started
            assert stream.stats.tokens == tokens, stream.stats.tokens
            return tokens / elapsed

        plain(), streamed()  # warm up both paths
        plain_rates, stream_rates = [], []
        for _ in range(runs):
            plain_rates.append(plain())
            stream_rates.append(streamed())
        engine.unload()
    plain_median = statistics.median(plain_rates)
    stream_median = statistics.median(stream_rates)
    return {
        "device": device,
        "tokens": tokens,
        "runs": runs,
        "plain_generate_tokens_per_s": round(plain_median, 2),
        "vlchat_stream_tokens_per_s": round(stream_median, 2),
        "ratio": round(stream_median / plain_median, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = measure(args.device, args.tokens, args.runs)
    print(f"{'path':<28}{'tokens/s (median)':>20}")
    print(f"{'plain model.generate':<28}{result['plain_generate_tokens_per_s']:>20.1f}")
    print(f"{'vlchat ask streaming':<28}{result['vlchat_stream_tokens_per_s']:>20.1f}")
    print(f"ratio (streaming / plain): {result['ratio']:.3f}   goal >= 0.97   "
          f"({result['tokens']} tokens, {result['runs']} runs each, {result['device']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
