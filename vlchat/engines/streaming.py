"""Handing the tokens of a generate() call on one thread to a reader on another, cheaply.

transformers' TextIteratorStreamer decodes on the generation thread, re-decoding every token since
the last newline at each step, and queues one item per token; the reader then wakes once per token
and takes the GIL from the model each time. On a small model, where a decoding step takes a
millisecond or two, that costs a quarter of the speed. Here the generation thread only appends
token ids to a list; the reader is woken at most about 30 times a second once an answer is under
way (every token for a model slower than that; the app draws at most 30 frames a second anyway),
and decodes a short window of new ids at a time. A reader that can take its pieces on the
generation thread itself (TokenStream.drive, as the model's own process sends them on) is not woken
at all: put() calls it at those same times instead, which spares the model the hand-over of the
interpreter's lock to another thread and back (measured at 300 pieces a second on the demo model
with one torch thread: 12 to 18% over plain generate when woken, 6 to 11% when called in place).
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

REPLACEMENT = "\ufffd"  # what a decode shows for a multi-byte character that is not complete yet


class TokenFeed:
    """generate()'s streamer: put() appends the new ids, the reader waits for them with wait().

    The first put() is the prompt and is skipped, as TextIteratorStreamer(skip_prompt=True) does,
    unless ``keep_prompt`` (an answer that repeats its prompt's text, as BLIP's captions do); it is
    never counted as generated tokens.
    ``stats`` (a StreamStats) gets the time of the first answer token and the running token count,
    from the generation thread, so cancel tests and the status line see the model's own count.
    """

    def __init__(self, stats: Any = None, rate: float = 30.0, burst: int = 8, keep_prompt: bool = False):
        self.ids: list[int] = []
        self.done = False
        self.stats = stats
        # Wake-ups of the reader: at most ``rate`` a second on average, in bursts of up to ``burst``
        # (a token bucket). Every time the reader runs it takes the GIL from the model, and on a
        # busy machine it can lose its core while holding it; a model faster than the eye can
        # follow has its tokens read in batches instead. A slower model, and the first tokens of
        # any answer, wake it at every token.
        self.rate = rate
        self.burst = float(burst)
        self._allowance = float(burst)
        self._last = time.perf_counter()
        self._prompt = True
        self.keep_prompt = keep_prompt
        # A bare lock as the wake-up signal (held = nothing to say), cheaper at both ends than a
        # Condition; a lost or extra wake-up costs at most one short wait, since the reader
        # checks ``ids`` and ``done`` itself and never waits longer than 1/rate.
        self._signal = threading.Lock()
        self._signal.acquire()
        self._waiting = False  # only wake the reader when it sleeps
        # Set by a reader that reads on the generation thread itself (TokenStream.drive): called
        # from put() at the times the reader would otherwise be woken, instead of waking anyone.
        self.inline: Callable[[], None] | None = None

    def put(self, value: Any) -> None:
        if self._prompt:
            self._prompt = False
            if self.keep_prompt:
                self.ids += (value[0] if value.dim() > 1 else value).tolist()
            return
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError("streaming supports one sequence at a time")
            value = value[0]
        new = value.tolist()
        stats = self.stats
        if stats is not None:
            if stats.first_token_at is None:
                stats.first_token_at = time.perf_counter()
            stats.tokens += len(new)
        self.ids += new  # one list operation under the GIL: the reader sees whole steps
        if self._waiting or self.inline is not None:
            now = time.perf_counter()
            self._allowance = min(self.burst, self._allowance + (now - self._last) * self.rate)
            self._last = now
            if self._allowance >= 1.0:
                self._allowance -= 1.0
                if self.inline is not None:
                    self.inline()
                else:
                    self._wake()

    def end(self) -> None:
        """Generation is over (finished, stopped or failed); safe to call more than once."""
        self.done = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._signal.release()
        except RuntimeError:  # already released: a wake-up is pending
            pass

    def wait(self, seen: int) -> bool:
        """Block until there are more than ``seen`` ids or generation is over; returns whether it is over.

        Once it returns True no more ids will come: everything put() before end() is in ``ids``.
        """
        timeout = 1.0 / self.rate
        while len(self.ids) <= seen and not self.done:
            self._waiting = True
            if len(self.ids) > seen or self.done:  # arrived between the check and the flag
                break
            # put() may skip the wake-up (see there): the timeout bounds how late a token shows.
            self._signal.acquire(timeout=timeout)
        self._waiting = False
        return self.done


class Detokenizer:
    """Text pieces from a growing list of ids, whose concatenation is the decode of all of them.

    Each step decodes only the ids since the last piece, together with those of the piece before
    as context, and emits the difference: a tokenizer that drops the leading space at the start of
    a decode, or whose characters span several byte tokens, then decodes the new ids as it does
    inside the whole answer. Text that ends in an incomplete multi-byte character is held back until
    a later token completes it. At the end the whole answer is decoded once and whatever the pieces
    have not shown yet is emitted, so the pieces add up to exactly the non-streamed decode.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self.decode = decode
        self.prefix = 0  # start of the context window
        self.read = 0  # ids up to here are already shown
        self.shown: list[str] = []

    def step(self, ids: Sequence[int], count: int, end: bool = False) -> str:
        """The next piece from the first ``count`` ids (more may be arriving behind them); "" if none yet.

        ``end``: no more ids will come; returns the rest.
        """
        if end:
            return self._finish(ids[:count])
        if count <= self.read:
            return ""
        before = self.decode(ids[self.prefix : self.read]) if self.read > self.prefix else ""
        text = self.decode(ids[self.prefix : count])
        if len(text) <= len(before) or text.endswith(REPLACEMENT) or not text.startswith(before):
            return ""  # nothing new yet, or a character still incomplete: wait for more ids
        piece = text[len(before) :]
        self.prefix, self.read = self.read, count
        self._show(piece)
        return piece

    def _finish(self, ids: Sequence[int]) -> str:
        whole = self.decode(ids)
        shown = "".join(self.shown)
        if whole.startswith(shown):
            piece = whole[len(shown) :]
        else:  # a tokenizer whose decode of later ids changes earlier text: show the window's rest
            before = self.decode(ids[self.prefix : self.read]) if self.read > self.prefix else ""
            text = self.decode(ids[self.prefix :])
            piece = text[len(before) :] if text.startswith(before) else ""
        self.prefix = self.read = len(ids)
        self._show(piece)
        return piece

    def _show(self, piece: str) -> None:
        if piece:
            self.shown.append(piece)


def eos_ids(*sources: Any) -> set[int]:
    """The end-of-answer token ids a generation config or tokenizer names (an int, a list, or None)."""
    ids: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def cut_at_limit(ids: Sequence[int], generated: int, limit: int, eos: set[int]) -> bool:
    """Whether generation ended because it reached ``limit`` new tokens rather than on an end token
    (an answer whose last allowed token is its end token finished on its own)."""
    return generated >= limit and not (ids and ids[-1] in eos)


class CancelCheck:
    """A stopping criterion that stops generation as soon as any of the events is set.

    Called once per decoding step, so it answers with a tensor made once per shape and device
    rather than a new one each step.
    """

    def __init__(self, *events: threading.Event):
        self.events = events
        self._answers: dict[tuple[int, Any, bool], Any] = {}

    def __call__(self, input_ids: Any, scores: Any, **_kw: Any) -> Any:
        stop = any(event.is_set() for event in self.events)
        key = (input_ids.shape[0], input_ids.device, stop)
        answer = self._answers.get(key)
        if answer is None:
            import torch

            answer = torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
            self._answers[key] = answer
        return answer
