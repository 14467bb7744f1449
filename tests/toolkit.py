"""The shared test toolkit: building the app for a test, driving it with Textual's Pilot, and
reading what a person would see (the screen, the transcript, the status line, notifications).

Everything here is used by more than one test file; a helper used by one file stays in that file.
"""

from __future__ import annotations

import asyncio
import functools
import socket

from vlchat.config import Settings
from vlchat.ui.app import make_app

QUESTION = "What colour is the shape?"


def run_async(test):
    """Run an async test on its own event loop (no asyncio pytest plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings(**overrides) -> Settings:
    values = dict(model="demo", device="cpu", quant="none", max_new_tokens=24, image_protocol="halfblock")
    values.update(overrides)
    return Settings(**values)


def app_for(engine, pictures=(), **overrides):
    return make_app(
        settings(**overrides),
        [p.ref for p in pictures],
        engine=engine,
        engine_loaded=True,
        sources={"theme": "flag --theme"} if "theme" in overrides else None,
    )


def screen_text(app) -> str:
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def transcript_text(app) -> str:
    """The transcript as the person reads it, before line wrapping."""
    from textual.widgets import Markdown, Static

    parts = []
    for widget in app.chat.transcript.walk_children():
        if isinstance(widget, Markdown):
            parts.append(widget.source)
        elif isinstance(widget, Static):
            parts.append(str(widget.content))
    return "\n".join(parts)


def shas(refs) -> list[str]:
    """Pictures by content: once saved, the app names the copies in the session folder, not the originals."""
    return [ref.sha256 for ref in refs]


def status_text(app) -> str:
    return app.chat.status_text().plain


def notifications(app) -> str:
    return "\n".join(app.notification_texts())


async def until(pilot, condition, timeout: float = 60.0, step: float = 0.05) -> None:
    loops = int(timeout / step)
    for _ in range(loops):
        if condition():
            return
        await pilot.pause(step)
    raise AssertionError("timed out waiting for the app")


async def settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await until(pilot, lambda: pilot.app.chat.sessions.idle)
    await pilot.pause(0.05)


async def ask(pilot, text: str) -> None:
    app = pilot.app
    before = len([m for m in app.chat.conversation.messages if m.role == "assistant"])
    app.chat.prompt.text = text
    await pilot.press("enter")
    await until(pilot, lambda: app.chat.generating is None and len([m for m in app.chat.conversation.messages if m.role == "assistant"]) > before)
    await settle(pilot)


async def stop_midway(pilot, question: str) -> object:
    """Ask, let the answer start, press Esc, and wait for the answer to end; returns it."""
    app = pilot.app
    app.chat.prompt.text = question
    await pilot.press("enter")
    await until(pilot, lambda: app.chat.answer_view is not None and app.chat.answer_view.shown, timeout=30)
    await pilot.pause(0.3)
    await pilot.press("escape")
    await until(pilot, lambda: app.chat.generating is None, timeout=10)
    await settle(pilot)
    return app.chat.conversation.last("assistant")


async def command(pilot, line: str) -> None:
    pilot.app.chat.prompt.text = line
    await pilot.press("enter")
    await settle(pilot)
