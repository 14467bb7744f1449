"""The multi-line prompt: Enter sends, ctrl+j (or shift+enter where the terminal tells them apart)
inserts a newline, and after ``/image `` the path being typed is completed (right arrow or Tab)."""

from __future__ import annotations

import os
import shlex

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from vlchat.core.text import clean
from vlchat.ui.slash import completions


def complete_path(partial: str, limit: int = 200) -> list[str]:
    """Completions of a path being typed: folders end with /, names are kept as the person typed them."""
    expanded = os.path.expanduser(partial)
    folder, prefix = os.path.split(expanded)
    try:
        names = sorted(os.listdir(folder or "."))
    except OSError:
        return []
    shown_folder = partial[: len(partial) - len(prefix)]
    matches = []
    for name in names:
        if not name.startswith(prefix) or (name.startswith(".") and not prefix.startswith(".")):
            continue
        suffix = "/" if os.path.isdir(os.path.join(folder or ".", name)) else ""
        matches.append(shown_folder + name + suffix)
        if len(matches) >= limit:
            break
    return matches


def common_prefix(items: list[str]) -> str:
    return os.path.commonprefix(items) if items else ""


def completion_for(text: str) -> str:
    """What to add at the end of ``text`` to complete it (a command name, or a path after /image)."""
    if "\n" in text or not text.startswith("/"):
        return ""
    if " " not in text:
        names = completions(text)
        done = common_prefix(names)
        return done[len(text):] + (" " if len(names) == 1 else "") if names else ""
    if not text.startswith("/image ") or text.endswith(" ") and not text.endswith("\\ "):
        return ""
    try:
        parts = shlex.split(text[len("/image "):])
    except ValueError:
        return ""
    if not parts:
        return ""
    partial = parts[-1]
    done = common_prefix(complete_path(partial))
    if len(done) <= len(partial):
        return ""
    return clean(done[len(partial):], keep_newlines=False).replace(" ", "\\ ")


class PromptArea(TextArea):
    BINDINGS = [
        # Not priority bindings: those run as soon as the app sees the key, ahead of keys typed
        # just before it (a burst such as a paste or tmux send-keys would lose its Enter).
        # _on_key below honours them in order instead, remapped keys included.
        Binding("enter", "send", "Send", id="send"),
        Binding("ctrl+j,shift+enter", "newline", "Newline", id="newline", show=False),
        Binding("tab", "complete", "Complete", id="complete", show=False),
    ]

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)

    def _keys(self, binding_id: str) -> set[str]:
        default = next(b.key for b in self.BINDINGS if b.id == binding_id)
        keys = getattr(self.app, "_keymap", {}).get(binding_id) or default
        return {key.strip() for key in keys.split(",")}

    async def _on_key(self, event) -> None:
        for binding_id, action in (("send", self.action_send), ("newline", self.action_newline)):
            if event.key in self._keys(binding_id):
                event.stop()
                event.prevent_default()
                action()
                return
        await super()._on_key(event)

    def action_send(self) -> None:
        text = self.text
        if not text.strip():
            return
        self.clear()
        self.post_message(self.Submitted(text))

    def action_newline(self) -> None:
        self.insert("\n")

    def action_complete(self) -> None:
        if self.suggestion:
            self.insert(self.suggestion)
        else:
            self.app.action_focus_next()

    def on_text_area_changed(self, _event: TextArea.Changed) -> None:
        at_end = self.cursor_location == self.document.end
        self.suggestion = completion_for(self.text) if at_end else ""
