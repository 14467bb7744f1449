"""The model picker: named models and the vision models in the local Hugging Face cache.

Each row says whether the model is downloaded, its size on disk (or its 4-bit memory when not
downloaded) and its family; Enter switches to it, Esc leaves things as they are. The rows are read
from the cache in a worker, so the screen opens at once even on a large cache.
"""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from vlchat.core.text import clean
from vlchat.ui.messages import ModelsListed


def _gb(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.1f} GB" if value >= 0.1 else "<0.1 GB"


def row_text(row, current: str | None) -> Text:
    name = clean(row.name, keep_newlines=False)
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(("● " if current and name == current else "  ") + f"{name:<18}", style="bold")
    if row.hub_id == "bundled":
        text.append(" bundled with vlchat" if row.downloaded else " bundled, but its weights are missing", style="green" if row.downloaded else "red")
    elif row.downloaded:
        size = f"{row.size_bytes / 1e9:.1f} GB on disk" if row.size_bytes else "ready"
        text.append(f" downloaded ({size})", style="green")
    else:
        text.append(f" not downloaded (~{_gb(row.memory_4bit_gb)} at 4-bit)", style="dim")
    family = clean(row.family, keep_newlines=False) + (", own code" if row.remote_code else "")
    text.append(f"  {family}", style="italic")
    return text


def server_row_text(model, current: str | None) -> Text:
    """A model the server lists: its name as the server knows it, and its context length."""
    name = clean(model.id, keep_newlines=False)
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(("● " if current and name == current else "  ") + name, style="bold")
    if model.context_length:
        text.append(f"  context {model.context_length}", style="dim")
    return text


class ModelPicker(ModalScreen[str | None]):
    """Dismisses with the chosen model's name, or None."""

    DEFAULT_CSS = """
    ModelPicker { align: center middle; }
    ModelPicker > Vertical { width: 90%; max-width: 120; height: auto; max-height: 80%;
                             border: round $accent; background: $surface; padding: 0 1; }
    ModelPicker OptionList { height: auto; max-height: 30; }
    """
    BINDINGS = [Binding("escape", "cancel", "Close", id="close_picker")]

    def __init__(self, current: str | None = None, settings=None) -> None:
        super().__init__()
        self.current = current
        # With an endpoint, the models are the ones that server lists, not the local ones.
        self.settings = settings if settings is not None and getattr(settings, "endpoint", None) else None
        self.rows: list = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text("Switch model: the conversation goes on with the one you pick", style="bold"))
            yield OptionList(id="models")
            yield Static(Text("Enter switches · Esc closes · any hub id or folder works with /model NAME", style="dim"))

    def on_mount(self) -> None:
        waiting = "asking the server for its models…" if self.settings else "reading the model cache…"
        self.query_one(OptionList).add_option(Option(waiting, id="-", disabled=True))
        self.query_one(OptionList).focus()
        self._list()

    @work(thread=True, exclusive=True, group="models", exit_on_error=False)
    def _list(self) -> None:
        from vlchat.engines.catalog import local_models_table

        if self.settings is not None:
            from vlchat.core.errors import VlchatError
            from vlchat.engines.openai import OpenAIEngine

            try:
                rows = OpenAIEngine.from_settings(self.settings, None).list_models()
            except VlchatError as error:
                self.post_message(ModelsListed([], error=str(error)))
                return
            self.post_message(ModelsListed(rows))
            return
        try:
            rows = local_models_table()
        except Exception:
            rows = []
        self.post_message(ModelsListed(rows))

    def on_models_listed(self, message: ModelsListed) -> None:
        self.rows = message.rows
        options = self.query_one(OptionList)
        options.clear_options()
        if message.error or (self.settings is not None and not self.rows):
            said = message.error or "the server lists no models: name one with /model NAME"
            options.add_option(Option(Text(clean(said, keep_newlines=False), style="red"), id="-", disabled=True))
        for index, row in enumerate(self.rows):
            shown = server_row_text(row, self.current) if self.settings is not None else row_text(row, self.current)
            options.add_option(Option(shown, id=str(index)))
        options.highlighted = 0 if self.rows else None

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id and event.option.id.isdigit():
            row = self.rows[int(event.option.id)]
            self.dismiss(row.id if self.settings is not None else row.name)

    def action_cancel(self) -> None:
        self.dismiss(None)
