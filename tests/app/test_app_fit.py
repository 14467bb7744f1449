"""The status line, the footer and the prompt's placeholder fit at every width from 60 columns:
the least useful items go first, whole, never cut mid-word; and again after a resize."""

from __future__ import annotations

import re

import pytest
from textual.widgets._footer import FooterKey

from tests.toolkit import QUESTION, app_for, ask, command, run_async, screen_text
from vlchat.ui.status import status_parts

pytestmark = pytest.mark.timeout(180)


def whole_items(row: str, forms: set[str]) -> bool:
    """``row`` is made of whole items (each in one of its forms), two spaces, " · " or " " apart."""
    row = row.strip()

    def rest(at: int) -> bool:
        if at == len(row):
            return True
        for form in forms:
            if row.startswith(form, at):
                after = at + len(form)
                if after == len(row):
                    return True
                for sep in ("  ", " · ", " "):
                    if row.startswith(sep, after) and rest(after + len(sep)):
                        return True
        return False

    return rest(0)


def check_fits(app, width: int) -> None:
    rows = screen_text(app).splitlines()
    status_row, footer_row = rows[-2], rows[-1]
    parts = status_parts(app.chat.status_state())
    forms = {p.text for p in parts} | {p.short for p in parts if p.short}
    assert len(status_row.rstrip()) <= width - 1, (width, status_row)  # its padding: one cell each side
    assert whole_items(status_row, forms), (width, status_row)
    # The footer: every key shown is whole and left of the palette's key.
    keys = list(app.chat.query(FooterKey))
    palette = next(k for k in keys if k.has_class("-command-palette"))
    shown = [k for k in keys if k.display and k is not palette]
    assert shown, width
    for key in shown:
        assert key.region.right <= palette.region.x, (width, key.description, footer_row)
        assert f"{key.description}" in footer_row, (width, footer_row)
    assert "palette" in footer_row
    # The placeholder: one row of the prompt, whole.
    prompt = app.chat.prompt
    assert len(str(prompt.placeholder)) <= prompt.content_size.width, (width, str(prompt.placeholder))


@run_async
async def test_everything_fits_at_every_width_from_60_and_again_after_a_resize(demo_engine, picture):
    # Remapped keys make the footer longer (the "^n Next  ^▏^p palette").
    app = app_for(
        demo_engine,
        [picture("circle", "red", "blue"), picture("square", "green", "white")],
        bindings={"next_picture": "ctrl+n", "previous_picture": "ctrl+b"},
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await command(pilot, "/set temperature 0.7")
        await ask(pilot, QUESTION)
        status = screen_text(app).splitlines()[-2]
        # At 120 columns the whole story: timings, tok/s and the temperature.
        assert "first " in status and "tok/s" in status and "temp 0.7" in status, status
        check_fits(app, 120)
        for width in range(118, 59, -3):
            await pilot.resize_terminal(width, 30)
            await pilot.pause(0.15)
            check_fits(app, width)
        # 120 -> 80 in one step: the long form does not stay
        await pilot.resize_terminal(120, 40)
        await pilot.pause(0.2)
        long_form = screen_text(app).splitlines()[-2].strip()
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.2)
        check_fits(app, 80)
        assert screen_text(app).splitlines()[-2].strip() != long_form
        assert re.search(r"ctx \d+/4096", screen_text(app).splitlines()[-2])  # the context count stays longest
