"""The app through Textual's Pilot, against the real engine on the demo model.

One loaded demo engine (and one loaded endless copy, for stopping) is shared by every test; each
test gets a fresh app and a fresh config folder. What is asserted is what a person would see:
the screen's text, the status line, notifications, and the conversation the app keeps.
"""

from __future__ import annotations

import base64
import threading

import pytest

from tests.toolkit import (
    QUESTION,
    app_for,
    ask,
    command,
    notifications,
    run_async,
    screen_text,
    settings,
    settle,
    shas,
    status_text,
    stop_midway,
    transcript_text,
    until,
)
from vlchat.ui.app import make_app

pytestmark = pytest.mark.timeout(120)


# -- asking ----------------------------------------------------------------------------------------
@run_async
async def test_typed_question_is_answered_with_the_right_colour(demo_engine, picture):
    app = app_for(demo_engine, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert "1/1" in screen_text(app)
        await pilot.press(*QUESTION)
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.conversation.last("assistant") is not None)
        await settle(pilot)
        screen = screen_text(app)
        assert QUESTION in screen
        assert "red" in screen.lower()
        answer = app.chat.conversation.last("assistant")
        assert "red" in answer.text.lower() and not answer.stopped
        assert answer.model == "demo" and answer.tokens and answer.timings.first_token_s is not None
        assert answer.params.max_new_tokens == 24
        status = status_text(app)
        assert "first token" in status and "tok/s" in status and "ctx " in status
        assert "cpu" in status and "demo model" in status


@run_async
async def test_first_frame_comes_before_the_model_and_an_early_question_is_answered(picture):
    from vlchat.engines.transformers import TransformersEngine

    engine = TransformersEngine("demo", quant="none", device="cpu")
    # The real load, held back until the test has seen the screen without a model: in this
    # process torch is already imported and the demo model would otherwise load at once.
    gate = threading.Event()
    real_load = engine.load

    def held_load(progress=None):
        gate.wait(30)
        real_load(progress)

    engine.load = held_load
    app = make_app(settings(), [picture("square", "red", "white").ref], engine=engine)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.3)
            assert not app.loaded
            assert "loading" in status_text(app)
            assert "1/1" in screen_text(app)
            app.chat.prompt.text = QUESTION
            await pilot.press("enter")
            await pilot.pause(0.05)
            assert "still loading" in transcript_text(app)
            assert app.chat.generating is None
            gate.set()
            await until(pilot, lambda: app.chat.conversation.last("assistant") is not None)
            await settle(pilot)
            assert "red" in app.chat.conversation.last("assistant").text.lower()
            assert "loading" not in status_text(app)
    finally:
        gate.set()
        engine.unload()


@run_async
async def test_image_command_attaches_a_second_picture_that_the_model_sees(demo_engine, picture):
    red = picture("circle", "red", "blue")
    green = picture("triangle", "green", "white")
    app = app_for(demo_engine, [red])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        assert "red" in app.chat.conversation.last("assistant").text.lower()
        await command(pilot, f"/image {green.ref.path}")
        assert "2/2" in screen_text(app)
        await ask(pilot, QUESTION)
        assert "green" in app.chat.conversation.last("assistant").text.lower()
        assert shas(app.chat.conversation.messages[-2].images) == [green.ref.sha256]
        await pilot.press("f7")
        await until(pilot, lambda: "1/2" in screen_text(app), timeout=5)
        assert "1/2" in screen_text(app)


@run_async
async def test_escape_stops_the_model_and_keeps_the_partial_answer(endless_engine, picture):
    app = app_for(endless_engine, [picture("circle", "red", "blue")], max_new_tokens=100_000)
    async with app.run_test(size=(120, 40)) as pilot:
        answer = await stop_midway(pilot, QUESTION)
        assert answer.stopped and answer.text and answer.tokens < 100_000
        assert "stopped" in screen_text(app)
        assert not [t for t in threading.enumerate() if t.name == "vlchat-generate"]
        # The frames were coalesced: far fewer redraws than tokens.
        assert app.chat.frames < answer.tokens


@run_async
async def test_regenerate_replaces_the_last_answer(demo_engine, picture):
    app = app_for(demo_engine, [picture("star", "yellow", "black")])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, "What shape is it?")
        first = app.chat.conversation.last("assistant")
        await command(pilot, "/regenerate")
        await until(pilot, lambda: app.chat.generating is None and app.chat.conversation.messages[-1].role == "assistant")
        await settle(pilot)
        roles = [m.role for m in app.chat.conversation.messages]
        assert roles == ["user", "assistant"]
        assert app.chat.conversation.last("assistant") is not first
        assert "star" in app.chat.conversation.last("assistant").text.lower()


