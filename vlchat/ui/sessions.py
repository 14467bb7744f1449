"""Screens for sessions: the picker behind /load and /sessions (with search), and a yes/no question (/delete)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, OptionList, Static
from textual.widgets.option_list import Option

from vlchat.core.text import clean


def _local(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return "?"


class SessionPicker(ModalScreen[Path | None]):
    """Every saved session, newest first; typing filters by title, id or model; Enter opens one."""

    BINDINGS = [Binding("escape", "cancel", "Close", id="picker_close")]

    def __init__(self, store, current_id: str | None = None) -> None:
        super().__init__(id="session-picker")
        self.store = store
        self.current_id = current_id
        self.infos: list = []
        self.errors: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box"):
            yield Static("Sessions: type to search, Enter opens, Esc closes", id="picker-title")
            yield Input(placeholder="search titles, ids, models", id="picker-search")
            yield OptionList(id="picker-list")
            yield Static("", id="picker-info")

    def on_mount(self) -> None:
        self.query_one(Input).focus()
        self._read_sessions()

    @work(thread=True, group="save", exit_on_error=False)
    def _read_sessions(self) -> None:
        try:
            infos = self.store.list()
        except Exception as error:  # an unreadable sessions folder: say so in the picker
            self.app.call_from_thread(self._show_error, clean(str(error), keep_newlines=False))
            return
        self.app.call_from_thread(self._loaded, infos)

    def _show_error(self, line: str) -> None:
        self.query_one("#picker-info", Static).update(Text(line, style="bold red"))

    def _loaded(self, infos: list) -> None:
        self.infos = [i for i in infos if not i.error]
        self.errors = [i.error for i in infos if i.error]
        self._fill(self.query_one(Input).value)

    def _fill(self, query: str) -> None:
        words = query.casefold().split()
        options = []
        for info in self.infos:
            haystack = f"{info.title} {info.id} {info.model}".casefold()
            if all(w in haystack for w in words):
                line = Text(clean(info.title, keep_newlines=False)[:60], style="bold")
                turns = f"{info.turns} turn{'s' if info.turns != 1 else ''}"
                pictures = f"{info.pictures} picture{'s' if info.pictures != 1 else ''}"
                line.append(f"  {_local(info.updated)} · {turns} · {pictures} · {info.id}", style="dim")
                if info.id == self.current_id:
                    line.append("  (open)", style="italic")
                options.append(Option(line, id=str(info.folder)))
        listing = self.query_one(OptionList)
        listing.clear_options()
        listing.add_options(options)
        if options:
            listing.highlighted = 0
        shown = f"{len(options)} of {len(self.infos)} sessions in {clean(str(self.store.root), keep_newlines=False)}"
        if self.errors:
            shown += f"; {len(self.errors)} unreadable (see `vlchat sessions`)"
        self.query_one("#picker-info", Static).update(Text(shown))  # a folder's name is not markup

    @on(Input.Changed, "#picker-search")
    def _search(self, event: Input.Changed) -> None:
        self._fill(event.value)

    @on(Input.Submitted, "#picker-search")
    def _choose_highlighted(self) -> None:
        listing = self.query_one(OptionList)
        if listing.highlighted is not None and listing.option_count:
            self.dismiss(Path(listing.get_option_at_index(listing.highlighted).id))

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(Path(event.option.id))

    def on_key(self, event) -> None:
        # Up and down move through the list while the search box keeps the focus.
        if event.key in ("up", "down") and self.query_one(Input).has_focus:
            listing = self.query_one(OptionList)
            if listing.option_count:
                listing.action_cursor_down() if event.key == "down" else listing.action_cursor_up()
                event.stop()

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A question with Yes and No; y / n / Esc answer it from the keyboard."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm_yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm_no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__(id="confirm")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(Text(self.question), id="confirm-question")  # it names a session: not markup
            with Horizontal(id="confirm-buttons"):
                yield Button("Yes, delete (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
