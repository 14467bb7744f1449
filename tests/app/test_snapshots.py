"""Every screen pinned as SVG snapshots (pytest-textual-snapshot), half-block pictures forced: the
main screen (wide and narrow), the help screen, the status line and footer at 60, 80, 100 and 120
columns, the model picker, the session picker and the delete question.

The pinned state is the loaded demo model before any answer, so nothing varies between runs: no
timings, no clock, and the memory figure is the demo model's fixed footprint. The model picker reads
an empty Hugging Face cache and the session picker the example session, in UTC. (A model added to
the registry changes the model picker's snapshot.) Update them after a deliberate change with `python -m pytest tests/app/test_snapshots.py --snapshot-update` and look at
the SVGs before committing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.toolkit import settle, until
from vlchat.config import Settings
from vlchat.core.images import load_image
from vlchat.core.sessions import SessionStore
from vlchat.demo import SAMPLES_DIR
from vlchat.ui.app import make_app

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[2] / "sessions" / "example"


async def _settled(pilot) -> None:
    pilot.app.chat.prompt.cursor_blink = False
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.3)  # the picture is drawn once the size has settled
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])
@pytest.mark.parametrize("theme", ["vlchat-dark", "vlchat-light"])
def test_main_screen(snap_compare, demo_engine, theme, size):
    settings = Settings(model="demo", device="cpu", quant="none", theme=theme, image_protocol="halfblock")
    picture = load_image(SAMPLES_DIR / "red-circle.png").ref
    app = make_app(settings, [picture], engine=demo_engine, engine_loaded=True, sources={"theme": "flag --theme"})
    assert snap_compare(app, terminal_size=size, run_before=_settled)


def demo_app(engine, theme="vlchat-dark", store=None):
    settings = Settings(model="demo", device="cpu", quant="none", theme=theme, image_protocol="halfblock")
    picture = load_image(SAMPLES_DIR / "red-circle.png").ref
    return make_app(settings, [picture], engine=engine, engine_loaded=True, sources={"theme": "flag --theme"}, store=store)


@pytest.fixture
def example_store(tmp_path, monkeypatch):
    """The example session in a store whose path reads the same on every machine, dates in UTC."""
    shutil.copytree(EXAMPLE, tmp_path / "sessions" / "5e551014e8a1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield SessionStore(Path("sessions"))
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_help(snap_compare, demo_engine, size):
    async def run_before(pilot):
        await _settled(pilot)
        pilot.app.chat.run_command_line("/help")
        await until(pilot, lambda: pilot.app.screen.id == "help")
        await settle(pilot)

    assert snap_compare(demo_app(demo_engine), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("width", [60, 80, 100, 120])
def test_status_line_and_footer(snap_compare, demo_engine, width):
    """After an answer (its figures pinned), with the temperature set: what fits at each width."""
    from dataclasses import replace

    from vlchat.core.conversation import Timings

    async def run_before(pilot):
        await _settled(pilot)
        chat = pilot.app.chat
        chat.params = replace(chat.params, temperature=0.7)
        chat.last_timings, chat.last_tokens = Timings(first_token_s=0.08, total_s=1.2, tokens_per_s=82.0), 24
        chat.update_status()
        await settle(pilot)

    assert snap_compare(demo_app(demo_engine), terminal_size=(width, 24), run_before=run_before)


def test_model_picker(snap_compare, demo_engine, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing downloaded, anywhere

    async def run_before(pilot):
        await _settled(pilot)
        pilot.app.chat.run_command_line("/model")
        await until(pilot, lambda: pilot.app.screen.query("OptionList") and pilot.app.screen.query_one("OptionList").option_count > 1)
        await settle(pilot)

    assert snap_compare(demo_app(demo_engine), terminal_size=(120, 40), run_before=run_before)


def test_session_picker(snap_compare, demo_engine, example_store):
    async def run_before(pilot):
        await _settled(pilot)
        pilot.app.chat.run_command_line("/load")
        await until(pilot, lambda: "1 of 1" in "".join(str(w.content) for w in pilot.app.screen.query("#picker-info")))
        await settle(pilot)

    assert snap_compare(demo_app(demo_engine, store=example_store), terminal_size=(120, 40), run_before=run_before)


def test_delete_question(snap_compare, demo_engine, example_store):
    async def run_before(pilot):
        await _settled(pilot)
        pilot.app.chat.run_command_line("/delete 5e551014e8a1")
        await until(pilot, lambda: pilot.app.screen.id == "confirm")
        await settle(pilot)

    assert snap_compare(demo_app(demo_engine, store=example_store), terminal_size=(80, 24), run_before=run_before)