@run_async
async def test_edit_puts_the_last_question_back(demo_engine, picture):
    red = picture("circle", "red", "blue")
    app = app_for(demo_engine, [red])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        await command(pilot, "/edit")
        assert app.chat.prompt.text == QUESTION
        assert app.chat.conversation.messages == []
        assert shas(app.chat.pending) == [red.ref.sha256]
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.conversation.last("assistant") is not None)
        assert shas(app.chat.conversation.messages[0].images) == [red.ref.sha256]


@run_async
async def test_set_changes_sampling_and_refuses_bad_values(demo_engine, picture):
    app = app_for(demo_engine, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await command(pilot, "/set temperature 0.7")
        await command(pilot, "/set seed 3")
        await command(pilot, "/set max_tokens 12")
        assert (app.chat.params.temperature, app.chat.params.seed, app.chat.params.max_new_tokens) == (0.7, 3, 12)
        assert "temp 0.7" in status_text(app)
        await command(pilot, "/set temperature hot")
        await command(pilot, "/set temperature 9")
        await command(pilot, "/set colour blue")
        assert app.chat.params.temperature == 0.7
        screen = transcript_text(app)
        assert "temperature must be a number" in screen
        assert "between 0 and 5" in screen
        assert "/set needs a name" in screen
        await ask(pilot, QUESTION)
        assert app.chat.conversation.last("assistant").params.temperature == 0.7
        assert app.chat.conversation.last("assistant").params.seed == 3


@run_async
async def test_system_and_clear(demo_engine, picture):
    red = picture("circle", "red", "blue")
    app = app_for(demo_engine, [red])
    async with app.run_test(size=(120, 40)) as pilot:
        await command(pilot, "/system Answer briefly.")
        assert app.chat.conversation.system == "Answer briefly."
        await ask(pilot, QUESTION)
        await command(pilot, "/clear")
        assert app.chat.conversation.messages == []
        assert "New conversation" in screen_text(app)
        assert QUESTION not in screen_text(app)
        await ask(pilot, QUESTION)
        assert shas(app.chat.conversation.messages[0].images) == [red.ref.sha256]
        assert "red" in app.chat.conversation.last("assistant").text.lower()


@run_async
async def test_copy_sends_the_answer_through_osc_52(demo_engine, picture):
    app = app_for(demo_engine, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        written: list[str] = []
        original = app._driver.write
        app._driver.write = lambda data: (written.append(data), original(data))[1]
        await command(pilot, "/copy")
        assert "No answer to copy" in notifications(app)
        await ask(pilot, QUESTION)
        await command(pilot, "/copy")
        answer = app.chat.conversation.last("assistant").text
        expected = "\x1b]52;c;" + base64.b64encode(answer.encode()).decode() + "\a"
        assert expected in "".join(written)
        assert app.clipboard == answer


@run_async
async def test_theme_switches_and_is_remembered(demo_engine, own_config):
    app = app_for(demo_engine)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.theme == "vlchat-dark"
        await command(pilot, "/theme vlchat-light")
        assert app.theme == "vlchat-light"
        await command(pilot, "/theme no-such-theme")
        assert app.theme == "vlchat-light"
        assert "No theme called 'no-such-theme'" in transcript_text(app)
    assert (own_config / "state.json").is_file()
    again = app_for(demo_engine)
    async with again.run_test(size=(100, 30)):
        assert again.theme == "vlchat-light"
    forced = app_for(demo_engine, theme="vlchat-contrast")
    async with forced.run_test(size=(100, 30)):
        assert forced.theme == "vlchat-contrast"


@run_async
async def test_a_users_own_theme_file_is_offered_and_a_broken_one_reported(demo_engine, own_config):
    themes = own_config / "themes"
    themes.mkdir(parents=True)
    (themes / "mine.toml").write_text('name = "mine"\nprimary = "#ff8800"\ndark = true\n')
    (themes / "broken.toml").write_text('name = "broken"\nprimary = "not-a-colour"\n')
    app = app_for(demo_engine, theme="mine")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.05)
        assert app.theme == "mine"
        assert "broken.toml" in notifications(app) and "is not a colour" in notifications(app)


@run_async
async def test_command_palette_runs_commands(demo_engine):
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"theme vlchat-contrast")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.theme == "vlchat-contrast"
        await pilot.press("ctrl+p")
        await pilot.press(*"/image")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.chat.prompt.text == "/image "


# -- when things go wrong --------------------------------------------------------------------------
@run_async
async def test_unknown_command_and_bad_pictures_are_reported_in_the_app(demo_engine, picture, tmp_path):
    red = picture("circle", "red", "blue")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    app = app_for(demo_engine, [red])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        before = app.chat.conversation.to_dict()
        await command(pilot, "/frobnicate now")
        await command(pilot, f"/image {notes}")
        await command(pilot, f"/image {tmp_path / 'missing.png'}")
        await command(pilot, "/image")
        screen = transcript_text(app)
        assert "Unknown command /frobnicate" in screen
        assert "notes.txt is a text file, not a picture" in screen
        assert "missing.png does not exist" in screen
        assert "/image needs a path" in transcript_text(app)
        assert app.chat.conversation.to_dict() == before
        assert app.chat.pending == []
        assert app.is_running


