"""The conversation's slash commands, as methods of the chat screen (``command_NAME``), and the
dispatcher that runs a typed command line. App-wide commands (/model, /theme, /quit) are the app's."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlchat.core.conversation import Conversation
from vlchat.core.errors import VlchatError
from vlchat.core.text import clean
from vlchat.ui import slash
from vlchat.ui.prompt import PromptArea


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
            self.notify(f"Unknown command /{shown}. Type /help for the list.", severity="error")
            self.transcript.note(f"Unknown command /{shown}. Type /help for the list of commands.", "error")
            return
        if command.waits_for_answer and self.generating is not None:
            self.notify(f"/{name} waits until the answer is done: press Esc to stop it first.", severity="warning")
            return
        if command.needs_sessions and self.store is None:
            self.notify("Sessions are off in this app.", severity="warning")
            return
        getattr(self.app if command.app_wide else self, command.method)(args)

    # -- the conversation --------------------------------------------------------------------------
    def command_image(self, args: str) -> None:
        try:
            paths = shlex.split(args)
        except ValueError as error:
            self.notify(f"/image: {error}. Quote paths with spaces.", severity="error")
            return
        if not paths:
            self.notify("/image needs a path: /image photo.jpg", severity="error")
            return
        self._attach_pictures(paths)

    def command_regenerate(self, _args: str) -> None:
        if not self.conversation.messages or self.conversation.last("user") is None:
            self.notify("Nothing to regenerate yet: ask a question first.", severity="warning")
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
            self.notify("No question to edit yet.", severity="warning")
            return
        question = messages[index]
        del messages[index:]
        self.pending = list(question.images) + self.pending
        self.transcript.render_conversation(self.conversation)
        self.fill_prompt(question.text)
        self.conversation_changed("edit")
        self.refresh_pictures()

    def command_system(self, args: str) -> None:
        self.conversation.set_system(args or None)
        self.transcript.render_conversation(self.conversation)
        self.transcript.note(f"System prompt set: {args}" if args else "System prompt removed.")
        self.conversation_changed("system")
        self.count_context()

    def command_set(self, args: str) -> None:
        parts = args.split()
        keys = ", ".join(slash.SETTABLE)
        if len(parts) != 2 or parts[0] not in slash.SETTABLE:
            self.notify(f"Use /set NAME VALUE with NAME one of {keys}.", severity="error")
            self.transcript.note(f"/set needs a name ({keys}) and a value, e.g. /set temperature 0.7", "error")
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
            line = f"{key} must be a number, not {clean(raw, keep_newlines=False)!r}"
            self.notify(line, severity="error")
            self.transcript.note(line, "error")
            return
        except VlchatError as error:
            self.notify(str(error), severity="error")
            self.transcript.note(str(error), "error")
            return
        self.params = params
        self.transcript.note(f"{key} = {value}")
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
        self.count_context()

    # -- sessions ------------------------------------------------------------------------------------
    def command_save(self, args: str) -> None:
        title = " ".join(args.split()) or None
        if title is None and not self.conversation.last("user") and not self.pending:
            self.notify("Nothing to save yet: ask a question or attach a picture first.", severity="warning")
            return
        if title is None:
            self.request_save("save")
            where = f" in {clean(str(self.session.folder), keep_newlines=False)}" if self.session is not None else ""
            self.notify(f"Saved{where}. Every change is saved by itself; /save TITLE renames the session.")
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
            self.notify("That session is the one open.")
            return
        if self.generating is not None:
            self.notify("Wait for the answer (or press Esc) before opening another session.", severity="warning")
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
                self.notify(str(error), severity="error")
                self.transcript.note(str(error), "error")
                return
        elif self.session is not None:
            folder = self.session.folder
        else:
            self.notify("Nothing saved to delete yet. /delete NAME deletes another session.", severity="warning")
            return
        is_open = self.session is not None and Path(folder) == self.session.folder
        title = clean(self.session.title, keep_newlines=False) if is_open else clean(name, keep_newlines=False)
        question = f"Delete the session {title!r} and its pictures from disk?\n{clean(str(folder), keep_newlines=False)}"
        if is_open:
            question += "\nThis is the open conversation; a new empty one takes its place."

        def answered(yes: bool | None) -> None:
            if not yes:
                self.notify("Nothing deleted.")
                return
            if is_open:
                if self.generating is not None:
                    self.notify("Wait for the answer (or press Esc) before deleting this session.", severity="warning")
                    return
                self.opening_session = True
            self.sessions.delete(folder, title, is_open=is_open)

        self.app.push_screen(ConfirmScreen(question), answered)

    def command_export(self, args: str) -> None:
        try:
            parts = shlex.split(args)
        except ValueError as error:
            self.notify(f"/export: {error}. Quote paths with spaces.", severity="error")
            return
        self.request_save("export")
        self.sessions.export(self.snapshot(), parts[0] if parts else None)

    # -- the rest ------------------------------------------------------------------------------------
    def command_copy(self, _args: str) -> None:
        self.action_copy()

    def action_copy(self) -> None:
        answer = self.conversation.last("assistant")
        if answer is None or not answer.text:
            self.notify("No answer to copy yet.", severity="warning")
            return
        self.app.copy_to_clipboard(answer.text)
        self.notify(f"Copied the last answer ({len(answer.text)} characters) to the clipboard.")

    def command_help(self, _args: str) -> None:
        self.action_help()

    def action_help(self) -> None:
        keys = []
        for binding in [*self.app.BINDINGS, *PromptArea.BINDINGS]:
            keys.append(f"  {binding.key:<20} {binding.description or binding.action}")
        keys.append(f"  {'ctrl+p':<20} command palette")
        from vlchat.ui.screens.chat_paste import PASTE_HELP

        paste = f"{PASTE_HELP}\nHere: {self.graphics.paste.describe()}."
        self.transcript.note(slash.help_text() + "\nKeys:\n" + "\n".join(keys) + "\n" + paste, "help")
