"""Pasting in the app, through Textual's Pilot on the demo model: /paste where no clipboard can be
reached, a clipboard picture checked like any file (bad bytes, a decompression bomb), and pastes
that stay text. The terminal's side (OSC 5522 and paste events) is in tests/e2e/test_e2e_paste.py."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from textual import events

from tests.toolkit import app_for, command, notifications, run_async, settle, transcript_text, until
from vlchat.ui.screens.chat_paste import PastedPicture

pytestmark = pytest.mark.timeout(120)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (a decompression bomb's header) over a tiny stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@run_async
async def test_paste_without_a_reachable_clipboard_says_what_to_do(demo_engine):
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await command(pilot, "/paste")
        text = transcript_text(app)
        assert "No clipboard can be reached from here" in text and "/image PATH" in text and "scp" in text
        assert app.chat.pending == []


@run_async
async def test_a_clipboard_picture_is_checked_like_a_file(demo_engine, picture):
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        app.chat.post_message(PastedPicture(b"just some text, not a picture", "image/png", "xclip"))
        await until(pilot, lambda: "Nothing pasted" in transcript_text(app))
        app.chat.post_message(PastedPicture(png_header_only(60000, 60000), "image/png", "xclip"))
        await until(pilot, lambda: transcript_text(app).count("Nothing pasted") == 2)
        text = transcript_text(app)
        assert "too large" in text or "megapixels" in text, text
        assert app.chat.pending == []
        # A good one goes in, named by its content, ready for the next question.
        buffer = io.BytesIO()
        picture("square", "green", "white").image.save(buffer, format="PNG")
        app.chat.post_message(PastedPicture(buffer.getvalue(), "image/png", "xclip"))
        await until(pilot, lambda: len(app.chat.pending) == 1)
        await settle(pilot)
        assert "Pasted a picture (PNG, 256x256)" in transcript_text(app)
        assert app.chat.pending[0].format == "PNG"


@run_async
async def test_a_text_paste_is_text_and_ctrl_v_asks_for_a_picture(demo_engine):
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        app.chat.prompt.post_message(events.Paste("what is /tmp/x.png?"))
        await until(pilot, lambda: app.chat.prompt.text == "what is /tmp/x.png?")
        await pilot.press("ctrl+v")
        await until(pilot, lambda: "No clipboard can be reached" in transcript_text(app))
        assert app.chat.prompt.text == "what is /tmp/x.png?"
        assert "No clipboard can be reached" in notifications(app)
