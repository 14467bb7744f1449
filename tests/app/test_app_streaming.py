"""How an answer is drawn while it streams: the line being written, the footer, the frame pacing.

The cheap drawing paths (the live line wrapped a row at a time, the footer restyled in place)
must show exactly what a full redraw would.
"""

from __future__ import annotations

import gc
import random

import pytest
from rich.cells import cell_len
from textual.widgets._footer import FooterKey

from tests.toolkit import QUESTION, app_for, run_async, screen_text, settle, until
from vlchat.ui.transcript import LiveText, wrap_rows

pytestmark = pytest.mark.timeout(120)


def rows_of(text: str, starts: list[int]) -> list[str]:
    ends = starts[1:] + [len(text)]
    return [text[a:b].rstrip(" ") for a, b in zip(starts, ends)]


@pytest.mark.parametrize("width", [1, 7, 20, 79])
def test_a_line_wrapped_as_it_grows_is_wrapped_as_if_whole(width):
    rng = random.Random(width)
    words = ["a", "red", "circle", "on", "blue", "雪", "花火大会", "supercalifragilistic", "é", ""]
    text = " ".join(rng.choice(words) for _ in range(400))
    whole = wrap_rows(text, width)
    starts, shown = [0], ""
    while len(shown) < len(text):
        shown = text[: len(shown) + rng.randint(1, 12)]
        starts[-1:] = wrap_rows(shown, width, starts[-1])
    assert starts == whole
    rows = rows_of(text, whole)
    for row in rows:
        assert cell_len(row) <= max(width, 2)  # a wide character alone is wider than a 1-cell row
    # Nothing is lost: the rows put back together (a break eats at most one space) are the text.
    assert "".join(rows).replace(" ", "") == text.replace(" ", "")


@run_async
async def test_a_long_paragraph_streams_its_last_rows_and_shows_all_of_it_when_scrolled_up(endless_engine, picture):
    app = app_for(endless_engine, [picture("circle", "red", "blue")], max_new_tokens=100_000)
    async with app.run_test(size=(100, 30)) as pilot:
        app.chat.prompt.text = QUESTION
        await pilot.press("enter")
        transcript = app.chat.transcript

        def live():
            return app.chat.answer_view.query_one(LiveText) if app.chat.answer_view else None

        # The demo model writes one paragraph with no line breaks: all of it is the live line.
        await until(pilot, lambda: live() is not None and len(live()._starts) > 3 * transcript.size.height, timeout=60)
        line = live()
        await pilot.pause(0.3)
        # Following the answer, the live line is as tall as the transcript, and what is on screen
        # is the end of what the model has written so far.
        assert line.size.height <= transcript.size.height
        shown_rows = rows_of(line.text, line._starts)[-line.size.height:]
        screen = screen_text(app)
        assert shown_rows[-2] in screen

        # Scrolled up, the whole line is laid out, so its beginning can be read.
        transcript.scroll_home(animate=False)
        await until(pilot, lambda: line.size.height == len(line._starts) or app.chat.generating is None, timeout=10)
        if app.chat.generating is not None:
            assert line.size.height > transcript.size.height

        await pilot.press("escape")
        await until(pilot, lambda: app.chat.generating is None, timeout=10)
        await settle(pilot)
        answer = app.chat.conversation.last("assistant")
        assert answer.stopped
        # Once it ends, the answer is Markdown in full and the live line is gone.
        assert not app.query(LiveText)
        assert app.query(".answer-body").last().source == answer.text


@run_async
async def test_stop_key_lights_up_while_an_answer_is_written_without_rebuilding_the_footer(endless_engine, picture):
    app = app_for(endless_engine, [picture("circle", "red", "blue")], max_new_tokens=100_000)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)

        def stop_key():
            return next((k for k in app.query(FooterKey) if k.action == "screen.stop"), None)

        await until(pilot, lambda: stop_key() is not None)  # the footer's first composition
        keys_before = list(app.query(FooterKey))
        assert stop_key().has_class("-disabled")
        app.chat.prompt.text = QUESTION
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.generating is not None and not stop_key().has_class("-disabled"), timeout=30)
        assert list(app.query(FooterKey)) == keys_before  # restyled in place, not composed again
        await pilot.press("escape")
        await until(pilot, lambda: app.chat.generating is None, timeout=10)
        await settle(pilot)
        assert stop_key().has_class("-disabled")
        assert "esc" in screen_text(app).splitlines()[-1]


@run_async
async def test_the_loaded_model_is_frozen_out_of_the_collector(demo_engine, picture):
    app = app_for(demo_engine, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        # A full collection mid-answer no longer walks the libraries and the model.
        assert gc.get_freeze_count() > 100_000
    gc.unfreeze()


@pytest.mark.parametrize(
    ("picture", "room", "cell", "expected"),
    [
        ((384, 384), (46, 36), (8, 15), (46, 25)),  # square picture, tall cells: fewer rows than columns
        ((384, 384), (46, 10), (8, 15), (19, 10)),  # not enough rows: the height decides
        ((6000, 4000), (40, 30), (10, 20), (40, 13)),
        ((100, 1000), (40, 30), (10, 20), (6, 30)),
        ((1, 1), (1, 1), (10, 20), (1, 1)),
    ],
)
def test_a_kitty_or_sixel_picture_keeps_its_shape_in_the_pane(picture, room, cell, expected):
    from vlchat.ui.preview import fit_cells

    cols, rows = fit_cells(picture, room, cell)
    assert (cols, rows) == expected
    assert cols <= room[0] and rows <= room[1]
    # The drawn size is the picture's scaled to fit, to within a cell each way.
    scale = min(room[0] * cell[0] / picture[0], room[1] * cell[1] / picture[1])
    assert abs(cols * cell[0] - picture[0] * scale) <= cell[0]
    assert abs(rows * cell[1] - picture[1] * scale) <= cell[1]
