"""What the app tells the person about their conversation: how an answer ended, the context count
after every change, a resumed session's missing pictures, and where each kind of feedback goes.

Against the real engine on the demo model (and its endless copy), through Textual's Pilot.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.toolkit import QUESTION, ask, command, notifications, run_async, screen_text, settings, settle, status_text, transcript_text, until
from vlchat.core.sessions import SessionStore
from vlchat.ui.app import make_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store(tmp_path):
    return SessionStore(tmp_path / "sessions")


def app_for(engine, store, pictures=(), session=None, **overrides):
    return make_app(settings(**overrides), [p.ref for p in pictures], engine=engine, engine_loaded=True, store=store, session=session)


def on_disk(store) -> list[dict]:
    return [json.loads((folder / "session.json").read_text()) for folder in store.folders()]


# -- item 8: an answer cut at the token limit is marked ----------------------------------------------
@run_async
async def test_an_answer_cut_at_the_token_limit_is_marked_on_screen_and_in_the_session(endless_engine, demo_engine, picture, store):
    app = app_for(endless_engine, store, [picture("circle", "red", "blue")], max_new_tokens=8)
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        assert "… cut at 8 tokens" in transcript_text(app)
        assert "stopped" not in transcript_text(app)
        await until(pilot, lambda: app.chat.sessions.idle and on_disk(store))
        [data] = on_disk(store)
        answer = data["conversation"]["messages"][-1]
        assert answer["finish_reason"] == "length" and answer["stopped"] is False and answer["tokens"] == 8

    # A model that finishes its answer: no mark, and the session says so.
    finished = SessionStore(store.root.parent / "finished")
    app = app_for(demo_engine, finished, [picture("circle", "red", "blue")], max_new_tokens=64)
    async with app.run_test(size=(120, 40)) as pilot:
        await ask(pilot, QUESTION)
        assert "The shape is red." in transcript_text(app) and "cut at" not in transcript_text(app)
        await until(pilot, lambda: app.chat.sessions.idle and on_disk(finished))
        assert on_disk(finished)[0]["conversation"]["messages"][-1]["finish_reason"] == "stop"


# -- item 10: the context count follows every change ----------------------------------------------------
def ctx(app) -> int | None:
    import re

    found = re.search(r"ctx (\d+)/", status_text(app))
    return int(found.group(1)) if found else None


@run_async
async def test_the_context_count_follows_edit_clear_and_load(demo_engine, picture, store):
    app = app_for(demo_engine, store, [picture("circle", "red", "blue")])
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: ctx(app) is not None)
        await settle(pilot)
        alone = ctx(app)  # the picture waiting for a question
        await ask(pilot, QUESTION)
        await until(pilot, lambda: ctx(app) is not None and ctx(app) > alone)
        answered = ctx(app)
        # /edit empties the conversation again (the question back in the prompt, its picture attached)
        await command(pilot, "/edit")
        await until(pilot, lambda: ctx(app) == alone, timeout=20)
        assert app.chat.conversation.last("user") is None
        await ask(pilot, QUESTION)
        await until(pilot, lambda: ctx(app) == answered, timeout=20)
        first = app.chat.session.folder
        # /clear: a new conversation with the picture on screen
        await command(pilot, "/clear")
        await until(pilot, lambda: ctx(app) == alone, timeout=20)
        # /load: the first session again, counted as it is
        app.chat.open_session(first)
        await until(pilot, lambda: app.chat.conversation.last("assistant") is not None and ctx(app) == answered, timeout=20)


# -- item 12: a picture missing from a resumed session is said once, with the right advice -------------
@run_async
async def test_a_picture_missing_from_a_resumed_session_is_reported_once(demo_engine, picture, store):
    original = picture("circle", "red", "blue")
    with store.create() as session:
        ref = session.attach(original)
        session.conversation.add_user(QUESTION, [ref])
        session.conversation.add_assistant("The shape is red.", model="demo")
        session.save()
        name = session.pictures[ref.sha256].name
    os.unlink(session.folder / session.pictures[ref.sha256].file)
    resumed = app_for(demo_engine, store, session=store.open(), image_protocol="halfblock")
    async with resumed.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        await until(pilot, lambda: "missing" in screen_text(resumed))
        shown = transcript_text(resumed)
        lines = [line for line in shown.splitlines() if "is missing" in line or "not found" in line.lower()]
        assert len(lines) == 1, lines
        assert name in lines[0] and "Attach it again" in lines[0] and original.ref.path in lines[0]
        everything = screen_text(resumed) + shown + notifications(resumed)
        assert "check the name" not in everything.lower()
        assert "The shape is red." in shown


# -- item 13: messages say what happened, where the rule says ---------------------------------------------
@run_async
async def test_messages_name_what_the_person_typed_and_go_where_the_rule_says(demo_engine, picture, store, tmp_path):
    first, second = picture("circle", "red", "blue"), picture("square", "green", "white")
    app = app_for(demo_engine, store)
    async with app.run_test(size=(160, 40)) as pilot:
        # /save with nothing to save says so (and creates nothing)
        await command(pilot, "/save")
        assert "Nothing to save yet" in transcript_text(app) and "Saved" not in transcript_text(app)
        assert list(store.folders()) == []
        # /set echoes what was typed, in the name that was typed
        await command(pilot, "/set seed none")
        assert "seed = none" in transcript_text(app) and "None" not in transcript_text(app)
        await command(pilot, "/set max_tokens 0")
        assert "max_tokens must be" in transcript_text(app) and "max_new_tokens" not in transcript_text(app)
        # errors of commands are in the transcript, never also a toast
        await command(pilot, "/frobnicate")
        assert "Unknown command /frobnicate" in transcript_text(app) and "frobnicate" not in notifications(app)
        await ask(pilot, QUESTION)
        # two pictures attached after a question: "they go"
        await command(pilot, f"/image {first.ref.path} {second.ref.path}")
        await until(pilot, lambda: "Attached" in transcript_text(app))
        assert "they go with your next question" in transcript_text(app)
        # passing state is one toast, each replacing the one before
        await pilot.press("ctrl+y")
        await pilot.press("ctrl+y")
        await command(pilot, "/copy")
        await until(pilot, lambda: "Copied" in notifications(app))
        assert len(app.notification_texts()) == 1
        session = app.chat.session
        title = session.title
    # /delete by id names the session by its title
    other = app_for(demo_engine, store)
    async with other.run_test(size=(160, 40)) as pilot:
        await command(pilot, f"/delete {session.id[:4]}")
        await until(pilot, lambda: "Delete the session" in screen_text(other))
        assert repr(title) in screen_text(other) or title in screen_text(other)
        await pilot.press("escape")
        await until(pilot, lambda: "Nothing deleted." in transcript_text(other))


@run_async
async def test_a_server_dropping_the_connection_is_an_error_not_a_stop(openai_server, picture, store):
    from vlchat.engines.openai import OpenAIEngine

    engine = OpenAIEngine(openai_server.url, "demo-drop")
    engine.load()
    app = app_for(engine, store, [picture("circle", "red", "blue")], model="demo-drop", max_new_tokens=64)
    async with app.run_test(size=(160, 40)) as pilot:
        app.chat.prompt.text = QUESTION
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.generating is None and app.chat.conversation.last("assistant") is not None)
        await settle(pilot)
        shown = transcript_text(app)
        assert "■ ended by an error" in shown and "■ stopped" not in shown
        answer = app.chat.conversation.last("assistant")
        assert answer.finish_reason == "error" and answer.text
    engine.unload()
