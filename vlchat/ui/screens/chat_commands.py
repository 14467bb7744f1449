"""The conversation's slash commands, as methods of the chat screen (``command_NAME``), and the
dispatcher that runs a typed command line. App-wide commands (/model, /theme, /quit) are the app's."""

from __future__ import annotations

import glob
import os
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlchat.core.conversation import Conversation
from vlchat.core.errors import VlchatError
from vlchat.core.text import clean
from vlchat.ui import slash


def expand_paths(paths: list[str]) -> tuple[list[str], list[str]]:
    """/image's arguments as files: ``~`` expanded, and a wildcard pattern (``shots/*.png``) as the
    files it matches, in name order, unless a file has that very name. Also the patterns that matched none."""
    files, unmatched = [], []
    for path in paths:
        expanded = os.path.expanduser(path)
        if os.path.exists(expanded) or not glob.has_magic(expanded):
            files.append(expanded)
            continue
        found = [p for p in sorted(glob.glob(expanded)) if os.path.isfile(p)]
        if found:
            files.extend(found)
        elif "*" in expanded or "?" in expanded:
            unmatched.append(path)
        else:
            files.append(expanded)  # "[draft].png": a name with brackets, which the loader says is missing
    return files, unmatched


class ConversationCommands:
    """Mixed into ChatScreen: every name used here (conversation, transcript, prompt, sessions…) is its."""

    # -- the dispatcher ------------------------------------------------------------------------
    def fill_prompt(self, text: str) -> None:
        self.prompt.text = text
        self.prompt.move_cursor(self.prompt.document.end)
        self.prompt.focus()

    def run_command_line(self, line: str) -> None:
        parsed = slash.parse(line)
        if parsed:
            self.run_command(*parsed, original=line)

    def run_command(self, name: str, args: str, original: str = "") -> None:
        command = slash.COMMANDS.get(name)
        if command is None:
            shown = clean(name, keep_newlines=False)[:40]
            self.say(f"Unknown command /{shown}. Type /help for the list of commands.", "error")
            return
        if command.waits_for_answer and self.generating is not None:
            self.toast(f"/{name} waits until the answer is done: press Esc to stop it first.", "warning")
            return
        if command.needs_sessions and self.store is None:
            self.say("Sessions are off in this app.", "error")
            return
        getattr(self.app if command.app_wide else self, command.method)(args)

    # -- the conversation --------------------------------------------------------------------------
    def command_caption(self, args: str) -> None:
        from vlchat.ui.caption_command import caption_command

        caption_command(self, args)

    def on_caption_progressed(self, message) -> None:
        from vlchat.ui.caption_command import caption_progressed

        caption_progressed(self, message.progress)

    def _words(self, command: str, args: str) -> list[str] | None:
        """A command's arguments split as a shell would, or None after saying why they cannot be."""
        try:
            return shlex.split(args)
        except ValueError as error:
            self.say(f"{command}: {error}. Quote paths with spaces.", "error")
            return None

    def command_image(self, args: str) -> None:
        paths = self._words("/image", args)
        if paths is None:
            return
        if not paths:
            self.say("/image needs a path: /image photo.jpg", "error")
            return
        files, unmatched = expand_paths(paths)
        for pattern in unmatched:
            line = f"/image: no file matches {clean(pattern, keep_newlines=False)}"
            self.transcript.note(line, "error")
            self.notify(line, severity="error")
        if files:
            self._attach_pictures(files)

    def command_regenerate(self, _args: str) -> None:
        if not self.conversation.messages or self.conversation.last("user") is None:
            self.say("Nothing to regenerate yet: ask a question first.", "error")
            return
        if self.conversation.messages[-1].role == "assistant":
            self.conversation.messages.pop()
        self.transcript.render_conversation(self.conversation)
        self.conversation_changed("regenerate")
        if self.app.load_error or not self.app.loaded:
            self.transcript.note("The model is not ready; the question will be answered once it is.")
            return
        self.start_answer()

    def command_edit(self, _args: str) -> None:
        messages = self.conversation.messages
        index = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)
        if index is None:
            self.say("No question to edit yet.", "error")
            return
        question = messages[index]
        del messages[index:]
        self.pending = list(question.images) + self.pending
        # the figures of an answer that is gone, and a server's count of the conversation as it was
        self.last_prompt_tokens = self.last_timings = self.last_tokens = None
        self.transcript.render_conversation(self.conversation)
        self.fill_prompt(question.text)
        self.conversation_changed("edit")
        self.refresh_pictures()

    def command_system(self, args: str) -> None:
        self.conversation.set_system(args or None)
        self.transcript.render_conversation(self.conversation)
        self.transcript.note(f"System prompt set: {args}" if args else "System prompt removed.")
        self.conversation_changed("system")

    def command_set(self, args: str) -> None:
        parts = args.split()
        keys = ", ".join(slash.SETTABLE)
        if len(parts) != 2 or parts[0] not in slash.SETTABLE:
            self.say(f"/set needs a name ({keys}) and a value, e.g. /set temperature 0.7", "error")
            return
        key, raw = parts
        field = "max_new_tokens" if key == "max_tokens" else key
        try:
            if field == "seed" and raw.lower() in ("none", "off"):
                value: Any = None
            elif field in ("max_new_tokens", "seed"):
                value = int(raw)
            else:
                value = float(raw)
            params = replace(self.params, **{field: value}).validate()
        except ValueError:
            self.say(f"{key} must be a number, not {clean(raw, keep_newlines=False)!r}", "error")
            return
        except VlchatError as error:
            # in the name the person typed (max_tokens), not the field's own (max_new_tokens)
            self.say(str(error).replace(field, key), "error")
            return
        self.params = params
        self.say(f"{key} = {'none' if value is None else value}")
        self.update_status()

    def command_clear(self, _args: str) -> None:
        shown = self.preview.current
        self.conversation = Conversation()
        if self.settings.system:
            self.conversation.set_system(self.settings.system)
        self.pending = [shown] if shown else []
        self.last_timings = None
        self.last_prompt_tokens = None
        self.sessions.new_conversation()  # the old session stays on disk; the next question starts a new one
        self.transcript.render_conversation(self.conversation)
        self.transcript.note("New conversation." + (" The picture on screen goes with your next question." if shown else ""))
        self.refresh_pictures(show_last=True)
        self.conversation_changed("clear")
        self.update_status()

    # -- sessions ------------------------------------------------------------------------------------
    def command_save(self, args: str) -> None:
        title = " ".join(args.split()) or None
        asked = self.conversation.last("user") is not None
        if self.session is None and not asked and not self.pending:
            self.say("Nothing to save yet: ask a question or attach a picture first.", "error")
            return
        if title is None:
            # pictures alone make a session too (as an attached picture does when autosaved)
            self.request_save("save" if asked else "picture")
            where = f" in {clean(str(self.session.folder), keep_newlines=False)}" if self.session is not None else ""
            self.say(f"Saved{where}. Every change is saved by itself; /save TITLE renames the session.")
            return
        self.request_save("rename", title=title)

    def command_load(self, _args: str) -> None:
        from vlchat.ui.sessions import SessionPicker

        current = self.session.id if self.session is not None else None
        self.app.push_screen(SessionPicker(self.store, current), self._picked)

    def _picked(self, folder: Path | None) -> None:
        if folder is None:
            return
        if self.session is not None and Path(folder) == self.session.folder:
            self.say("That session is the one open.")
            return
        if self.generating is not None:
            self.toast("Wait for the answer (or press Esc) before opening another session.", "warning")
            return
        self.open_session(folder)

    def open_session(self, folder: Any) -> None:
        """Switch to another session: the open one is saved and closed first (by the session writer)."""
        self.opening_session = True
        self.sessions.open(self.snapshot(), folder)

    def command_delete(self, args: str) -> None:
        from vlchat.ui.sessions import ConfirmScreen

        name = args.strip()
        if name:
            try:
                folder = self.store.find(name)
            except VlchatError as error:
                self.say(str(error), "error")
                return
        elif self.session is not None:
            folder = self.session.folder
        else:
            self.say("Nothing saved to delete yet. /delete NAME deletes another session.", "error")
            return
        is_open = self.session is not None and Path(folder) == self.session.folder
        if is_open:
            title = clean(self.session.title, keep_newlines=False)
        else:  # named by id or part of it: the question shows the title the person knows it by
            info = next((i for i in self.store.list() if Path(i.folder) == Path(folder)), None)
            title = clean(info.title if info is not None and info.title else name, keep_newlines=False)
        question = f"Delete the session {title!r} and its pictures from disk?\n{clean(str(folder), keep_newlines=False)}"
        if is_open:
            question += "\nThis is the open conversation; a new empty one takes its place."

        def answered(yes: bool | None) -> None:
            if not yes:
                self.say("Nothing deleted.")
                return
            if is_open:
                if self.generating is not None:
                    self.toast("Wait for the answer (or press Esc) before deleting this session.", "warning")
                    return
                self.opening_session = True
            self.sessions.delete(folder, title, is_open=is_open)

        self.app.push_screen(ConfirmScreen(question), answered)

    def command_export(self, args: str) -> None:
        parts = self._words("/export", args)
        if parts is None:
            return
        self.request_save("export")
        self.sessions.export(self.snapshot(), parts[0] if parts else None)

    # -- the rest ------------------------------------------------------------------------------------
    def command_copy(self, _args: str) -> None:
        self.action_copy()

    def action_copy(self) -> None:
        answer = self.conversation.last("assistant")
        if answer is None or not answer.text:
            self.toast("No answer to copy yet.", "warning")
            return
        self.app.copy_to_clipboard(answer.text)
        self.toast(f"Copied the last answer ({len(answer.text)} characters) to the clipboard.")

    def command_help(self, _args: str) -> None:
        self.action_help()

    def action_help(self) -> None:
        from vlchat.ui.screens.chat_paste import PASTE_HELP
        from vlchat.ui.screens.help import HelpScreen

        if not isinstance(self.app.screen, HelpScreen):
            paste = f"{PASTE_HELP} Here: {self.graphics.paste.describe()}."
            self.app.push_screen(HelpScreen(self.app.bound_keys(), notes=paste))
