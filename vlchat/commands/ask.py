"""`vlchat ask IMAGE... QUESTION`: one answer, streamed to stdout."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, TextIO

from vlchat.engines.remember import model_record
from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.core.errors import InputError
from vlchat.core.images import load_image
from vlchat.core.text import clean, clean_data
from vlchat.engines.base import EngineError, TokenStream


def _names_a_file(text: str) -> bool:
    """Whether ``text`` is the path of an existing file; a long question (over the 255 bytes a file
    name may have) or one with a NUL in it is simply not one."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


PICTURE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif")
ONE_QUESTION_HINT = 'one question per ask, after all its pictures: vlchat ask a.png b.png "What differs?"; ' \
    "follow up with --session"


def names_a_picture(text: str) -> bool:
    """Whether an argument is meant as a picture's path: one word with a picture's extension or a
    path separator. A question has spaces; "pics/landscap.jpg" is a mistyped picture, not a question."""
    word = text.strip()
    return bool(word) and not any(c.isspace() for c in word) and (
        word.lower().endswith(PICTURE_SUFFIXES) or "/" in word or (os.sep in word)
    )


def _exists(text: str) -> bool:
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False


def split_items(items: list[str]) -> tuple[list[str], str]:
    """Pictures first, then one question (the last argument).

    An argument that names a picture that is not there is an error, wherever it stands: sent as the
    question it would get a confident answer about nothing.
    """
    for item in items:
        if names_a_picture(item) and not _names_a_file(item):
            shown = clean(item, keep_newlines=False)
            if not _exists(item):
                raise InputError(f"no picture at {shown} (no such file)", "check the name and the folder")
    *images, question = items
    if not question.strip() and not images:  # with pictures, a captioner takes it as "caption this"
        raise InputError("the question is empty", "put the question last, in quotes")
    if _names_a_file(question):
        raise InputError(
            f"no question after the picture {clean(question, keep_newlines=False)}",
            'put the question last, in quotes: vlchat ask photo.jpg "What is in the picture?"',
        )
    for item in images:
        if not _exists(item):
            # `ask a.png "q1" b.png "q2"`: a second question where a picture should be
            raise InputError(f"{clean(item, keep_newlines=False)!r} is not a picture, and only the last argument is the question",
                             ONE_QUESTION_HINT)
    return images, question


def write_stream(stream: TokenStream, out: TextIO | None) -> str:
    """Consume the stream, writing each piece as it comes (flushed: a pipe sees it at once)."""
    for piece in stream:
        if out is not None:
            out.write(clean(piece))
            out.flush()
    return stream.text


def open_session(args: argparse.Namespace, settings, sources):
    """The session --session names (locked; 'new' makes one), with its remembered settings applied."""
    from vlchat.core.sessions import SessionStore, store_root

    store = SessionStore(store_root(settings))
    if args.session.strip().lower() == "new":
        return store.create()
    folder, note = store.choose(args.session)
    if note:
        print(clean(f"vlchat: note: {note}", keep_newlines=False), file=sys.stderr)
    session = store.open(folder)
    if not sources.get("system", "").startswith("flag"):
        settings.system = None  # the config's system prompt is for new conversations; keep this one's
    from vlchat.engines.remember import apply_remembered

    for note in apply_remembered(session, settings, sources):
        print(f"vlchat: note: {note}", file=sys.stderr)
    return session


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ignore Ctrl-C while the answer is being saved: a second press must not lose the first answer.

    The save takes milliseconds; a Ctrl-C that arrived while it ran is dropped, not delivered later
    into the middle of something else.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_ask(args: argparse.Namespace) -> int:
    from vlchat.config import settings_from

    from vlchat.engines import make_engine

    settings, sources = settings_from(args)
    image_paths, question = split_items(args.items)
    # Options, pictures and the model name are checked before a session is made or changed and
    # before the (slow) model load, so a typo fails at once and changes nothing.
    _params(settings)
    pictures = [load_image(path) for path in image_paths]
    if not pictures and not (getattr(args, "session", None) or "").strip():
        print("vlchat: note: no picture is sent with this question (give pictures before it)", file=sys.stderr)
    from vlchat.core.sessions import SessionSaveError

    wanted = (getattr(args, "session", None) or "").strip()
    session = None
    try:
        if wanted and wanted.lower() != "new":
            session = open_session(args, settings, sources)
        engine = make_engine(settings)
        if not question.strip() and not getattr(engine, "captions_without_text", False):
            raise InputError("the question is empty", "put the question last, in quotes (an empty one is for captioners such as blip-large)")
        if wanted.lower() == "new":
            session = open_session(args, settings, sources)
        return _ask(args, settings, engine, pictures, question, session)
    except SessionSaveError as error:
        raise error.for_command() from None  # nothing stays open after this command: its own hint
    finally:
        if session is not None:
            session.close()


