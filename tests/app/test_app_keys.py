"""Every documented key with the prompt focused (the prompt is a TextArea with keys of its own),
remapped keys, bad key names in [bindings], and the help screen (F1, /help)."""

from __future__ import annotations

import pytest

from tests.toolkit import QUESTION, app_for, ask, command, notifications, run_async, screen_text, settle, transcript_text, until

pytestmark = pytest.mark.timeout(120)


def focused_prompt(app) -> bool:
    return app.focused is app.chat.prompt


@run_async
async def test_every_key_in_the_readme_works_while_the_prompt_has_focus(demo_engine, picture):
    red, green = picture("circle", "red", "blue"), picture("square", "green", "white")
    app = app_for(demo_engine, [red, green])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        prompt = app.chat.prompt
        assert focused_prompt(app)
        # ctrl+y: the TextArea's redo took it
        await pilot.press("ctrl+y")
        answer = app.chat.conversation.last("assistant").text
        assert app.clipboard == answer and "Copied the last answer" in notifications(app)
        # ctrl+j and Enter
        await pilot.press("a", "ctrl+j", "b")
        assert prompt.text == "a\nb"
        prompt.clear()
        # Tab and → complete
        await pilot.press(*"/exp")
        await pilot.press("tab")
        assert prompt.text == "/export "
        prompt.clear()
        await pilot.press(*"/rege")
        await pilot.press("right")
        assert prompt.text == "/regenerate "
        prompt.clear()
        # F7 / F8 and alt+← / alt+→ (the TextArea's F7 selects all)
        assert "2/2" in screen_text(app)
        for key, shown in (("f7", "1/2"), ("f8", "2/2"), ("alt+left", "1/2"), ("alt+right", "2/2")):
            await pilot.press(key)
            await until(pilot, lambda: shown in screen_text(app), timeout=5)
            assert focused_prompt(app)
        # F2 hides the picture and shows it again
        await pilot.press("f2")
        await pilot.pause(0.05)
        assert not app.chat.preview.display
        await pilot.press("f2")
        await pilot.pause(0.05)
        assert app.chat.preview.display
        # F1 opens the help screen, Esc closes it; nothing is printed into the conversation
        before = transcript_text(app)
        await pilot.press("f1")
        await until(pilot, lambda: app.screen.id == "help", timeout=5)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.chat, timeout=5)
        assert transcript_text(app) == before and focused_prompt(app)
        # ctrl+p: the command palette
        await pilot.press("ctrl+p")
        await until(pilot, lambda: type(app.screen).__name__ == "CommandPalette", timeout=5)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.chat, timeout=5)
        # ctrl+q quits
        await pilot.press("ctrl+q")
        await until(pilot, lambda: not app.is_running, timeout=10)


@run_async
async def test_remapped_keys_win_over_the_prompts_own(demo_engine, picture):
    # ctrl+z is the TextArea's undo, f5 nothing of its own
    app = app_for(demo_engine, [picture("circle", "red", "blue")], bindings={"copy": "ctrl+z", "help": "f5"})
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        assert focused_prompt(app)
        await pilot.press("ctrl+z")
        assert app.clipboard == app.chat.conversation.last("assistant").text
        await pilot.press("f5")
        await until(pilot, lambda: app.screen.id == "help", timeout=5)
        shown = screen_text(app)
        assert "ctrl+z" in shown and "F5" in shown and "ctrl+y" not in shown
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.chat, timeout=5)


@run_async
async def test_a_key_name_that_is_no_key_is_reported_and_the_usual_key_kept(demo_engine, picture):
    app = app_for(demo_engine, [picture("circle", "red", "blue")], bindings={"copy": "ctrl+shift+banana", "help": "f5"})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        said = notifications(app)
        assert "copy = 'ctrl+shift+banana' names no key ('ctrl+shift+banana')" in said
        assert "help" not in said.split("names no key")[0].split("bindings:")[-1]  # f5 is a key: no complaint
        assert "🍌" not in screen_text(app)
        await ask(pilot, QUESTION)
        await pilot.press("ctrl+y")  # copy keeps its usual key
        assert app.clipboard == app.chat.conversation.last("assistant").text


