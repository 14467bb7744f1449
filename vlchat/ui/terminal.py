"""How pictures can be drawn in this terminal, decided once, before Textual takes the terminal over.

``auto`` settles on Kitty graphics, Sixel or half-blocks. Known terminals are recognised from the
environment without asking; otherwise one batch of queries goes out (a Kitty graphics query, then
a primary device attributes request that every terminal answers) and the replies are read up to
the device attributes one. Terminals answer in order, so once that reply is in nothing more of
ours is on the way; a reply that does not arrive in time or a garbled one means half-blocks, and
whatever is left in the input is flushed so no reply ever lands in the prompt.

textual-image probes the terminal itself when imported (0.12 does so at import time, with a
0.1 s timeout that can leave a late reply in the input, and an undecoded byte can raise). It is
imported here with stdout looking like no terminal, and its cell-size cache filled from our probe.
"""

from __future__ import annotations

import os
import re
import select
import sys
import time
from dataclasses import dataclass, field

from vlchat.ui.clipboard import PROBE_QUERY, PasteSupport, local_clipboard, parse_probe

PROTOCOLS = ("auto", "kitty", "sixel", "halfblock", "text", "none")

# U=1: textual-image places kitty pictures with Unicode placeholders (kitty 0.28 and later). A
# terminal that speaks the graphics protocol without them (kitty 0.26 here) rejects the key and
# does not answer, so it gets half-blocks instead of cells full of placeholders.
_KITTY_QUERY = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24,U=1;AAAA\x1b\\"
_CELL_SIZE_QUERY = "\x1b[16t"
_DEVICE_ATTRIBUTES = "\x1b[c"
_DA_REPLY = re.compile(r"\x1b\[\?([0-9;]*)c")
_KITTY_REPLY = re.compile(r"\x1b_Gi=31;([^\x1b]*)\x1b\\")
_CELL_REPLY = re.compile(r"\x1b\[6;(\d+);(\d+)t")


@dataclass
class TerminalGraphics:
    """What was decided: the protocol, why, and the size of a cell in pixels when known."""

    protocol: str
    reason: str
    cell_width: int = 10
    cell_height: int = 20
    paste: PasteSupport = field(default_factory=PasteSupport)  # how a picture can be pasted here


def parse_replies(data: str) -> tuple[bool, bool, tuple[int, int] | None, bool]:
    """(kitty graphics supported, sixel supported, cell size, device attributes reply seen)."""
    kitty = False
    match = _KITTY_REPLY.search(data)
    if match and match.group(1).endswith("OK"):
        kitty = True
    sixel = False
    da = _DA_REPLY.search(data)
    if da:
        sixel = "4" in da.group(1).split(";")
    cell = None
    size = _CELL_REPLY.search(data)
    if size and int(size.group(1)) > 0 and int(size.group(2)) > 0:
        cell = (int(size.group(2)), int(size.group(1)))
    return kitty, sixel, cell, da is not None


def _ioctl_cell_size() -> tuple[int, int] | None:
    try:
        import fcntl
        import struct
        import termios

        raw = fcntl.ioctl(sys.__stdout__.fileno(), termios.TIOCGWINSZ, b"\0" * 8)
        rows, cols, width, height = struct.unpack("HHHH", raw)
        if rows and cols and width and height:
            return width // cols, height // rows
    except Exception:
        pass
    return None


def probe_terminal(timeout: float = 0.5, *, kitty: bool = True):
    """Ask the terminal once; never raises, never leaves a reply in the input. Returns (kitty
    graphics, sixel, cell size, answered, (paste events, OSC 5522 reads)): the clipboard's
    questions (the paste-events mode and a listing read, which needs no permission) go in the
    same batch, before the device attributes request, so their replies are in before it."""
    try:
        import termios
        import tty

        stdin = sys.__stdin__.fileno()
        stdout = sys.__stdout__
        saved = termios.tcgetattr(stdin)
    except Exception:
        return False, False, None, False, (False, False)
    data = b""
    try:
        tty.setcbreak(stdin, termios.TCSANOW)
        stdout.write((_KITTY_QUERY if kitty else "") + _CELL_SIZE_QUERY + PROBE_QUERY + _DEVICE_ATTRIBUTES)
        stdout.flush()
        deadline = time.monotonic() + timeout
        while not _DA_REPLY.search(data.decode("latin-1")):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            readable, _, _ = select.select([stdin], [], [], left)
            if not readable:
                break
            chunk = os.read(stdin, 1024)
            if not chunk:
                break
            data += chunk
    except Exception:
        pass
    finally:
        try:
            # A late or partial reply must not become keystrokes in the app.
            time.sleep(0.02)
            termios.tcflush(stdin, termios.TCIFLUSH)
            termios.tcsetattr(stdin, termios.TCSANOW, saved)
        except Exception:
            pass
    text = data.decode("latin-1")
    return (*parse_replies(text), parse_probe(text))


