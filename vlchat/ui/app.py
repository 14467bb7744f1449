"""The vlchat app: what is app-wide. The model (loading it, switching to another with /model, and
unloading the old one), the themes, the keymap and quitting. The conversation itself lives in the
chat screen (``vlchat.ui.screens.chat``).

``make_app`` builds it for both the `vlchat` command and the tests.

Slow work runs in thread workers that only post the messages in ``vlchat.ui.messages``: loading the
model (group "model"), and loading a model switched to with /model ("switch") while the current one
goes on answering; the old one is unloaded ("unload") only once the new one is ready, so a failed
switch leaves the conversation where it was.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from textual import work
from textual.app import App
from textual.binding import Binding

from vlchat.config import Settings
from vlchat.core.conversation import ImageRef
from vlchat.core.errors import VlchatError
from vlchat.core.text import clean
from vlchat.ui import themes as theme_files
from vlchat.ui.slash import SlashCommands
from vlchat.ui.keys import unknown_keys
from vlchat.ui.messages import (
    ModelLoaded,
    ModelLoadFailed,
    ModelLoadProgress,
    ModelSwitched,
    ModelSwitchFailed,
    ModelSwitchProgress,
    ModelUnloaded,
)
from vlchat.ui.prompt import PromptArea
from vlchat.ui.screens.chat import ChatScreen
from vlchat.ui.status import NARROW_COLUMNS, StatusState, size_text
from vlchat.ui.terminal import TerminalGraphics
from vlchat.ui.transcript import model_label


def _freeze_heap() -> None:
    """Once a model is loaded, the objects alive (libraries, the model) stay as long as it does.
    Frozen, a full collection no longer walks them: on the UI thread, in the middle of an answer,
    that walk took 200 ms, time the model waits for the interpreter. The engine's unload thaws
    them again, so a switched-out model's cycles are still collected."""
    gc.freeze()


