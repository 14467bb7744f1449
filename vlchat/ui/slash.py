"""Slash commands as data: one table (``COMMANDS``) from which the dispatcher (in the chat screen),
/help, the prompt's completion and the command palette are all built. A new command is one entry
here and one ``command_NAME`` method: on the chat screen for the conversation's commands, on the
app for the app-wide ones (``app_wide``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content


@dataclass(frozen=True)
class SlashCommand:
    name: str
    args: str = ""  # how its arguments are written in /help ("[NAME]": optional)
    help: str = ""
    waits_for_answer: bool = False  # refused while an answer is being written
    needs_sessions: bool = False  # refused when the app keeps no sessions
    app_wide: bool = False  # handled by the app, not by the chat screen
    handler: str = ""  # the command_ method that runs it, when not command_NAME (an alias)
    palette_help: str = ""  # the palette offers only "/NAME", run as is, with this help
    choices: str = ""  # the palette offers one entry per choice: "themes" or "settable"

    @property
    def method(self) -> str:
        return f"command_{self.handler or self.name}"


SETTABLE = ("temperature", "top_p", "max_tokens", "seed")

# The order is the order /help lists them.
COMMANDS: dict[str, SlashCommand] = {
    c.name: c
    for c in [
        SlashCommand("image", "PATH...", "attach pictures; they go with your next question"),
        SlashCommand("paste", "", "attach the picture on the clipboard (as ctrl+v does; over SSH through kitty/Ghostty)"),
        SlashCommand("regenerate", "", "answer the last question again", waits_for_answer=True),
        SlashCommand("edit", "", "put the last question back in the prompt to change it", waits_for_answer=True),
        SlashCommand("system", "TEXT", "set the system prompt (no text removes it)"),
        SlashCommand("set", "temperature|top_p|max_tokens|seed VALUE", "change how answers are sampled", choices="settable"),
        SlashCommand("clear", "", "start a new conversation (the old one stays saved)", waits_for_answer=True),
        SlashCommand("save", "[TITLE]", "save now; with a title, rename the session", needs_sessions=True),
        SlashCommand("load", "", "open a saved session (a list with search)", waits_for_answer=True, needs_sessions=True),
        SlashCommand("sessions", "", "the saved sessions (same list as /load)", waits_for_answer=True, needs_sessions=True, handler="load"),
        SlashCommand("delete", "[NAME]", "delete the open session (or the one named) from disk, after asking", waits_for_answer=True, needs_sessions=True),
        SlashCommand("export", "[PATH]", "write the session as Markdown with its pictures beside it", needs_sessions=True),
        SlashCommand("caption", "DIR [-o FILE] [--prompt TEXT] | stop",
                     "caption every picture in DIR with this model, prompt and sampling, as `vlchat caption` does"),
        SlashCommand("copy", "", "copy the last answer to the clipboard (OSC 52: works over SSH)"),
        SlashCommand("model", "[NAME]", "switch model, keeping the conversation (no name: pick from a list)", app_wide=True,
                     palette_help="pick another model from a list (the conversation stays)"),
        SlashCommand("theme", "NAME", "switch colour theme (remembered)", app_wide=True, choices="themes"),
        SlashCommand("help", "", "list commands and keys"),
        SlashCommand("quit", "", "leave vlchat", app_wide=True),
    ]
}


def parse(text: str) -> tuple[str, str] | None:
    """('name', 'arguments') for a command line, None for a question. '//' escapes a leading slash."""
    stripped = text.strip()
    if not stripped.startswith("/") or stripped.startswith("//"):
        return None
    head, _, rest = stripped[1:].partition(" ")
    return head.lower(), rest.strip()


def help_rows() -> list[tuple[str, str]]:
    """(usage, what it does) for every command, in table order, and the // escape: the help screen's list."""
    rows = [(f"/{c.name} {c.args}".strip(), c.help) for c in COMMANDS.values()]
    rows.append(("//TEXT", "send a message that begins with a slash"))
    return rows


def completions(text: str) -> list[str]:
    """The command names that start as ``text`` does (with their slash)."""
    return [f"/{name}" for name in COMMANDS if f"/{name}".startswith(text)]


class SlashCommands(Provider):
    """The slash commands in the command palette, from the table. Commands that need an argument
    are put in the prompt for the person to finish; choices (themes, settable names) are offered
    one by one."""

    def _choices(self, command: SlashCommand) -> list[tuple[str, str]]:
        app = self.app
        if command.choices == "themes":
            return [(t, f"switch to the {t} theme") for t in sorted(app.available_themes) if t.startswith("vlchat-") or t in app.user_theme_names]
        return [(key, f"change {key}") for key in SETTABLE]

    def _entries(self):
        chat = self.app.chat
        run, fill = chat.run_command_line, chat.fill_prompt
        for name, command in COMMANDS.items():
            if command.choices:
                # A theme is the whole argument (run it); a settable name still needs its value.
                act = run if command.choices == "themes" else fill
                for choice, doc in self._choices(command):
                    line = f"/{name} {choice}"
                    yield line, doc, partial(act, line if act is run else line + " ")
            elif command.palette_help:
                yield f"/{name}", command.palette_help, partial(run, f"/{name}")
            elif command.args.startswith("["):  # optional argument: run as is, or finish it in the prompt
                yield f"/{name}", command.help, partial(run, f"/{name}")
                yield f"/{name} {command.args}", command.help, partial(fill, f"/{name} ")
            elif command.args:
                yield f"/{name} {command.args}", command.help, partial(fill, f"/{name} ")
            else:
                yield f"/{name}", command.help, partial(run, f"/{name}")

    # Titles and help go to the palette as Content, never as markup: "/save [TITLE]" would lose its
    # argument, and a theme's name comes from a file name.
    async def discover(self) -> Hits:
        for title, doc, action in self._entries():
            yield DiscoveryHit(Content(title), action, text=title, help=Content(doc))

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, doc, action in self._entries():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, highlighted(matcher, query, title), action, text=title, help=Content(doc))


def highlighted(matcher, query: str, title: str) -> Content:
    """``title`` with the matched characters styled, read as plain text (the matcher's own
    highlight reads it as markup)."""
    content = Content(title)
    _score, offsets = matcher.fuzzy_search.match(query, title)
    for offset in offsets:
        if not title[offset].isspace():
            content = content.stylize(matcher.match_style, offset, offset + 1)
    return content
