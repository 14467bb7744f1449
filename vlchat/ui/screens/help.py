"""The help screen (F1, /help): the slash commands from the table and the keys as they are bound
now (a remapped key shows as remapped), in a dialog of its own that Esc closes."""

from __future__ import annotations

import re
from typing import Iterable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from vlchat.ui import slash
from vlchat.ui.keys import key_display

# What each key does, by binding id, in the order the help lists them (fuller than the footer's word).
KEY_HELP = {
    "send": "send the question (or command)",
    "newline": "new line in the prompt",
    "complete": "complete a command name, or the path after /image (→ takes the grey suggestion too)",
    "stop": "stop the answer being written (the partial answer stays, marked stopped)",
    "toggle_preview": "show or hide the picture",
    "previous_picture": "previous picture (the question goes with the picture on screen)",
    "next_picture": "next picture",
    "copy": "copy the last answer to the clipboard",
    "paste_picture": "paste the picture on the clipboard (as /paste does)",
    "help": "this help",
    "quit": "quit",
}

def key_rows(bound: dict[str, str]) -> Iterable[tuple[str, str]]:
    """(keys, what they do) for every key binding, as ``bound`` (binding id -> keys) has them now."""
    for binding_id, what in KEY_HELP.items():
        keys = bound.get(binding_id)
        if not keys:
            continue
        shown = key_display(keys)
        if binding_id == "complete":
            shown += " or →"
        yield shown, what
    yield "↑ / ↓", "earlier questions (on the prompt's first or last line; elsewhere they move the cursor)"
    yield "ctrl+p", "command palette: every command, and the themes"


def _table(rows: Iterable[tuple[str, str]], first_width: int) -> Table:
    table = Table.grid(padding=(0, 2), expand=True)
    table.add_column(no_wrap=True, overflow="ignore", max_width=first_width, style="bold")
    table.add_column(ratio=1)
    for left, right in rows:
        # Text: "[TITLE]" is an argument, not markup.
        table.add_row(Text(_broken(left, first_width)), Text(right))
    return table


def _broken(usage: str, width: int) -> str:
    """``usage`` in lines of at most ``width``, broken after a space or a | ("temperature|top_p|…")."""
    pieces = re.findall(r"[^ |]+(?:\||\s+|$)", usage)
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1]) + len(piece.rstrip()) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(line.rstrip() for line in lines)


class HelpScreen(ModalScreen[None]):
    """Commands and keys; Esc (or F1 again, or q) closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help-box { width: 94%; max-width: 110; height: 90%; border: round $accent; background: $surface; padding: 0 1; }
    #help-box > .help-title { color: $text-muted; height: auto; }
    #help-body { height: 1fr; }
    #help-body > .help-heading { text-style: bold; color: $primary; margin-top: 1; height: auto; }
    #help-body > Static { height: auto; }
    #help-body > .help-notes { margin-top: 1; color: $text-muted; }
    """
    BINDINGS = [Binding("escape,q", "close", "Close", id="help_close")]

    def __init__(self, bound: dict[str, str], notes: str = "") -> None:
        super().__init__(id="help")
        self.bound = bound
        self.notes = notes  # more to say below the tables (how pasting pictures works here)

    def compose(self) -> ComposeResult:
        commands = slash.help_rows()
        with Vertical(id="help-box"):
            yield Static(Text("Help: Esc closes, ↑ ↓ PgUp PgDn scroll"), classes="help-title")
            with VerticalScroll(id="help-body"):
                yield Static(Text("Keys"), classes="help-heading")
                yield Static(_table(key_rows(self.bound), 18), id="help-keys")
                yield Static(Text("Commands (type them in the prompt)"), classes="help-heading")
                yield Static(_table(commands, 26), id="help-commands")
                if self.notes:
                    yield Static(Text(self.notes), id="help-notes", classes="help-notes")

    def on_mount(self) -> None:
        self.query_one("#help-body").focus()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_help(self) -> None:  # F1 again (its app-wide binding runs the screen's help)
        self.dismiss(None)
