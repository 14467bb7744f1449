"""The prompt's history: earlier questions (and commands), walked with Up and Down as in a shell."""

from __future__ import annotations


class PromptHistory:
    """Entries oldest first. Walking starts from the text being written (the draft), which Down
    past the newest entry gives back."""

    def __init__(self, limit: int = 1000) -> None:
        self.entries: list[str] = []
        self.limit = limit
        self.position: int | None = None  # the entry shown now; None: the draft
        self.draft = ""

    def add(self, text: str) -> None:
        self.position = None
        text = text.strip()
        if text and (not self.entries or self.entries[-1] != text):
            self.entries.append(text)
            del self.entries[: -self.limit]

    def seed(self, texts: list[str]) -> None:
        """A conversation's questions, as the newest entries (an opened session's, at the start or by /load)."""
        texts = [t.strip() for t in texts if t.strip()]
        self.entries = [e for e in self.entries if e not in texts] + texts
        del self.entries[: -self.limit]
        self.position = None

    def older(self, current: str) -> str | None:
        if not self.entries or self.position == 0:
            return None
        if self.position is None:
            self.draft = current
            self.position = len(self.entries)
        self.position -= 1
        return self.entries[self.position]

    def newer(self) -> str | None:
        if self.position is None:
            return None
        self.position += 1
        if self.position >= len(self.entries):
            self.position = None
            return self.draft
        return self.entries[self.position]
