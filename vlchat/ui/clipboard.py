"""Pictures from the clipboard, without Textual: kitty's clipboard protocol (OSC 5522), the local
clipboard tools (wl-paste, xclip, the macOS pasteboard), and pasted file paths (a dropped file).

OSC 5522 (https://sw.kovidgoyal.net/kitty/clipboard/, as kitty 0.44 implements it in
kitty/clipboard.py): every message is ``ESC ] 5522 ; metadata ; payload ESC \\``, the metadata
colon-separated ``key=value`` pairs (``mime``, ``name`` and ``pw`` base64-encoded UTF-8), the
payload base64. A read (``type=read``, payload: the wanted MIME types, space-separated, or ``.``
for the list of types on the clipboard) is answered ``status=OK``, then ``status=DATA:mime=…``
packets of at most 4096 bytes each, then ``status=DONE``; or, instead of OK, one error status
(EPERM: denied, ENOSYS: no such clipboard, EBUSY). Every reply carries back the ``id`` we sent.
With the paste-events mode on (``CSI ? 5522 h``, kitty 0.44.1+, Ghostty 1.4+) the terminal's own
paste key sends, instead of the text, an unsolicited list (``mime=.``, no id) with a one-time
password ``pw``; a read sent with that password and the name ``Paste event`` needs no permission.

Nothing here trusts the terminal: a packet that is not exactly this shape, one that is too large,
or a read that grows past its limit ends that read with one line, and none of its bytes is ever
handed on as keystrokes (``OscSplitter`` takes every OSC 5522 message out of the input).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field

ESC = "\x1b"
ST = "\x1b\\"
OSC_5522 = "\x1b]5522;"
PASTE_EVENTS_ON = "\x1b[?5522h"
PASTE_EVENTS_OFF = "\x1b[?5522l"
# DECRQM for the paste-events mode; the reply is CSI ? 5522 ; Ps $ y (Ps 0 or 4: not supported).
PASTE_EVENTS_QUERY = "\x1b[?5522$p"
PASTE_EVENTS_REPLY = re.compile(r"\x1b\[\?5522;(\d+)\$y")

# kitty sends at most 4096 bytes per DATA packet (5464 in base64): a packet far beyond that is
# not a terminal's, and is refused before it is decoded.
MAX_PACKET = 16 * 1024
# A picture bigger than this is not read from the clipboard (a screenshot of a 8K screen as PNG is
# well under it); the person can save it and use /image.
MAX_PICTURE_BYTES = 40 * 1024 * 1024
MAX_TEXT_BYTES = 1024 * 1024
MAX_LIST_BYTES = 64 * 1024

PICTURE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff")
TEXT_TYPES = ("text/plain;charset=utf-8", "text/plain", "UTF8_STRING", "STRING")
URI_LIST = "text/uri-list"
PASTE_EVENT_NAME = "Paste event"
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")

_METADATA_KEY = re.compile(r"[a-z]{1,16}")
_METADATA_VALUE = re.compile(r"[A-Za-z0-9+/=._-]{0,1024}")
_STATUSES = {"OK", "DATA", "DONE", "EPERM", "ENOSYS", "EBUSY", "EIO", "EINVAL"}


class ProtocolError(ValueError):
    """A message that is not what the protocol allows."""


def b64(text: str) -> str:
    return base64.standard_b64encode(text.encode("utf-8")).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{what} is not valid base64") from None


@dataclass
class Packet:
    """One OSC 5522 message, decoded."""

    meta: dict[str, str]
    payload: bytes = b""

    @property
    def status(self) -> str:
        return self.meta.get("status", "")


def parse_packet(body: str) -> Packet:
    """The message between ``ESC ] 5522 ;`` and the terminator; ``ProtocolError`` if malformed."""
    if len(body) > MAX_PACKET:
        raise ProtocolError("a reply is larger than the protocol allows")
    metadata, _, payload = body.partition(";")
    meta: dict[str, str] = {}
    for record in metadata.split(":"):
        key, sep, value = record.partition("=")
        if not sep or not _METADATA_KEY.fullmatch(key) or not _METADATA_VALUE.fullmatch(value):
            raise ProtocolError("a reply's metadata is not key=value pairs")
        if key in ("mime", "name", "pw"):
            try:
                value = _unb64(value, key).decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(f"a reply's {key} is not text") from None
        meta[key] = value
    if meta.get("type") != "read":
        raise ProtocolError("a reply that is not to a read")
    if meta.get("status") not in _STATUSES:
        raise ProtocolError("a reply with an unknown status")
    return Packet(meta, _unb64(payload, "a reply's data") if payload else b"")


def read_request(mimes: list[str] | tuple[str, ...], *, request_id: str = "", password: str = "", name: str = "") -> str:
    """The escape sequence that asks the terminal for the clipboard's ``mimes`` (``.``: the list)."""
    meta = "type=read"
    if request_id:
        meta += f":id={request_id}"
    if password and name:
        meta += f":pw={b64(password)}:name={b64(name)}"
    return f"{OSC_5522}{meta};{b64(' '.join(mimes))}{ST}"