@run_async
async def test_file_names_with_control_characters_are_shown_clean(demo_engine, picture, tmp_path):
    red = picture("circle", "red", "blue")
    odd = tmp_path / "evil\x1b[2Jname.png"
    odd.write_bytes(open(red.ref.path, "rb").read())
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await command(pilot, f"/image '{odd}'")
        await ask(pilot, QUESTION)
        screen = screen_text(app)
        assert "evil[2Jname.png" in screen
        assert "\x1b" not in screen and "\x1b" not in transcript_text(app)


@run_async
async def test_model_load_failure_keeps_the_app_and_the_question(tmp_path, picture):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "not-a-real-model"}')
    app = make_app(settings(model=str(broken)), [picture("circle", "red", "blue").ref])
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.load_error is not None)
        await pilot.pause(0.05)
        assert "not loaded" in status_text(app)
        assert "could not be loaded" in transcript_text(app)
        app.chat.prompt.text = QUESTION
        await pilot.press("enter")
        await pilot.pause(0.05)
        assert app.chat.conversation.messages[-1].text == QUESTION
        assert "No model to answer" in transcript_text(app)
        assert app.is_running


@run_async
async def test_out_of_memory_while_answering_gives_the_question_back(demo_engine, picture, monkeypatch):
    import torch

    def out_of_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(demo_engine.model, "generate", out_of_memory)
    red = picture("circle", "red", "blue")
    app = app_for(demo_engine, [red])
    async with app.run_test(size=(120, 40)) as pilot:
        app.chat.prompt.text = QUESTION
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.generating is None and "ran out of memory" in transcript_text(app))
        assert app.chat.conversation.messages == []
        assert app.chat.prompt.text == QUESTION
        assert shas(app.chat.pending) == [red.ref.sha256]
        assert app.is_running
    monkeypatch.undo()


# -- keys, layout, completion ----------------------------------------------------------------------
@run_async
async def test_bindings_can_be_remapped_by_id(demo_engine, picture):
    app = app_for(demo_engine, [picture("circle", "red", "blue")], bindings={"toggle_preview": "f3", "nonsense": "f4"})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.chat.preview.display and "1/1" in screen_text(app)
        await pilot.press("f3")
        await pilot.pause(0.05)
        assert not app.chat.preview.display and "circle-on-blue.png" not in screen_text(app)
        assert "no key binding has the id 'nonsense'" in notifications(app)


@run_async
async def test_narrow_terminal_puts_the_picture_above_and_can_hide_it(demo_engine, picture):
    app = app_for(demo_engine, [picture("circle", "red", "blue")])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.has_class("-narrow")
        assert app.chat.preview.region.width == 80 and app.chat.preview.region.height < 12
        assert app.chat.prompt.region.height >= 3
        await pilot.press("f2")
        await pilot.pause(0.05)
        assert not app.chat.preview.region.height


@run_async
async def test_newline_key_and_path_completion_in_the_prompt(demo_engine, tmp_path, picture):
    red = picture("circle", "red", "blue")
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("a", "ctrl+j", "b")
        assert app.chat.prompt.text == "a\nb"
        app.chat.prompt.clear()
        partial = red.ref.path[: -len("-on-blue.png")]
        app.chat.prompt.text = f"/image {partial}"
        app.chat.prompt.move_cursor(app.chat.prompt.document.end)
        await pilot.pause(0.05)
        assert app.chat.prompt.suggestion == "-on-blue.png"
        await pilot.press("tab")
        assert app.chat.prompt.text == f"/image {red.ref.path}"
        await pilot.press("enter")
        await settle(pilot)
        assert shas(app.chat.pending) == [red.ref.sha256]


@run_async
async def test_every_change_to_the_conversation_is_announced_for_autosave(demo_engine, picture):
    from vlchat.ui.app import VlchatApp
    from vlchat.ui.messages import ConversationChanged

    class Recording(VlchatApp):
        reasons: list[str] = []

        def on_conversation_changed(self, message: ConversationChanged) -> None:
            self.reasons.append(message.reason)
            assert message.conversation is self.chat.conversation

    app = Recording(settings(), demo_engine, images=[picture("circle", "red", "blue").ref], engine_loaded=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        await command(pilot, "/system Be brief.")
        await command(pilot, "/edit")
        await command(pilot, "/clear")
        await pilot.pause(0.05)
    assert app.reasons == ["question", "answer", "system", "edit", "clear"]
