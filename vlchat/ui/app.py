"""The vlchat app: a picture, a conversation about it, streamed answers.

``make_app`` builds it for both the `vlchat` command and the tests. The Conversation is the one
source of truth: the app changes it, then renders it; ``conversation_changed`` is called after
every change and posts ``ConversationChanged`` (where sessions' autosave plugs in).

Slow work runs in thread workers that only post the messages in ``vlchat.ui.messages``: loading
the model (group "model"), answering ("generate"), decoding previews ("preview"), reading
attached pictures ("attach"), counting the context ("context"), sessions on disk ("save":
autosave, /save, /load, /delete, /export run one after another in the order they were asked for),
and loading a model switched to with /model ("switch") while the current one goes on answering;
the old one is unloaded ("unload") only once the new one is ready, so a failed switch leaves the
conversation where it was.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shlex
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from vlchat.config import Settings
from vlchat.core.conversation import Conversation, GenerationParams, ImageRef, Timings
from vlchat.core.errors import VlchatError
from vlchat.core.text import clean
from vlchat.engines.base import usable_cores
from vlchat.ui import commands as slash
from vlchat.ui import themes as theme_files
from vlchat.ui.commands import VlchatCommands
from vlchat.ui.messages import (
    AnswerFinished,
    ContextCounted,
    ConversationChanged,
    ModelLoaded,
    ModelLoadFailed,
    ModelLoadProgress,
    ModelSwitched,
    ModelSwitchFailed,
    ModelSwitchProgress,
    ModelUnloaded,
    PicturesLoaded,
    PreviewDecoded,
    SessionNote,
    SessionSaved,
    SessionSaveFailed,
    SessionSwitched,
)
from vlchat.ui.footer import KeyFooter
from vlchat.ui.preview import PREVIEW_MAX_SIDE, PicturePane, set_picture_name
from vlchat.ui.prompt import PromptArea
from vlchat.ui.terminal import TerminalGraphics
from vlchat.ui.transcript import AnswerView, Transcript, UserView, model_label

FRAME_S = 1 / 30  # the transcript is redrawn at most this often while an answer streams
# A frame costs a few milliseconds of Python on the UI thread, and that can be taken from the model.
# A model on a thread of this process (a test's, say) waits for it: the interpreter lock is one
# for all threads. A model in its own process (as `vlchat` runs it) loses the CPU's caches and
# memory bandwidth to it when it runs on the CPU, and on a machine whose cores it keeps busy, the
# cores themselves (torch's threads spin while one of them is held up). While that is so, frames
# are spaced so that the UI thread uses at most UI_SHARE of the time (measured: all its work since
# the last frame, the screen's redraw included), and come at least every FRAME_MAX_S. Otherwise
# (a GPU model with a core to spare, a server writing the answer) the UI may use UI_SHARE_IDLE:
# 30 frames a second, as a rule.
UI_SHARE = 0.01
UI_SHARE_IDLE = 0.25
BUSY_CORES = 0.75  # the model uses this much CPU (in cores): at work
SPARE_CORES = 0.75  # a GPU model in its own process leaves less than this of the cores free: busy
FRAME_MAX_S = 1.0

NARROW_COLUMNS = 100


def _freeze_heap() -> None:
    """Once a model is loaded, the objects alive (libraries, the model) stay as long as it does.
    Frozen, a full collection no longer walks them: on the UI thread, in the middle of an answer,
    that walk took 200 ms, time the model waits for the interpreter. The engine's unload thaws
    them again, so a switched-out model's cycles are still collected."""
    gc.freeze()


