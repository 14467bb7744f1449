"""The transcript: renders a Conversation (never owns it) plus app notes, and the answer being written."""

from __future__ import annotations

import os
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static

from vlchat.core.conversation import Conversation, Message
from vlchat.core.text import clean
from vlchat.ui.preview import picture_label


def model_label(name: str) -> str:
    """A model as people call it: a local folder by its last part, anything else as typed."""
    name = clean(name, keep_newlines=False)
    if "/" in name and (name.startswith(("/", ".", "~")) or os.path.isdir(os.path.expanduser(name))):
        return Path(name).name or name
    return name


def answer_footer(message: Message) -> Text:
    details = []
    if message.tokens:
        details.append(f"{message.tokens} tokens")
    if message.timings and message.timings.first_token_s is not None:
        details.append(f"first token {message.timings.first_token_s:.2f} s")
    if message.timings and message.timings.tokens_per_s:
        details.append(f"{message.timings.tokens_per_s:.0f} tok/s")
    text = Text()
    if message.stopped:
        text.append("■ stopped", style="bold")
        if details:
            text.append(" · ")
    text.append(" · ".join(details), style="dim")
    return text


class UserView(Static):
    def __init__(self, message: Message) -> None:
        text = Text()
        text.append("You\n", style="bold")
        text.append(clean(message.text))
        for ref in message.images:
            text.append(f"\n▣ {picture_label(ref)} ({ref.width}x{ref.height} {ref.format})", style="dim")
        super().__init__(text, classes="user")


class NoteView(Static):
    """A line from the app itself (help, errors, changes): not part of the conversation."""

    def __init__(self, text: str, kind: str = "info") -> None:
        super().__init__(Text(clean(text)), classes=f"note {kind}")


class AnswerView(Vertical):
    """One assistant answer: a Markdown body that can be streamed into, and a footer."""

    def __init__(self, message: Message | None = None, model: str = "") -> None:
        super().__init__(classes="answer")
        self.message = message
        self.model = model_label(message.model or model if message else model)
        self.shown = ""

    def compose(self) -> ComposeResult:
        yield Static(Text(self.model or "model", style="bold"), classes="answer-head")
        yield Markdown(clean(self.message.text) if self.message else "", classes="answer-body")
        yield Static(answer_footer(self.message) if self.message else Text("…", style="dim"), classes="answer-foot")

    @property
    def body(self) -> Markdown:
        return self.query_one(Markdown)

    async def show_progress(self, text: str) -> None:
        """Bring the body up to ``text`` (a longer version of what is shown) by appending the new part."""
        text = clean(text)
        if not text.startswith(self.shown):
            self.shown = text
            await self.body.update(text)
            return
        fresh = text[len(self.shown):]
        if not fresh:
            return
        self.shown = text
        # Appending parses only the last block again. (Textual's MarkdownStream runs appends in a
        # task of its own; stopping it mid-append left two appends racing.)
        await self.body.append(fresh)

    async def finish(self, message: Message) -> None:
        """The final text in one full update (streamed Markdown can differ at block edges)."""
        self.message = message
        self.shown = clean(message.text)
        # The app may be closing (quit as the answer ends): then there is nothing left to draw on.
        for body in self.query(Markdown):
            await body.update(self.shown)
        for foot in self.query(".answer-foot"):
            foot.update(answer_footer(message))


class Transcript(VerticalScroll):
    """Messages top to bottom; follows the end while the person has not scrolled up."""

    can_focus = False

    def on_mount(self) -> None:
        # Stay at the end as answers grow, until the person scrolls up (and again once back down).
        self.anchor()

    def render_conversation(self, conversation: Conversation) -> None:
        self.remove_children()
        widgets = []
        for message in conversation.messages:
            if message.role == "system":
                widgets.append(NoteView(f"System prompt: {message.text}", "system"))
            elif message.role == "user":
                widgets.append(UserView(message))
            else:
                widgets.append(AnswerView(message))
        if widgets:
            self.mount_all(widgets)
        self.scroll_end(animate=False)

    def add(self, widget) -> None:
        follow = self.is_vertical_scroll_end or self.max_scroll_y == 0
        self.mount(widget)
        if follow:
            self.call_after_refresh(self.scroll_end, animate=False)

    def note(self, text: str, kind: str = "info") -> NoteView:
        view = NoteView(text, kind)
        self.add(view)
        return view

    def follow(self) -> None:
        if self.is_vertical_scroll_end or self.max_scroll_y - self.scroll_y <= 3:
            self.scroll_end(animate=False)
