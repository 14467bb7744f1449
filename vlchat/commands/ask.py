"""`vlchat ask IMAGE... QUESTION`: one answer, streamed to stdout."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import TextIO

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.core.errors import InputError
from vlchat.core.images import load_image
from vlchat.core.text import clean
from vlchat.engines.base import EngineError, TokenStream


def split_items(items: list[str]) -> tuple[list[str], str]:
    """Pictures first, the question last; a lone picture with no question is a mistake worth naming."""
    *images, question = items
    if not question.strip():
        raise InputError("the question is empty", "put the question last, in quotes")
    if not images and Path(question).is_file():
        raise InputError(
            f"no question after the picture {clean(question, keep_newlines=False)}",
            'put the question last, in quotes: vlchat ask photo.jpg "What is in the picture?"',
        )
    return images, question


def write_stream(stream: TokenStream, out: TextIO | None) -> str:
    """Consume the stream, writing each piece as it comes (flushed: a pipe sees it at once)."""
    for piece in stream:
        if out is not None:
            out.write(piece)
            out.flush()
    return stream.text


def run_ask(args: argparse.Namespace) -> int:
    from vlchat.engines.base import LoadProgress
    from vlchat.engines import make_engine

    from vlchat.cli import settings_from

    settings, _sources = settings_from(args)
    image_paths, question = split_items(args.items)
    params = GenerationParams(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
    ).validate()
    # Pictures are checked before the (slow) model load, so a typo fails at once.
    pictures = [load_image(path) for path in image_paths]

    engine = make_engine(settings)
    err = sys.stderr
    label = getattr(getattr(engine, "spec", None), "label", "")
    if label:
        print(f"vlchat: using the {label} (it knows only colours and shapes); "
              "choose a real one with --model", file=err)

    def progress(step: LoadProgress) -> None:
        if err.isatty():
            print(f"\rvlchat: {step.stage}\x1b[K", end="", file=err, flush=True)

    engine.load(progress)
    if err.isatty():
        print("\r\x1b[K", end="", file=err, flush=True)

    conversation = Conversation()
    if settings.system:
        conversation.set_system(settings.system)
    conversation.add_user(question, [p.ref for p in pictures])
    cancel = threading.Event()
    stream = engine.stream(conversation, params, cancel)
    out = sys.stdout
    try:
        write_stream(stream, None if args.json else out)
    except EngineError:
        if stream.text and not args.json:
            out.write("\n")  # the partial answer stays on screen; the error line follows it
            out.flush()
        raise
    except KeyboardInterrupt:
        cancel.set()
        stream.close()  # stops the model itself, not only the printing
        if not args.json:
            out.write("\n")
            out.flush()
        print("vlchat: stopped", file=err)
        return 130

    engine_info = engine.describe()
    text = stream.text
    timings = stream.stats.timings()
    if args.json:
        record = {
            "answer": text.strip(),
            "model": engine_info.name,
            "model_label": engine_info.label or None,
            "device": engine_info.device,
            "endpoint": engine_info.endpoint,
            "quantization": engine_info.quantization,
            "images": [p.ref.to_dict() for p in pictures],
            "question": question,
            "tokens": stream.stats.tokens,
            "prompt_tokens": stream.stats.prompt_tokens,
            "first_token_s": timings.first_token_s,
            "total_s": timings.total_s,
            "tokens_per_s": timings.tokens_per_s,
            "stopped": stream.stats.stopped,
        }
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif not text.endswith("\n"):
        out.write("\n")
    out.flush()
    return 0
