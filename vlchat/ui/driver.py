"""Keyboard input that is not valid UTF-8 (a terminal set to Latin-1, a paste of binary, a stray
byte over a flaky SSH link) must not end the app.

Textual's Linux driver decodes what it reads from the terminal with a strict UTF-8 decoder in its
input thread; one bad byte raised UnicodeDecodeError there and took the whole app down with a
traceback. The driver looks the decoder factory up in its module when its input thread starts, so
handing it one that replaces bad bytes (with U+FFFD, shown as �) is enough.
"""

from __future__ import annotations

import codecs
import functools


def _lenient_decoder(encoding: str):
    return functools.partial(codecs.getincrementaldecoder(encoding), errors="replace")


def accept_invalid_utf8() -> None:
    """Make the terminal driver replace undecodable input instead of failing on it."""
    try:
        from textual.drivers import linux_driver
    except ImportError:  # not on a POSIX terminal (Windows has its own driver)
        return
    if getattr(linux_driver, "getincrementaldecoder", None) is codecs.getincrementaldecoder:
        linux_driver.getincrementaldecoder = _lenient_decoder


# Where OSC 5522 messages go (set by the chat screen while it listens); None: they are dropped.
_clipboard_sink = None


def set_clipboard_sink(sink) -> None:
    """``sink(body | None)`` is called, on the input thread, with every OSC 5522 message the
    terminal sends (None for one that was too large or cut short)."""
    global _clipboard_sink
    _clipboard_sink = sink


def route_clipboard_replies(*, hold_escape: bool) -> None:
    """Take the terminal's OSC 5522 messages (clipboard replies and paste events) out of the input
    before Textual's parser reads it: that parser types out any escape sequence it does not know
    (past 32 characters) as keys, so a picture's base64 would land in the prompt.

    Like ``accept_invalid_utf8``, this swaps what the driver's input thread looks up in its module
    when it starts: there, the parser class."""
    try:
        from textual.drivers import linux_driver
    except ImportError:
        return
    from vlchat.ui.clipboard import OscSplitter

    base = linux_driver.XTermParser
    if getattr(base, "splits_clipboard", False):
        return

    class ClipboardSplittingParser(base):
        splits_clipboard = True

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._splitter = OscSplitter(hold_escape=hold_escape)

        def _deliver(self, messages) -> None:
            sink = _clipboard_sink
            for message in messages:
                if sink is not None:
                    try:
                        sink(message)
                    except Exception:
                        pass

        def feed(self, data: str):
            if not data:  # the end of input: what was held goes on
                held = self._splitter.release(now=float("inf"))
                if held:
                    yield from super().feed(held)
                yield from super().feed("")
                return
            keys, messages = self._splitter.feed(data)
            self._deliver(messages)
            if keys:
                yield from super().feed(keys)

        def tick(self):
            late = self._splitter.release()
            if late:
                yield from super().feed(late)
            yield from super().tick()

    linux_driver.XTermParser = ClipboardSplittingParser
