"""Making text from models and file names safe to put on a terminal."""

from __future__ import annotations

import re

# C0 and C1 control characters except tab and newline; DEL too. ESC is the dangerous one
# (it starts terminal escape sequences), but none of these belongs in displayed text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str, *, keep_newlines: bool = True) -> str:
    """Strip control characters so that nothing a model or a file name says can drive the terminal."""
    text = text.replace("\r\n", "\n")
    text = _CONTROL.sub("", text)
    if not keep_newlines:
        text = text.replace("\n", " ").replace("\t", " ")
    return text