def _params(settings) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
    ).validate()


generation_params = _params  # the public name, for `vlchat caption`


def _ask(args, settings, engine, pictures, question, session) -> int:
    from vlchat.engines.base import LoadProgress

    params = _params(settings)
    err = sys.stderr

    if session is not None:
        conversation = session.conversation
        if settings.system and settings.system != conversation.system:
            conversation.set_system(settings.system)
        refs = [session.attach(p) for p in pictures]
        conversation.add_user(question, refs)
        session.model = model_record(settings)
        session.params = params
        # Saved before the model runs: whatever happens to this process from here on, the
        # question and its pictures are on disk.
        session.save()
        print(clean(f"vlchat: session {session.id} ({session.title}) in {session.folder}", keep_newlines=False), file=err)
    else:
        conversation = Conversation()
        if settings.system:
            conversation.set_system(settings.system)
        conversation.add_user(question, [p.ref for p in pictures])

    spec = getattr(engine, "spec", None)
    label = getattr(spec, "label", "")
    # named models have labels too; only the demo model needs the warning
    if label and getattr(spec, "name", None) == "demo":
        print(f"vlchat: using the {label} (it knows only colours and shapes); "
              "choose a real one with --model", file=err)

    def progress(step: LoadProgress) -> None:
        if err.isatty():
            print(f"\rvlchat: {step.stage}\x1b[K", end="", file=err, flush=True)

    engine.load(progress)
    if err.isatty():
        print("\r\x1b[K", end="", file=err, flush=True)
    if session is not None:
        session.model = model_record(settings, engine.describe())  # a server's own name for its model

    cancel = threading.Event()
    stream = engine.stream(conversation, params, cancel)
    out = sys.stdout

    def keep_answer(stopped: bool, error: bool = False) -> None:
        if session is None:
            return
        stats = stream.stats
        with interrupts_deferred():
            conversation.add_assistant(
                stream.text.strip(),
                model=engine.name,
                params=params,
                stopped=stopped or stats.stopped,
                tokens=stats.tokens,
                timings=stats.timings(),
                finish_reason="stopped" if cancel.is_set() else stats.finish(error=error),
            )
            session.save()

    # Ctrl-C while answering sets the engine's cancel event instead of raising somewhere inside
    # torch: the model stops within one decoding step and the stream ends cleanly.
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: cancel.set())
    try:
        write_stream(stream, None if args.json else out)
    except EngineError:
        if stream.text and not args.json:
            out.write("\n")  # the partial answer stays on screen; the error line follows it
            out.flush()
        if stream.text:
            keep_answer(True, error=True)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if cancel.is_set():
        if not args.json:
            out.write("\n")
            out.flush()
        keep_answer(True)
        print("vlchat: stopped" + (" (the partial answer is saved in the session)" if session else ""), file=err)
        return 130

    engine_info = engine.describe()
    notice = getattr(stream.stats, "notice", None)
    if notice and not args.json:
        print(f"vlchat: note: {clean(notice, keep_newlines=False)}", file=err)
    text = stream.text
    timings = stream.stats.timings()
    keep_answer(False)
    if args.json:
        record = {
            "answer": text.strip(),
            "model": engine_info.name,
            "model_label": engine_info.label or None,
            "device": None if engine_info.endpoint else engine_info.device,  # a server's URL is in endpoint
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
            "finish_reason": stream.stats.finish(),
            "notice": notice,
        }
        if session is not None:
            record["session"] = {"id": session.id, "title": session.title, "path": str(session.folder)}
        from vlchat.core.sessions import json_bytes

        # cleaned value by value; a file name that is not UTF-8 as its JSON escape
        out.write(json_bytes(clean_data(record)).decode("utf-8") + "\n")
    elif not text.endswith("\n"):
        out.write("\n")
    out.flush()
    return 0
