"""The multi-line prompt: Enter sends, ctrl+j (or shift+enter where the terminal tells them apart)
inserts a newline, and after ``/image `` the path being typed is completed (right arrow or Tab;
Tab on several candidates shows them). Up on the first row and Down on the last walk the history."""

from __future__ import annotations

import glob
import os
import shlex
import unicodedata
from functools import cached_property

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from rich.text import Text
from textual.content import Content

from vlchat.core.text import clean
from vlchat.ui.clipboard import dropped_paths
from vlchat.ui.history import PromptHistory
from vlchat.ui.placeholder import placeholder_text
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
    return prompt_form(done[len(partial):])


def prompt_form(name: str) -> str:
    """A piece of a file name as it is typed after /image: spaces, quotes and backslashes escaped
    for the shell-like split; a control character (which the prompt must not hold) becomes ``?``,
    a wildcard that /image matches against the real name, so the completed path still exists."""
    control = any(unicodedata.category(c) == "Cc" for c in name)
    if control:
        name = "".join("?" if unicodedata.category(c) == "Cc" else glob.escape(c) for c in name)
    return "".join("\\" + c if c in " '\"\\" else c for c in name)


def candidates_for(text: str) -> list[str]:
    """Everything ``text`` (a command name, or the path after /image) could be completed to, as a
    person reads them: command names, or the file and folder names (folders end with /)."""
    if "\n" in text or not text.startswith("/"):
        return []
    if " " not in text:
        return completions(text)
    if not text.startswith("/image ") or text.endswith(" ") and not text.endswith("\\ "):
        return []
    try:
        parts = shlex.split(text[len("/image "):])
    except ValueError:
        return []
    if not parts:
        return []
    return [clean(os.path.basename(m.rstrip("/")), keep_newlines=False) + ("/" if m.endswith("/") else "") for m in complete_path(parts[-1])]


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
        self.prompt_history.add(text)
        self.clear()
        self.post_message(self.Submitted(text))

    def action_newline(self) -> None:
        self.insert("\n")

    def action_complete(self) -> None:
        at_end = self.cursor_location == self.document.end
        candidates = candidates_for(self.text) if at_end else []
        if self.suggestion:
            self.insert(self.suggestion)
        if len(candidates) > 1:
            self.show_candidates(candidates)
        elif not self.suggestion:
            self.app.action_focus_next()

    def on_text_area_changed(self, _event: TextArea.Changed) -> None:
        at_end = self.cursor_location == self.document.end
        self.suggestion = completion_for(self.text) if at_end else ""
        if self.text != self._candidates_for:
            self.border_subtitle = ""

    # -- candidates, history, placeholder -------------------------------------------------------
    _candidates_for: str | None = None  # the text the candidates on the border were shown for

    def show_candidates(self, names: list[str]) -> None:
        """The candidates on the prompt's lower border, as many as fit (a Text: names are not markup)."""
        room = max(10, self.size.width - 6)
        shown, used = [], 0
        for index, name in enumerate(names):
            more = f"… {len(names) - index} more"
            if used + len(name) + 2 > room - (len(more) + 2 if index < len(names) - 1 else 0):
                shown.append(more)
                break
            shown.append(name)
            used += len(name) + 2
        self._candidates_for = self.text
        self.border_subtitle = Text("  ".join(shown))

    @cached_property
    def prompt_history(self) -> PromptHistory:
        return PromptHistory()

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.selection.is_empty and self.navigator.is_first_wrapped_line(self.cursor_location):
            recalled = self.prompt_history.older(self.text)
            if recalled is not None:
                self._recall(recalled)
                return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        if not select and self.selection.is_empty and self.navigator.is_last_wrapped_line(self.cursor_location):
            recalled = self.prompt_history.newer()
            if recalled is not None:
                self._recall(recalled)
                return
        super().action_cursor_down(select)

    def _recall(self, text: str) -> None:
        self.text = text
        self.move_cursor(self.document.end)

    _subject: tuple[int | None, int, dict] = (None, 0, {})

    def set_subject(self, picture: int | None, total: int, keys: dict[str, str]) -> None:
        """What a question is about now (picture number of total, None for none): the placeholder says so."""
        self._subject = (picture, total, keys)
        self._fit_placeholder()

    def _fit_placeholder(self) -> None:
        picture, total, keys = self._subject
        width = self.content_size.width - 1 if self.is_mounted and self.content_size.width else 200
        self.placeholder = Content(placeholder_text(picture, total, width, keys))

    def on_resize(self, _event) -> None:
        self._fit_placeholder()
