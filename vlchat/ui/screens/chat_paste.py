"""Pasting pictures into the conversation (mixed into the chat screen): ctrl+v and /paste, the
terminal's paste events (OSC 5522), and file paths dropped on the prompt.

Where the picture comes from, each only where it can work (``graphics.paste``, found by the one
probe at start): the terminal's paste events, an OSC 5522 read of the clipboard through the
terminal (over SSH too; the terminal may ask the person first), then the local clipboard when a
display is reachable. The protocol itself is in ``vlchat.ui.clipboard`` (no Textual there).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from typing import Any

from textual import work
from textual.message import Message

from vlchat.core.errors import VlchatError
from vlchat.core.text import clean
from vlchat.ui import clipboard as cb
from vlchat.ui.messages import PicturesLoaded
from vlchat.ui.prompt import PromptArea

READ_TIMEOUT = 30.0  # the person may be asked by the terminal first
LIST_TIMEOUT = 5.0


class ClipboardReply(Message):
    """One OSC 5522 message from the terminal (None: one too large or cut short); posted from the input thread."""

    def __init__(self, body: str | None) -> None:
        super().__init__()
        self.body = body


class PastedPicture(Message):
    def __init__(self, data: bytes, mime: str, origin: str) -> None:
        super().__init__()
        self.data, self.mime, self.origin = data, mime, origin


class PasteNote(Message):
    def __init__(self, line: str, error: bool = True) -> None:
        super().__init__()
        self.line, self.error = line, error


PASTE_HELP = (
    "Pasting pictures: in kitty (0.44.1+) or Ghostty (1.4+), here or over SSH, use the terminal's own paste key, "
    "or ctrl+v (/paste; the terminal may ask you to allow it). In other terminals on this machine, ctrl+v reads the "
    "clipboard (wl-paste, xclip, the macOS pasteboard). Elsewhere (over SSH without kitty/Ghostty, inside tmux): "
    "drop a file that is on this machine onto the prompt, or /image PATH; copy a picture here with scp first."
)

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif", "image/bmp": "bmp", "image/tiff": "tiff"}


class PasteHandling:
    """Mixed into ChatScreen (it has graphics, transcript, prompt, notify, post_message…)."""

    _read: Any = None  # (request id, kind, ReadAssembler, timer, mime)
    _paste_event: Any = None  # the assembler of an unsolicited paste event's listing
    _paste_count = 0
    _paste_folder: str | None = None
    _paste_password = secrets.token_hex(12)  # lets the person answer "Always" in kitty's prompt

    # -- start and end ----------------------------------------------------------------------------
    def on_mount(self) -> None:
        support = self.graphics.paste
        if support.paste_events or support.osc_read:
            from vlchat.ui.driver import set_clipboard_sink

            set_clipboard_sink(lambda body: self.post_message(ClipboardReply(body)))
        if support.paste_events:
            self._write_terminal(cb.PASTE_EVENTS_ON)
            # ctrl+z: the shell gets the terminal back, and its paste key must paste text there.
            self.app.app_suspend_signal.subscribe(self, self._paste_events_off, immediate=True)
            self.app.app_resume_signal.subscribe(self, lambda _app: self._write_terminal(cb.PASTE_EVENTS_ON))

    def _paste_events_off(self, _app: Any = None) -> None:
        try:
            tty = os.open("/dev/tty", os.O_WRONLY | os.O_NOCTTY)
        except OSError:
            return
        try:
            os.write(tty, cb.PASTE_EVENTS_OFF.encode())
        except OSError:
            pass
        finally:
            os.close(tty)

    def on_unmount(self) -> None:
        from vlchat.ui.driver import set_clipboard_sink

        set_clipboard_sink(None)
        if self.graphics.paste.paste_events:
            self._write_terminal(cb.PASTE_EVENTS_OFF)

    def _write_terminal(self, text: str) -> None:
        # Textual keeps its driver to itself; its write() goes through the writer thread, in order
        # with the frames, where a write of our own to the terminal could land inside a frame.
        driver = getattr(self.app, "_driver", None)
        if driver is not None and hasattr(driver, "write"):
            driver.write(text)
            driver.flush()

    # -- asking for a picture: ctrl+v and /paste ------------------------------------------------------
    def on_prompt_area_picture_wanted(self, _message: PromptArea.PictureWanted) -> None:
        self.paste_picture()

    def command_paste(self, _args: str) -> None:
        self.paste_picture()

    def paste_picture(self) -> None:
        support = self.graphics.paste
        if self._read is not None:
            self.notify("Already waiting for the clipboard.", severity="warning")
            return
        if support.osc_read:
            self._start_read(["."], "list", LIST_TIMEOUT)
        elif support.local:
            self._read_local(support.local)
        else:
            self._paste_note(
                "No clipboard can be reached from here. In kitty or Ghostty (also over SSH) paste with the "
                "terminal's paste key; elsewhere attach with /image PATH, drop the file on the prompt, or copy it here with scp.",
                error=True,
            )

    def _start_read(self, mimes: list[str], kind: str, timeout: float, *, password: str = "", name: str = "") -> None:
        self._paste_count += 1
        request_id = f"vlchat{self._paste_count}"
        assembler = cb.ReadAssembler(cb.MAX_LIST_BYTES if kind == "list" else cb.MAX_TEXT_BYTES if kind in ("text", "uris") else cb.MAX_PICTURE_BYTES)
        timer = self.set_timer(timeout, lambda: self._read_timed_out(request_id))
        self._read = (request_id, kind, assembler, timer, mimes[0])
        self._write_terminal(cb.read_request(mimes, request_id=request_id, password=password, name=name))

    def _read_timed_out(self, request_id: str) -> None:
        if self._read is None or self._read[0] != request_id:
            return
        kind = self._read[1]
        self._read = None
        if kind == "list" and self.graphics.paste.local:
            self._read_local(self.graphics.paste.local)
            return
        self._paste_note("The terminal did not answer in time; nothing was pasted. (/paste tries again.)", error=True)

    # -- what the terminal sends ------------------------------------------------------------------------
    def on_clipboard_reply(self, message: ClipboardReply) -> None:
        packet: cb.Packet | None = None
        if message.body is not None:
            try:
                packet = cb.parse_packet(message.body)
            except cb.ProtocolError:
                packet = None
        request_id = packet.meta.get("id", "") if packet is not None else ""
        current = self._read
        if request_id:
            if current is not None and current[0] == request_id:
                self._push_read(packet)
            return  # a late reply to a read given up on, or the start probe's: dropped
        if self._paste_event is not None:
            self._push_event(packet)
        elif packet is not None and packet.status == "OK" and packet.meta.get("pw"):
            self._paste_event = cb.ReadAssembler(cb.MAX_LIST_BYTES)
            self._push_event(packet)
        elif current is not None:
            self._push_read(packet)  # a terminal that does not send our id back

    def _push_read(self, packet: cb.Packet | None) -> None:
        request_id, kind, assembler, timer, mime = self._read
        result = assembler.push(packet)
        if result is None:
            return
        timer.stop()
        self._read = None
        if result.error:
            if kind == "list" and result.status != "EPERM" and self.graphics.paste.local:
                self._read_local(self.graphics.paste.local)
                return
            self._paste_note(f"Nothing pasted: {result.error}.", error=True)
            return
        if kind == "list":
            types = cb.offered_types(result)
            wanted = cb.picture_type(types)
            if wanted:
                self.notify(
                    "Reading the clipboard's picture: the terminal may ask you to allow it (answer in the terminal).",
                    timeout=6,
                )
                self._start_read([wanted], "picture", READ_TIMEOUT, password=self._paste_password, name="vlchat")
            elif self.graphics.paste.local:
                self._read_local(self.graphics.paste.local)
            else:
                self._paste_note("No picture on the clipboard. Copy one (a screenshot), or paste text with your terminal's paste key.")
            return
        data = result.data.get(mime, b"")
        if kind == "picture":
            self._check_picture(data, mime, "the clipboard")
        elif kind == "text":
            self.prompt.paste_text(data.decode("utf-8", "replace"))
        elif kind == "uris":
            text = data.decode("utf-8", "replace")
            lines = [line for line in text.splitlines() if line and not line.startswith("#")]
            self.prompt.paste_text("\n".join(lines))

    def _push_event(self, packet: cb.Packet | None) -> None:
        result = self._paste_event.push(packet)
        if result is None:
            return
        self._paste_event = None
        if result.error:
            self._paste_note(f"Nothing pasted: {result.error}.", error=True)
            return
        if self._read is not None:
            self.notify("Already waiting for the clipboard.", severity="warning")
            return
        types = cb.offered_types(result)
        otp = dict(password=result.password, name=cb.PASTE_EVENT_NAME)
        if wanted := cb.picture_type(types):
            self._start_read([wanted], "picture", READ_TIMEOUT, **otp)
        elif cb.URI_LIST in types:
            self._start_read([cb.URI_LIST], "uris", READ_TIMEOUT, **otp)
        elif wanted := cb.text_type(types):
            self._start_read([wanted], "text", READ_TIMEOUT, **otp)
        else:
            self._paste_note("The clipboard holds nothing vlchat can paste (no picture, no text).")

    # -- the local clipboard -------------------------------------------------------------------------
    @work(thread=True, group="paste", exit_on_error=False)
    def _read_local(self, tool: str) -> None:
        try:
            data = cb.read_local_picture(tool)
        except cb.LocalClipboardError as error:
            self.post_message(PasteNote(f"Nothing pasted: {clean(str(error), keep_newlines=False)}."))
            return
        if not data:
            self.post_message(PasteNote("No picture on the clipboard. Copy one (a screenshot) and press ctrl+v again."))
            return
        self.post_message(PastedPicture(data, "image/png", tool))

    def on_pasted_picture(self, message: PastedPicture) -> None:
        self._check_picture(message.data, message.mime, message.origin)

    def on_paste_note(self, message: PasteNote) -> None:
        self._paste_note(message.line, error=message.error)

    # -- the picture, checked like any file -----------------------------------------------------------------
    def _check_picture(self, data: bytes, mime: str, origin: str) -> None:
        if self._paste_folder is None:
            # Private (0700); the session keeps its own copy of each picture, so the folder goes
            # when the process ends, after the session writer has finished (not when the screen does).
            self._paste_folder = tempfile.mkdtemp(prefix="vlchat-paste-")
            atexit.register(shutil.rmtree, self._paste_folder, ignore_errors=True)
        self._save_pasted(data, mime, self._paste_folder)

    @work(thread=True, group="paste", exit_on_error=False)
    def _save_pasted(self, data: bytes, mime: str, folder: str) -> None:
        import hashlib

        from vlchat.core.images import load_image

        sha = hashlib.sha256(data).hexdigest()
        path = os.path.join(folder, f"pasted-{sha[:12]}.{_EXTENSIONS.get(mime, 'png')}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            ref = load_image(path).ref  # the same checks as any file: formats, size, decompression bombs
        except VlchatError as error:
            try:
                os.unlink(path)
            except OSError:
                pass
            line = str(error).replace(clean(path, keep_newlines=False), "the pasted picture")
            self.post_message(PasteNote(f"Nothing pasted: {line}"))
            return
        except OSError as error:
            self.post_message(PasteNote(f"Nothing pasted: the picture could not be kept ({error.strerror or error})."))
            return
        self.post_message(PasteNote(f"Pasted a picture ({ref.format}, {ref.width}x{ref.height}): it goes with your next question.", error=False))
        self.post_message(PicturesLoaded([ref], [], True))

    # -- dropped files ------------------------------------------------------------------------------------
    def on_prompt_area_paths_dropped(self, message: PromptArea.PathsDropped) -> None:
        here = [p for p in message.paths if os.path.exists(os.path.expanduser(p))]
        missing = [p for p in message.paths if p not in here]
        for path in missing:
            self._paste_note(
                f"{clean(path, keep_newlines=False)} is not on this machine (was it dropped from another one, over SSH?). "
                "Paste the picture itself (ctrl+v, or the terminal's paste key in kitty/Ghostty), or copy it here with scp.",
                error=True,
            )
        if here:
            self._attach_pictures(here)

    def _paste_note(self, line: str, error: bool = False) -> None:
        self.transcript.note(line, "error" if error else "info")
        self.notify(clean(line, keep_newlines=False), severity="error" if error else "information", timeout=8)
