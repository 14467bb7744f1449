"""Errors a person can cause. Each carries one line that says what happened and what to do."""

from __future__ import annotations


class VlchatError(Exception):
    """Base of every error vlchat shows to a person instead of a traceback.

    ``str(err)`` is the single line shown: what happened, then what to do.
    ``exit_code`` is what a command-line run exits with (2: bad usage or input, 1: model or runtime).
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            hint = self.hint.rstrip(".")
            return f"{text}. {hint[:1].upper()}{hint[1:]}."
        return f"{text}."


class InputError(VlchatError):
    """Bad input from the person: a file, an argument, a value."""

    exit_code = 2
