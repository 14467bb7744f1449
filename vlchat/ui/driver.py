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
