"""A local model in a process of its own, for the app.

Python runs one thread at a time. In the app the model's generation loop (Python, between small
torch calls) and the screen (Python) would take turns: every millisecond the screen draws is a
millisecond the model waits, and more, because the two threads hand the interpreter back and forth
at every torch call. In its own process the model never waits for the screen, and the screen never
waits for the model.

``ProcessEngine`` is the ChatEngine the app talks to; it starts ``python -P -m vlchat.engines.process``
on load, which makes the real engine (``make_engine``) and serves it over two pipes. The pipes
carry pickled tuples:

    to the model    ("load", settings, model) ("stream", id, conversation, params) ("cancel", id)
                    ("count", conversation) ("exit",)
    from the model  ("progress", LoadProgress) ("loaded", EngineInfo, gpu_bytes)
                    ("piece", text, tokens, first_token_at) ("end", stats, gpu_bytes)
                    ("counted", tokens, picture_tokens) ("error", exception or None, kind, line)

The model's process has no terminal: its output goes to a log in the cache folder
(``model-process.log``, the older one kept as ``.1`` once it passes LOG_MAX_BYTES), whose last
meaningful line and name are shown if the process ends unexpectedly. It exits when told to, and on its own when the app's end of the pipe
closes (the app quit or crashed), so it never outlives the app. Stopping an answer goes over the
pipe to a thread of the model's process that only waits for that.
"""

from __future__ import annotations

import itertools
import os
import pickle
import re
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.core.text import clean
from vlchat.engines.base import ChatEngine, EngineError, EngineInfo, ProgressCallback, StreamStats, TokenStream

POLL_S = 0.05  # how often a waiting reader looks at its cancel event
LOG_NAME = "model-process.log"
LOG_MAX_BYTES = 2 * 1024 * 1024  # past this the log is rotated (one older copy kept): 4 MiB at most on disk
# "/path/file.py:456: FutureWarning: ..." and the source line Python prints under it
_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")
EXIT_WAIT_S = 5.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# glibc's malloc gives freed memory back to the system, and takes it again, by thresholds that
# move with a process's history. A model on the CPU frees its KV cache's blocks and takes them
# again at every token (up to a megabyte each for the demo model), so by chance a process spent
# nothing or up to a tenth of an answer in page faults (0 to 91,000 an answer, a few µs each). The
# model's process starts at the thresholds glibc moves towards on its own (32 MiB for mmap, its
# largest, and twice that for giving memory back): at most 64 MiB of freed memory kept, and few
# faults an answer (8 for plain generate in such a process). A user's own settings (these
# variables, or GLIBC_TUNABLES) are left alone; other C libraries ignore them.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


class ModelProcessError(EngineError):
    """The model's process ended while it was needed."""


def _not_loaded() -> ModelProcessError:
    return ModelProcessError("the model is not loaded", "switch to a model with /model NAME")


def supported() -> bool:
    """Whether models can run in a process of their own here (passing pipes needs POSIX, and a
    Python to start it with)."""
    return os.name == "posix" and bool(sys.executable)


