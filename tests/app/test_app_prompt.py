"""The prompt: its history (Up and Down), completion with several candidates, /image with wildcards
and ~, and the question going with the picture on screen."""

from __future__ import annotations

import shutil

import pytest

from tests.toolkit import QUESTION, app_for, ask, command, run_async, screen_text, settle, shas, transcript_text, until
from vlchat.core.images import load_image
from vlchat.core.sessions import SessionStore
from vlchat.demo.shapes import NO_PICTURE_ANSWER, Scene, answer
from vlchat.ui.preview import picture_label
from vlchat.ui.app import make_app

pytestmark = pytest.mark.timeout(120)


# -- history ----------------------------------------------------------------------------------------
@run_async
async def test_up_and_down_walk_the_earlier_questions_and_give_the_draft_back(demo_engine, picture):
    app = app_for(demo_engine, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, "What colour is the shape?")
        await ask(pilot, "What shape is it?")
        prompt = app.chat.prompt
        await pilot.press(*"draft")
        await pilot.press("up")
        assert prompt.text == "What shape is it?"
        await pilot.press("up")
        assert prompt.text == "What colour is the shape?"
        await pilot.press("up")  # nothing older: it stays
        assert prompt.text == "What colour is the shape?"
        await pilot.press("down")
        assert prompt.text == "What shape is it?"
        await pilot.press("down")
        assert prompt.text == "draft"
        # Enter on a recalled question asks it again
        await pilot.press("up")
        await pilot.press("enter")
        await until(pilot, lambda: len(app.chat.conversation.messages) == 6)
        await settle(pilot)
        assert app.chat.conversation.messages[-2].text == "What shape is it?"


