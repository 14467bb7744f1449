"""The multi-line prompt: Enter sends, ctrl+j (or shift+enter where the terminal tells them apart)
inserts a newline, and after ``/image `` the path being typed is completed (right arrow or Tab)."""

from __future__ import annotations

import os
import shlex

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from vlchat.core.text import clean
from vlchat.ui.clipboard import dropped_paths
from vlchat.ui.slash import completions

DROP_GRACE = 1.0  # seconds in which Esc turns dropped paths back into text


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
        Binding("ctrl+v", "paste_picture", "Paste", id="paste_picture"),
    ]

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class PictureWanted(Message):
        """ctrl+v, or a paste with nothing in it: the clipboard's picture is wanted."""

    class PathsDropped(Message):
        """A paste that was only picture paths (a dropped file), once Esc has not taken it back."""

        def __init__(self, paths: list[str]) -> None:
            super().__init__()
            self.paths = paths

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)
        self._dropped: tuple[str, list[str], object] | None = None  # (text, paths, timer)

    def _keys(self, binding_id: str) -> set[str]:
        default = next(b.key for b in self.BINDINGS if b.id == binding_id)
        keys = getattr(self.app, "_keymap", {}).get(binding_id) or default
        return {key.strip() for key in keys.split(",")}

    async def _on_key(self, event) -> None:
        if self._dropped is not None and event.key == "escape":
            event.stop()
            event.prevent_default()
            text, _paths, timer = self._dropped
            self._dropped = None
            timer.stop()
            self.insert(text)
            self.notify("The dropped paths are in the prompt as text.")
            return
        for binding_id, action in (("send", self.action_send), ("newline", self.action_newline)):
            if event.key in self._keys(binding_id):
                event.stop()
                event.prevent_default()
                action()
                return
        await super()._on_key(event)

    async def _on_paste(self, event) -> None:
        event.stop()
        event.prevent_default()
        self.paste_text(event.text)

    def paste_text(self, text: str) -> None:
        """A paste: text goes in as text; only picture paths (a dropped file) attach the pictures,
        after a one-line note, unless Esc comes within DROP_GRACE; an empty paste (some terminals
        send one for a clipboard holding only a picture) asks for the clipboard's picture."""
        if self.read_only:
            return
        if not text:
            self.post_message(self.PictureWanted())
            return
        paths = dropped_paths(text)
        if paths is None or self._dropped is not None:
            result = self.replace(text, *self.selection)
            self.move_cursor(result.end_location)
            self.focus()
            return
        count = f"{len(paths)} pictures" if len(paths) > 1 else "a picture"
        self.notify(f"Attaching {count} from the pasted path{'s' if len(paths) > 1 else ''}; Esc now keeps the text instead.", timeout=3)
        self._dropped = (text, paths, self.set_timer(DROP_GRACE, self._drop_accepted))

    def _drop_accepted(self) -> None:
        if self._dropped is None:
            return
        _text, paths, _timer = self._dropped
        self._dropped = None
        self.post_message(self.PathsDropped(paths))

    def action_paste_picture(self) -> None:
        self.post_message(self.PictureWanted())

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