# -- taking the messages out of the terminal's input ------------------------------------------------
class OscSplitter:
    """Splits the terminal's input into what the app reads as keys and the OSC 5522 messages.

    The input comes in pieces of any size: a message cut in two is held until its end arrives
    (``ESC ]`` and what follows, up to ``5522;``, is held too, until it is clear whether it starts
    one). With ``hold_escape`` a lone ESC at the end of a piece is held as well (it may start a
    message) and handed on by ``release`` once nothing has followed for ``delay`` seconds.
    A message longer than ``MAX_PACKET`` is thrown away up to its end and reported as ``None``.
    """

    def __init__(self, *, hold_escape: bool = False, delay: float = 0.05) -> None:
        self.hold_escape = hold_escape
        self.delay = delay
        self._held = ""  # a possible start of a message (ESC, ESC ], ESC ] 5, ...)
        self._held_at = 0.0
        self._body: list[str] | None = None  # inside a message
        self._size = 0
        self._overflow = False
        self._escape = False  # the last character of the message so far was ESC

    def feed(self, data: str, now: float | None = None) -> tuple[str, list[str | None]]:
        out: list[str] = []
        messages: list[str | None] = []
        text = self._held + data
        self._held = ""
        i, n = 0, len(text)
        while i < n:
            if self._body is not None:
                if self._escape and text[i] != "\\":
                    # ESC inside a message cancels it (as in every terminal's parser): the message
                    # is malformed, and the ESC starts whatever comes next.
                    self._escape, self._overflow = False, True
                    self._end(messages)
                    text, i = ESC + text[i:], 0
                    n = len(text)
                    continue
                i = self._in_message(text, i, messages)
                continue
            start = text.find(ESC, i)
            if start < 0:
                out.append(text[i:])
                break
            out.append(text[i:start])
            rest = text[start:start + len(OSC_5522)]
            if rest == OSC_5522:
                self._body, self._size, self._overflow, self._escape = [], 0, False, False
                i = start + len(OSC_5522)
            elif OSC_5522.startswith(rest) and start + len(rest) == n and (len(rest) > 1 or self.hold_escape):
                self._held = rest  # could be the start of one: wait for the rest
                self._held_at = time.monotonic() if now is None else now
                i = n
            else:
                out.append(ESC)
                i = start + 1
        return "".join(out), messages

    def _in_message(self, text: str, i: int, messages: list[str | None]) -> int:
        assert self._body is not None
        n = len(text)
        if self._escape:
            self._escape = False
            self._end(messages)  # ESC \\ ends it
            return i + 1
        j = i
        while j < n and text[j] not in (ESC, "\x07"):
            j += 1
        piece = text[i:j]
        self._size += len(piece)
        if self._size > MAX_PACKET:
            self._overflow = True
            self._body = []
        elif not self._overflow:
            self._body.append(piece)
        if j == n:
            return n
        if text[j] == "\x07":
            self._end(messages)
        else:
            self._escape = True
        return j + 1

    def _end(self, messages: list[str | None]) -> None:
        messages.append(None if self._overflow else "".join(self._body or []))
        self._body = None

    def release(self, now: float | None = None) -> str:
        """What was held as a possible start of a message and turned out not to be one in time."""
        now = time.monotonic() if now is None else now
        if self._held and self._body is None and now - self._held_at >= self.delay:
            held, self._held = self._held, ""
            return held
        return ""

    @property
    def holding(self) -> bool:
        return bool(self._held)


