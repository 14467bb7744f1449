"""The transcript: renders a Conversation (never owns it) plus app notes, and the answer being written."""

from __future__ import annotations

import os
from pathlib import Path

from rich.cells import get_character_cell_size
from rich.segment import Segment
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Markdown, Static

from vlchat.core.conversation import Conversation, Message, how_it_ended
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
    if message.tokens and message.finish_reason != "length":  # a cut answer's mark says how many
        details.append(f"{message.tokens} tokens")
    if message.timings and message.timings.first_token_s is not None:
        details.append(f"first token {message.timings.first_token_s:.2f} s")
    if message.timings and message.timings.tokens_per_s:
        details.append(f"{message.timings.tokens_per_s:.0f} tok/s")
    text = Text()
    ended = how_it_ended(message)
    if ended:
        text.append(f"{'…' if message.finish_reason == 'length' else '■'} {ended}", style="bold")
        if details:
            text.append(" · ")
    text.append(" · ".join(details), style="dim")
    return text


class UserView(Static):
    """A question, with the pictures that went with it numbered as the picture pane numbers them;
    a question that took none says which picture it was about (the last one the model saw)."""

    def __init__(self, message: Message, conversation: Conversation | None = None) -> None:
        numbers: dict[str, int] = {}
        about = None
        if conversation is not None:
            for ref in conversation.images():
                numbers.setdefault(ref.sha256, len(numbers) + 1)
            for earlier in conversation.messages:
                if earlier is message:
                    break
                about = earlier.images[-1] if earlier.images else about
        text = Text()
        text.append("You\n", style="bold")
        text.append(clean(message.text))
        for ref in message.images:
            number = f"picture {numbers[ref.sha256]}: " if ref.sha256 in numbers else ""
            text.append(f"\n▣ {number}{picture_label(ref)} ({ref.width}x{ref.height} {ref.format})", style="dim")
        if not message.images and about is not None:
            text.append(f"\nabout picture {numbers[about.sha256]}: {picture_label(about)}", style="dim")
        if conversation is not None and any(m is message for m in conversation.unanswered()):
            # a failed turn: the model is not shown this question again (its pictures go with the next)
            text.append("\n✗ unanswered: not sent to the model again", style="dim")
        super().__init__(text, classes="user")


class NoteView(Static):
    """A line from the app itself (help, errors, changes): not part of the conversation."""

    def __init__(self, text: str, kind: str = "info") -> None:
        super().__init__(Text(clean(text)), classes=f"note {kind}")


def wrap_rows(text: str, width: int, start: int = 0, end: int | None = None) -> list[int]:
    """Where each row starts when ``text[start:end]`` (one line, no newlines) is wrapped greedily at
    ``width`` cells: at the last space that fits, or mid-word for a word longer than a row.

    Greedy wrapping never moves a row break once the text after it is longer than a row, so a
    growing line only needs its last row wrapped again.
    """
    starts = [start]
    pos, end = start, len(text) if end is None else end
    width = max(1, width)
    while True:
        cells, i = 0, pos
        while i < end:
            cells += get_character_cell_size(text[i])
            if cells > width:
                break
            i += 1
        if i >= end:
            return starts
        space = text.rfind(" ", pos, i + 1)  # a space just past the row is where it breaks, too
        pos = space + 1 if space > pos else max(i, pos + 1)
        starts.append(pos)


# Past these, the rest of an answer is shown as plain text: Textual's Markdown builds widgets for
# every block, table row and cell, and parses a growing block again at every frame, so a
# 3,000-row table cost minutes of CPU and gigabytes, and the app took no keys meanwhile. Table
# rows cost the most (about 13 ms each), so they have a lower limit of their own.
MARKDOWN_MAX_LINES = 200
MARKDOWN_MAX_TABLE_ROWS = 50
MARKDOWN_MAX_CHARS = 100_000


def markdown_cut(text: str) -> int | None:
    """Where Markdown rendering stops in ``text`` (the start of a line), or None if it all fits.

    It depends only on the text before it, so it stays put while an answer grows."""
    if len(text) <= MARKDOWN_MAX_CHARS and text.count("\n") <= MARKDOWN_MAX_TABLE_ROWS:
        return None
    cut = pos = lines = rows = 0
    while True:
        newline = text.find("\n", pos, MARKDOWN_MAX_CHARS)
        if newline < 0:  # no more whole lines within the character limit
            return cut if len(text) > MARKDOWN_MAX_CHARS else None
        lines += 1
        rows += text[pos:newline].lstrip().startswith("|")
        if lines > MARKDOWN_MAX_LINES or rows > MARKDOWN_MAX_TABLE_ROWS:
            return cut
        cut = pos = newline + 1