@dataclass
class _SessionJob:
    """One piece of session work for the "save" worker, made on the UI thread from a snapshot.

    ``epoch`` names the conversation it belongs to: /clear, /load and /delete start a new epoch, and
    the worker closes the old session before it touches the new one, so no write lands in the wrong folder.
    """

    kind: str  # save | switch | delete | export
    epoch: int
    messages: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    params: Any = None
    model: dict = field(default_factory=dict)
    reason: str = ""
    title: str | None = None
    sources: dict = field(default_factory=dict)  # sha256 -> the path a picture was first attached from
    target: Any = None  # switch: a folder; delete: ("open"|"other", folder, title); export: a path or None


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class VlchatApp(App):
    CSS_PATH = Path(__file__).parent / "app.tcss"  # absolute: subclasses elsewhere keep it
    TITLE = "vlchat"
    COMMANDS = App.COMMANDS | {VlchatCommands}
    BINDINGS = [
        Binding("escape", "stop", "Stop", id="stop", priority=True),
        Binding("f2", "toggle_preview", "Picture", id="toggle_preview"),
        Binding("alt+left,f7", "previous_picture", "Prev", id="previous_picture", priority=True),
        Binding("alt+right,f8", "next_picture", "Next", id="next_picture", priority=True),
        Binding("ctrl+y", "copy", "Copy", id="copy"),
        Binding("f1", "help", "Help", id="help"),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]

    def __init__(
        self,
        settings: Settings,
        engine: Any,
        *,
        images: Sequence[str | os.PathLike | ImageRef] = (),
        engine_loaded: bool = False,
        graphics: TerminalGraphics | None = None,
        theme: str | None = None,
        remember_theme: bool = True,
        store: Any = None,
        session: Any = None,
        session_notes: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.settings = settings
        self.engine = engine
        self.graphics = graphics or TerminalGraphics("halfblock", "default")
        self._image_widgets = None
        if self.graphics.protocol in ("kitty", "sixel"):
            from vlchat.ui.terminal import import_textual_image

            self._image_widgets = import_textual_image(self.graphics)
            if self._image_widgets is None:
                self.graphics = TerminalGraphics("halfblock", "textual-image could not be imported")
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
        self.loaded = engine_loaded
        self.load_error: str | None = None
        self.load_stage = "waiting"
        self.info: Any = engine.describe() if engine_loaded else None
        self.generating: int | None = None
        self._answer_id = 0
        self._cancel = threading.Event()
        # engine.prepare (processor, picture cache) is not made for two threads at once: the
        # context counter and the start of an answer take turns.
        self._prepare_lock = threading.Lock()
        self._answer_view: AnswerView | None = None
        # The answer being written, as (answer id, its TokenStream): the frame timer reads the text
        # from the stream itself, so the generation worker posts nothing per token.
        self._live: tuple[int, Any] | None = None
        self._frame_timer: Any = None
        self._painted_at: tuple[float, float, float | None] = (0.0, 0.0, None)  # _clocks() at the last frame
        self.frames = 0  # transcript redraws of streamed text (the bench and tests read it)
        self.last_timings: Timings | None = None
        self.last_tokens: int | None = None
        self.last_prompt_tokens: int | None = None  # as the engine (or the server's usage) counted them
        self.context_tokens: int | None = None
        self.picture_tokens: int | None = None
        self.remember_theme = remember_theme
        self.user_theme_names: set[str] = set()
        self._theme_problems: list[str] = []
        self._requested_theme = theme or settings.theme
        self._theme_error: str | None = None
        self._register_themes()
        # Set before the first frame, so the screen never flashes another theme.
        if self._requested_theme in self.available_themes:
            self.theme = self._requested_theme
        else:
            self._theme_error = self._requested_theme
            self.theme = theme_files.DEFAULT_THEME if theme_files.DEFAULT_THEME in self.available_themes else "textual-dark"
        self._load_started: float | None = None
        self._load_ticker: Any = None
        self.switching: str | None = None  # the model being loaded by /model
        self.switch_stage = ""
        self._ready_engine: tuple[str, Any, Any] | None = None  # loaded, waiting for the answer to end
        # Sessions. The app keeps its own Conversation; the "save" worker hands the session a copy
        # of the message list, so the UI thread never waits on the disk and never shares a list.
        self.store = store
        self.session: Any = None
        self.save_error: str | None = None
        self.saves = 0  # finished saves (tests and the status line read it)
        self._session_lock = threading.RLock()  # held by whoever is doing session work (disk)
        self._jobs_lock = threading.Lock()  # only guards the queue: the UI thread never waits on the disk
        self._jobs: list[_SessionJob] = []
        self._epoch = 0  # the conversation on screen
        self._session_epoch = 0  # the conversation self.session holds (written by the save worker)
        self._switching = False
        self._session_notes = list(session_notes)
        self._picture_sources = {ref.sha256: os.path.abspath(ref.path) for ref in self.pending}
        if session is not None:
            self.session = session
            self._adopt(session)

    # -- building ------------------------------------------------------------------------------
    def _register_themes(self) -> None:
        themes, self._theme_problems = theme_files.load_themes()
        bundled = theme_files.bundled_themes_dir()
        for theme in themes:
            self.register_theme(theme)
            if bundled is None or not (bundled / f"{theme.name}.toml").exists():
                self.user_theme_names.add(theme.name)

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
                yield PromptArea(id="prompt", placeholder="Ask about the picture (Enter sends, ctrl+j new line, /help)")
        yield Static(id="status")
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
        for line in self._theme_problems:
            self.notify(line, severity="warning", timeout=8)
        if self._theme_error:
            self._apply_theme(self._theme_error, remember=False, quiet=False)
        self._apply_keymap()
        self._layout_for(self.size.width)
        self.prompt.focus()
        self.refresh_pictures()
        if self._start_images:
            self._attach(list(self._start_images), save=False)
        if self.session is not None:
            self.transcript.render_conversation(self.conversation)
            self._session_opened_notes(self.session, self._session_notes)
            self.refresh_pictures(show_last=True)
        elif self.settings.system:
            self.transcript.render_conversation(self.conversation)
        if self.loaded:
            self.update_status()
            self._count_context()
            _freeze_heap()
        else:
            self._load_started = time.monotonic()
            self._load_ticker = self.set_interval(1.0, self.update_status)
            self.update_status()
            self._load_model()

    def _loading_done(self) -> None:
        if self._load_ticker is not None:
            self._load_ticker.stop()
            self._load_ticker = None

    def _apply_keymap(self) -> None:
        keymap = dict(self.settings.bindings or {})
        known = {b.id for b in self.BINDINGS if b.id} | {b.id for b in PromptArea.BINDINGS if b.id}
        unknown = sorted(set(keymap) - known)
        for name in unknown:
            keymap.pop(name)
            self.notify(
                f"bindings: no key binding has the id {clean(name, keep_newlines=False)!r}; known: {', '.join(sorted(known))}",
                severity="warning",
                timeout=8,
            )
        if keymap:
            self.set_keymap(keymap)

    def on_resize(self, event) -> None:
        self._layout_for(event.size.width)

    def _layout_for(self, width: int) -> None:
        self.set_class(width < NARROW_COLUMNS, "-narrow")
        self.update_status()

    # -- the model ----------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def _load_model(self) -> None:
        def progress(step) -> None:
            self.post_message(ModelLoadProgress(step.stage, step.done, step.total))

        try:
            self.engine.load(progress)
            info = self.engine.describe()
        except VlchatError as error:
            self.post_message(ModelLoadFailed(str(error)))
            return
        except MemoryError:
            self.post_message(ModelLoadFailed("not enough memory to load the model. Try --quant 4bit or a smaller model."))
            return
        except Exception as error:  # a library's own failure: still one line, app still running
            self.post_message(ModelLoadFailed(f"could not load the model: {type(error).__name__}: {error}"))
            return
        self.post_message(ModelLoaded(info))

    def on_model_load_progress(self, message: ModelLoadProgress) -> None:
        stage = clean(message.stage, keep_newlines=False)
        if message.total:
            stage += f" ({_size(message.done)} of {_size(message.total)})"
        self.load_stage = stage
        self.update_status()

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self._loading_done()
        self.loaded = True
        self.info = message.info
        _freeze_heap()
        self.update_status()
        waiting = self.conversation.messages and self.conversation.messages[-1].role == "user"
        if waiting and self.generating is None and not (self.session is not None and self.session.read_only):
            self.start_answer()
        else:
            self._count_context()

    def on_model_load_failed(self, message: ModelLoadFailed) -> None:
        self._loading_done()
        self.load_error = clean(message.error, keep_newlines=False)
        self.update_status()
        self.transcript.note(f"The model could not be loaded: {self.load_error}", "error")
        self.notify(self.load_error, title="Model not loaded", severity="error", timeout=10)

    # -- switching models (/model) ------------------------------------------------------------------
    def switch_model(self, name: str) -> None:
        """Load ``name`` in the background; the current model answers until it is ready."""
        name = name.strip()
        if self.switching:
            self.notify(f"Already loading {model_label(self.switching)}: wait for it first.", severity="warning")
            return
        if not self.loaded and not self.load_error:
            # the first model's loader cannot be interrupted; two loads racing would swap the wrong one in
            self.notify("The model is still loading: switch once it is ready.", severity="warning")
            return
        current = self.info.name if self.info is not None else None
        if self.loaded and not self.load_error and name == current:
            self.notify(f"{model_label(name)} is the model already.")
            return
        self.switching = name
        self.switch_stage = "starting"
        self.transcript.note(
            f"Loading {model_label(name)}… the current model keeps answering until it is ready."
        )
        self.update_status()
        self._load_switch(name)

    @work(thread=True, exclusive=True, group="switch", exit_on_error=False)
    def _load_switch(self, name: str) -> None:
        from vlchat.engines import make_engine

        engine = None

        def progress(step) -> None:
            self.post_message(ModelSwitchProgress(name, step.stage))

        try:
            # The new model runs where the one in use runs: in a process of its own, or here.
            engine = make_engine(self.settings, name, separate=getattr(self.engine, "separate_process", False))
            engine.load(progress)
            info = engine.describe()
        except Exception as error:
            if isinstance(error, VlchatError):
                line = str(error)
            elif isinstance(error, MemoryError):
                line = "not enough memory to load it. Try --quant 4bit or a smaller model."
            else:
                line = f"could not load it: {type(error).__name__}: {error}"
            if engine is not None:
                try:
                    engine.unload()  # whatever got as far as memory goes again
                except Exception:
                    pass
            del engine
            self.post_message(ModelSwitchFailed(name, line))
            return
        self.post_message(ModelSwitched(name, engine, info))

    def on_model_switch_progress(self, message: ModelSwitchProgress) -> None:
        if message.name == self.switching:
            self.switch_stage = clean(message.stage, keep_newlines=False)
            self.update_status()

    def on_model_switch_failed(self, message: ModelSwitchFailed) -> None:
        self.switching = None
        line = f"Could not switch to {model_label(message.name)}: {clean(message.error, keep_newlines=False)}"
        still = model_label(self.info.name) if self.info is not None else None
        if still and not self.load_error:
            line += f" Still talking to {still}."
        self.transcript.note(line, "error")
        self.notify(line, title="Model not switched", severity="error", timeout=10)
        self.update_status()

    def on_model_switched(self, message: ModelSwitched) -> None:
        if self.generating is not None:
            # the old model is mid-answer on its own thread: swap once that answer is done
            self._ready_engine = (message.name, message.engine, message.info)
            self.switch_stage = "ready, after this answer"
            self.update_status()
            return
        self._swap_in(message.name, message.engine, message.info)

    def _swap_in(self, name: str, engine: Any, info: Any) -> None:
        self._ready_engine = None
        self.switching = None
        old = self.engine
        old_name = self.info.name if self.info is not None else self.settings.model
        self.engine = engine
        self.info = info
        self.loaded = True
        _freeze_heap()
        self.load_error = None
        self.context_tokens = self.picture_tokens = None
        self.last_timings = None
        self.last_prompt_tokens = None
        self._loading_done()
        self.settings = replace(self.settings, model=name)
        label = model_label(info.name) + (f" ({clean(info.label, keep_newlines=False)})" if info.label else "")
        self.transcript.note(f"Now talking to {label}; the conversation goes on in its format.")
        self.update_status()
        self.conversation_changed("model")
        if old is not None and old is not engine:
            self._unload(old, old_name)
        waiting = self.conversation.messages and self.conversation.messages[-1].role == "user"
        if waiting and self.generating is None and not (self.session is not None and self.session.read_only):
            self.start_answer()
        else:
            self._count_context()

    @work(thread=True, group="unload", exit_on_error=False)
    def _unload(self, engine: Any, name: str) -> None:
        separate = getattr(engine, "separate_process", False)
        before = None
        if not separate:
            try:
                import torch

                if torch.cuda.is_available():
                    before = torch.cuda.memory_allocated()
            except Exception:
                pass
        # The context counter may still be reading the old engine: let it finish first.
        with self._prepare_lock:
            try:
                engine.unload()
            except Exception:
                pass
        freed = engine.released_bytes if separate else None
        del engine
        if before is not None:
            import torch

            freed = before - torch.cuda.memory_allocated()
        self.post_message(ModelUnloaded(name, freed))

    def on_model_unloaded(self, message: ModelUnloaded) -> None:
        _freeze_heap()  # the unload thawed the heap to collect the old model
        if message.freed_bytes:
            self.notify(f"{model_label(message.name)} unloaded: {_size(message.freed_bytes)} of GPU memory freed.")

    def command_model(self, args: str) -> None:
        name = args.strip()
        if name:
            self.switch_model(name)
            return
        from vlchat.ui.models_screen import ModelPicker

        def chosen(result: str | None) -> None:
            if result:
                self.switch_model(result)

        current = self.info.name if self.info is not None else self.settings.model
        self.push_screen(ModelPicker(current), chosen)

    # -- status line ----------------------------------------------------------------------------
    def status_text(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        name = model_label(self.settings.model)
        if self.info is not None:
            name = model_label(self.info.name)
            if self.info.label:
                name += f" ({clean(self.info.label, keep_newlines=False)})"
        text.append(name, style="bold")
        # First after the name: at 80 columns the end of the line is cut off.
        if self.save_error:
            text.append("  not saved", style="bold red")
        elif self.session is not None and self.session.read_only:
            text.append("  read-only", style="bold yellow")
        if self.load_error:
            text.append("  not loaded", style="bold red")
            if self.switching:
                text.append(f"  loading {model_label(self.switching)}: {self.switch_stage}…", style="italic")
            return text
        if not self.loaded or self.info is None:
            waited = f" {time.monotonic() - self._load_started:.0f} s" if self._load_started else ""
            text.append(f"  loading: {self.load_stage}…{waited}", style="italic")
            return text
        info = self.info
        narrow = self.size.width < NARROW_COLUMNS  # at 80 columns: the same figures, fewer words
        quant = "no quant" if info.quantization == "none" else info.quantization
        fields = [info.device] + ([] if narrow or not info.dtype else [info.dtype]) + [quant]
        if info.memory_bytes is not None:  # a server does not say what its model takes
            fields.append(_size(info.memory_bytes) if narrow else f"mem {_size(info.memory_bytes)}")
        limit = info.context_length
        if self.context_tokens is None and self.last_prompt_tokens is not None:
            # No local tokenizer to count with (a server): what the last answer's usage said.
            used = self.last_prompt_tokens + (self.last_tokens or 0)
            fields.append(f"ctx {used}" + (f"/{limit}" if limit else ""))
        elif self.context_tokens is not None:
            ctx = f"ctx {self.context_tokens}" + (f"/{limit}" if limit else "")
            if self.picture_tokens:
                ctx += f" ({self.picture_tokens} pic)" if narrow else f" ({self.picture_tokens} in pictures)"
            fields.append(ctx)
        elif limit:
            fields.append(f"ctx -/{limit}")
        timings = self.last_timings
        if timings and timings.first_token_s is not None:
            fields.append(f"{timings.first_token_s:.2f} s" if narrow else f"first token {timings.first_token_s:.2f} s")
        if timings and timings.tokens_per_s:
            fields.append(f"{timings.tokens_per_s:.0f} tok/s")
        if self.params.temperature:
            fields.append(f"temp {self.params.temperature:g}")
        text.append("  " + " · ".join(clean(str(f), keep_newlines=False) for f in fields))
        if self.generating is not None:
            text.append("  answering… Esc stops", style="italic")
        if self.switching:
            text.append(f"  loading {model_label(self.switching)}: {self.switch_stage}…", style="italic")
        return text

    def update_status(self) -> None:
        try:
            self.query_one("#status", Static).update(self.status_text())
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
        for ref in refs:
            if ref.sha256 not in pane.decoded and ref.sha256 not in pane.errors and self.graphics.protocol not in ("text", "none"):
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
    def _attach(self, paths: list, save: bool = True) -> None:
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
            self.transcript.note(line, "error")
            self.notify(clean(line, keep_newlines=False), title="Picture not attached", severity="error", timeout=8)
        if message.refs:
            self.pending.extend(message.refs)
            for ref in message.refs:
                self._picture_sources[ref.sha256] = os.path.abspath(ref.path)
            names = ", ".join(clean(Path(r.path).name, keep_newlines=False) for r in message.refs)
            if self.conversation.last("user") is not None:
                self.transcript.note(f"Attached {names}: it goes with your next question.")
            self.refresh_pictures(show_last=True)
            self._count_context()
            if message.save:
                self.request_save("picture")

    def action_previous_picture(self) -> None:
        self.preview.step(-1)

    def action_next_picture(self) -> None:
        self.preview.step(1)

    def action_toggle_preview(self) -> None:
        self.preview.toggle_class("-hidden")

    # -- context --------------------------------------------------------------------------------
    def _count_context(self) -> None:
        if self.loaded and self.generating is None and hasattr(self.engine, "count_context"):
            snapshot = Conversation(messages=list(self.conversation.messages))
            if self.pending or not snapshot.messages or snapshot.messages[-1].role != "user":
                snapshot.add_user("", list(self.pending))
            self._context_worker(snapshot)

    @work(thread=True, exclusive=True, group="context", exit_on_error=False)
    def _context_worker(self, snapshot: Conversation) -> None:
        try:
            with self._prepare_lock:
                tokens, pictures = self.engine.count_context(snapshot)
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
        if self._switching:
            self.prompt.text = text
            self.notify("A session is being opened: one moment.", severity="warning")
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
            self.notify("An answer is still being written: wait for it, or press Esc to stop it.", severity="warning")
            return
        with self.batch_update():  # the question, the answer's start and the status: one redraw
            self._ask(text)

    def _ask(self, text: str) -> None:
        message = self.conversation.add_user(text.strip(), list(self.pending))
        self.pending = []
        self.transcript.add(UserView(message))
        self.conversation_changed("question")
        if self.load_error:
            self.transcript.note(
                f"No model to answer: {self.load_error} Your question is kept; switch with /model NAME (or restart with another --model).",
                "error",
            )
        elif not self.loaded:
            self.transcript.note("The model is still loading; your question will be answered as soon as it is ready.")
        else:
            self.start_answer()

    def start_answer(self) -> None:
        self._answer_id += 1
        self.generating = self._answer_id
        self._cancel = threading.Event()
        label = model_label(self.info.name if self.info else self.settings.model)
        self._answer_view = AnswerView(model=label)
        self.transcript.add(self._answer_view)
        self._live = None
        self._painted_at = self._clocks()
        self._frame_after(FRAME_S, True)
        # A blinking cursor redraws the screen twice a second, time taken from the model.
        self.prompt.cursor_blink = False
        snapshot = Conversation(messages=list(self.conversation.messages))
        self._generate(self._answer_id, snapshot, replace(self.params), self._cancel)
        self.update_status()
        self.refresh_bindings()

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def _generate(self, answer_id: int, conversation: Conversation, params: GenerationParams, cancel: threading.Event) -> None:
        stream = None
        try:
            with self._prepare_lock:
                stream = self.engine.stream(conversation, params, cancel)
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
            self.post_message(AnswerFinished(answer_id, "", 0, None, None, cancel.is_set(), error))
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
                getattr(stats, "notice", None),
            )
        )

    def _frame_after(self, delay: float, check: bool) -> None:
        # A bare event-loop timer: a Textual Timer costs a task per shot.
        loop = asyncio.get_running_loop()
        self._frame_timer = loop.call_later(max(0.0, delay), self._draw_frame, check)

    def _draw_frame(self, check: bool) -> None:
        """Frame pacing, at most two wake-ups a frame. A frame comes once the UI thread has used
        at most UI_SHARE of the time since the last one began (all its work counted, the
        screen's redraw included), and at least every FRAME_MAX_S: FRAME_S after a frame a check
        measures what it cost and sets the next one. Painting happens in the app's own message
        loop, never in a timer callback, and never alongside the end of the answer."""
        self._frame_timer = None
        if self.generating is None:
            return
        if check:
            began, ui_began, cpu_began = self._painted_at
            wall = time.perf_counter() - began
            used = time.thread_time() - ui_began
            cpu = self._model_cpu()
            busy = False
            if cpu is not None and cpu_began is not None:
                busy = (cpu - cpu_began) / max(wall, 1e-6) >= self._busy_cores
            share = UI_SHARE if busy else UI_SHARE_IDLE
            gap = min(FRAME_MAX_S, used / share)
            if gap > wall + 0.001:
                self._frame_after(gap - wall, False)
                return
        self._painted_at = self._clocks()
        self.call_later(self._paint_frame, self.generating)

    def _clocks(self) -> tuple[float, float, float | None]:
        """Wall clock, the UI thread's CPU time and the model's (see _model_cpu)."""
        return time.perf_counter(), time.thread_time(), self._model_cpu()

    def _model_cpu(self) -> float | None:
        """CPU seconds of whatever runs the model: its own process, or this whole one (the UI
        thread included: while the model holds the interpreter lock, time the UI thread spends on
        a frame is time the model's thread waits). None when that cannot be read."""
        seconds = getattr(self.engine, "cpu_seconds", None)
        return seconds() if seconds is not None else time.process_time()

    @property
    def _busy_cores(self) -> float:
        """How much CPU (in cores) the model must use for frames to be economical."""
        on_cpu = self.info is None or self.info.device == "cpu"
        if getattr(self.engine, "separate_process", False) and not on_cpu:
            return max(BUSY_CORES, usable_cores() - SPARE_CORES)
        return BUSY_CORES

    async def _paint_frame(self, answer_id: int) -> None:
        try:
            view, live = self._answer_view, self._live
            if view is None or live is None or live[0] != answer_id or answer_id != self.generating:
                return
            text = live[1].text
            if text != view.shown:
                self.frames += 1
                # While the transcript follows the answer, only the rows that fit on screen of
                # the line being written are drawn; scrolled up, all of it.
                transcript = self.transcript
                following = transcript.following
                await view.show_progress(text, transcript.size.height if following else None)
                transcript.follow()
        finally:
            if self.generating == answer_id and self._frame_timer is None:
                self._frame_after(FRAME_S, True)

    async def on_answer_finished(self, message: AnswerFinished) -> None:
        if message.answer_id != self.generating:
            return
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        view = self._answer_view
        self.generating = None
        self._answer_view = None
        self.prompt.cursor_blink = True
        self.refresh_bindings()
        text = message.text.strip()
        # An empty answer is still an answer (the turn happened); only a failure with nothing
        # written gives the question back.
        if text or message.stopped or not message.error:
            answer = self.conversation.add_assistant(
                text,
                model=self.info.name if self.info else self.settings.model,
                params=replace(self.params),
                stopped=message.stopped or bool(message.error),
                tokens=message.tokens,
                timings=message.timings,
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
        if self._quitting():
            return  # quit while the answer ended: nothing left to draw on
        if message.notice:
            self.transcript.note(clean(message.notice, keep_newlines=False))
        if message.error:
            line = clean(message.error, keep_newlines=False)
            self.transcript.note(line, "error")
            self.notify(line, title="Answer failed", severity="error", timeout=10)
            if getattr(self.engine, "alive", True) is False:
                # The model's process is gone: no model until /model loads one (the same one too).
                self.load_error = line
        self.transcript.follow()
        self.update_status()
        if self._ready_engine is not None:
            self._swap_in(*self._ready_engine)
            return
        self._count_context()

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

    def action_stop(self) -> None:
        if self.generating is not None:
            self._cancel.set()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            # Esc belongs to dialogs (the command palette) unless an answer is being written; with no
            # answer under way Stop is shown dimmed (None), so the footer keeps its keys.
            if self.screen is not self.screen_stack[0]:
                return False
            return True if self.generating is not None else None
        return True

    # -- the hook for sessions ---------------------------------------------------------------------
    def conversation_changed(self, reason: str) -> None:
        """Called after every change to the conversation: the autosave is queued at once (a quit
        right after still writes it), and ``ConversationChanged`` tells whoever else listens."""
        self.request_save(reason)
        self.post_message(ConversationChanged(self.conversation, reason))

    def _quitting(self) -> bool:
        return bool(self._exit or self._closing) or not self.is_running

    def _model_record(self) -> dict[str, Any]:
        from vlchat.commands.remember import model_record

        return model_record(self.settings, self.info)

    def _job(self, kind: str, **extra: Any) -> _SessionJob:
        return _SessionJob(
            kind,
            self._epoch,
            messages=list(self.conversation.messages),
            pending=list(self.pending),
            params=replace(self.params),
            model=self._model_record(),
            sources=dict(self._picture_sources),
            **extra,
        )

    def _queue(self, job: _SessionJob) -> None:
        if self.store is None:
            return
        with self._jobs_lock:
            last = self._jobs[-1] if self._jobs else None
            if job.kind == "save" and last is not None and last.kind == "save" and last.epoch == job.epoch:
                # A newer snapshot of the same conversation replaces one not yet written.
                job.title = job.title or last.title
                job.reason = "picture" if "picture" in (job.reason, last.reason) else job.reason
                self._jobs[-1] = job
                return
            self._jobs.append(job)
        self._session_worker()

    def request_save(self, reason: str = "", title: str | None = None) -> None:
        """Save the conversation as it is now, in the background (autosave calls this after every change)."""
        self._queue(self._job("save", reason=reason, title=title))

    @work(thread=True, group="save", exit_on_error=False)
    def _session_worker(self) -> None:
        self.run_session_jobs()

    def run_session_jobs(self, timeout: float = -1) -> bool:
        """Do every queued session job, in order. False if another thread held the lock past ``timeout``."""
        if not self._session_lock.acquire(timeout=timeout):
            return False
        try:
            while True:
                with self._jobs_lock:
                    if not self._jobs:
                        return True
                    job = self._jobs.pop(0)
                try:
                    getattr(self, f"_do_{job.kind}")(job)
                except Exception as error:  # a bug or an odd OSError: one line, the conversation stays
                    line = f"{type(error).__name__}: {clean(str(error), keep_newlines=False)}"
                    if job.kind in ("switch", "delete"):
                        self._session_epoch = max(self._session_epoch, job.epoch)
                        self.post_message(SessionSwitched(self.session, [], [line]))
                    else:
                        self.post_message(SessionSaveFailed(line))
        finally:
            self._session_lock.release()

    def _enter_epoch(self, epoch: int) -> bool:
        """Make self.session belong to ``epoch``; False for a job of a conversation already left."""
        if epoch < self._session_epoch:
            return False
        if epoch > self._session_epoch:
            if self.session is not None:
                self.session.close()  # the old conversation stays on disk, unlocked
                self.session = None
            self._session_epoch = epoch
        return True

    def _do_save(self, job: _SessionJob) -> bool:
        from vlchat.core.errors import VlchatError as _Error
        from vlchat.core.images import ImageError
        from vlchat.core.sessions import _RefOnly

        if not self._enter_epoch(job.epoch):
            return True
        created = False
        if self.session is None:
            asked = any(m.role == "user" for m in job.messages)
            if not asked and not (job.reason == "picture" and job.pending) and not job.title:
                return True  # nothing worth a session yet (an empty app leaves no folder behind)
            try:
                self.session = self.store.create(model=job.model, params=job.params)
            except _Error as error:
                self.post_message(SessionSaveFailed(str(error)))
                return False
            created = True
        session = self.session
        if session.read_only:
            if job.title:
                self.post_message(SessionNote("This session is open read-only (it is open elsewhere), so it cannot be renamed here.", True))
            return True
        stored: dict[str, ImageRef] = {}
        inside = str(session.folder) + os.sep
        for ref in [*(r for m in job.messages for r in m.images), *job.pending]:
            self._store_picture(session, ref, stored, inside, _RefOnly, ImageError)
            picture = session.pictures.get(ref.sha256)
            if picture is not None and os.path.basename(picture.source).startswith(ref.sha256) and ref.sha256 in job.sources:
                # Copied from another session's folder (after /clear or /load): keep the name it was attached with.
                picture.source = job.sources[ref.sha256]
        session.conversation = Conversation(messages=list(job.messages))
        session.params = job.params
        session.model = dict(job.model)
        try:
            if job.title:
                session.rename(job.title)
            else:
                session.save()
        except _Error as error:
            self.post_message(SessionSaveFailed(str(error)))
            return False
        if job.title:
            self.post_message(SessionNote(f"Session renamed to {clean(session.title, keep_newlines=False)!r}; it is saved in {clean(str(session.folder), keep_newlines=False)}"))
        self.post_message(SessionSaved(session, stored, created))
        return True

    def _store_picture(self, session, ref, stored, inside, ref_only, image_error) -> None:
        if ref.sha256 in stored or ref.path.startswith(inside):
            return
        try:
            stored[ref.sha256] = session.attach(ref_only(ref))
        except image_error as error:
            self.post_message(SessionSaveFailed(str(error)))
        except VlchatError as error:
            self.post_message(SessionSaveFailed(str(error)))

    def _do_switch(self, job: _SessionJob) -> None:
        from vlchat.core.sessions import SessionError, SessionLockedError

        unsaved = self.session is None and any(m.role == "user" for m in job.messages)
        if self._session_epoch < job.epoch and (unsaved or (self.session is not None and not self.session.read_only)):
            # The conversation being left is saved first; if that fails it stays open here.
            previous = replace(job, kind="save", epoch=self._session_epoch, title=None)
            if not self._do_save(previous):
                self._session_epoch = job.epoch
                self.post_message(SessionSwitched(self.session, [], ["The session was not switched: the open conversation could not be saved, so it stays open."]))
                return
        notes: list[str] = []
        try:
            try:
                new = self.store.open(job.target)
            except SessionLockedError as error:
                new = self.store.open(job.target, read_only=True)
                notes.append(f"{error.message}: opened read-only; nothing you add here is saved.")
        except SessionError as error:
            self._session_epoch = job.epoch  # keep the conversation that is open
            self.post_message(SessionSwitched(self.session, [], [str(error)]))
            return
        self._enter_epoch(job.epoch)
        self.session = new
        self.post_message(SessionSwitched(new, notes))

    def _do_delete(self, job: _SessionJob) -> None:
        which, folder, title = job.target
        if which == "open":  # the open session: closed (its lock released) first
            if not self._enter_epoch(job.epoch):
                return
        try:
            self.store.delete(folder)
        except VlchatError as error:
            if which == "open":
                # Still the open conversation: take its folder (and lock) back and keep saving there.
                try:
                    self.session = self.store.open(folder)
                except VlchatError:
                    self.session = None
                self.post_message(SessionSwitched(self.session, [], [f"Not deleted: {error}"]))
            else:
                self.post_message(SessionNote(f"Not deleted: {error}", True))
            return
        shown = clean(str(title or folder), keep_newlines=False)
        if which == "open":
            self.post_message(SessionSwitched(None, [f"Deleted the session {shown!r}. This is a new conversation."]))
        else:
            self.post_message(SessionNote(f"Deleted the session in {shown}."))

    def _do_export(self, job: _SessionJob) -> None:
        from vlchat.core.export import default_name, export_markdown

        if job.epoch != self._session_epoch or self.session is None:
            self.post_message(SessionNote("Nothing to export yet: ask a question first.", True))
            return
        session = self.session
        target = Path(os.path.expanduser(job.target)) if job.target else Path.cwd() / default_name(session)
        try:
            result = export_markdown(session, target)
        except VlchatError as error:
            self.post_message(SessionNote(f"Not exported: {error}", True))
            return
        count = len(result.pictures)
        where = f" and {count} picture{'s' if count != 1 else ''} in {result.assets_dir}" if count else ""
        missing = f" ({len(result.missing)} missing from the session)" if result.missing else ""
        self.post_message(SessionNote(clean(f"Exported to {result.path.resolve()}{where}{missing}", keep_newlines=False)))

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
        if line != self.save_error:
            self.transcript.note(f"Not saved: {line} The conversation is still open here.", "error")
        self.save_error = line
        self.notify(line, title="Not saved", severity="error", timeout=10)
        self.update_status()

    def on_session_note(self, message: SessionNote) -> None:
        line = clean(message.text, keep_newlines=False)
        self.transcript.note(line, "error" if message.error else "info")
        self.notify(line, severity="error" if message.error else "information", timeout=8 if message.error else 5)

    def on_session_switched(self, message: SessionSwitched) -> None:
        self._switching = False
        for line in message.errors:
            self.transcript.note(clean(line, keep_newlines=False), "error")
            self.notify(clean(line, keep_newlines=False), severity="error", timeout=8)
        if message.errors:
            return
        if message.session is None:
            self.conversation = Conversation()
            if self.settings.system:
                self.conversation.set_system(self.settings.system)
            self.pending = []
        else:
            self._adopt(message.session)
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
        self._count_context()

    def _adopt(self, session: Any) -> None:
        """Show ``session``'s conversation (no disk access: it was read by whoever opened it)."""
        self.conversation = Conversation(messages=list(session.conversation.messages))
        self.pending = session.pending_pictures()
        self._name_pictures(session)

    def _name_pictures(self, session: Any) -> None:
        for sha, picture in session.pictures.items():
            if not os.path.basename(picture.source).startswith(sha):
                set_picture_name(sha, picture.name)
                self._picture_sources[sha] = picture.source

    def _session_opened_notes(self, session: Any, notes: Sequence[str]) -> None:
        title = clean(session.title, keep_newlines=False)
        turns = f"{session.turns} turn{'s' if session.turns != 1 else ''}"
        self.transcript.note(f"Session {title!r} ({turns}), from {clean(str(session.folder), keep_newlines=False)}.")
        for picture in session.missing_pictures():
            self.transcript.note(f"The picture {picture.name} is missing from the session folder; the conversation goes on without it.", "error")
        for line in [*session.problems, *notes]:
            self.transcript.note(clean(line, keep_newlines=False), "error")
        if session.read_only:
            self.notify("This session is open read-only: nothing is saved.", severity="warning", timeout=8)

    def _flush_sessions(self) -> None:
        """At exit: write what is queued (a save takes milliseconds) and release the session's lock."""
        if self.store is None:
            return
        if self.run_session_jobs(timeout=10):
            with self._session_lock:
                if self.session is not None:
                    self.session.close()

    # -- commands --------------------------------------------------------------------------------
    def fill_prompt(self, text: str) -> None:
        self.prompt.text = text
        self.prompt.move_cursor(self.prompt.document.end)
        self.prompt.focus()

    def run_command_line(self, line: str) -> None:
        parsed = slash.parse(line)
        if parsed:
            self.run_command(*parsed, original=line)

    def run_command(self, name: str, args: str, original: str = "") -> None:
        handler = getattr(self, f"command_{name}", None)
        if name not in slash.COMMANDS or handler is None:
            shown = clean(name, keep_newlines=False)[:40]
            self.notify(f"Unknown command /{shown}. Type /help for the list.", severity="error")
            self.transcript.note(f"Unknown command /{shown}. Type /help for the list of commands.", "error")
            return
        busy = name in ("regenerate", "edit", "clear", "load", "sessions", "delete")
        if busy and self.generating is not None:
            self.notify(f"/{name} waits until the answer is done: press Esc to stop it first.", severity="warning")
            return
        handler(args)

    def command_image(self, args: str) -> None:
        try:
            paths = shlex.split(args)
        except ValueError as error:
            self.notify(f"/image: {error}. Quote paths with spaces.", severity="error")
            return
        if not paths:
            self.notify("/image needs a path: /image photo.jpg", severity="error")
            return
        self._attach(paths)

    def command_regenerate(self, _args: str) -> None:
        if not self.conversation.messages or self.conversation.last("user") is None:
            self.notify("Nothing to regenerate yet: ask a question first.", severity="warning")
            return
        if self.conversation.messages[-1].role == "assistant":
            self.conversation.messages.pop()
        self.transcript.render_conversation(self.conversation)
        self.conversation_changed("regenerate")
        if self.load_error or not self.loaded:
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
        self._count_context()

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
        self._epoch += 1  # the old session stays on disk; the next question starts a new one
        self.transcript.render_conversation(self.conversation)
        self.transcript.note("New conversation." + (" The picture on screen goes with your next question." if shown else ""))
        self.refresh_pictures(show_last=True)
        self.conversation_changed("clear")
        self.update_status()
        self._count_context()

    def command_save(self, args: str) -> None:
        if self.store is None:
            self.notify("Sessions are off in this app.", severity="warning")
            return
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
        if self.store is None:
            self.notify("Sessions are off in this app.", severity="warning")
            return
        from vlchat.ui.sessions import SessionPicker

        current = self.session.id if self.session is not None else None
        self.push_screen(SessionPicker(self.store, current), self._picked)

    command_sessions = command_load

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
        """Switch to another session: the open one is saved and closed first (in the "save" worker)."""
        job = self._job("switch", target=folder)
        self._epoch += 1
        job.epoch = self._epoch
        self._switching = True
        self._queue(job)

    def command_delete(self, args: str) -> None:
        if self.store is None:
            self.notify("Sessions are off in this app.", severity="warning")
            return
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
                self._epoch += 1
                self._switching = True
                self._queue(_SessionJob("delete", self._epoch, target=("open", folder, title)))
            else:
                self._queue(_SessionJob("delete", self._epoch, target=("other", folder, title)))

        self.push_screen(ConfirmScreen(question), answered)

    def command_export(self, args: str) -> None:
        if self.store is None:
            self.notify("Sessions are off in this app.", severity="warning")
            return
        try:
            parts = shlex.split(args)
        except ValueError as error:
            self.notify(f"/export: {error}. Quote paths with spaces.", severity="error")
            return
        self.request_save("export")
        self._queue(self._job("export", target=parts[0] if parts else None))

    def command_copy(self, _args: str) -> None:
        self.action_copy()

    def action_copy(self) -> None:
        answer = self.conversation.last("assistant")
        if answer is None or not answer.text:
            self.notify("No answer to copy yet.", severity="warning")
            return
        self.copy_to_clipboard(answer.text)
        self.notify(f"Copied the last answer ({len(answer.text)} characters) to the clipboard.")

    def command_theme(self, args: str) -> None:
        name = args.strip()
        if not name:
            names = ", ".join(sorted(n for n in self.available_themes if n.startswith("vlchat-") or n in self.user_theme_names))
            self.notify(f"Themes: {names}. Use /theme NAME.")
            return
        self._apply_theme(name, remember=self.remember_theme, quiet=False, switching=True)

    def _apply_theme(self, name: str, *, remember: bool, quiet: bool, switching: bool = False) -> None:
        if name not in self.available_themes:
            shown = clean(name, keep_newlines=False)[:60]
            ours = sorted(n for n in self.available_themes if n.startswith("vlchat-") or n in self.user_theme_names)
            line = f"No theme called {shown!r}. Available: {', '.join(ours)}."
            self.notify(line, severity="error")
            if switching:
                self.transcript.note(line, "error")
            if self.theme not in self.available_themes or not switching:
                self.theme = theme_files.DEFAULT_THEME if theme_files.DEFAULT_THEME in self.available_themes else "textual-dark"
            return
        self.theme = name
        if remember:
            theme_files.remember(theme=name)
        if switching and not quiet:
            self.notify(f"Theme: {name}")

    def command_help(self, _args: str) -> None:
        self.action_help()

    def action_help(self) -> None:
        keys = []
        for binding in [*self.BINDINGS, *PromptArea.BINDINGS]:
            keys.append(f"  {binding.key:<20} {binding.description or binding.action}")
        keys.append(f"  {'ctrl+p':<20} command palette")
        self.transcript.note(slash.help_text() + "\nKeys:\n" + "\n".join(keys), "help")

    def command_quit(self, _args: str) -> None:
        self.action_stop()
        self.exit()

    async def action_quit(self) -> None:
        self.action_stop()
        self.exit()

    def on_unmount(self) -> None:
        # A generation thread must not outlive the app; the engine stops within one step.
        self._cancel.set()
        self._flush_sessions()


def initial_theme(settings: Settings, sources: dict[str, str] | None) -> str:
    """A theme given by flag or environment wins; else the one last chosen with /theme; else the setting."""
    source = (sources or {}).get("theme", "default")
    if source.startswith(("flag", "$")):
        return settings.theme
    remembered = theme_files.read_state().get("theme")
    if isinstance(remembered, str) and remembered:
        return remembered
    return settings.theme


def make_app(
    settings: Settings,
    images: Sequence[str | os.PathLike | ImageRef] = (),
    *,
    engine: Any = None,
    engine_loaded: bool = False,
    graphics: TerminalGraphics | None = None,
    sources: dict[str, str] | None = None,
    remember_theme: bool = True,
    store: Any = None,
    session: Any = None,
    session_notes: Sequence[str] = (),
) -> VlchatApp:
    """The app for these settings and pictures. ``engine`` (already loaded or not) replaces the one
    the settings name: tests share one loaded real engine this way.

    Conversations are saved as sessions in ``store`` (default: the settings' sessions folder);
    ``session`` (opened, locked or read-only) is the conversation to continue (--resume)."""
    if store is None:
        from vlchat.core.sessions import SessionStore, store_root

        store = SessionStore(session.folder.parent if session is not None else store_root(settings))
    if engine is None:
        from vlchat.engines import make_engine

        engine = make_engine(settings)
    return VlchatApp(
        settings,
        engine,
        images=images,
        engine_loaded=engine_loaded,
        graphics=graphics,
        theme=initial_theme(settings, sources),
        remember_theme=remember_theme,
        store=store,
        session=session,
        session_notes=session_notes,
    )
