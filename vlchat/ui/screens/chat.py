"""The chat screen: one conversation about pictures. It keeps the Conversation (the one source of
truth: the screen changes it, then renders it), the pictures waiting for the next question, the
answer being written and its frames, and the conversation's slash commands (in ``chat_commands``).

``conversation_changed`` is called after every change: it queues the autosave with the session
writer and posts ``ConversationChanged`` for whoever else listens.

Slow work runs in thread workers that only post the messages in ``vlchat.ui.messages``: answering
("generate"), decoding previews ("preview"), reading attached pictures ("attach") and counting the
context ("context"). Sessions on disk go through the SessionWriter's own thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from rich.text import Text
from textual import on, work
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen

from vlchat.config import Settings
from vlchat.core.conversation import Conversation, GenerationParams, ImageRef
from vlchat.core.errors import VlchatError
from vlchat.core.session_writer import SessionWriter
from vlchat.core.text import clean
from vlchat.ui import slash
from vlchat.ui.footer import KeyFooter
from vlchat.ui.messages import (
    AnswerFinished,
    ContextCounted,
    ConversationChanged,
    PicturesLoaded,
    PreviewDecoded,
)
from vlchat.ui.pacing import FramePacer
from vlchat.ui.preview import PREVIEW_MAX_SIDE, PicturePane
from vlchat.ui.prompt import PromptArea
from vlchat.ui.screens.chat_commands import ConversationCommands
from vlchat.ui.screens.chat_paste import PasteHandling
from vlchat.ui.screens.chat_sessions import SessionHandling
from vlchat.ui.status import StatusLine, StatusState, status_text
from vlchat.ui.terminal import TerminalGraphics
from vlchat.ui.transcript import AnswerView, Transcript, UserView, model_label


# Changes after which the context is counted by whoever comes next: an answer starts (and is counted
# when it ends), or the model is being swapped (counted when the new one is ready).
COUNTED_LATER = frozenset({"question", "answer", "stopped", "question returned", "regenerate", "model"})


def question_pictures(pending: list[ImageRef], seen: list[ImageRef], shown: ImageRef | None) -> list[ImageRef]:
    """What goes with a question: ``pending`` (attached since the last question), with ``shown`` (the
    picture on screen) last, added when it is not the last picture the model saw (``seen``)."""
    if shown is None:
        return list(pending)
    if any(ref.sha256 == shown.sha256 for ref in pending):
        return [ref for ref in pending if ref.sha256 != shown.sha256] + [shown]
    last = (seen + list(pending))[-1:]
    if last and last[0].sha256 == shown.sha256:
        return list(pending)
    return [*pending, shown]


class ChatScreen(ConversationCommands, PasteHandling, SessionHandling, Screen):
    """The app's main (default) screen. Its keys are declared with the app's keymap (``screen.`` actions)."""

    # Ctrl+C while an answer is written stops it, as Esc does (and as Ctrl-C does in `vlchat ask`);
    # otherwise the key goes on to whoever else takes it (the prompt's copy, the app's quit hint).
    BINDINGS = [Binding("ctrl+c", "interrupt", show=False, priority=True)]

    def __init__(
        self,
        settings: Settings,
        graphics: TerminalGraphics,
        image_widgets: Any = None,
        *,
        images: Sequence[str | os.PathLike | ImageRef] = (),
        store: Any = None,
        session: Any = None,
        session_notes: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.settings = settings
        self.graphics = graphics
        self._image_widgets = image_widgets
        self.conversation = Conversation()
        if settings.system:
            self.conversation.set_system(settings.system)
        self.params = GenerationParams(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed,
        )
        self.pending: list[ImageRef] = []
        self._start_images = [i for i in images if not isinstance(i, ImageRef)]
        self.pending.extend(i for i in images if isinstance(i, ImageRef))
        self.generating: int | None = None
        self._answer_id = 0
        self._cancel = threading.Event()
        # engine.prepare (processor, picture cache) is not made for two threads at once: the
        # context counter, the start of an answer and the unloading of a switched-out model take turns.
        self.engine_lock = threading.Lock()
        self.answer_view: AnswerView | None = None  # the answer being written
        # The answer being written, as (answer id, its TokenStream): a frame reads the text from
        # the stream itself, so the generation worker posts nothing per token.
        self._live: tuple[int, Any] | None = None
        self._pacer = FramePacer(lambda: self.app.engine, self._model_on_cpu, self._schedule_paint)
        self.frames = 0  # transcript redraws of streamed text (the bench and tests read it)
        # Set to a list, each frame adds (when, characters of the answer shown) to it: the
        # bench's measure of how far the screen is behind the model.
        self.frame_log: list[tuple[float, int]] | None = None
        # False: frames skip drawing the streamed answer (it is drawn whole when it ends). The
        # bench turns drawing off and on in windows of one answer, to measure what it costs the model.
        self.draw_stream = True
        self.last_timings = None
        self.last_tokens: int | None = None
        self.last_prompt_tokens: int | None = None  # as the engine (or the server's usage) counted them
        self.context_tokens: int | None = None
        self.picture_tokens: int | None = None
        # Sessions: the writer gets a copy of the message list, so the UI thread never waits on
        # the disk and never shares a list.
        self.store = store
        self.sessions = SessionWriter(store, self._session_callbacks(), session)
        self.save_error: str | None = None
        self.saves = 0  # finished saves (tests and the status line read it)
        self.opening_session = False  # a /load or /delete is switching the open session
        self._session_notes = list(session_notes)
        self._picture_sources = {ref.sha256: os.path.abspath(ref.path) for ref in self.pending}
        self._missing: set[str] = set()  # pictures of the open session that are not in its folder
        if session is not None:
            self._adopt(session)
        self.mounted = asyncio.Event()  # set once its widgets are there (the app waits for it)

    @property
    def session(self) -> Any:
        """The open session (None until something is worth saving)."""
        return self.sessions.session

    # -- building ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield PicturePane(
                self.graphics.protocol,
                self._image_widgets,
                cell=(self.graphics.cell_width, self.graphics.cell_height),
                id="preview",
            )
            with Vertical(id="chat"):
                yield Transcript(id="transcript")
                yield PromptArea(id="prompt")
        yield StatusLine(id="status")
        yield KeyFooter()

    @property
    def transcript(self) -> Transcript:
        return self.query_one(Transcript)

    @property
    def prompt(self) -> PromptArea:
        return self.query_one(PromptArea)

    @property
    def preview(self) -> PicturePane:
        return self.query_one(PicturePane)

    def on_mount(self) -> None:
        try:
            self._start()
        finally:
            self.mounted.set()  # even after a failure: the app waits for it, and must get to show it

    def _start(self) -> None:
        self.prompt.focus()
        self.refresh_pictures(show_last=True)  # the last of them: the one the first question is about
        if self._start_images:
            self._attach_pictures(list(self._start_images), save=False)
        if self.session is not None:
            self.transcript.render_conversation(self.conversation)
            self._session_opened_notes(self.session, self._session_notes)
            self._seed_history()
            self.refresh_pictures(show_last=True)
        elif self.settings.system:
            self.transcript.render_conversation(self.conversation)
        self.update_status()
        if self.app.loaded:
            self.count_context()

    # -- the model, as the app reports it -------------------------------------------------------
    def model_ready(self) -> None:
        """A model is ready: answer a question that waited for it, else count the context."""
        waiting = self.conversation.messages and self.conversation.messages[-1].role == "user"
        # a read-only session is someone else's to continue: its dangling question is not answered here
        read_only = self.session is not None and self.session.read_only
        if waiting and self.generating is None and not read_only:
            self.start_answer()
        else:
            self.count_context()

    def model_swapped(self, line: str) -> None:
        self.context_tokens = self.picture_tokens = None
        self.last_timings = None
        self.last_prompt_tokens = None
        self.transcript.note(line)
        self.update_status()
        self.conversation_changed("model")

    def _model_on_cpu(self) -> bool:
        info = self.app.info
        return info is None or info.device == "cpu"

    # -- status line ----------------------------------------------------------------------------
    def status_state(self) -> StatusState:
        return replace(
            self.app.model_status(),
            save_error=self.save_error,
            read_only=self.session is not None and self.session.read_only,
            context_tokens=self.context_tokens,
            picture_tokens=self.picture_tokens,
            last_prompt_tokens=self.last_prompt_tokens,
            last_tokens=self.last_tokens,
            last_timings=self.last_timings,
            temperature=self.params.temperature,
            answering=self.generating is not None,
            job=getattr(self, "caption_line", ""),
        )

    def status_text(self) -> Text:
        return status_text(self.status_state())

    def update_status(self) -> None:
        try:
            self.query_one(StatusLine).show(self.status_state())
        except Exception:
            pass

    # -- pictures ------------------------------------------------------------------------------
    def all_pictures(self) -> list[ImageRef]:
        seen: dict[str, ImageRef] = {}
        for ref in [*self.conversation.images(), *self.pending]:
            seen.setdefault(ref.sha256, ref)
        return list(seen.values())

    def refresh_pictures(self, show_last: bool = False) -> None:
        refs = self.all_pictures()
        pane = self.preview
        pane.set_pictures(refs, len(refs) - 1 if show_last else None)
        self.update_placeholder()
        # A picture missing from the session is said once, in the transcript; the pane only shows it is gone.
        for ref in refs:
            if ref.sha256 in self._missing and ref.sha256 not in pane.errors:
                pane.picture_decoded(ref.sha256, None, "missing from the session folder")
            elif ref.sha256 not in pane.decoded and ref.sha256 not in pane.errors and self.graphics.protocol not in ("text", "none"):
                self._decode_preview(ref)

    @work(thread=True, group="preview", exit_on_error=False)
    def _decode_preview(self, ref: ImageRef) -> None:
        from vlchat.core.images import load_preview

        try:
            image = load_preview(ref.path, PREVIEW_MAX_SIDE)
        except VlchatError as error:
            self.post_message(PreviewDecoded(ref.sha256, None, str(error)))
            return
        except Exception as error:
            self.post_message(PreviewDecoded(ref.sha256, None, f"cannot draw it: {type(error).__name__}"))
            return
        self.post_message(PreviewDecoded(ref.sha256, image))

    def on_preview_decoded(self, message: PreviewDecoded) -> None:
        self.preview.picture_decoded(message.sha256, message.image, message.error)

    @work(thread=True, group="attach", exit_on_error=False)
    def _attach_pictures(self, paths: list, save: bool = True) -> None:
        from vlchat.core.images import load_image

        refs, errors = [], []
        for path in paths:
            try:
                refs.append(load_image(os.path.expanduser(os.fspath(path))).ref)
            except VlchatError as error:
                errors.append(str(error))
            except Exception as error:
                errors.append(f"{clean(os.fspath(path), keep_newlines=False)} cannot be read: {type(error).__name__}")
        self.post_message(PicturesLoaded(refs, errors, save))

    def on_pictures_loaded(self, message: PicturesLoaded) -> None:
        for line in message.errors:
            self.say(line, "error")
        if message.refs:
            self.pending.extend(message.refs)
            for ref in message.refs:
                self._picture_sources[ref.sha256] = os.path.abspath(ref.path)
            names = ", ".join(clean(Path(r.path).name, keep_newlines=False) for r in message.refs)
            if self.conversation.last("user") is not None:
                goes = "they go" if len(message.refs) > 1 else "it goes"
                self.say(f"Attached {names}: {goes} with your next question.")
            self.refresh_pictures(show_last=True)
            self.count_context()
            if message.save:
                self.request_save("picture")

    def pictures_for_question(self) -> list[ImageRef]:
        """The pictures that go with a question now: those attached since the last one, and the
        picture on screen last, since a model answers about the last picture it saw. A picture
        shown again goes by reference (the same ImageRef: the session keeps one copy)."""
        return question_pictures(self.pending, self.conversation.images(), self.preview.current)

    def action_previous_picture(self) -> None:
        self.preview.step(-1)
        self.update_placeholder()

    def action_next_picture(self) -> None:
        self.preview.step(1)
        self.update_placeholder()

    def update_placeholder(self) -> None:
        refs = self.preview.refs
        self.prompt.set_subject(self.preview.index + 1 if refs else None, len(refs), self.app.bound_keys())

    def action_toggle_preview(self) -> None:
        self.preview.toggle_class("-hidden")

    # -- context --------------------------------------------------------------------------------
    def count_context(self) -> None:
        app = self.app
        if app.loaded and self.generating is None and app.engine.counts_context:
            snapshot = Conversation(messages=list(self.conversation.messages))
            if self.pending or not snapshot.messages or snapshot.messages[-1].role != "user":
                snapshot.add_user("", list(self.pending))
            self._context_worker(snapshot)

    @work(thread=True, exclusive=True, group="context", exit_on_error=False)
    def _context_worker(self, snapshot: Conversation) -> None:
        try:
            with self.engine_lock:
                tokens, pictures = self.app.engine.count_context(snapshot)
            self.post_message(ContextCounted(tokens, pictures))
        except Exception:
            self.post_message(ContextCounted(None, None))

    def on_context_counted(self, message: ContextCounted) -> None:
        self.context_tokens, self.picture_tokens = message.tokens, message.picture_tokens
        self.update_status()

    # -- asking ----------------------------------------------------------------------------------
    @on(PromptArea.Submitted)
    def on_prompt_submitted(self, event: PromptArea.Submitted) -> None:
        self.handle_input(event.text)

    def handle_input(self, text: str) -> None:
        if self.opening_session:
            self.prompt.text = text
            self.toast("A session is being opened: one moment.", "warning")
            return
        command = slash.parse(text)
        if command is not None:
            self.run_command(*command, original=text)
            return
        if text.strip().startswith("//"):
            text = text.strip()[1:]
        self.ask(text)

    def ask(self, text: str) -> None:
        if self.generating is not None:
            self.prompt.text = text
            self.toast("An answer is still being written: wait for it, or press Esc to stop it.", "warning")
            return
        with self.app.batch_update():  # the question, the answer's start and the status: one redraw
            self._ask(text)

    def _ask(self, text: str) -> None:
        message = self.conversation.add_user(text.strip(), self.pictures_for_question())
        self.pending = []
        self.transcript.add(UserView(message, self.conversation))
        self.conversation_changed("question")
        app = self.app
        if app.load_error:
            self.transcript.note(
                f"No model to answer: {app.load_error} Your question is kept; switch with /model NAME (or restart with another --model).",
                "error",
            )
        elif not app.loaded:
            self.transcript.note("The model is still loading; your question will be answered as soon as it is ready.")
        else:
            self.start_answer()

    def _model_name(self) -> str:
        info = self.app.info
        return info.name if info else self.settings.model

    def start_answer(self) -> None:
        self._answer_id += 1
        self.generating = self._answer_id
        self._cancel = threading.Event()
        self.answer_view = AnswerView(model=model_label(self._model_name()))
        self.transcript.add(self.answer_view)
        self._live = None
        self._pacer.start()
        # A blinking cursor redraws the screen twice a second, time taken from the model.
        self.prompt.cursor_blink = False
        snapshot = Conversation(messages=list(self.conversation.messages))
        params = replace(self.params)
        # A model in a process of its own is sent the question now, before the screen lays it out
        # (the worker's thread would start only after that, some milliseconds later).
        begun = None
        if self.engine_lock.acquire(blocking=False):
            try:
                begun = self.app.engine.begin(snapshot, params, self._cancel)
            finally:
                self.engine_lock.release()
        if begun is not None:
            self._live = (self._answer_id, begun)
        self._generate(self._answer_id, snapshot, params, self._cancel, begun)
        self.update_status()
        self.refresh_bindings()

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def _generate(
        self, answer_id: int, conversation: Conversation, params: GenerationParams, cancel: threading.Event, begun: Any = None
    ) -> None:
        stream = begun
        try:
            if stream is None:
                with self.engine_lock:
                    stream = self.app.engine.stream(conversation, params, cancel)
                self._live = (answer_id, stream)
            for _piece in stream:
                pass
        except VlchatError as error:
            self._post_end(answer_id, stream, cancel, str(error))
            return
        except MemoryError:
            self._post_end(answer_id, stream, cancel, "ran out of memory while answering. Lower max_tokens or shorten the conversation.")
            return
        except Exception as error:
            self._post_end(answer_id, stream, cancel, f"generation failed: {type(error).__name__}: {error}")
            return
        self._post_end(answer_id, stream, cancel, None)

    def _post_end(self, answer_id: int, stream: Any, cancel: threading.Event, error: str | None) -> None:
        if stream is None:
            finish = "error" if error else "stopped"
            self.post_message(AnswerFinished(answer_id, "", 0, None, None, cancel.is_set(), error, finish_reason=finish))
            return
        stats = stream.stats
        if stats.finished_at is None:
            stats.finished_at = time.perf_counter()
        self.post_message(
            AnswerFinished(
                answer_id,
                stream.text,
                stats.tokens,
                stats.timings(),
                stats.prompt_tokens,
                stats.stopped or cancel.is_set(),
                error,
                stats.notice,
                # a stop asked for while an error ended the answer is still the person's stop
                stats.finish(error=bool(error) and not cancel.is_set()),
            )
        )

    @property
    def streaming_text(self) -> str | None:
        """What the model has written so far of the answer being written (None between answers)."""
        live = self._live
        return live[1].text if live is not None and live[0] == self.generating else None

    def _schedule_paint(self) -> None:
        # Painting happens in the screen's own message loop, never in a timer callback.
        self.call_later(self._paint_frame, self.generating)

    async def _paint_frame(self, answer_id: int) -> None:
        try:
            view, live = self.answer_view, self._live
            if view is None or live is None or live[0] != answer_id or answer_id != self.generating:
                return
            text = live[1].text
            if text != view.shown and self.draw_stream:
                self.frames += 1
                # While the transcript follows the answer, only the rows that fit on screen of
                # the line being written are drawn; scrolled up, all of it.
                transcript = self.transcript
                following = transcript.following
                await view.show_progress(text, transcript.size.height if following else None)
                transcript.follow()
                if self.frame_log is not None:
                    self.frame_log.append((time.perf_counter(), len(text)))
        finally:
            if self.generating == answer_id:
                self._pacer.painted()

    async def on_answer_finished(self, message: AnswerFinished) -> None:
        if message.answer_id != self.generating:
            return
        self._pacer.stop()
        view = self.answer_view
        self.generating = None
        self.answer_view = None
        self.prompt.cursor_blink = True
        self.refresh_bindings()
        text = message.text.strip()
        # An empty answer is still an answer (the turn happened); only a failure with nothing
        # written gives the question back.
        if text or message.stopped or not message.error:
            answer = self.conversation.add_assistant(
                text,
                model=self._model_name(),
                params=replace(self.params),
                stopped=message.stopped or bool(message.error),
                tokens=message.tokens,
                timings=message.timings,
                finish_reason=message.finish_reason,
            )
            self.last_timings, self.last_tokens = message.timings, message.tokens
            self.last_prompt_tokens = message.prompt_tokens
            # Saved before the screen is touched: a quit as the answer ends must not lose it.
            self.conversation_changed("stopped" if message.stopped else "answer")
            if view is not None:
                await view.finish(answer)
        else:
            if view is not None:
                await view.remove()
            if message.error:
                self._give_back_question()
        if self.app.quitting:
            return  # quit while the answer ended: nothing left to draw on
        self._after_answer(message)

    def _after_answer(self, message: AnswerFinished) -> None:
        if message.notice:
            self.transcript.note(clean(message.notice, keep_newlines=False))
        if message.error:
            line = clean(message.error, keep_newlines=False)
            self.say(line, "error")
            if not self.app.engine.alive:
                self.app.model_lost(line)
        self.transcript.follow()
        self.update_status()
        if self.app.swap_when_ready():
            return
        self.count_context()

    def _give_back_question(self) -> None:
        """A question that got no answer at all goes back into the prompt, its pictures with it."""
        last = self.conversation.messages[-1] if self.conversation.messages else None
        if last is None or last.role != "user":
            return
        self.conversation.messages.pop()
        self.pending = list(last.images) + self.pending
        if not self.prompt.text.strip():
            self.prompt.text = last.text
        self.transcript.render_conversation(self.conversation)
        self.transcript.note("Your question is back in the prompt; the pictures stay attached.")
        self.conversation_changed("question returned")

    def stop_answer(self) -> None:
        """Stop the answer being written (the engine stops within one step)."""
        self._cancel.set()

    def action_stop(self) -> None:
        if self.generating is not None:
            self._cancel.set()

    def action_interrupt(self) -> None:
        if self.generating is None:
            raise SkipAction()
        self._cancel.set()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            # Esc belongs to dialogs (the command palette) unless an answer is being written; with no
            # answer under way Stop is shown dimmed (None), so the footer keeps its keys.
            if self.app.screen is not self:
                return False
            return True if self.generating is not None else None
        return True

    # -- feedback: the one rule (ARCHITECTURE.md, "Where feedback goes") ----------------------------
    def say(self, line: str, kind: str = "info") -> None:
        """The result of the person's own command, or news about the conversation (an error
        included): a line in the transcript, which stays where it happened."""
        self.transcript.note(line, kind)

    def toast(self, line: str, severity: str = "information") -> None:
        """Passing state that changes nothing in the conversation (copied, a key refused while an
        answer is written): one toast, which replaces the one before it."""
        self.app.clear_notifications()
        self.app.notify(clean(line, keep_newlines=False), severity=severity)

    # -- sessions ----------------------------------------------------------------------------------
    def conversation_changed(self, reason: str) -> None:
        """Called after every change to the conversation: the autosave is queued at once (a quit
        right after still writes it), and ``ConversationChanged`` tells whoever else listens."""
        self.request_save(reason)
        self.post_message(ConversationChanged(self.conversation, reason))
        # The context count follows every change (/edit, /clear, /load, a picture…); an answer about
        # to start, or one just ended, is counted once it is over, never in its way.
        if reason not in COUNTED_LATER:
            self.count_context()