class ProcessEngine(ChatEngine):
    """The engine ``make_engine`` would make for these settings, run in a child process."""

    separate_process = True
    counts_context = True

    def __init__(self, settings: Any, model: str | None = None):
        self.settings = settings
        self.name = model or settings.model
        self._model = model
        self._proc: subprocess.Popen | None = None
        self._commands: Connection | None = None
        self._events: Connection | None = None
        self._log: Any = None
        self._log_start = 0  # where this process's lines begin in the shared log
        self._finalizer: Any = None
        self._info: EngineInfo | None = None
        self._lock = threading.Lock()  # one request at a time: replies come back in order
        self._ids = itertools.count(1)
        self.gpu_bytes: int | None = None  # what torch had allocated on the GPU at the last report
        self.released_bytes: int | None = None  # GPU memory handed back when the process ended

    # -- the process ---------------------------------------------------------------------------
    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self._log, self._log_start = open_log()
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        # An empty entry in PYTHONPATH (PYTHONPATH=$PYTHONPATH:/x with none set before) means the
        # current folder: left out, like the folder -P leaves out.
        paths = [package_root, *env.get("PYTHONPATH", "").split(os.pathsep)]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        if sys.platform.startswith("linux") and not any(key.startswith("MALLOC_") for key in env) and "glibc.malloc." not in env.get("GLIBC_TUNABLES", ""):
            env.update(MALLOC_ENV)
        try:
            proc = subprocess.Popen(
                # -P: `python -m` would put the current folder first on sys.path, and a torch.py or
                # PIL.py there would run in the model's process. -I would do that too, but it also
                # drops PYTHONPATH and the user's site-packages, which a development setup needs.
                [sys.executable, "-P", "-m", "vlchat.engines.process", str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                env=env,
                # Its own session: a Ctrl+C or a hang-up meant for the terminal goes to the app,
                # which then ends the model's process itself.
                start_new_session=True,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._proc = proc
        self._commands = Connection(to_child_w, readable=False)
        self._events = Connection(from_child_r, writable=False)
        self._finalizer = weakref.finalize(self, _stop, proc, self._commands, self._events, self._log)

    @property
    def alive(self) -> bool:
        """Whether the model's process is running (False before load, after unload or a crash)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def cpu_seconds(self) -> float | None:
        """CPU time the model's process has used, all its threads together (Linux; else None)."""
        proc = self._proc
        if proc is None:
            return None
        try:
            with open(f"/proc/{proc.pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def _send(self, *message: Any) -> None:
        if self._commands is None:
            raise _not_loaded()
        try:
            self._commands.send(message)
        except (OSError, ValueError):
            raise self._ended() from None

    def _recv(self, timeout: float | None = None) -> tuple | None:
        """The next message from the model's process; None if none came within ``timeout``."""
        events = self._events
        if events is None:
            raise _not_loaded()
        try:
            if timeout is not None and not events.poll(timeout):
                return None
            message = events.recv()
        except (EOFError, OSError, ValueError):
            raise self._ended() from None
        return message

    def _reply(self, *kinds: str, progress: ProgressCallback | None = None) -> tuple:
        """The reply to a request: the first message of one of ``kinds``, or its error raised."""
        while True:
            message = self._recv()
            if message[0] == "error":
                raise _rebuild(*message[1:])
            if message[0] == "progress":
                if progress is not None:
                    progress(message[1])
            elif message[0] in kinds:
                return message

    def _ended(self) -> ModelProcessError:
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        last = self._last_log_line()
        if code is None:
            how = "no exit code"
        elif code == -9:  # what the kernel's out-of-memory killer sends
            how = "killed by signal 9; the machine may have run out of memory"
        elif code < 0:
            how = f"signal {-code}"
        else:
            how = f"exit code {code}"
        detail = f": {last}" if last else ""
        where = getattr(self._log, "name", None)
        log = f"; its log is {clean(str(where), keep_newlines=False)}" if isinstance(where, str) else ""
        return ModelProcessError(
            f"the model's process ended unexpectedly ({how}){detail}{log}",
            f"load it again with /model {self.name}",
        )

    def _last_log_line(self) -> str:
        if self._log is None:
            return ""
        try:
            self._log.flush()
            with open(self._log.name, "rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(self._log_start, size - 16384))
                tail = log.read().decode("utf-8", "replace")
        except (OSError, ValueError, TypeError, AttributeError):
            return ""
        return last_meaningful_line(tail)

    # -- ChatEngine ----------------------------------------------------------------------------
    def load(self, progress: ProgressCallback | None = None) -> None:
        if self._proc is None:
            self._start()
        with self._lock:
            self._send("load", self.settings, self._model)
            _, self._info, self.gpu_bytes = self._reply("loaded", progress=progress)

    def describe(self) -> EngineInfo:
        if self._info is None:
            raise ModelProcessError("the model is not loaded", "wait for it to load")
        return self._info

    def stream(
        self,
        conversation: Conversation,
        params: GenerationParams,
        cancel: threading.Event | None = None,
    ) -> TokenStream:
        stats = StreamStats()
        return TokenStream(self._pieces(conversation, params, cancel or threading.Event(), stats), stats)

    def begin(
        self,
        conversation: Conversation,
        params: GenerationParams,
        cancel: threading.Event | None = None,
    ) -> TokenStream | None:
        # A message on a pipe: nothing to wait for, unless another request holds the model.
        if self._commands is None or not self._lock.acquire(blocking=False):
            return None
        try:
            stream_id = self._request(conversation, params)
        except Exception:
            self._lock.release()
            return None  # the process has ended: stream() on the caller's thread says so
        stats = StreamStats()
        pieces = self._held(stream_id, cancel or threading.Event(), stats)
        next(pieces)  # from here on, closing or dropping the stream ends the answer and frees the lock
        return TokenStream(pieces, stats)

    def _request(self, conversation: Conversation, params: GenerationParams) -> int:
        stream_id = next(self._ids)
        self._send("stream", stream_id, conversation, params)
        return stream_id

    def _pieces(self, conversation: Conversation, params: GenerationParams, cancel: threading.Event, stats: StreamStats) -> Iterator[str]:
        with self._lock:
            stream_id = self._request(conversation, params)
            yield from self._replies(stream_id, cancel, stats)

    def _held(self, stream_id: int, cancel: threading.Event, stats: StreamStats) -> Iterator[str]:
        """The replies to a request begin() sent, holding the lock begin() took."""
        try:
            yield from self._replies(stream_id, cancel, stats, primed=True)
        finally:
            self._lock.release()

    def _replies(self, stream_id: int, cancel: threading.Event, stats: StreamStats, primed: bool = False) -> Iterator[str]:
        cancelled = ended = False
        try:
            if primed:
                yield ""  # begin()'s own step, never seen by the reader
            while True:
                if not cancelled and cancel.is_set():
                    self._send("cancel", stream_id)
                    cancelled = True
                # Waiting on the pipe costs the model nothing: it is another process.
                message = self._recv(None if cancelled else POLL_S)
                if message is None:
                    continue
                if message[0] == "error":
                    ended = True  # an error ends the answer on the model's side too
                    raise _rebuild(*message[1:])
                if message[0] == "piece":
                    _, text, stats.tokens, first = message
                    if stats.first_token_at is None and first is not None:
                        stats.first_token_at = first
                    yield text
                elif message[0] == "end":
                    ended = True
                    for key, value in message[1].items():
                        setattr(stats, key, value)
                    self.gpu_bytes = message[2]
                    return
        finally:
            if not ended:
                # The reader went away mid-answer (or failed, or never read): stop the model and
                # read up to the end, so the next request does not get this answer's rest.
                self._drain(stream_id, cancelled)

    def _drain(self, stream_id: int, cancelled: bool) -> None:
        try:
            if not cancelled:
                self._send("cancel", stream_id)
            while True:
                message = self._recv(EXIT_WAIT_S)
                if message is None or message[0] in ("end", "error"):
                    return
        except Exception:
            return

    def count_context(self, conversation: Conversation) -> tuple[int, int | None]:
        """Tokens the conversation takes in the model's context, and how many are pictures'."""
        with self._lock:
            self._send("count", conversation)
            _, tokens, pictures = self._reply("counted")
            return tokens, pictures

    def unload(self) -> None:
        """End the model's process: all its memory, on the GPU too, goes back with it."""
        finalizer = self._finalizer
        if finalizer is None:
            return
        self.released_bytes = self.gpu_bytes
        self._finalizer = None
        finalizer()
        self._proc = self._commands = self._events = None
        self._info = None

    def release(self) -> int | None:
        """End the model's process; the GPU memory it held at its last report is what that gave back."""
        self.unload()
        return self.released_bytes


def _stop(proc: subprocess.Popen, commands: Connection, events: Connection, log: Any) -> None:
    try:
        commands.send(("exit",))
    except (OSError, ValueError):
        pass
    for end in (commands, events):
        try:
            end.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    try:
        log.close()
    except OSError:
        pass


def log_path() -> Path:
    """The model process's log, in the user's cache folder."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vlchat")) / LOG_NAME


def open_log() -> tuple[Any, int]:
    """The log opened for appending (rotated first when it has grown past LOG_MAX_BYTES), and the
    offset where this process's lines begin. Private to the user: a model's output may quote the
    conversation."""
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if path.stat().st_size > LOG_MAX_BYTES:
                os.replace(path, path.with_name(LOG_NAME + ".1"))
        except FileNotFoundError:
            pass
        log = open(path, "ab", opener=lambda name, flags: os.open(name, flags, 0o600))
    except OSError:  # no cache folder to write to: a file of its own, still read back on a crash
        import tempfile

        log = tempfile.NamedTemporaryFile(prefix="vlchat-model-", suffix=".log", delete=False)
    log.write(f"--- vlchat model process, started {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
    log.flush()
    return log, log.tell()


def last_meaningful_line(text: str) -> str:
    """The last line worth showing: not blank, not a warning nor the source line Python prints
    under one (``out = model.generate(**kwargs)`` says nothing about why the process ended)."""
    lines = text.splitlines()
    keep = []
    skip_source = False
    for line in lines:
        if skip_source and line.startswith((" ", "\t")):
            skip_source = False
            continue
        skip_source = False
        if _WARNING.match(line):
            skip_source = True
            continue
        if line.strip() and not line.startswith("--- vlchat model process"):
            keep.append(line.strip())
    return clean(keep[-1], keep_newlines=False)[:300] if keep else ""


def _rebuild(pickled: bytes | None, kind: str, line: str) -> BaseException:
    """The model process's exception, as the app would have seen it in its own process."""
    if pickled is not None:
        try:
            error = pickle.loads(pickled)
            if isinstance(error, BaseException):
                return error
        except Exception:
            pass
    if kind == "MemoryError":
        return MemoryError(line)
    # A library's own exception, whose class the app need not import (torch's, say): the same
    # name and line, so the message reads as it would have.
    name = kind if kind.isidentifier() else "Error"
    return type(name, (Exception,), {})(line)


# -- the model's side ------------------------------------------------------------------------
def _serve(commands: Connection, events: Connection) -> None:
    import gc
    import queue

    from vlchat.engines.factory import make_local_engine

    send_lock = threading.Lock()

    def send(*message: Any) -> None:
        with send_lock:
            events.send(message)

    work: "queue.Queue[tuple]" = queue.Queue()
    cancels: dict[int, threading.Event] = {}

    def listen() -> None:
        # Only waits on the pipe: a cancel takes effect while the main thread generates.
        while True:
            try:
                message = commands.recv()
            except (EOFError, OSError):
                os._exit(0)  # the app is gone
            if message[0] == "exit":
                os._exit(0)
            if message[0] == "cancel":
                event = cancels.get(message[1])
                if event is not None:
                    event.set()
                continue
            if message[0] == "stream":
                cancels[message[1]] = threading.Event()
            work.put(message)

    threading.Thread(target=listen, name="vlchat-model-commands", daemon=True).start()
    engine: Any = None
    while True:
        message = work.get()
        kind = message[0]
        try:
            if kind == "load":
                _, settings, model = message
                engine = make_local_engine(settings, model)
                engine.load(lambda step: send("progress", step))
                info = engine.describe()
                gc.collect()
                gc.freeze()  # the model's objects: no collection walks them again mid-answer
                send("loaded", info, _gpu_bytes())
            elif kind == "stream":
                _, stream_id, conversation, params = message
                cancel = cancels[stream_id]
                try:
                    stream = engine.stream(conversation, params, cancel)
                    stats = stream.stats
                    # Sent from the generation thread where the engine can (TokenStream.drive):
                    # this thread then sleeps until the answer ends instead of taking the
                    # interpreter from the model for every piece.
                    stream.drive(lambda piece: send("piece", piece, stats.tokens, stats.first_token_at))
                finally:
                    cancels.pop(stream_id, None)
                state = {
                    key: getattr(stats, key)
                    for key in ("tokens", "stopped", "started", "first_token_at", "finished_at", "prompt_tokens", "notice", "cached_tokens", "finish_reason", "context_full")
                }
                state["stopped"] = state["stopped"] or cancel.is_set()
                send("end", state, _gpu_bytes())
            elif kind == "count":
                send("counted", *engine.count_context(message[1]))
        except BaseException as error:  # noqa: BLE001 - every failure goes back as one message
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            send("error", _pickled(error), type(error).__name__, str(error))


def _pickled(error: BaseException) -> bytes | None:
    module = type(error).__module__
    if module != "builtins" and not module.startswith("vlchat."):
        return None  # the app would have to import the library to read it back
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
        return data
    except Exception:
        return None


def _gpu_bytes() -> int | None:
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.memory_allocated())
    except Exception:
        pass
    return None


def main(argv: list[str]) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the app decides when the model stops
    commands = Connection(int(argv[0]), writable=False)
    events = Connection(int(argv[1]), readable=False)
    _serve(commands, events)


if __name__ == "__main__":
    main(sys.argv[1:])