# -- one read, from the first reply to DONE -------------------------------------------------------------
@dataclass
class ReadResult:
    """What one read brought: data by MIME type, or one line saying why not (``error``)."""

    data: dict[str, bytes] = field(default_factory=dict)
    error: str = ""
    status: str = ""  # the terminal's error status (EPERM, ...) or "malformed", "too large", "timeout"
    password: str = ""  # a paste event's one-time password
    primary: bool = False


_DENIED = {
    "EPERM": "the terminal did not allow reading the clipboard (denied)",
    "ENOSYS": "the terminal has no such clipboard here",
    "EBUSY": "the clipboard is busy (another program is reading it); try again",
    "EIO": "the terminal could not read the clipboard",
    "EINVAL": "the terminal refused the request",
}


class ReadAssembler:
    """Gathers the replies to one read: OK, DATA…, DONE. ``push`` returns the result once it is
    complete or has failed; a failed read ignores everything else it is sent."""

    def __init__(self, limit: int = MAX_PICTURE_BYTES) -> None:
        self.limit = limit
        self.started = False
        self.done = False
        self.size = 0
        self.result = ReadResult()

    def fail(self, status: str, line: str) -> ReadResult:
        self.done = True
        self.result = ReadResult(error=line, status=status)
        return self.result

    def push(self, packet: Packet | None) -> ReadResult | None:
        if self.done:
            return None
        if packet is None:
            return self.fail("malformed", "the terminal's reply was malformed or too large; nothing was pasted")
        status = packet.status
        if not self.started:
            if status == "OK":
                self.started = True
                self.result.password = packet.meta.get("pw", "")
                self.result.primary = packet.meta.get("loc") == "primary"
                return None
            if status in _DENIED:
                return self.fail(status, _DENIED[status])
            return self.fail("malformed", "the terminal's reply was out of order; nothing was pasted")
        if status == "DATA":
            mime = packet.meta.get("mime", "")
            if not mime:
                return self.fail("malformed", "the terminal's reply names no type; nothing was pasted")
            self.size += len(packet.payload)
            if self.size > self.limit:
                return self.fail(
                    "too large",
                    f"the clipboard holds more than {self.limit // (1024 * 1024) or 1} MB; save it to a file and attach it with /image",
                )
            self.result.data[mime] = self.result.data.get(mime, b"") + packet.payload
            return None
        if status == "DONE":
            self.done = True
            return self.result
        if status in _DENIED:
            return self.fail(status, _DENIED[status])
        return self.fail("malformed", "the terminal's reply was out of order; nothing was pasted")


def offered_types(result: ReadResult) -> list[str]:
    """The MIME types a listing (``.``) found on the clipboard."""
    listing = result.data.get(".", b"")
    try:
        return listing.decode("utf-8").split()
    except UnicodeDecodeError:
        return []


def picture_type(types: list[str]) -> str:
    """The picture type to ask for among ``types`` (PNG first), or ""."""
    for wanted in PICTURE_TYPES:
        if wanted in types:
            return wanted
    return ""


def text_type(types: list[str]) -> str:
    for wanted in TEXT_TYPES:
        if wanted in types:
            return wanted
    return next((t for t in types if t.startswith("text/plain")), "")


# -- what the terminal can do, from the one probe at start ----------------------------------------------
@dataclass
class PasteSupport:
    """How a picture can be pasted here: found once at start, shown by --print-config."""

    paste_events: bool = False  # the terminal's paste key sends the clipboard's types (mode 5522)
    osc_read: bool = False  # the terminal answers OSC 5522 reads
    local: str = ""  # the local clipboard tool that can be used ("wl-paste", "xclip", "osascript", "pngpaste")
    reason: str = ""

    def describe(self) -> str:
        ways = []
        if self.paste_events:
            ways.append("the terminal's paste key (OSC 5522 paste events)")
        if self.osc_read:
            ways.append("ctrl+v reads the terminal's clipboard (OSC 5522)")
        if self.local:
            ways.append(f"ctrl+v reads the local clipboard ({self.local})")
        shown = "; ".join(ways) if ways else "no clipboard pictures here (attach with /image PATH, or drop a file)"
        return shown + (f" [{self.reason}]" if self.reason else "")


