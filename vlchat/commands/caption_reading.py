"""`vlchat caption`'s reading side and its output on the terminal: what flows from the reader to
the writer (Item, Work, Tally), the progress line, and the Reader thread that hashes and decodes the
pictures ahead of the model (caption.py runs the loop and writes the records).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from vlchat.core.text import clean
from vlchat.engines.base import usable_cores
from vlchat.engines.caption_job import file_sha256

if TYPE_CHECKING:  # Pillow and the stores load with the command, not with `vlchat --help`
    from vlchat.core.captions import Store
    from vlchat.core.images import LoadedImage
    from vlchat.core.pictures import Found


# -- what flows from the reader to the writer --------------------------------------------------------
@dataclass
class Item:
    found: Found
    sha256: str | None = None
    picture: LoadedImage | None = None
    error: str | None = None


@dataclass
class Work:
    items: list[Item]
    batch: Any = None  # a prepared batch (local batching engines), else None


@dataclass
class Tally:
    total: int
    captioned: int = 0
    failed: int = 0
    skipped: int = 0
    failed_before: int = 0  # skipped: an earlier run recorded an error (--retry-errors tries them)
    blocked: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def handled(self) -> int:
        return self.captioned + self.failed + self.skipped + self.failed_before + self.blocked


def picture_name(found: Found) -> str:
    from vlchat.core.sessions import shown_path

    return shown_path(found.path)


class Progress:
    """A progress bar on stderr (rich.progress: it fits the terminal's width, however narrow), with
    pictures/s and time left, only when stderr is a terminal; otherwise nothing until the summary."""

    def __init__(self, tally: Tally, mode: str, stream=None):
        self.tally = tally
        self.err = stream or sys.stderr
        self.live = self.err.isatty()
        self._bar = None
        self._task = None
        self._mode = mode
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            from rich.table import Column

            def cell(text: str, **options) -> TextColumn:
                # one row, whatever the width: a row that wrapped would leave pieces of itself behind
                return TextColumn(text, markup=False, table_column=Column(no_wrap=True, **options))

            console = Console(file=self.err, highlight=False)
            self._bar = Bar(
                BarColumn(bar_width=None, table_column=Column(min_width=4, ratio=1)),
                MofNCompleteColumn(table_column=Column(no_wrap=True)), cell("pictures"), cell("{task.fields[rate]}"),
                TimeRemainingColumn(table_column=Column(no_wrap=True)),
                cell("{task.fields[mode]}", overflow="ellipsis", ratio=1),
                console=console, transient=True, expand=True, refresh_per_second=10,
            )
            self._task = self._bar.add_task("caption", total=tally.total or None, rate="", mode=f"({mode})")
            self._bar.start()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = value
        self.draw(force=True)

    def say(self, line: str) -> None:
        """A line of its own (an error, a note), above the bar."""
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self.err.write(line + "\n")
            self.err.flush()

    def draw(self, force: bool = False) -> None:
        if self._bar is None:
            return
        t = self.tally
        elapsed = time.perf_counter() - t.started
        rate = (t.captioned + t.failed) / elapsed if elapsed > 0 else 0.0
        self._bar.update(self._task, completed=t.handled, rate=f"{rate:.1f}/s", mode=f"({self._mode})")
        if force:
            self._bar.refresh()

    def clear(self) -> None:
        if self._bar is not None:
            self._bar.stop()  # transient: the bar goes, the lines said above it stay
            self._bar = None


# -- the reader ------------------------------------------------------------------------------------
class Reader(threading.Thread):
    """Hashes each picture, skips what is done, decodes the rest and hands them on in groups of
    ``group`` (with ``prepare(items)`` run here, off the model's thread).

    With ``workers`` > 1 the hashing and decoding of the next pictures run on that many threads
    (Pillow lets go of the GIL while it decodes: large photos on a fast GPU need it); the pictures
    are still handed on in order.
    """

    def __init__(self, found: list[Found], store: Store, model: str, prompt: str, *, group: int,
                 retry_errors: bool, limit: int | None, stop: threading.Event,
                 prepare: Callable[[list[Item]], Any] | None = None, workers: int = 1):
        super().__init__(name="vlchat-caption-reader", daemon=True)
        self.found, self.store, self.model, self.prompt = found, store, model, prompt
        self.group, self.retry_errors, self.limit, self.stop = group, retry_errors, limit, stop
        self.prepare, self.workers = prepare, max(1, workers)
        self.out: queue.Queue = queue.Queue(maxsize=2)
        self.failure: BaseException | None = None

    def _put(self, message: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _send(self, ready: list[Item]) -> bool:
        batch = None
        if self.prepare is not None:
            try:
                batch = self.prepare(ready)
            except Exception as error:  # noqa: BLE001 - one bad batch must not end the run
                if len(ready) > 1:  # find the picture the processor refuses; the others go on
                    return all(self._send([item]) for item in ready)
                ready[0].error = f"the model's processor refused it: {type(error).__name__}: {clean(str(error), keep_newlines=False)[:200]}"
                ready[0].picture = None
                return self._put(("error", ready[0]))
        return self._put(("work", Work(ready, batch)))

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:  # handed to the main thread, never lost here
            self.failure = error
        finally:
            self._put(("end", None))

    def _look(self, found: Found) -> tuple[str, Item, Any]:
        """What to do with one picture: ("skip"|"copy"|"error"|"picture", item, earlier record)."""
        from vlchat.core.images import MODEL_MAX_SIDE, ImageError, load_image

        item = Item(found)
        done = self.store.done
        self.store.prepare(found.path)
        item.sha256 = regular_file_sha256(found.path)  # None: load_image below says what is wrong, in one line
        earlier = done.caption_for(item.sha256, self.model, self.prompt) if item.sha256 else None
        if earlier:
            if done.has_path(found.path, item.sha256, self.model, self.prompt):
                return "skip", item, None
            return "copy", item, earlier  # the same bytes under another name: its own record, no model run
        if not self.retry_errors and done.has_error(found.path, self.model, self.prompt):
            return "failed-before", item, None
        try:
            item.picture = load_image(found.path, max_side=MODEL_MAX_SIDE)
        except ImageError as error:
            item.error = error.line()
            return "error", item, None
        item.sha256 = item.picture.ref.sha256
        return "picture", item, None

    def _looked(self) -> Iterator[tuple[str, Item, Any]]:
        if self.workers == 1:
            yield from map(self._look, self.found)
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="vlchat-caption-decode")
        ahead: deque = deque()
        upcoming = iter(self.found)
        try:
            for found in upcoming:
                ahead.append(pool.submit(self._look, found))
                if len(ahead) >= 2 * self.workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        ready: list[Item] = []
        queued = 0
        for verdict, item, earlier in self._looked():
            if self.stop.is_set():
                return
            if verdict in ("skip", "failed-before"):
                self._put((verdict, item))
                continue
            # Asked here, in order, not on the decoding threads: two pictures may want one .txt.
            why = self.store.blocked(item.found.path)
            if why:
                item.error, item.picture = why, None
                self._put(("blocked", item))
                continue
            if verdict == "copy":
                self._put(("copy", (item, earlier)))
                continue
            if self.limit is not None and queued >= self.limit:
                break
            queued += 1
            if verdict == "error":
                if not self._put(("error", item)):
                    return
                continue
            ready.append(item)
            if len(ready) >= self.group:
                if not self._send(ready):
                    return
                ready = []
        if ready:
            self._send(ready)


# One place hashes a picture for captioning, the CLI's reader and the app's /caption alike.
regular_file_sha256 = file_sha256


def decode_workers(engine, remote: bool) -> int:
    """Threads that decode pictures ahead of the model: one on a CPU (the model needs the cores),
    up to four beside a GPU."""
    if remote or getattr(engine, "device", "cpu") == "cpu":
        return 1
    return max(1, min(4, usable_cores() - 1))


def share_cpu(engine) -> None:
    """On the CPU, leave one core to the reader thread: torch's threads spin while they wait for
    each other, so a torch thread that has to share its core with the reader (or anything else)
    makes every step wait for it. Where OMP_NUM_THREADS says how many, that is kept."""
    if getattr(engine, "device", "") != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), usable_cores() - 1)))