def detect(requested: str = "auto", env: dict[str, str] | None = None, *, probe=probe_terminal) -> TerminalGraphics:
    """Decide how pictures are drawn. ``requested`` other than auto is obeyed as it is."""
    env = dict(os.environ if env is None else env)
    requested = (requested or "auto").strip().lower()
    if requested not in PROTOCOLS:
        from vlchat.core.errors import InputError

        raise InputError(
            f"unknown picture protocol {requested!r}", f"use one of {', '.join(PROTOCOLS)}"
        )
    cell = _ioctl_cell_size() if _is_tty() else None
    paste = (False, False)
    probed = "not a terminal" if not _is_tty() else ""
    if requested != "auto":
        graphics = TerminalGraphics(requested, "asked for")
        if _is_tty() and not _no_probe(env):
            # One probe still: for the cell size where pictures need it, and for the clipboard.
            _, _, probed_cell, _, paste = probe(0.3, kitty=False)
            cell = cell or (probed_cell if requested in ("kitty", "sixel") else None)
    elif not _is_tty():
        graphics = TerminalGraphics("halfblock", "not a terminal")
    elif env.get("TMUX") or env.get("TERM", "").startswith("tmux"):
        # tmux answers the device attributes itself, with 4 (sixel) when it draws sixel images in
        # its panes (3.4 and later, built with sixel). Kitty graphics would need passthrough,
        # which textual-image 0.12 does not wrap its escapes for: they would be eaten or, worse,
        # land on the wrong pane. So: sixel when tmux says so, else half-blocks.
        _, sixel, probed_cell, answered, paste = probe(0.5, kitty=False)
        cell = cell or probed_cell
        if answered and sixel:
            graphics = TerminalGraphics("sixel", "tmux draws sixel")
        else:
            graphics = TerminalGraphics("halfblock", "inside tmux without sixel")
    elif env.get("TERM", "").startswith("screen"):
        graphics = TerminalGraphics("halfblock", "inside screen")
    elif env.get("TERM") in ("dumb", "linux", ""):
        graphics = TerminalGraphics("halfblock", f"terminal {env.get('TERM') or 'unknown'}")
    else:
        kitty, sixel, probed_cell, answered, paste = probe(0.5)
        cell = cell or probed_cell
        if not answered:
            graphics = TerminalGraphics("halfblock", "the terminal did not answer the graphics probe")
        elif kitty and (env.get("TERM") == "xterm-kitty" or env.get("KITTY_WINDOW_ID")):
            # Kitty's Unicode placeholders, which textual-image uses, are drawn by kitty itself only.
            graphics = TerminalGraphics("kitty", "kitty graphics protocol")
        elif sixel:
            graphics = TerminalGraphics("sixel", "terminal reports sixel")
        else:
            graphics = TerminalGraphics("halfblock", "no graphics protocol reported")
    if cell:
        graphics.cell_width, graphics.cell_height = cell
    if probed:
        pass
    elif _no_probe(env):
        probed = f"terminal {env.get('TERM') or 'unknown'} is not asked"
    elif (env.get("TMUX") or env.get("TERM", "").startswith("tmux")) and not any(paste):
        probed = "tmux does not pass the clipboard protocol through"
    graphics.paste = PasteSupport(paste[0], paste[1], local_clipboard(env), probed)
    return graphics


def _no_probe(env: dict[str, str]) -> bool:
    return env.get("TERM", "").startswith("screen") or env.get("TERM") in ("dumb", "linux", "")


def _is_tty() -> bool:
    try:
        return bool(sys.__stdout__ and sys.__stdout__.isatty() and sys.__stdin__ and sys.__stdin__.isatty())
    except Exception:
        return False


class _NotATerminal:
    """Stands in for stdout while textual-image is imported, so that it does not probe."""

    def isatty(self) -> bool:
        return False

    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def import_textual_image(graphics: TerminalGraphics):
    """textual_image.widget, imported without its own terminal probe; None if it cannot be imported."""
    try:
        from textual_image import _terminal

        _terminal.get_cell_size._result = _terminal.CellSize(graphics.cell_width, graphics.cell_height)  # type: ignore[attr-defined]
        saved = sys.__stdout__
        sys.__stdout__ = _NotATerminal()  # type: ignore[assignment]
        try:
            import textual_image.widget as widget
        finally:
            sys.__stdout__ = saved  # type: ignore[assignment]
        return widget
    except Exception:
        return None
