"""Sessions in the app, through Textual's Pilot, against the real engine on the demo model.

Every conversation is saved on its own: what is checked is the session.json a person would find on
disk, the Markdown they would get, and what the screen says when something goes wrong.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from tests.toolkit import QUESTION, ask, command, run_async, settings, settle, transcript_text, until
from vlchat.core.sessions import SessionStore, load_session
from vlchat.ui.app import make_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store(tmp_path):
    return SessionStore(tmp_path / "sessions")


def app_for(engine, store, pictures=(), session=None):
    return make_app(settings(), [p.ref for p in pictures], engine=engine, engine_loaded=True, store=store, session=session)


def on_disk(store) -> list[dict]:
    return [json.loads((folder / "session.json").read_text()) for folder in store.folders()]


async def saved(pilot, at_least: int = 1) -> None:
    await until(pilot, lambda: pilot.app.chat.saves >= at_least and pilot.app.chat.sessions.idle)
    await settle(pilot)


@run_async
async def test_an_answer_and_an_attached_picture_are_saved_by_themselves(demo_engine, picture, store, tmp_path):
    first = picture("circle", "red", "blue")
    app = app_for(demo_engine, store, [first])
    async with app.run_test(size=(120, 40)) as pilot:
        assert on_disk(store) == []  # an app that was only opened leaves nothing behind
        await ask(pilot, QUESTION)
        await saved(pilot)
        [data] = on_disk(store)
        messages = data["conversation"]["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["text"] == QUESTION
        assert messages[1]["text"] == app.chat.conversation.last("assistant").text != ""
        assert data["title"] == QUESTION
        folder = app.chat.session.folder
        # The picture was copied in, and the conversation now names the copy.
        assert (folder / messages[0]["images"][0]["path"]).is_file()
        assert app.chat.conversation.messages[0].images[0].path.startswith(str(folder))

        second = tmp_path / "second.png"
        picture("square", "green", "white").image.save(second)
        before = app.chat.saves
        await command(pilot, f"/image {second}")
        await saved(pilot, before + 1)
        [data] = on_disk(store)
        assert len(data["pictures"]) == 2
        assert len(list((folder / "images").iterdir())) == 2
        # The preview shows the copy in the session folder, by the name it was attached with.
        second.unlink()
        assert app.chat.preview.current.path.startswith(str(folder))
        assert "second.png" in str(app.query_one("#picture-index").content)


@run_async
async def test_save_renames_and_export_writes_markdown_with_its_pictures(demo_engine, picture, store, tmp_path):
    app = app_for(demo_engine, store, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        await saved(pilot)
        await command(pilot, "/save Red things")
        await saved(pilot, 2)
        assert on_disk(store)[0]["title"] == "Red things"
        assert "renamed to 'Red things'" in transcript_text(app)

        target = tmp_path / "out" / "red.md"
        await command(pilot, f"/export {target}")
        await until(pilot, lambda: "Exported to" in transcript_text(app))
        text = target.read_text()
        assert text.startswith("# Red things")
        assert QUESTION in text and app.chat.conversation.last("assistant").text in text
        assets = list((tmp_path / "out" / "red_assets").iterdir())
        assert len(assets) == 1 and f"red_assets/{assets[0].name}" in text
        assert str(target) in transcript_text(app)


@run_async
async def test_load_picker_switches_after_saving_the_open_conversation(demo_engine, picture, store):
    with store.create() as other:
        other.conversation.add_user("An older question")
        other.conversation.add_assistant("An older answer", model="demo")
        other.rename("Older talk")
    app = app_for(demo_engine, store, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        await saved(pilot)
        first = app.chat.session.folder
        await command(pilot, "/load")
        await until(pilot, lambda: app.screen.id == "session-picker" and app.screen.query_one("OptionList").option_count == 2)
        await pilot.press(*"older")  # the search narrows the list to one
        await until(pilot, lambda: app.screen.query_one("OptionList").option_count == 1)
        await pilot.press("enter")
        await until(pilot, lambda: "An older answer" in transcript_text(app))
        assert app.chat.session.title == "Older talk"
        assert QUESTION not in transcript_text(app)
        # The conversation left behind is on disk, whole, and no longer locked.
        left = load_session(first)
        assert [m.role for m in left.conversation.messages] == ["user", "assistant"]
        left.close()
        # The next question goes into the session that was opened.
        await ask(pilot, QUESTION)
        await saved(pilot, 2)
        assert [m.role for m in load_session(app.chat.session.folder, read_only=True).conversation.messages] == ["user", "assistant"] * 2


@run_async
async def test_delete_asks_first_and_deleting_the_open_session_starts_a_new_one(demo_engine, picture, store):
    app = app_for(demo_engine, store, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        await saved(pilot)
        folder = app.chat.session.folder
        await command(pilot, "/delete")
        await until(pilot, lambda: app.screen.id == "confirm")
        assert "Delete the session" in str(app.screen.query_one("#confirm-question").content)
        await pilot.press("n")
        await settle(pilot)
        assert folder.is_dir() and app.chat.conversation.messages  # "no" deletes nothing

        await command(pilot, "/delete")
        await until(pilot, lambda: app.screen.id == "confirm")
        await pilot.press("y")
        await until(pilot, lambda: "This is a new conversation" in transcript_text(app))
        assert not folder.exists()
        assert app.chat.conversation.messages == []
        assert on_disk(store) == []


@run_async
async def test_resume_shows_every_turn_and_its_pictures_and_goes_on(demo_engine, picture, store, tmp_path):
    app = app_for(demo_engine, store, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        second = tmp_path / "two.png"
        picture("square", "green", "white").image.save(second)
        await command(pilot, f"/image {second}")
        await ask(pilot, "What shape is it?")
        await saved(pilot)
        answers = [m.text for m in app.chat.conversation.messages if m.role == "assistant"]
        folder = app.chat.session.folder
    second.unlink()  # the session has its own copy

    session = store.open(folder.name)
    resumed = app_for(demo_engine, store, session=session)
    async with resumed.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        shown = transcript_text(resumed)
        assert QUESTION in shown and "What shape is it?" in shown
        assert all(answer in shown for answer in answers)
        assert "two.png" in shown
        assert len(resumed.chat.preview.refs) == 2 and "2/2" in str(resumed.query_one("#picture-index").content)
        await ask(pilot, "How many shapes are there?")
        await saved(pilot)
    data = json.loads((folder / "session.json").read_text())
    assert [m["text"] for m in data["conversation"]["messages"] if m["role"] == "user"][-1] == "How many shapes are there?"
    assert len(data["conversation"]["messages"]) == 6


@run_async
async def test_a_question_that_got_no_answer_is_marked_and_the_model_answers_the_next(demo_engine, picture, store):
    # A failed turn left a question with no answer; the session keeps it, and the turn after it was answered.
    with store.create() as session:
        ref = session.attach(picture("circle", "red", "blue"))
        session.conversation.add_user("What shape is it?", [ref])
        session.conversation.add_user(QUESTION, [])
        session.conversation.add_assistant("The shape is red.", model="demo")
        session.save()
    resumed = app_for(demo_engine, store, session=store.open())
    async with resumed.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        shown = transcript_text(resumed)
        assert shown.count("unanswered: not sent to the model again") == 1
        assert shown.index("What shape is it?") < shown.index("unanswered") < shown.index(QUESTION)
        # the model is shown alternating turns (the first question's picture goes with the second) and answers
        await ask(pilot, "How many shapes are there?")
        assert "one shape" in resumed.chat.conversation.last("assistant").text


@run_async
async def test_resume_with_a_missing_picture_says_which(demo_engine, picture, store):
    with store.create() as session:
        ref = session.attach(picture("circle", "red", "blue"))
        session.conversation.add_user(QUESTION, [ref])
        session.conversation.add_assistant("The shape is red.", model="demo")
        session.save()
        name = session.pictures[ref.sha256].name
    os.unlink(session.folder / session.pictures[ref.sha256].file)
    resumed = app_for(demo_engine, store, session=store.open())
    async with resumed.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        shown = transcript_text(resumed)
        assert f"The picture {name} is missing" in shown
        assert "The shape is red." in shown


@run_async
async def test_a_failed_save_is_shown_and_the_conversation_stays(demo_engine, picture, store, monkeypatch):
    app = app_for(demo_engine, store, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        await saved(pilot)
        real_replace = os.replace

        def disk_full(src, dst, *args, **kwargs):
            if str(dst).endswith("session.json"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", disk_full)
        await ask(pilot, "What shape is it?")
        await until(pilot, lambda: app.chat.save_error is not None)
        assert "No space left on device" in transcript_text(app)
        assert "not saved" in app.chat.status_text().plain
        assert len(app.chat.conversation.messages) == 4  # nothing lost in memory
        assert len(on_disk(store)[0]["conversation"]["messages"]) == 2  # the last good state is intact

        monkeypatch.setattr(os, "replace", real_replace)
        await ask(pilot, "How many shapes are there?")
        await until(pilot, lambda: app.chat.save_error is None)
        assert len(on_disk(store)[0]["conversation"]["messages"]) == 6
        assert "Saved again." in transcript_text(app)


@run_async
async def test_an_unusable_sessions_folder_is_reported_in_the_app(demo_engine, picture, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the sessions folder should be")
    app = app_for(demo_engine, SessionStore(blocked), [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        await until(pilot, lambda: app.chat.save_error is not None)
        assert "Not saved" in transcript_text(app) and "blocked" in transcript_text(app)
        assert app.chat.conversation.last("assistant") is not None
    assert blocked.read_text() == "a file where the sessions folder should be"


@run_async
async def test_clear_starts_a_new_session_and_keeps_the_old_one(demo_engine, picture, store):
    app = app_for(demo_engine, store, [picture("circle", "red", "blue")])
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        await saved(pilot)
        first = app.chat.session.folder
        await command(pilot, "/clear")
        await ask(pilot, "What shape is it?")
        await saved(pilot, 2)
        assert app.chat.session.folder != first
    titles = sorted(d["title"] for d in on_disk(store))
    assert titles == sorted([QUESTION, "What shape is it?"])
    load_session(first).close()  # the old one was unlocked when the new one began (this would raise)


def test_resume_of_a_damaged_session_is_one_line_and_leaves_the_file(run_vlchat, tmp_path):
    folder = tmp_path / "sessions" / "abcdef123456"
    folder.mkdir(parents=True)
    broken = b'{"format": "vlchat-session", "schema_ver'
    (folder / "session.json").write_bytes(broken)
    result = run_vlchat("--resume", "abcdef123456", "--sessions-dir", tmp_path / "sessions", timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cut short" in result.stderr and "Traceback" not in result.stderr
    assert (folder / "session.json").read_bytes() == broken


@run_async
async def test_session_commands_are_in_the_command_palette(demo_engine, store):
    app = app_for(demo_engine, store)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"/sessions")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: app.screen.id == "session-picker")
        await until(pilot, lambda: "0 of 0 sessions" in str(app.screen.query_one("#picker-info").content))
        await pilot.press("escape")
        await until(pilot, lambda: app.screen.id != "session-picker")
        await pilot.press("ctrl+p")
        await pilot.press(*"/export [")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.chat.prompt.text == "/export "


@run_async
async def test_a_session_open_elsewhere_is_opened_read_only_and_never_written(demo_engine, picture, store):
    held = store.create()  # holds the lock, as another vlchat would
    held.conversation.add_user("Held question")
    held.conversation.add_assistant("Held answer", model="demo")
    held.save()
    before = (held.folder / "session.json").read_bytes()
    try:
        app = app_for(demo_engine, store, [picture("circle", "red", "blue")])
        async with app.run_test(size=(120, 40)) as pilot:
            app.chat.open_session(held.folder)
            await until(pilot, lambda: "Held answer" in transcript_text(app))
            assert "open elsewhere" in transcript_text(app) and "read-only" in transcript_text(app)
            assert "read-only" in app.chat.status_text().plain
            await ask(pilot, QUESTION)
            await settle(pilot)
            assert app.chat.conversation.last("user").text == QUESTION  # kept in memory...
        assert (held.folder / "session.json").read_bytes() == before  # ...never written over the other's
    finally:
        held.close()