def parse_probe(data: str) -> tuple[bool, bool]:
    """(paste events supported, OSC 5522 reads answered) from the replies to the start probe."""
    mode = PASTE_EVENTS_REPLY.search(data)
    events = bool(mode) and mode.group(1) not in ("0", "4")
    answered = False
    for match in re.finditer(re.escape(OSC_5522) + r"([^\x1b\x07]*)(?:\x1b\\|\x07)", data):
        try:
            packet = parse_packet(match.group(1))
        except ProtocolError:
            continue
        if packet.meta.get("id") == PROBE_ID:
            answered = True
    return events, events or answered


PROBE_ID = "vlchat-probe"
# A listing needs no permission (the spec says terminals allow it without asking).
PROBE_QUERY = PASTE_EVENTS_QUERY + read_request(["."], request_id=PROBE_ID)


def local_clipboard(env: dict[str, str] | None = None, platform: str | None = None) -> str:
    """The local clipboard tool that can reach a display from here, or ""."""
    env = dict(os.environ if env is None else env)
    platform = platform or sys.platform
    if platform == "darwin":
        if shutil.which("pngpaste"):
            return "pngpaste"
        return "osascript" if shutil.which("osascript") else ""
    if env.get("WAYLAND_DISPLAY") and shutil.which("wl-paste"):
        return "wl-paste"
    if env.get("DISPLAY") and shutil.which("xclip"):
        return "xclip"
    return ""


class LocalClipboardError(Exception):
    pass


def _run(argv: list[str], limit: int, timeout: float = 5.0) -> bytes:
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LocalClipboardError(f"{argv[0]} did not answer in {timeout:g} s") from None
    except OSError as error:
        raise LocalClipboardError(f"{argv[0]} could not be run: {error.strerror or error}") from None
    if result.returncode != 0:
        return b""
    if len(result.stdout) > limit:
        raise LocalClipboardError(
            f"the clipboard holds more than {limit // (1024 * 1024) or 1} MB; save it to a file and attach it with /image"
        )
    return result.stdout


def read_local_picture(tool: str, limit: int = MAX_PICTURE_BYTES) -> bytes:
    """The picture on the local clipboard (b"" when there is none); ``LocalClipboardError`` if it cannot be read."""
    if tool == "wl-paste":
        types = _run(["wl-paste", "--list-types"], MAX_LIST_BYTES).decode("utf-8", "replace").split()
        wanted = picture_type(types)
        return _run(["wl-paste", "--no-newline", "--type", wanted], limit) if wanted else b""
    if tool == "xclip":
        types = _run(["xclip", "-selection", "clipboard", "-t", "TARGETS", "-o"], MAX_LIST_BYTES)
        wanted = picture_type(types.decode("utf-8", "replace").split())
        return _run(["xclip", "-selection", "clipboard", "-t", wanted, "-o"], limit) if wanted else b""
    if tool == "pngpaste":
        return _run(["pngpaste", "-"], limit)
    if tool == "osascript":
        # The pasteboard's PNG as hex («data PNGf…»); nothing when it holds no picture.
        script = "try\nreturn (the clipboard as «class PNGf»)\non error\nreturn \"\"\nend try"
        raw = _run(["osascript", "-e", script], limit * 2 + 64).decode("ascii", "replace").strip()
        match = re.fullmatch(r"«data PNGf([0-9A-Fa-f]*)»", raw)
        return bytes.fromhex(match.group(1)) if match else b""
    return b""


# -- a paste that is the paths of dropped files -------------------------------------------------------------
MAX_DROP_TEXT = 16 * 1024


def dropped_paths(text: str) -> list[str] | None:
    """The picture paths a paste consists of, as terminals type a dropped file (quoted,
    backslash-escaped or file:// URIs, one or more); None when the paste is anything else."""
    stripped = text.strip()
    if not stripped or len(stripped) > MAX_DROP_TEXT or "\x00" in stripped:
        return None
    paths: list[str] = []
    for line in stripped.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("file://"):
            words = line.split()
        else:
            try:
                words = shlex.split(line)
            except ValueError:
                return None
        for word in words:
            path = _path_of(word)
            if path is None:
                return None
            paths.append(path)
    return paths or None


def _path_of(word: str) -> str | None:
    if word.startswith("file://"):
        # file://HOST/path (some terminals name the machine): the path is the path all the same.
        word = urllib.parse.unquote(urllib.parse.urlsplit(word).path)
    if not (word.startswith(("/", "~/", "./", "../"))):
        return None
    if not word.lower().endswith(PICTURE_EXTENSIONS):
        return None
    return word
