"""Slash commands: their names and help (one table), the parser, and the command palette provider."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

# name -> (arguments, what it does). The order is the order /help lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "image": ("PATH...", "attach pictures; they go with your next question"),
    "regenerate": ("", "answer the last question again"),
    "edit": ("", "put the last question back in the prompt to change it"),
    "system": ("TEXT", "set the system prompt (no text removes it)"),
    "set": ("temperature|top_p|max_tokens|seed VALUE", "change how answers are sampled"),
    "clear": ("", "start a new conversation (the old one stays saved)"),
    "save": ("[TITLE]", "save now; with a title, rename the session"),
    "load": ("", "open a saved session (a list with search)"),
    "sessions": ("", "the saved sessions (same list as /load)"),
    "delete": ("[NAME]", "delete the open session (or the one named) from disk, after asking"),
    "export": ("[PATH]", "write the session as Markdown with its pictures beside it"),
    "copy": ("", "copy the last answer to the clipboard (OSC 52: works over SSH)"),
    "model": ("[NAME]", "switch model, keeping the conversation (no name: pick from a list)"),
    "theme": ("NAME", "switch colour theme (remembered)"),
    "help": ("", "list commands and keys"),
    "quit": ("", "leave vlchat"),
}

SETTABLE = ("temperature", "top_p", "max_tokens", "seed")


def parse(text: str) -> tuple[str, str] | None:
    """('name', 'arguments') for a command line, None for a question. '//' escapes a leading slash."""
    stripped = text.strip()
    if not stripped.startswith("/") or stripped.startswith("//"):
        return None
    head, _, rest = stripped[1:].partition(" ")
    return head.lower(), rest.strip()


def help_text() -> str:
    lines = ["Commands (type them in the prompt, or find them with ctrl+p):"]
    for name, (args, doc) in COMMANDS.items():
        usage = f"/{name} {args}".strip()
        lines.append(f"  {usage:<50} {doc}")
    lines.append("Start a message with // to send one that begins with a slash.")
    return "\n".join(lines)


class VlchatCommands(Provider):
    """The slash commands in the command palette. Commands that need an argument are put in the
    prompt for the person to finish; themes are offered one by one."""

    def _entries(self):
        app, chat = self.app, self.app.chat
        for name, (args, doc) in COMMANDS.items():
            if name == "theme":
                for theme in sorted(app.available_themes):
                    if theme.startswith("vlchat-") or theme in app.user_theme_names:
                        yield f"/theme {theme}", f"switch to the {theme} theme", partial(chat.run_command_line, f"/theme {theme}")
            elif name == "model":
                yield "/model", "pick another model from a list (the conversation stays)", partial(chat.run_command_line, "/model")
            elif name == "set":
                for key in SETTABLE:
                    yield f"/set {key}", f"change {key}", partial(chat.fill_prompt, f"/set {key} ")
            elif args.startswith("["):  # optional argument: run as is, or finish it in the prompt
                yield f"/{name}", doc, partial(chat.run_command_line, f"/{name}")
                yield f"/{name} {args}", doc, partial(chat.fill_prompt, f"/{name} ")
            elif args and name != "system":
                yield f"/{name} {args}", doc, partial(chat.fill_prompt, f"/{name} ")
            elif name == "system":
                yield f"/system {args}", doc, partial(chat.fill_prompt, "/system ")
            else:
                yield f"/{name}", doc, partial(chat.run_command_line, f"/{name}")

    async def discover(self) -> Hits:
        for title, doc, action in self._entries():
            yield DiscoveryHit(title, action, help=doc)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, doc, action in self._entries():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), action, help=doc)
