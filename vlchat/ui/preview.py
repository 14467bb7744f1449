"""The picture pane: the current picture, drawn as well as the terminal allows, with its index.

Decoding happens off the UI thread (the app's preview worker, JPEG draft mode) into one small
copy per picture; half-block renderings are cached per cell size, and a resize redraws once the
size has settled rather than on every intermediate size.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from vlchat.core.conversation import ImageRef
from vlchat.core.text import clean

PREVIEW_MAX_SIDE = 768


# Pictures inside a session folder are stored under their sha256; people know them by the name
# they had when attached. Keyed by content, so one table serves every session safely.
_NAMES: dict[str, str] = {}


def set_picture_name(sha256: str, name: str) -> None:
    _NAMES[sha256] = clean(name, keep_newlines=False)


def picture_label(ref: ImageRef) -> str:
    stem = Path(ref.path).name
    if stem.startswith(ref.sha256) and ref.sha256 in _NAMES:
        return _NAMES[ref.sha256]
    return clean(stem, keep_newlines=False)


def text_card(ref: ImageRef, note: str = "") -> Text:
    card = Text()
    card.append(picture_label(ref) + "\n", style="bold")
    card.append(f"{ref.width}x{ref.height} {ref.format}\n")
    card.append(ref.sha256[:12], style="dim")
    if note:
        card.append("\n" + clean(note, keep_newlines=False), style="dim italic")
    return card


def halfblock(image: Any, cols: int, rows: int) -> RenderableType:
    """The picture in at most ``cols`` x ``rows`` cells, two pixels per cell (upper half block)."""
    from rich.segment import Segment, Segments
    from rich.style import Style

    width, height = image.size
    scale = min(cols / width, (rows * 2) / height)
    size = (max(1, int(width * scale)), max(2, int(height * scale)))
    if size[1] % 2:
        size = (size[0], size[1] - 1 if size[1] > 2 else 2)
    small = image.resize(size) if size != image.size else image
    pixels = small.load()
    styles: dict[tuple, Style] = {}
    segments: list = []
    for y in range(0, size[1] - 1, 2):
        for x in range(size[0]):
            top, bottom = pixels[x, y][:3], pixels[x, y + 1][:3]
            key = (top, bottom)
            style = styles.get(key)
            if style is None:
                style = styles[key] = Style.parse(
                    f"rgb({top[0]},{top[1]},{top[2]}) on rgb({bottom[0]},{bottom[1]},{bottom[2]})"
                )
            segments.append(Segment("▀", style))
        segments.append(Segment.line())
    return Segments(segments)


def fit_cells(picture: tuple[int, int], room: tuple[int, int], cell: tuple[int, int]) -> tuple[int, int]:
    """The most cells (columns, rows) a picture of ``picture`` pixels fills in ``room`` cells
    while keeping its shape, for cells of ``cell`` pixels."""
    (width, height), (cols, rows), (cell_w, cell_h) = picture, room, cell
    scale = min(cols * cell_w / max(width, 1), rows * cell_h / max(height, 1))
    return (max(1, min(cols, round(width * scale / cell_w))), max(1, min(rows, round(height * scale / cell_h))))


class PictureBody(Static):
    """Where the picture itself is drawn (half-blocks, a text card, or nothing)."""


class PicturePane(Vertical):
    """Index line + picture. The app tells it the pictures and which one is current."""

    def __init__(self, protocol: str, image_widget_module: Any = None, cell: tuple[int, int] = (10, 20), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol = protocol
        self.cell = cell  # a terminal cell in pixels (width, height), for drawing pictures at their shape
        self._image_widgets = image_widget_module
        self.refs: list[ImageRef] = []
        self.index = 0
        self.decoded: OrderedDict[str, Any] = OrderedDict()
        self.errors: dict[str, str] = {}
        self._cache: OrderedDict[tuple, RenderableType] = OrderedDict()
        self._resize_timer = None
        self._graphic: Any = None
        self._last_size: tuple[int, int] | None = None
        self._label: Text | None = None

    def compose(self) -> ComposeResult:
        yield Static("no picture", id="picture-index")
        yield PictureBody(id="picture-body")

    # -- what to show ------------------------------------------------------------------------
    @property
    def current(self) -> ImageRef | None:
        return self.refs[self.index] if self.refs else None

    def set_pictures(self, refs: list[ImageRef], index: int | None = None) -> None:
        self.refs = list(refs)
        if index is not None:
            self.index = index
        self.index = max(0, min(self.index, len(self.refs) - 1))
        self.redraw()

    def step(self, delta: int) -> None:
        if self.refs:
            self.index = (self.index + delta) % len(self.refs)
            self.redraw()

    def picture_decoded(self, sha256: str, image: Any, error: str | None) -> None:
        if error:
            self.errors[sha256] = error
        else:
            self.decoded[sha256] = image
            while len(self.decoded) > 16:
                self.decoded.popitem(last=False)
        if self.current and self.current.sha256 == sha256:
            self.redraw()

    # -- drawing -----------------------------------------------------------------------------
    def on_resize(self) -> None:
        # Terminals send a burst of sizes while a window is dragged: draw the one it settles on.
        if self._resize_timer is not None:
            self._resize_timer.stop()
        self._resize_timer = self.set_timer(0.12, self.redraw)

    def redraw(self) -> None:
        if not self.is_mounted:
            return
        index = self.query_one("#picture-index", Static)
        body = self.query_one("#picture-body", PictureBody)
        ref = self.current
        if ref is None:
            self._label = None
            index.update(Text("no picture yet: /image PATH attaches one", style="dim"))
            self._show_graphic(None)
            body.update("")
            return
        label = Text()
        label.append(f"{self.index + 1}/{len(self.refs)} ", style="bold")
        label.append(picture_label(ref))
        label.append(f"  {ref.width}x{ref.height}", style="dim")
        if label != self._label:
            self._label = label
            index.update(label)
        if self.protocol == "none":
            self._show_graphic(None)
            body.update("")
            return
        image = self.decoded.get(ref.sha256)
        if self.protocol == "text" or ref.sha256 in self.errors or image is None:
            note = self.errors.get(ref.sha256, "" if self.protocol == "text" else "decoding…")
            self._show_graphic(None)
            body.update(text_card(ref, note))
            return
        if self.protocol in ("kitty", "sixel") and self._image_widgets is not None:
            body.update("")
            self._show_graphic(image)
            self._fit_graphic(image)
            return
        cols, rows = body.size.width, body.size.height
        if cols < 2 or rows < 1:
            return
        key = (ref.sha256, cols, rows)
        rendered = self._cache.get(key)
        if rendered is None:
            rendered = halfblock(image, cols, rows)
            self._cache[key] = rendered
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
        if body.content is not rendered:  # drawing it again costs tens of ms: only when it changed
            body.update(rendered)

    def _fit_graphic(self, image: Any) -> None:
        """Size the picture widget to the picture's shape within the pane: the terminal scales a
        Kitty or Sixel picture to the widget's cells, so a widget the shape of the pane would
        stretch it."""
        if self._graphic is None:
            return
        cols = self.content_size.width
        rows = self.content_size.height - 1  # under the index line
        if cols < 1 or rows < 1:
            return
        cols, rows = fit_cells(image.size, (cols, rows), self.cell)
        self._graphic.styles.width = cols
        self._graphic.styles.height = rows

    def _show_graphic(self, image: Any) -> None:
        self.query_one("#picture-body", PictureBody).display = image is None
        if image is None:
            if self._graphic is not None:
                self._graphic.remove()
                self._graphic = None
            return
        cls = self._image_widgets.TGPImage if self.protocol == "kitty" else self._image_widgets.SixelImage
        if self._graphic is None:
            self._graphic = cls(image, id="picture-graphic")
            self.mount(self._graphic)
        else:
            self._graphic.image = image
