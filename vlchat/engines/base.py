"""The ChatEngine base class every engine subclasses, its errors, and the stream it returns.

An engine turns a Conversation into text pieces. The app, `vlchat ask` and `vlchat caption` only
ever talk to this contract, so a local transformers model, a BLIP-2 prompt chain or an HTTP server
are interchangeable.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from vlchat.core.conversation import Conversation, GenerationParams, Timings
from vlchat.core.errors import InputError, VlchatError


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system says, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


# -- errors -----------------------------------------------------------------------------------
class EngineError(VlchatError):
    """Something went wrong with the model: loading it, or generating with it."""

    exit_code = 1


class ModelNotFoundError(EngineError):
    """The model is neither a known name, a local folder, nor in the Hugging Face cache."""


class ModelLoadError(EngineError):
    """The model exists but could not be loaded (wrong kind, broken files, missing package)."""


class GenerationError(EngineError):
    """Generation failed part-way; the partial answer is kept by the caller."""


class OutOfMemoryError(EngineError):
    """The device ran out of memory."""


class ContextTooLongError(EngineError):
    """The conversation no longer fits in the model's context."""


class BadOptionError(InputError):
    """An option the engine cannot honour here (a device that is not present, say)."""


# -- progress and description ------------------------------------------------------------------
@dataclass
class LoadProgress:
    """One step of loading: ``stage`` in words, with ``done``/``total`` bytes or steps when known."""

    stage: str
    done: int | None = None
    total: int | None = None


ProgressCallback = Callable[[LoadProgress], None]


@dataclass
class EngineInfo:
    """What ``describe()`` reports: enough for the status line and for `vlchat ask --json`."""

    name: str
    family: str
    device: str
    dtype: str
    quantization: str
    memory_bytes: int | None
    context_length: int | None
    label: str = ""  # e.g. "demo model": shown wherever the model's name is shown
    # The server a remote engine talks to (never with a key or password in it): what a session
    # records so it can be resumed against the same server. None for a local model.
    endpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- the stream --------------------------------------------------------------------------------
@dataclass
class StreamStats:
    tokens: int = 0
    stopped: bool = False
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    prompt_tokens: int | None = None
    # Something the person should know about this answer (older turns left out to fit, say);
    # the app shows it under the answer.
    notice: str | None = None
    cached_tokens: int = 0  # prompt tokens taken from the previous turn's cache, not computed again
    # Why the answer ended, as the engine knows it: "stop" (the model finished), "length" (cut at
    # the token limit or a full context), "stopped" (the caller's cancel); None: not known here.
    finish_reason: str | None = None
    context_full: bool = False  # "length" because the context was full, not the max_new_tokens asked for

    def finish(self, error: bool = False) -> str:
        """The finish reason to report: "error" when the answer failed, else what the engine said
        (an engine that cannot tell says "stopped" when stopped and "stop" otherwise)."""
        if error:
            return "error"
        if self.stopped:
            return "stopped"
        return self.finish_reason or "stop"

    def timings(self) -> Timings:
        end = self.finished_at or time.perf_counter()
        first = None if self.first_token_at is None else self.first_token_at - self.started
        decode_s = None if self.first_token_at is None else end - self.first_token_at
        rate = None
        if decode_s and self.tokens > 1:
            rate = (self.tokens - 1) / decode_s
        return Timings(first_token_s=first, total_s=end - self.started, tokens_per_s=rate)


class TokenStream:
    """An iterator of text pieces that also knows, once done, how many tokens and how long.

    ``text`` holds everything yielded so far, so a stopped or failed stream still has its
    partial answer.
    """

    def __init__(self, pieces: Iterator[str], stats: StreamStats, push: Callable[[Callable[[str], None]], None] | None = None):
        self._pieces = pieces
        self.stats = stats
        self.text = ""
        self._push = push

    def drive(self, sink: Callable[[str], None]) -> None:
        """Hand every piece to ``sink``, returning at the end of the answer; an error inside
        generation is raised here as iteration raises it.

        An engine that can (``push``) hands each piece over on the thread that generates, so no
        reader thread is woken for it: a woken reader takes the interpreter's lock from the model,
        and on a CPU each such hand-over costs the model a tenth of a millisecond or more. ``sink``
        must then be safe to call from another thread; iterate instead where it is not.
        """
        if self._push is None:
            for piece in self:
                sink(piece)
            return

        def take(piece: str) -> None:
            self.text += piece
            sink(piece)

        self._push(take)

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> str:
        piece = next(self._pieces)
        self.text += piece
        return piece

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close:
            close()


class ChatEngine:
    """The contract between a model backend and whoever uses it (the app, `vlchat ask`, `vlchat
    caption`): every engine subclasses this. The defaults describe a model that runs on a thread of
    this process; an engine that differs (its own process, a server) overrides what differs.

    Stopping an answer is not a method: ``stream`` takes a ``threading.Event``, and setting it
    stops generation within one decoding step.
    """

    name: str = ""
    # Whether the model runs in a process of its own (then a model switched to runs in one too).
    separate_process: bool = False
    # Whether count_context can count the conversation's tokens (a server has no tokenizer here).
    counts_context: bool = False

    def load(self, progress: ProgressCallback | None = None) -> None:
        """Load the model; slow. Reports steps through ``progress``. Raises EngineError subclasses."""
        raise NotImplementedError

    def stream(
        self,
        conversation: Conversation,
        params: GenerationParams,
        cancel: threading.Event | None = None,
    ) -> TokenStream:
        """Answer the conversation's last user message, piece by piece.

        Setting ``cancel`` stops generation itself within one decoding step; the stream then ends
        and ``stream.stats.stopped`` is true. An error inside generation is raised from iteration.
        """
        raise NotImplementedError

    def begin(
        self,
        conversation: Conversation,
        params: GenerationParams,
        cancel: threading.Event | None = None,
    ) -> TokenStream | None:
        """``stream``, with the model already at work when it returns, where starting takes the
        caller no time and never waits: a model in a process of its own is sent the request
        there and then. None otherwise (the model is busy, or starting means work on the
        caller's thread, as preparing the pictures does for a model in this process): then call
        ``stream`` on a thread of its own. The app calls this on its UI thread as a question is
        sent, so the model starts before the screen lays the question out.

        A stream begun and never read ends the answer once it is closed or dropped.
        """
        return None

    def unload(self) -> None:
        """Free the model and its memory."""

    def describe(self) -> EngineInfo:
        """Name, family, device, dtype, quantization, memory used and context length."""
        raise NotImplementedError

    def count_context(self, conversation: Conversation) -> tuple[int, int | None]:
        """Tokens the conversation takes in the model's context, and how many are the pictures'
        (None when unknown). Only called when ``counts_context`` is true."""
        raise NotImplementedError

    def release(self) -> int | None:
        """Unload, and say how many bytes of GPU memory that gave back (None when not known)."""
        torch = sys.modules.get("torch")  # not imported: no model of this process holds GPU memory
        before = None
        try:
            if torch is not None and torch.cuda.is_available():
                before = torch.cuda.memory_allocated()
        except Exception:
            before = None
        self.unload()
        if before is None:
            return None
        return before - torch.cuda.memory_allocated()

    def cpu_seconds(self) -> float | None:
        """CPU seconds of whatever runs the model (here: this whole process, since its threads
        share the interpreter with the caller's); None when that cannot be read."""
        return time.process_time()

    @property
    def alive(self) -> bool:
        """False once the model can no longer answer until it is loaded again (its process died)."""
        return True
