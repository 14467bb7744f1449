"""`/caption DIR [-o FILE] [--prompt TEXT]` and `/caption stop`: from the chat to the batch.

The job (vlchat/engines/caption_job.py) runs on a thread with the model the app already holds, the
conversation's system prompt, its last question (or --prompt) and its sampling as they are now.
It writes the file `vlchat caption` writes, so either can go on where the other stopped.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import replace
from typing import Any

from vlchat.core.text import clean
from vlchat.ui.messages import CaptionProgressed

DEFAULT_OUTPUT = "captions.jsonl"
USAGE = "/caption DIR [-o FILE] [--prompt TEXT], or /caption stop"


def _parse(args: str) -> tuple[str, str | None, str | None]:
    words = shlex.split(args)
    folder, output, prompt = None, None, None
    while words:
        word = words.pop(0)
        if word in ("-o", "--output", "--prompt"):
            if not words:
                raise ValueError(f"{word} needs a value")
            value = words.pop(0)
            if word == "--prompt":
                prompt = value
            else:
                output = value
        elif folder is None:
            folder = word
        else:
            raise ValueError(f"one folder only (also got {word!r})")
    if folder is None:
        raise ValueError("give the folder of pictures")
    return folder, output, prompt


def caption_command(screen: Any, args: str) -> None:
    job = getattr(screen, "caption_job", None)
    if args.strip() == "stop":
        if job is None:
            screen.notify("No caption job is running.", severity="warning")
            return
        job.stop.set()
        screen.transcript.note("Stopping the caption job after this batch…")
        return
    if job is not None:
        screen.notify("A caption job is already running: /caption stop ends it.", severity="warning")
        return
    try:
        folder, output, prompt = _parse(args)
    except ValueError as error:
        screen.notify(f"/caption: {clean(str(error), keep_newlines=False)}. Use {USAGE}.", severity="error")
        return
    app = screen.app
    if app.load_error or not app.loaded or app.engine is None:
        screen.notify("The model is not ready yet: /caption once it is loaded.", severity="warning")
        return
    if prompt is None:
        asked = [m.text for m in screen.conversation.messages if m.role == "user" and m.text.strip()]
        if not asked:
            screen.notify("/caption asks each picture your last question: ask one first, or give --prompt TEXT.", severity="warning")
            return
        prompt = asked[-1]
    if not prompt.strip():
        screen.notify("/caption: the prompt is empty.", severity="error")
        return
    folder = os.path.expanduser(folder)
    output = os.path.expanduser(output) if output else os.path.join(folder, DEFAULT_OUTPUT)
    from vlchat.engines.caption_job import CaptionJob

    job = CaptionJob(
        app.engine, [folder], output, prompt=prompt, system=screen.conversation.system, params=replace(screen.params),
        lock=screen.engine_lock, answering=lambda: screen.generating is not None,
        report=lambda progress: screen.post_message(CaptionProgressed(replace(progress))),
    )
    screen.caption_job = job
    screen.caption_line = "captioning: starting…"
    screen.update_status()
    shown = clean(output, keep_newlines=False)
    screen.transcript.note(f"Captioning the pictures in {clean(folder, keep_newlines=False)} into {shown} "
                           f"with {clean(prompt, keep_newlines=False)!r}. /caption stop ends it; "
                           "`vlchat caption` can go on with the same file.")
    screen.run_worker(job.run, thread=True, group="caption", exit_on_error=False)


def caption_progressed(screen: Any, progress: Any) -> None:
    if not progress.finished:
        screen.caption_line = "captioning " + progress.line()
        screen.update_status()
        return
    screen.caption_job = None
    screen.caption_line = ""
    screen.update_status()
    if progress.error:
        screen.transcript.note(f"The caption job stopped: {clean(progress.error, keep_newlines=False)}", "error")
        return
    word = "Stopped" if progress.stopped else "Done"
    screen.transcript.note(f"{word}: {progress.line()} -> {clean(progress.where, keep_newlines=False)}"
                           + ("; /caption again goes on where it stopped." if progress.stopped else ""))
