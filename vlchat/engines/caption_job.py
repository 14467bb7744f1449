"""A caption job on a model that is already loaded: what the app's `/caption DIR` runs.

The same job as `vlchat caption` (the same stores, the same records, the same resume key: content,
model and prompt; the same batching, vlchat/engines/batch.py), made to share the model with a
conversation: each batch holds the conversation's engine lock, and before the next one the job
waits while an answer is being written, so a question asked meanwhile is answered between
batches. No Textual here: the app passes in its lock, a "someone is answering" test and a
callback for the progress.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from vlchat.core.text import clean

DEFAULT_BATCH = 8


@dataclass
class JobProgress:
    total: int
    captioned: int = 0
    failed: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: bool = False
    stopped: bool = False
    error: str | None = None
    where: str = ""

    @property
    def handled(self) -> int:
        return self.captioned + self.failed + self.skipped

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.captioned / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.captioned} captioned"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.skipped:
            parts.append(f"{self.skipped} already done")
        return f"{self.handled}/{self.total} pictures: {', '.join(parts)}; {rate:.1f}/s"


def model_name(engine: Any) -> str:
    """The model's name as `vlchat caption` writes it in each record (so either can resume the other)."""
    from vlchat.engines.openai import OpenAIEngine

    if isinstance(engine, OpenAIEngine):
        return engine.describe().name
    return engine.name


def file_sha256(path: str) -> str | None:
    """The sha256 of a regular file's bytes; None for anything else (a pipe would block the run
    forever, a device might never end) or a file that cannot be read."""
    import hashlib
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


class CaptionJob:
    """Caption ``inputs`` into ``output`` with ``engine`` (loaded), ``prompt``, ``system`` and ``params``."""

    def __init__(self, engine: Any, inputs: list[str], output: str, *, prompt: str, system: str | None, params: Any,
                 lock: threading.Lock | None = None, answering: Callable[[], bool] = lambda: False,
                 report: Callable[[JobProgress], None] = lambda _p: None, batch_size: int = DEFAULT_BATCH,
                 recursive: bool = False):
        self.engine, self.inputs, self.output = engine, inputs, output
        self.prompt, self.system, self.params = prompt, system, params
        self.lock = lock or threading.Lock()
        self.answering, self.report, self.batch_size, self.recursive = answering, report, batch_size, recursive
        self.stop = threading.Event()
        self.model = model_name(engine)
        self.progress = JobProgress(0)

    def open(self):
        """The store (refusing a file that is not a caption file) and the pictures; raises InputError."""
        from vlchat.core.captions import format_for, open_store
        from vlchat.core.pictures import find_pictures

        store = open_store(format_for(self.output, None), self.output)
        try:
            found = list(find_pictures(self.inputs, recursive=self.recursive, exclude=[self.output]))
        except BaseException:
            store.close()
            raise
        return store, found

    def run(self, store=None, found=None) -> JobProgress:
        from vlchat.core.errors import VlchatError

        progress = self.progress
        try:
            if store is None:
                store, found = self.open()
            progress = self.progress = JobProgress(len(found), where=store.where())
            self.report(progress)
            self._run(store, found, progress)
        except VlchatError as error:
            progress.error = error.line()
        except Exception as error:  # noqa: BLE001 - said in the app, never a crash of it
            progress.error = f"{type(error).__name__}: {clean(str(error), keep_newlines=False)}"
        finally:
            if store is not None:
                store.close()
            progress.stopped = self.stop.is_set()
            progress.finished = True
            self.report(progress)
        return progress

    def _write(self, store, progress: JobProgress, found, sha: str | None, caption=None, seconds: float = 0.0,
               error: str | None = None) -> None:
        from vlchat.core.captions import PictureWriteError

        entry: dict[str, Any] = {"path": os.path.abspath(found.path), "sha256": sha}
        if caption is not None:
            entry.update(caption=caption.text, model=self.model, prompt=self.prompt, tokens=caption.tokens,
                         seconds=round(seconds, 4))
        else:
            entry.update(model=self.model, prompt=self.prompt, error=error)
        try:
            store.write(entry)
        except PictureWriteError:
            progress.failed += 1
            return
        if caption is not None:
            progress.captioned += 1
        else:
            progress.failed += 1

    def _run(self, store, found: list, progress: JobProgress) -> None:
        from vlchat.core.images import MODEL_MAX_SIDE, ImageError, load_image
        from vlchat.engines.batch import Caption, can_batch

        batching = can_batch(self.engine)
        group = self.batch_size if batching else 1
        ready: list = []
        done = store.done
        for picture in found:
            if self.stop.is_set():
                return
            store.prepare(picture.path)
            sha = file_sha256(picture.path)
            earlier = done.caption_for(sha, self.model, self.prompt) if sha else None
            if earlier:
                if done.has_path(picture.path, sha, self.model, self.prompt):
                    progress.skipped += 1
                else:  # the same bytes under another name: its own record, no model run
                    self._write(store, progress, picture, sha, Caption(str(earlier.get("caption", "")), int(earlier.get("tokens") or 0)))
                    progress.captioned -= 1
                    progress.skipped += 1
                continue
            if done.has_error(picture.path, self.model, self.prompt):
                progress.skipped += 1
                continue
            why = store.blocked(picture.path)
            if why:
                progress.skipped += 1
                continue
            try:
                loaded = load_image(picture.path, max_side=MODEL_MAX_SIDE)
            except ImageError as error:
                self._write(store, progress, picture, sha, error=error.line())
                self.report(progress)
                continue
            ready.append((picture, loaded))
            if len(ready) >= group:
                self._batch(store, progress, ready, batching)
                ready = []
                self.report(progress)
        if ready and not self.stop.is_set():
            self._batch(store, progress, ready, batching)
            self.report(progress)

    def _batch(self, store, progress: JobProgress, ready: list, batching: bool) -> None:
        from vlchat.engines.base import ContextTooLongError, GenerationError
        from vlchat.engines.batch import caption_one_by_one, generate_batch, prepare_batch

        while self.answering() and not self.stop.is_set():  # a question asked meanwhile goes first
            self.stop.wait(0.05)
        if self.stop.is_set():
            return
        started = time.perf_counter()
        with self.lock:
            try:
                if batching:
                    batch = prepare_batch(self.engine, [p.image for _, p in ready], [self.prompt] * len(ready),
                                          system=self.system)
                    captions = generate_batch(self.engine, batch, self.params, self.stop)
                else:
                    captions = caption_one_by_one(self.engine, [p.ref for _, p in ready], self.prompt, self.params,
                                                  system=self.system, cancel=self.stop)
            except (GenerationError, ContextTooLongError) as error:
                for picture, loaded in ready:
                    self._write(store, progress, picture, loaded.ref.sha256, error=error.message)
                return
        if captions is None:  # stopped part-way: nothing half-made is written
            return
        share = (time.perf_counter() - started) / len(ready)
        for (picture, loaded), caption in zip(ready, captions):
            self._write(store, progress, picture, loaded.ref.sha256, caption, share)
