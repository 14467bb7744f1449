"""The main screen pinned as SVG snapshots (pytest-textual-snapshot), half-block pictures forced.

The pinned state is the loaded demo model before any answer, so nothing varies between runs: no
timings, no clock, and the memory figure is the demo model's fixed footprint. Update them after a
deliberate change with `python -m pytest tests/test_snapshots.py --snapshot-update` and look at
the SVGs before committing.
"""

from __future__ import annotations

import pytest

from vlchat.config import Settings
from vlchat.demo import SAMPLES_DIR
from vlchat.core.images import load_image
from vlchat.ui.app import make_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def own_config(tmp_path, monkeypatch):
    monkeypatch.setenv("VLCHAT_CONFIG_DIR", str(tmp_path / "config"))


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