class VlchatApp(App):
    CSS_PATH = Path(__file__).parent / "app.tcss"  # absolute: subclasses elsewhere keep it
    TITLE = "vlchat"
    COMMANDS = App.COMMANDS | {SlashCommands}
    # The keymap is app-wide; the conversation's keys act on the chat screen ("screen." actions).
    # All of them are priority bindings: the prompt (a TextArea) has keys of its own (ctrl+y is
    # its redo, f7 its select-all) and would otherwise take them, remapped keys too.
    BINDINGS = [
        Binding("escape", "screen.stop", "Stop", id="stop", priority=True),
        Binding("f2", "screen.toggle_preview", "Picture", id="toggle_preview", priority=True),
        Binding("alt+left,f7", "screen.previous_picture", "Prev", id="previous_picture", priority=True),
        Binding("alt+right,f8", "screen.next_picture", "Next", id="next_picture", priority=True),
        Binding("ctrl+y", "screen.copy", "Copy", id="copy", priority=True),
        Binding("f1", "screen.help", "Help", id="help", priority=True),
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
        image_widgets = None
        if self.graphics.protocol in ("kitty", "sixel"):
            from vlchat.ui.terminal import import_textual_image

            image_widgets = import_textual_image(self.graphics)
            if image_widgets is None:
                self.graphics = TerminalGraphics("halfblock", "textual-image could not be imported")
        self.loaded = engine_loaded
        self.load_error: str | None = None
        self.load_stage = "waiting"
        self.info: Any = engine.describe() if engine_loaded else None
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
        self.switching_model: str | None = None  # the model being loaded by /model
        self.switch_stage = ""
        self._ready_engine: tuple[str, Any, Any] | None = None  # loaded, waiting for the answer to end
        # The chat screen is made when Textual asks for the default screen (it must be made while
        # this app is the running one); until then, what it will be made with.
        self._chat_args = dict(images=images, store=store, session=session, session_notes=session_notes)
        self._image_widgets = image_widgets
        self.keymap: dict[str, str] = {}  # the [bindings] in force (binding id -> keys)

    # -- building ------------------------------------------------------------------------------
    def _register_themes(self) -> None:
        themes, self._theme_problems = theme_files.load_themes()
        bundled = theme_files.bundled_themes_dir()
        for theme in themes:
            self.register_theme(theme)
            if bundled is None or not (bundled / f"{theme.name}.toml").exists():
                self.user_theme_names.add(theme.name)

    def get_default_screen(self) -> ChatScreen:
        self.chat = ChatScreen(self.settings, self.graphics, self._image_widgets, **self._chat_args)
        return self.chat

    async def on_mount(self) -> None:
        # Ready (for a person, a test's pilot, a screenshot) only once the chat's widgets are there:
        # the default screen composes on its own task.
        await self.chat.mounted.wait()
        for line in self._theme_problems:
            self.notify(line, severity="warning", timeout=8)
        if self._theme_error:
            self._apply_theme(self._theme_error, remember=False, quiet=False)
        self._apply_keymap()
        self._layout_for(self.size.width)
        if self.loaded:
            _freeze_heap()
        else:
            self._load_started = time.monotonic()
            self._load_ticker = self.set_interval(1.0, self.chat.update_status)
            self.chat.update_status()
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
        for name, keys in list(keymap.items()):
            bad = unknown_keys(keys)
            if bad:
                keymap.pop(name)
                shown = ", ".join(repr(clean(key, keep_newlines=False)) for key in bad)
                self.notify(
                    f"bindings: {name} = {clean(keys, keep_newlines=False)!r} names no key ({shown}); {name} keeps its "
                    "usual key. Keys are written like ctrl+s, alt+left, f3, escape (several: \"escape,ctrl+s\")",
                    severity="warning",
                    timeout=8,
                )
        self.keymap = keymap
        if keymap:
            self.set_keymap(keymap)
        self.chat.update_placeholder()  # it names the keys that send

    def bound_keys(self) -> dict[str, str]:
        """Binding id -> the keys bound to it now (remapped ones as remapped), app and prompt alike."""
        return {b.id: self.keymap.get(b.id, b.key) for b in [*self.BINDINGS, *PromptArea.BINDINGS] if b.id}

    def on_resize(self, event) -> None:
        self._layout_for(event.size.width)

    def _layout_for(self, width: int) -> None:
        self.set_class(width < NARROW_COLUMNS, "-narrow")
        self.chat.update_status()

    def model_status(self) -> StatusState:
        """The status line's state as far as the model goes (the chat adds the rest)."""
        return StatusState(
            model=self.settings.model,
            info=self.info,
            loaded=self.loaded,
            load_error=self.load_error,
            load_stage=self.load_stage,
            load_started=self._load_started,
            switching_model=self.switching_model,
            switch_stage=self.switch_stage,
            width=max(1, self.size.width - 2),  # the status row's padding
        )

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None, markup: bool = False) -> None:
        # Never markup: messages carry file names, titles and model names ("[red]" is a fine file name).
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def notification_texts(self) -> list[str]:
        """The notifications on screen now, oldest first (what a person can read)."""
        return [n.message for n in self._notifications]

    @property
    def quitting(self) -> bool:
        return bool(self._exit or self._closing) or not self.is_running

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
            stage += f" ({size_text(message.done)} of {size_text(message.total)})"
        self.load_stage = stage
        self.chat.update_status()

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self._loading_done()
        self.loaded = True
        self.info = message.info
        _freeze_heap()
        self.chat.update_status()
        self.chat.model_ready()

    def on_model_load_failed(self, message: ModelLoadFailed) -> None:
        self._loading_done()
        self.load_error = clean(message.error, keep_newlines=False)
        self.chat.update_status()
        self.chat.transcript.note(f"The model could not be loaded: {self.load_error}", "error")

    def model_lost(self, line: str) -> None:
        """The model's process is gone: no model until /model loads one (the same one too)."""
        self.load_error = line

    # -- switching models (/model) ------------------------------------------------------------------
    def switch_model(self, name: str) -> None:
        """Load ``name`` in the background; the current model answers until it is ready."""
        name = name.strip()
        if self.switching_model:
            self.chat.toast(f"Already loading {model_label(self.switching_model)}: wait for it first.", "warning")
            return
        if not self.loaded and not self.load_error:
            # the first model's loader cannot be interrupted; two loads racing would swap the wrong one in
            self.chat.toast("The model is still loading: switch once it is ready.", "warning")
            return
        current = self.info.name if self.info is not None else None
        if self.loaded and not self.load_error and name == current:
            self.chat.transcript.note(f"{model_label(name)} is the model already.")
            return
        self.switching_model = name
        self.switch_stage = "starting"
        self.chat.transcript.note(
            f"Loading {model_label(name)}… the current model keeps answering until it is ready."
        )
        self.chat.update_status()
        self._load_switch(name)

    @work(thread=True, exclusive=True, group="switch", exit_on_error=False)
    def _load_switch(self, name: str) -> None:
        from vlchat.engines import make_engine

        engine = None

        def progress(step) -> None:
            self.post_message(ModelSwitchProgress(name, step.stage))

        try:
            # The new model runs where the one in use runs: in a process of its own, or here.
            engine = make_engine(self.settings, name, separate=self.engine.separate_process)
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
        if message.name == self.switching_model:
            self.switch_stage = clean(message.stage, keep_newlines=False)
            self.chat.update_status()

    def on_model_switch_failed(self, message: ModelSwitchFailed) -> None:
        self.switching_model = None
        line = f"Could not switch to {model_label(message.name)}: {clean(message.error, keep_newlines=False)}"
        still = model_label(self.info.name) if self.info is not None else None
        if still and not self.load_error:
            line += f" Still talking to {still}."
        self.chat.transcript.note(line, "error")
        self.chat.update_status()

    def on_model_switched(self, message: ModelSwitched) -> None:
        if self.chat.generating is not None:
            # the old model is mid-answer on its own thread: swap once that answer is done
            self._ready_engine = (message.name, message.engine, message.info)
            self.switch_stage = "ready, after this answer"
            self.chat.update_status()
            return
        self._swap_in(message.name, message.engine, message.info)

    def swap_when_ready(self) -> bool:
        """After an answer: swap in a model that finished loading during it. False if none waits."""
        if self._ready_engine is None:
            return False
        self._swap_in(*self._ready_engine)
        return True

    def _swap_in(self, name: str, engine: Any, info: Any) -> None:
        self._ready_engine = None
        self.switching_model = None
        old = self.engine
        old_name = self.info.name if self.info is not None else self.settings.model
        self.engine = engine
        self.info = info
        self.loaded = True
        _freeze_heap()
        self.load_error = None
        self._loading_done()
        self.settings = replace(self.settings, model=name)
        label = model_label(info.name) + (f" ({clean(info.label, keep_newlines=False)})" if info.label else "")
        self.chat.model_swapped(f"Now talking to {label}; the conversation goes on in its format.")
        if old is not None and old is not engine:
            self._unload(old, old_name)
        self.chat.model_ready()

    @work(thread=True, group="unload", exit_on_error=False)
    def _unload(self, engine: Any, name: str) -> None:
        freed = None
        # The context counter may still be reading the old engine: let it finish first.
        with self.chat.engine_lock:
            try:
                freed = engine.release()
            except Exception:
                pass
        del engine
        self.post_message(ModelUnloaded(name, freed))

    def on_model_unloaded(self, message: ModelUnloaded) -> None:
        _freeze_heap()  # the unload thawed the heap to collect the old model
        if message.freed_bytes:
            self.chat.toast(f"{model_label(message.name)} unloaded: {size_text(message.freed_bytes)} of GPU memory freed.")

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
        self.push_screen(ModelPicker(current, self.settings), chosen)

    # -- themes ---------------------------------------------------------------------------------
    def command_theme(self, args: str) -> None:
        name = args.strip()
        if not name:
            names = ", ".join(sorted(n for n in self.available_themes if n.startswith("vlchat-") or n in self.user_theme_names))
            self.chat.transcript.note(f"Themes: {names}. Use /theme NAME.")
            return
        self._apply_theme(name, remember=self.remember_theme, quiet=False, switching=True)

    def _apply_theme(self, name: str, *, remember: bool, quiet: bool, switching: bool = False) -> None:
        if name not in self.available_themes:
            shown = clean(name, keep_newlines=False)[:60]
            ours = sorted(n for n in self.available_themes if n.startswith("vlchat-") or n in self.user_theme_names)
            line = f"No theme called {shown!r}. Available: {', '.join(ours)}."
            if switching:  # the answer to /theme NAME
                self.chat.transcript.note(line, "error")
            else:
                self.notify(line, severity="error")
            if self.theme not in self.available_themes or not switching:
                self.theme = theme_files.DEFAULT_THEME if theme_files.DEFAULT_THEME in self.available_themes else "textual-dark"
            return
        self.theme = name
        if remember:
            theme_files.remember(theme=name)
        if switching and not quiet:
            self.chat.toast(f"Theme: {name}")

    # -- quitting -------------------------------------------------------------------------------
    def command_quit(self, _args: str) -> None:
        self.chat.action_stop()
        self.exit()

    async def action_quit(self) -> None:
        self.chat.action_stop()
        self.exit()

    def on_unmount(self) -> None:
        # A generation thread must not outlive the app; the engine stops within one step.
        self.chat.stop_answer()
        self.chat.close_sessions()


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