@run_async
async def test_up_and_down_still_move_between_the_lines_of_a_long_question(demo_engine, picture):
    app = app_for(demo_engine, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        prompt = app.chat.prompt
        await pilot.press("o", "n", "e", "ctrl+j", "t", "w", "o")
        assert prompt.cursor_location == (1, 3)
        await pilot.press("up")  # on the second line: the cursor moves up, the text stays
        assert prompt.text == "one\ntwo" and prompt.cursor_location[0] == 0
        await pilot.press("down")
        assert prompt.text == "one\ntwo" and prompt.cursor_location[0] == 1
        await pilot.press("home", "up", "up")  # from the first line: the history
        assert prompt.text == QUESTION
        await pilot.press("down")
        assert prompt.text == "one\ntwo"


@run_async
async def test_a_resumed_sessions_questions_are_in_the_history(demo_engine, picture, tmp_path):
    store = SessionStore(tmp_path / "sessions")
    first = make_app(app_for(demo_engine).settings, [picture("circle", "red", "blue").ref], engine=demo_engine, engine_loaded=True, store=store)
    async with first.run_test(size=(120, 40)) as pilot:
        await ask(pilot, "Is it round?")
        await until(pilot, lambda: first.chat.saves >= 1 and first.chat.sessions.idle)
    again = make_app(first.settings, engine=demo_engine, engine_loaded=True, store=store, session=store.open())
    async with again.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("up")
        assert again.chat.prompt.text == "Is it round?"


# -- completion ------------------------------------------------------------------------------------
@run_async
async def test_tab_on_an_ambiguous_command_shows_the_candidates(demo_engine):
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("/", "s", "tab")
        await pilot.pause(0.05)
        shown = screen_text(app)
        for name in ("/system", "/set", "/save", "/sessions"):
            assert name in shown
        assert app.focused is app.chat.prompt and app.chat.prompt.text == "/s"
        await pilot.press("e", "tab")  # /set, /sessions: the candidates again
        await pilot.pause(0.05)
        assert "/sessions" in screen_text(app)
        await pilot.press("s", "tab")
        await pilot.pause(0.05)
        assert app.chat.prompt.text == "/sessions "
        assert "/set" not in screen_text(app)  # the candidates go once the text changes


@run_async
async def test_tab_on_an_ambiguous_file_name_completes_the_common_part_and_shows_both(demo_engine, picture, tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for name, colour in (("green", "green"), ("grey", "white")):
        shutil.copy(picture("circle", colour, "black").ref.path, folder / f"{name}.png")
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press(*f"/image {folder}/g")
        await pilot.press("tab")
        await pilot.pause(0.05)
        assert app.chat.prompt.text == f"/image {folder}/gre"
        shown = screen_text(app)
        assert "green.png" in shown and "grey.png" in shown


@run_async
async def test_image_takes_wildcards_and_the_home_folder(demo_engine, picture, tmp_path, monkeypatch):
    folder = tmp_path / "shots"
    folder.mkdir()
    for colour in ("red", "green", "blue"):
        shutil.copy(picture("circle", colour, "white").ref.path, folder / f"{colour}.png")
    (folder / "notes.txt").write_text("not a picture")
    monkeypatch.setenv("HOME", str(tmp_path))
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await command(pilot, "/image ~/shots/*.png")
        # (saved at once: the pictures are named as they were attached, stored by content)
        assert sorted(picture_label(r) for r in app.chat.pending) == ["blue.png", "green.png", "red.png"]
        assert "3/3" in screen_text(app)
        await command(pilot, "/image ~/shots/*.gif")
        assert "no file matches ~/shots/*.gif" in transcript_text(app)
        assert len(app.chat.pending) == 3


@run_async
async def test_a_file_name_with_control_characters_completes_to_the_file(demo_engine, picture, tmp_path):
    odd = tmp_path / "evil\x1b[2Jname.png"
    shutil.copy(picture("circle", "red", "blue").ref.path, odd)
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press(*f"/image {tmp_path}/ev")
        await pilot.press("tab")
        assert "\x1b" not in app.chat.prompt.text and app.chat.prompt.text.endswith("name.png")
        await pilot.press("enter")
        await settle(pilot)
        assert [r.sha256 for r in app.chat.pending] == [load_image(odd).ref.sha256]
        assert "evil[2Jname.png" in screen_text(app)
        assert "does not exist" not in transcript_text(app)


# -- the picture on screen -------------------------------------------------------------------------
@run_async
async def test_the_question_goes_with_the_picture_on_screen(demo_engine, picture):
    red, green = picture("circle", "red", "white"), picture("square", "green", "white")
    app = app_for(demo_engine, [red])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        await command(pilot, f"/image {green.ref.path}")
        await ask(pilot, QUESTION)
        assert "green" in app.chat.conversation.last("assistant").text.lower()
        await pilot.press("f7")  # back to picture 1, the red one
        await until(pilot, lambda: "1/2" in screen_text(app), timeout=5)
        assert "Ask about picture 1/2" in screen_text(app)
        await ask(pilot, QUESTION)
        answer = app.chat.conversation.last("assistant").text.lower()
        assert "red" in answer and "green" not in answer
        question = app.chat.conversation.messages[-2]
        # by reference: the same picture (the same sha256), not a copy
        assert shas(question.images) == [red.ref.sha256]
        assert question.images[0] is app.chat.conversation.messages[0].images[0]
        assert "▣ picture 1: " in transcript_text(app)
        # the next question, with nothing changed, is about the same picture and sends nothing again
        await ask(pilot, "What shape is it?")
        assert app.chat.conversation.messages[-2].images == []
        assert "about picture 1: " in transcript_text(app)
        assert "circle" in app.chat.conversation.last("assistant").text.lower()


@run_async
async def test_the_placeholder_says_what_the_question_is_about(demo_engine, picture):
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert "attach a picture with /image PATH" in screen_text(app)
        await command(pilot, f"/image {picture('circle', 'red', 'blue').ref.path} {picture('star', 'yellow', 'black').ref.path}")
        assert "Ask about picture 2/2" in screen_text(app)


@run_async
async def test_with_no_picture_the_demo_model_says_it_sees_none_until_one_is_attached(demo_engine, picture):
    """Issue 16, item 17: asked about a picture before any was attached, the demo model made one
    up; it says it sees none, and answers about the picture once one is attached."""
    app = app_for(demo_engine, max_new_tokens=64)  # the answer is 33 tokens of the demo's small vocabulary
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await ask(pilot, "What colour is the shape?")
        assert app.chat.conversation.last("assistant").text == NO_PICTURE_ANSWER
        assert "I see no picture." in screen_text(app)
        await command(pilot, f"/image {picture('circle', 'red', 'blue').ref.path}")
        await until(pilot, lambda: len(app.chat.pending) == 1)
        await ask(pilot, "What colour is the shape?")
        assert app.chat.conversation.last("assistant").text == answer(Scene("circle", "red", "blue", 1), "colour")