class WrappedText(Widget):
    """Many lines of plain text, wrapped at spaces and drawn row by row: the cost of a frame is the
    rows on screen and the text that is new, however long the text is. With ``cap`` rows (while
    the transcript follows the answer) only the last ``cap`` rows are shown, so its height stops
    changing and a frame lays nothing out again."""

    DEFAULT_CSS = """
    WrappedText {
        height: auto;
    }
    """

    def __init__(self, text: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.text = ""
        self._rows: list[tuple[int, int]] = []
        self._width = 0
        self._height = 0  # rows shown, as of the last layout
        self.cap: int | None = None
        self.text = text.expandtabs(4)
        # Rows wrapped since the widget was made: what a frame lays out (the tests compare it
        # between a short and a long answer).
        self.rows_wrapped = 0
        # The rows (of those on screen) the last show() asked to be drawn again; None: all of them.
        self.redrawn: tuple[int, int] | None = None

    def wrapped(self) -> list[str]:
        """Every row of the text as wrapped at the widget's width (shown or not)."""
        return [self.text[a:b].rstrip(" ") for a, b in self._rows] if self.text else []

    def _shown(self) -> int:
        rows = len(self._rows) if self.text else 0
        return rows if self.cap is None else min(rows, self.cap)

    def _first_shown(self) -> int:
        """The row drawn at the widget's top (the last rows are shown when capped)."""
        return max(0, len(self._rows) - self._height)

    def show(self, text: str, cap: int | None = None) -> None:
        text = text.expandtabs(4)
        if text == self.text and cap == self.cap:
            return
        top, first = self._first_shown(), 0
        if self._width and self._rows and text.startswith(self.text):
            # Every row but the last is final (see wrap_rows): only the last is wrapped again.
            first = len(self._rows) - 1
            start = self._rows[first][0]
            del self._rows[first:]
            self._wrap(text, start)
        else:
            self._rows = []
            if self._width:
                self._wrap(text, 0)
        same_cap = cap == self.cap
        self.text = text
        self.cap = cap
        if self._shown() != self._height or not self._width:
            self.redrawn = None
            self.refresh(layout=True)
        elif same_cap and self._first_shown() == top and first - top < self._height:
            # The rows on screen stay where they are: only those from the first one changed are
            # drawn again (a frame of a streamed answer is then a row or two, not the screen).
            y = max(0, first - top)
            self.redrawn = (y, self._height)
            self.refresh(Region(0, y, self.size.width, self._height - y))
        else:
            self.redrawn = None
            self.refresh()

    def _wrap(self, text: str, pos: int) -> None:
        """Wrap ``text`` from ``pos`` (the start of a row) to its end, adding to the rows."""
        while True:
            newline = text.find("\n", pos)
            end = len(text) if newline < 0 else newline
            starts = wrap_rows(text, self._width, pos, end)
            self.rows_wrapped += len(starts)
            self._rows += zip(starts, [*starts[1:], end])
            if newline < 0:
                return
            pos = newline + 1

    def get_content_height(self, container, viewport, width: int) -> int:
        if width != self._width or not self._rows and self.text:
            self._width = width
            self._rows = []
            self._wrap(self.text, 0)
        self._height = self._shown()
        return self._height

    def render_lines(self, crop):
        self._style = self.rich_style
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        row = y + max(0, len(self._rows) - self._height)  # the last rows, when capped
        if row >= len(self._rows) or not self.text:
            return Strip.blank(self.size.width)
        start, end = self._rows[row]
        return Strip([Segment(self.text[start:end].rstrip(" "), self._style)])


class PlainText(WrappedText):
    """The rest of an answer past the Markdown limits."""


class LiveText(WrappedText):
    """The part of an answer being written that the Markdown body does not have yet: the block
    still open (a paragraph, a list, a table, a code block), as plain text. It is wrapped as it
    grows (only its last line again) and, while the transcript follows the answer, shows its last
    ``cap`` rows, so a frame costs what is new and what is on screen, not the answer's length."""


def block_ends(text: str, pos: int, fence: str | None) -> tuple[int | None, int, str | None]:
    """Scan the whole lines of ``text`` from ``pos`` (a line start) for the end of the last
    complete Markdown block: after a blank line or a heading outside a code block, or after the
    line that closes one. Returns (that end or None, where the scan stopped, the open fence)."""
    end = None
    stop = text.rfind("\n", pos) + 1
    while pos < stop:
        newline = text.index("\n", pos)
        line = text[pos:newline].strip()
        pos = newline + 1
        if fence is not None:
            if line.startswith(fence) and not line.strip(fence[0]):
                fence, end = None, pos
        elif line.startswith(("```", "~~~")):
            mark = line[0]
            fence = line[: len(line) - len(line.lstrip(mark))]
        elif not line or line.startswith("#"):
            end = pos
    return end, pos, fence


class AnswerView(Vertical):
    """One assistant answer: a Markdown body that can be streamed into, and a footer.

    While the answer is written, its complete blocks go to the Markdown body and the block being
    written is shown as plain text below it; the finished answer is rendered as Markdown in full.
    The body changes only when a block is complete: Textual's Markdown parses, renders and wraps
    its last block again at every append, which made a frame of a long paragraph, list or code
    block cost its whole length (30 to 100 ms of Python at a few hundred lines).
    """

    def __init__(self, message: Message | None = None, model: str = "") -> None:
        super().__init__(classes="answer")
        self.message = message
        self.model = model_label(message.model or model if message else model)
        self.shown = ""
        self._settled = 0  # how much of ``shown`` the Markdown body has
        self._has_plain = False  # past the Markdown limits: the rest is a PlainText
        # Cleaning is by whole lines, so a frame cleans only the last line and what is new.
        self._raw_lines = ""  # the raw text's whole lines as of the last frame
        self._clean_lines = ""  # the same, cleaned
        # Where the scan for complete blocks stopped in ``shown`` and the code fence open there.
        self._scanned = 0
        self._fence: str | None = None
        # Characters handed to the Markdown body to parse (the tests compare it between a short
        # and a long answer).
        self.markdown_chars = 0

    def compose(self) -> ComposeResult:
        yield Static(Text(self.model or "model", style="bold"), classes="answer-head")
        text = clean(self.message.text) if self.message else ""
        cut = markdown_cut(text)
        yield Markdown(text if cut is None else text[:cut], classes="answer-body")
        if cut is not None:
            yield from self._plain(text[cut:])
        if self.message is None:
            yield LiveText(classes="answer-live")
        yield Static(answer_footer(self.message) if self.message else Text("…", style="dim"), classes="answer-foot")

    def _plain(self, text: str) -> list[Widget]:
        self._has_plain = True
        note = Text("(a long answer: the rest of it is shown as plain text)", style="dim italic")
        return [Static(note, classes="answer-plain-note"), PlainText(text, classes="answer-plain")]

    async def _show_plain(self, text: str, cap: int | None = None) -> None:
        found = self.query(PlainText)
        if found:
            found.first().show(text, cap)
        else:
            widgets = self._plain(text)
            widgets[-1].cap = cap
            await self.mount_all(widgets, before=self.query_one(".answer-foot"))

    @property
    def body(self) -> Markdown:
        return self.query_one(Markdown)

    def _cleaned(self, raw: str) -> str:
        if not raw.startswith(self._raw_lines):
            self._raw_lines = self._clean_lines = ""
        lines = raw.rfind("\n") + 1
        done = len(self._raw_lines)
        if lines > done:
            self._clean_lines += clean(raw[done:lines])
            self._raw_lines = raw[:lines]
        return self._clean_lines + clean(raw[lines:])

    async def show_progress(self, text: str, cap: int | None = None) -> None:
        """Bring the view up to ``text`` (normally a longer version of what is shown); the block
        being written shows at most its last ``cap`` rows."""
        text = self._cleaned(text)
        if text == self.shown:
            return
        # Anything but a longer version of the text (a replacement) is scanned from the start.
        replaced = not text.startswith(self.shown[: max(self._scanned, self._settled)])
        if replaced:
            self._scanned, self._fence = 0, None
        end, self._scanned, self._fence = block_ends(text, self._scanned, self._fence)
        plain = markdown_cut(text)
        if plain is not None:
            cut = plain
        else:
            cut = end if end is not None else 0 if replaced else self._settled
        if replaced or cut < self._settled:
            self.markdown_chars += cut
            await self.body.update(text[:cut])
        elif cut > self._settled:
            # Appending parses only the last block again. (Textual's MarkdownStream runs appends in
            # a task of its own; stopping it mid-append left two appends racing.)
            self.markdown_chars += cut - self._settled
            await self.body.append(text[self._settled:cut])
        self._settled = cut
        self.shown = text
        if plain is None:
            self.query_one(LiveText).show(text[cut:], cap)
            if self._has_plain:  # the text was replaced by a shorter one
                self._has_plain = False
                for widget in self.query(".answer-plain, .answer-plain-note"):
                    await widget.remove()
        else:
            self.query_one(LiveText).show("", cap)
            await self._show_plain(text[cut:], cap)

    async def finish(self, message: Message) -> None:
        """The final text in one full update (streamed Markdown can differ at block edges)."""
        self.message = message
        self.shown = clean(message.text)
        self._settled = self._scanned = len(self.shown)
        # The app may be closing (quit as the answer ends): then there is nothing left to draw on.
        for live in self.query(LiveText):
            await live.remove()
        cut = markdown_cut(self.shown)
        for body in self.query(Markdown):
            await body.update(self.shown if cut is None else self.shown[:cut])
        if cut is not None and self.is_attached:
            await self._show_plain(self.shown[cut:])
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
                widgets.append(UserView(message, conversation))
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

    @property
    def following(self) -> bool:
        """At (or within a few rows of) the end, so new text stays in view."""
        return self.is_vertical_scroll_end or self.max_scroll_y - self.scroll_y <= 3

    def follow(self) -> None:
        if self.following:
            self.scroll_end(animate=False)