@run_async
async def test_help_is_a_screen_of_its_own_with_the_commands_and_keys(demo_engine):
    from vlchat.ui import slash

    app = app_for(demo_engine)
    async with app.run_test(size=(100, 60)) as pilot:
        await settle(pilot)
        before = transcript_text(app)
        await command(pilot, "/help")
        await until(pilot, lambda: app.screen.id == "help", timeout=5)
        shown = screen_text(app)
        assert "Esc closes" in shown
        assert "Tab or →" in shown and "ctrl+y" in shown and "F1" in shown and "alt+← or F7" in shown
        for command_ in slash.COMMANDS.values():  # every command of the table, arguments and all
            assert f"/{command_.name} {command_.args}".strip()[:20] in shown, command_.name
        assert "/save [TITLE]" in shown and "/export [PATH]" in shown
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.chat, timeout=5)
        assert transcript_text(app) == before
        assert "/clear" not in screen_text(app)


@run_async
async def test_help_scrolls_in_a_small_terminal_and_f1_closes_it_too(demo_engine):
    app = app_for(demo_engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f1")
        await until(pilot, lambda: app.screen.id == "help", timeout=5)
        assert "/quit" not in screen_text(app)
        await pilot.press("end")
        await until(pilot, lambda: "/quit" in screen_text(app), timeout=5)
        await pilot.press("f1")
        await until(pilot, lambda: app.screen is app.chat, timeout=5)


# -- nothing of ours, or a file's, is read as markup ----------------------------------------------------
@run_async
async def test_the_palette_shows_bracketed_arguments(demo_engine):
    from textual.widgets import OptionList

    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: type(app.screen).__name__ == "CommandPalette", timeout=5)
        await pilot.press(*"/save")
        await until(pilot, lambda: app.screen.query_one(OptionList).option_count >= 2, timeout=10)
        await pilot.pause(0.3)
        options = app.screen.query_one(OptionList)
        titles = [str(options.get_option_at_index(i).prompt).split("\n")[0] for i in range(options.option_count)]
        assert "/save" in titles and "/save [TITLE]" in titles, titles
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await until(pilot, lambda: type(app.screen).__name__ == "CommandPalette", timeout=5)
        await pilot.press(*"/export")
        await until(pilot, lambda: app.screen.query_one(OptionList).option_count >= 2, timeout=10)
        await pilot.pause(0.3)
        assert "/export [PATH]" in screen_text(app)


@run_async
async def test_a_file_name_that_looks_like_markup_is_shown_as_it_is(demo_engine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = app_for(demo_engine)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await settle(pilot)
        await command(pilot, "/image '[b]bold[/b].png'")
        await until(pilot, lambda: "[b]bold[/b].png does not exist" in screen_text(app), timeout=5)  # the transcript

        def toasts() -> str:
            return "\n".join(str(toast.render()) for toast in app.screen.query("Toast"))

        # An error about the conversation goes to the transcript (the feedback rule); passing state
        # goes to a toast, and a toast is never read as markup either.
        app.chat.toast("Copied [b]bold[/b].png")
        await until(pilot, lambda: "Copied" in toasts(), timeout=5)
        assert "Copied [b]bold[/b].png" in toasts()


def test_key_names_are_checked_as_textual_spells_them():
    from vlchat.ui.keys import unknown_keys

    assert unknown_keys("escape,ctrl+s") == []
    assert unknown_keys("f3, alt+left, ctrl+shift+k, comma, euro_sign, shift+enter") == []
    assert unknown_keys("ctrl+shift+banana,f3") == ["ctrl+shift+banana"]
    assert unknown_keys("banana") == ["banana"]  # the name of an emoji, which no key types
    assert unknown_keys("ctrl+,f25,ctrl+ctrl+a,hyper+x") == ["ctrl+", "f25", "ctrl+ctrl+a"]
