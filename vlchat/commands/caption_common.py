"""What the caption runners beside `vlchat caption` (caption_ray, caption_scale) share with it:
which errors belong to one picture, how an error reads in a record, and drawing work from the reader. Its own module, so that
they need not import commands/caption.py, which imports them."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from vlchat.core.text import clean

MAX_FAILING = 8  # model or server failures in a row before the run stops: every picture would fail


def per_picture_error(error: BaseException) -> bool:
    """Whether an engine error belongs to one picture (recorded, the run goes on) rather than to the
    model or server (the run stops, or with several servers, that server rests)."""
    from vlchat.core.images import ImageError
    from vlchat.engines.base import ContextTooLongError, GenerationError, OutOfMemoryError
    from vlchat.engines.openai import IncompleteStreamError, MalformedStreamError, RequestTooLargeError, TokenTimeoutError

    if isinstance(error, (ImageError, ContextTooLongError, RequestTooLargeError)):
        return True
    if isinstance(error, (OutOfMemoryError, TokenTimeoutError)):
        return False
    return isinstance(error, GenerationError) and not isinstance(error, (IncompleteStreamError, MalformedStreamError))


def error_line(error: BaseException) -> str:
    """The error as a record's ``error`` says it: one line."""
    from vlchat.core.errors import VlchatError
    from vlchat.engines.base import EngineError

    if isinstance(error, EngineError):
        return error.message.rstrip(".") + "."  # its hint speaks of a conversation, not of a folder
    if isinstance(error, VlchatError):
        return error.line()
    return f"{type(error).__name__}: {clean(str(error), keep_newlines=False)}"


def picture_ref(item):
    """The reference a server request sends for a reader's item (decoded already, or read now)."""
    from vlchat.core.images import load_image

    if item.picture is not None:
        return item.picture.ref
    return load_image(item.found.path).ref


def draw_batches(source: Iterator[tuple[str, Any]], record: Callable[[Any], None], more: Callable[[], bool],
                 take: Callable[[Any], None]) -> bool:
    """Take the reader's batches while ``more()`` says there is room: a read error is recorded at
    once, a batch goes to ``take``. Returns True once the reader has nothing left."""
    while more():
        try:
            kind, value = next(source)
        except StopIteration:
            return True
        if kind == "error":
            record(value)
        else:
            take(value)
    return False


def caption_on_server(engine, item, *, prompt: str, system: str | None, params, stop, building):
    """One picture's caption from a server engine, as (Caption, seconds), or (None, 0.0) once
    ``stop`` is set. ``building`` is held while the request is built: an engine's picture cache is
    not made for several threads (building takes milliseconds; requests are sent and read side by
    side)."""
    import time

    from vlchat.core.conversation import Conversation
    from vlchat.engines.batch import Caption

    started = time.perf_counter()
    conversation = Conversation()
    if system:
        conversation.set_system(system)
    conversation.add_user(prompt, [picture_ref(item)])
    with building:
        stream = engine.stream(conversation, params, stop)
    text = "".join(stream)
    if stop.is_set():
        return None, 0.0
    return Caption(clean(text).strip(), stream.stats.tokens), time.perf_counter() - started
