"""Every message the app's workers post, in one place.

Workers (model loading, generation, picture decoding, context counting) never touch widgets; they
report back only with these, and the app's handlers update the screen.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message

from vlchat.core.conversation import Timings


class ModelLoadProgress(Message):
    def __init__(self, stage: str, done: int | None = None, total: int | None = None) -> None:
        super().__init__()
        self.stage, self.done, self.total = stage, done, total

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ModelLoadProgress)


class ModelLoaded(Message):
    def __init__(self, info: Any) -> None:
        super().__init__()
        self.info = info


class ModelLoadFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class AnswerFinished(Message):
    """The answer ended: complete, stopped (Esc), or failed with ``error`` (partial text kept)."""

    def __init__(
        self,
        answer_id: int,
        text: str,
        tokens: int,
        timings: Timings | None,
        prompt_tokens: int | None,
        stopped: bool = False,
        error: str | None = None,
        notice: str | None = None,
        finish_reason: str | None = None,
    ) -> None:
        super().__init__()
        self.answer_id, self.text, self.tokens = answer_id, text, tokens
        self.timings, self.prompt_tokens = timings, prompt_tokens
        self.stopped, self.error = stopped, error
        self.notice = notice  # from the engine: e.g. older turns left out to fit its window
        self.finish_reason = finish_reason  # "stop", "length", "stopped" or "error"


class ModelSwitchProgress(Message):
    """A step of loading the model being switched to (the current one keeps answering meanwhile)."""

    def __init__(self, name: str, stage: str) -> None:
        super().__init__()
        self.name, self.stage = name, stage

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ModelSwitchProgress)


class ModelSwitched(Message):
    """The new model is loaded: the app swaps it in and unloads the old one."""

    def __init__(self, name: str, engine: Any, info: Any) -> None:
        super().__init__()
        self.name, self.engine, self.info = name, engine, info


class ModelSwitchFailed(Message):
    """The new model could not be loaded; the current one stays."""

    def __init__(self, name: str, error: str) -> None:
        super().__init__()
        self.name, self.error = name, error


class ModelUnloaded(Message):
    """The old model's memory is released (``freed_bytes`` of device memory, when measurable)."""

    def __init__(self, name: str, freed_bytes: int | None) -> None:
        super().__init__()
        self.name, self.freed_bytes = name, freed_bytes


class ModelsListed(Message):
    """Rows for the model picker (named models and the vision models in the local HF cache)."""

    def __init__(self, rows: list, error: str | None = None) -> None:
        super().__init__()
        self.rows = rows
        self.error = error  # the server could not be asked (with --endpoint)


class PicturesLoaded(Message):
    """Pictures named with /image (or at start): the ones that loaded, and one line per failure."""

    def __init__(self, refs: list, errors: list[str], save: bool = True) -> None:
        super().__init__()
        self.refs, self.errors = refs, errors
        self.save = save  # False for the pictures given at start: they are saved with the first question


class PreviewDecoded(Message):
    def __init__(self, sha256: str, image: Any, error: str | None = None) -> None:
        super().__init__()
        self.sha256, self.image, self.error = sha256, image, error


class ContextCounted(Message):
    def __init__(self, tokens: int | None, picture_tokens: int | None) -> None:
        super().__init__()
        self.tokens, self.picture_tokens = tokens, picture_tokens

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ContextCounted)


class ConversationChanged(Message):
    """Posted after every change to the conversation: where autosave plugs in."""

    def __init__(self, conversation: Any, reason: str) -> None:
        super().__init__()
        self.conversation, self.reason = conversation, reason


class SessionSaved(Message):
    """The session is on disk as of this save. ``stored`` maps sha256 -> the picture's reference
    inside the session folder, for pictures that were copied in by this save."""

    def __init__(self, session: Any, stored: dict[str, Any], created: bool) -> None:
        super().__init__()
        self.session, self.stored, self.created = session, stored, created


class SessionSaveFailed(Message):
    """Saving failed (one line); the conversation in memory is untouched."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class SessionSwitched(Message):
    """Another session (or none: a new conversation) is now the open one; ``notes`` say what to tell."""

    def __init__(self, session: Any, notes: list[str], errors: list[str] | None = None) -> None:
        super().__init__()
        self.session, self.notes, self.errors = session, notes, errors or []


class SessionNote(Message):
    """The outcome of a session command (/save, /export, /delete), to show in the transcript."""

    def __init__(self, text: str, error: bool = False) -> None:
        super().__init__()
        self.text, self.error = text, error


class CaptionProgressed(Message):
    """A /caption job captioned a batch, or ended (``progress.finished``)."""

    def __init__(self, progress: Any) -> None:
        super().__init__()
        self.progress = progress
