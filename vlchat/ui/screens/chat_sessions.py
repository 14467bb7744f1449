"""The chat screen's side of its session on disk (mixed into the chat screen): the snapshot the
session writer saves, the writer's callbacks turned into messages, and what the screen does when a
save lands or fails, a note arrives, or another session is opened.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Sequence

from vlchat.core.conversation import Conversation
from vlchat.core.session_writer import SessionCallbacks, Snapshot
from vlchat.core.text import clean
from vlchat.ui.messages import SessionNote, SessionSaved, SessionSaveFailed, SessionSwitched
from vlchat.ui.preview import set_picture_name


class SessionHandling:
    """Mixed into ChatScreen: its ``conversation``, ``pending``, ``store``, ``sessions`` (the
    SessionWriter) and ``session``, and the transcript, prompt and status it shows them in."""

    def snapshot(self) -> Snapshot:
        """The conversation as it is now, in copies the session writer may keep."""
        from vlchat.engines.remember import model_record

        return Snapshot(
            messages=list(self.conversation.messages),
            pending=list(self.pending),
            params=replace(self.params),
            model=model_record(self.app.settings, self.app.info),
            sources=dict(self._picture_sources),
        )

    def request_save(self, reason: str = "", title: str | None = None) -> None:
        """Save the conversation as it is now, in the background (autosave calls this after every change)."""
        if self.store is not None:
            self.sessions.save(self.snapshot(), reason, title)

    def _session_callbacks(self) -> SessionCallbacks:
        return SessionCallbacks(
            saved=lambda session, stored, created: self.post_message(SessionSaved(session, stored, created)),
            save_failed=lambda line: self.post_message(SessionSaveFailed(line)),
            note=lambda text, error: self.post_message(SessionNote(text, error)),
            switched=lambda session, notes, errors: self.post_message(SessionSwitched(session, notes, errors)),
        )

    def on_session_saved(self, message: SessionSaved) -> None:
        self.saves += 1
        was_failing, self.save_error = self.save_error, None
        if message.session is not self.session:
            return
        if message.stored:
            # From now on the conversation names the copies inside the session folder.
            for msg in self.conversation.messages:
                if any(r.sha256 in message.stored for r in msg.images):
                    msg.images = [message.stored.get(r.sha256, r) for r in msg.images]
            self.pending = [message.stored.get(r.sha256, r) for r in self.pending]
            self._name_pictures(message.session)
            self.refresh_pictures()
        if was_failing:
            self.transcript.note("Saved again.")
        self.update_status()

    def on_session_save_failed(self, message: SessionSaveFailed) -> None:
        line = clean(message.error, keep_newlines=False)
        if line != self.save_error:  # the status line says it from then on
            self.say(f"Not saved: {line} The conversation is still open here.", "error")
        self.save_error = line
        self.update_status()

    def on_session_note(self, message: SessionNote) -> None:
        self.say(clean(message.text, keep_newlines=False), "error" if message.error else "info")

    def on_session_switched(self, message: SessionSwitched) -> None:
        self.opening_session = False
        for line in message.errors:
            self.say(clean(line, keep_newlines=False), "error")
        if message.errors:
            return
        if message.session is None:
            self.conversation = Conversation()
            if self.settings.system:
                self.conversation.set_system(self.settings.system)
            self.pending = []
            self._missing = set()
        else:
            self._adopt(message.session)
            self._seed_history()
        self.save_error = None
        self.last_timings = None
        self.last_prompt_tokens = None
        self.transcript.render_conversation(self.conversation)
        if message.session is not None:
            self._session_opened_notes(message.session, message.notes)
        else:
            for line in message.notes:
                self.transcript.note(clean(line, keep_newlines=False))
        self.refresh_pictures(show_last=True)
        self.update_status()
        self.count_context()

    def _adopt(self, session: Any) -> None:
        """Show ``session``'s conversation (no disk access: it was read by whoever opened it)."""
        self.conversation = Conversation(messages=list(session.conversation.messages))
        self.pending = session.pending_pictures()
        self._missing = {picture.sha256 for picture in session.missing_pictures()}
        self._name_pictures(session)

    def _seed_history(self) -> None:
        """Up in the prompt reaches the opened session's questions too."""
        self.prompt.prompt_history.seed([m.text for m in self.conversation.messages if m.role == "user"])

    def _name_pictures(self, session: Any) -> None:
        for sha, picture in session.pictures.items():
            if not os.path.basename(picture.source).startswith(sha):
                set_picture_name(sha, picture.name)
                self._picture_sources[sha] = picture.source

    def _session_opened_notes(self, session: Any, notes: Sequence[str]) -> None:
        title = clean(session.title, keep_newlines=False)
        turns = f"{session.turns} turn{'s' if session.turns != 1 else ''}"
        self.transcript.note(f"Session {title!r} ({turns}), from {clean(str(session.folder), keep_newlines=False)}.")
        # Each problem once, in the session's own words (a missing picture's says what to do).
        for line in [*session.problems, *notes]:
            line = clean(line, keep_newlines=False)
            self.transcript.note(line[:1].upper() + line[1:], "error")
        if session.read_only:
            self.say("This session is open read-only: nothing is saved.", "error")

    def close_sessions(self) -> None:
        """At exit: write what is queued and release the session's lock."""
        if self.store is not None:
            self.sessions.close(timeout=10)
