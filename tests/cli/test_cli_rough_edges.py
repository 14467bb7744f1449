"""Issue 16, the command line: what a new user met with `vlchat ask` and servers, as they run it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import vlchat_command
from tests.openai_server import OpenAITestServer
from vlchat.demo import SAMPLES_DIR
from vlchat.demo.shapes import NO_PICTURE_ANSWER

pytestmark = pytest.mark.timeout(180)

RED_CIRCLE = SAMPLES_DIR / "red-circle.png"
GREEN_TRIANGLE = SAMPLES_DIR / "green-triangle.png"


@pytest.fixture
def vlchat(tmp_path):
    sessions = tmp_path / "sessions"

    def run(*args, env=None, timeout=120):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("VLCHAT_")}
        full_env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), VLCHAT_CONFIG=str(tmp_path / "none.toml"),
                        VLCHAT_SESSIONS_DIR=str(sessions))
        full_env.update(env or {})
        return subprocess.run([*vlchat_command(), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              env=full_env, cwd=tmp_path)

    run.sessions = sessions
    return run


def error_line(result) -> str:
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("vlchat: error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- 17, 18: pictures and the question -----------------------------------------------------------------------
@pytest.mark.parametrize("args", [["pics/landscap.jpg"], ["landscap.jpg"], [RED_CIRCLE, "pics/landscap.jpg", "What is it?"]])
def test_a_mistyped_picture_is_an_error_not_a_question(vlchat, args):
    result = vlchat("ask", *args)
    assert result.returncode == 2, result
    assert "no picture at" in error_line(result) and "landscap.jpg" in error_line(result)
    assert result.stdout == ""


@pytest.mark.parametrize("question", ["What colour is the shape?", "Describe the picture.", "How many shapes are there?"])
def test_a_question_with_no_picture_says_so_and_the_demo_model_sees_none(vlchat, question):
    """The demo model was never shown a question without a picture and made one up ("The shapes
    are yellow."); it now says it sees none, as it was taught (vlchat/demo/model/README.md)."""
    result = vlchat("ask", question)
    assert result.returncode == 0, result.stderr
    assert "vlchat: note: no picture is sent with this question" in result.stderr
    assert result.stdout.strip() == NO_PICTURE_ANSWER
    # and with a picture it answers about it, as before
    seen = vlchat("ask", RED_CIRCLE, question)
    assert seen.returncode == 0 and seen.stdout.strip() != NO_PICTURE_ANSWER, seen
    assert "no picture is sent" not in seen.stderr


def test_help_and_behaviour_agree_on_one_question(vlchat):
    shown = vlchat("ask", "--help")
    assert "[IMAGE...] QUESTION [IMAGE... QUESTION ...]" not in shown.stdout
    assert "One question per ask" in shown.stdout
    result = vlchat("ask", RED_CIRCLE, "What colour?", GREEN_TRIANGLE, "What shape?")
    assert result.returncode == 2
    line = error_line(result)
    assert "only the last argument is the question" in line and "--session" in line


# -- 27: the seed ---------------------------------------------------------------------------------------------
def test_a_seed_beyond_32_bits_is_refused_before_anything_runs(vlchat):
    result = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--seed", str(2**64), "--temperature", "0.7")
    assert result.returncode == 2
    assert "seed must be a whole number from 0 to 4294967295" in error_line(result)
    ok = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--seed", str(2**32 - 1), "--temperature", "0.7")
    assert ok.returncode == 0, ok.stderr


# -- 22: an empty stream --------------------------------------------------------------------------------------
def test_an_empty_stream_is_an_error_and_saves_no_answer(vlchat, openai_server):
    result = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", openai_server.url,
                    "--model", "demo-empty", "--session", "new", "--json")
    assert result.returncode == 1
    assert "ended the answer without sending any of it" in error_line(result)
    [folder] = list(vlchat.sessions.iterdir())
    saved = json.loads((folder / "session.json").read_text())
    assert [m["role"] for m in saved["conversation"]["messages"]] == ["user"]


# -- 25: a model the server loads on demand ---------------------------------------------------------------------
def test_a_model_the_server_does_not_list_is_asked_for_anyway(vlchat, demo_engine):
    # A server that loads models on demand lists only the loaded ones (here: none of them).
    with OpenAITestServer(demo_engine, models=["shapes-v1"]) as server:
        server.listed = []
        unnamed = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", server.url)
        assert unnamed.returncode == 1
        assert "lists no models" in error_line(unnamed) and "--model" in error_line(unnamed)
        assert "Pass one of those names" not in unnamed.stderr
        named = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", server.url, "--model", "shapes-v1")
        assert named.returncode == 0, named.stderr
        assert named.stdout == "The shape is red.\n"


# -- 23, 24: a failed turn, and resuming on a server ------------------------------------------------------------
def test_a_failed_turn_is_not_sent_again_and_the_server_model_is_kept(vlchat, demo_engine):
    with OpenAITestServer(demo_engine) as server:
        first = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", server.url + "/", "--session", "new",
                       "--model", "demo", "--json")
        assert first.returncode == 0, first.stderr
        folder = json.loads(first.stdout)["session"]["path"]
        saved = json.loads(open(os.path.join(folder, "session.json")).read())
        assert saved["model"]["endpoint"] == server.url  # normalised: no trailing slash
        assert saved["model"]["model"] == "demo" and saved["model"]["name"] == "demo"

        server.empty_answers = 1
        failed = vlchat("ask", "What shape is it?", "--session", folder, "--endpoint", server.url)
        assert failed.returncode == 1
        # --endpoint repeated, no --model: the session's model is kept, not replaced by "demo"-the-default
        again = vlchat("ask", "What shape is it?", "--session", folder, "--endpoint", server.url)
        assert again.returncode == 0, again.stderr
        assert "circle" in again.stdout
        sent = [r for r in server.requests if r["method"] == "POST"][-1]["body"]["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "user"]
        saved = json.loads(open(os.path.join(folder, "session.json")).read())
        roles = [m["role"] for m in saved["conversation"]["messages"]]
        assert roles == ["user", "assistant", "user", "user", "assistant"]  # the unanswered one stays visible


def test_a_session_without_model_records_the_servers_model(vlchat, demo_engine):
    with OpenAITestServer(demo_engine, models=["shapes-v1"]) as server:
        first = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", server.url, "--session", "new", "--json")
        folder = json.loads(first.stdout)["session"]["path"] if first.returncode == 0 else None
        assert folder, first.stderr
        saved = json.loads(open(os.path.join(folder, "session.json")).read())
        assert saved["model"]["model"] == "shapes-v1" and saved["model"]["name"] == "shapes-v1"


# -- 19: --session by title -------------------------------------------------------------------------------------
def test_session_by_title_takes_the_most_recent_and_says_so(vlchat):
    for _ in range(2):
        made = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--session", "new", "--json")
        assert made.returncode == 0, made.stderr
    latest = json.loads(made.stdout)["session"]["id"]
    for name in ("What colour is the shape?", "colour is"):  # the whole title, and a part of it
        again = vlchat("ask", "What shape is it?", "--session", name, "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["session"]["id"] == latest
        assert f"2 sessions fit {name!r}; using the most recent, {latest}" in again.stderr
    short = vlchat("ask", "What shape is it?", "--session", latest[:3])
    assert short.returncode == 2
    assert "at least its first 4 characters" in error_line(short)
    by_id = vlchat("ask", "What shape is it?", "--session", latest[:4], "--json")
    assert json.loads(by_id.stdout)["session"]["id"] == latest and "using the most recent" not in by_id.stderr


# -- 20: one documented schema for ask --json -----------------------------------------------------------------------
def readme_json_fields() -> tuple[set[str], set[str]]:
    """(fields, optional fields) from the README's `ask --json` table."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = text.split("`--json` prints one record", 1)[1].split("Exit codes", 1)[0]
    fields, optional = set(), set()
    for line in table.splitlines():
        if line.startswith("| `"):
            names = {part.strip(" `") for part in line.split("|")[1].split(",")}
            fields |= names
            if "optional" in line or "only with" in line:
                optional |= names
    return fields, optional


def test_ask_json_has_the_documented_fields(vlchat, openai_server):
    fields, optional = readme_json_fields()
    assert "images" in fields and "finish_reason" in fields - optional  # every answer says why it ended
    local = json.loads(vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--json").stdout)
    served = json.loads(vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--json", "--endpoint", openai_server.url,
                               "--model", "demo").stdout)
    for record in (local, served):
        assert set(fields - optional) <= set(record) <= fields, set(record) ^ fields
    assert local["device"] == "cpu" and local["endpoint"] is None
    assert served["device"] is None and served["endpoint"] == openai_server.url


# -- 21: the demo model's wording -----------------------------------------------------------------------------------
def test_the_demo_model_writes_plurals_and_articles_properly(vlchat, tmp_path):
    import random

    from vlchat.demo.shapes import Scene, draw_scene

    crosses = tmp_path / "crosses.png"
    draw_scene(Scene("cross", "yellow", "orange", 2), size=256, rng=random.Random(3)).save(crosses)
    orange = tmp_path / "orange.png"
    draw_scene(Scene("circle", "orange", "blue", 1), size=256, rng=random.Random(4)).save(orange)
    described = vlchat("ask", crosses, "Describe the picture.")
    assert described.stdout == "Two yellow crosses on an orange background.\n", described.stderr
    assert vlchat("ask", crosses, "What shapes are these?").stdout == "They are crosses.\n"
    assert vlchat("ask", orange, "Describe the picture.").stdout == "An orange circle on a blue background.\n"


# -- 26: /model in the app with --endpoint ------------------------------------------------------------------------
def test_model_picker_with_an_endpoint_lists_the_servers_models(openai_server):
    from textual.widgets import OptionList

    from tests.toolkit import app_for, run_async, settle, until
    from vlchat.engines.openai import OpenAIEngine
    from vlchat.ui.models_screen import ModelPicker

    @run_async
    async def drive():
        engine = OpenAIEngine(openai_server.url, "demo")
        engine.load()
        app = app_for(engine, endpoint=openai_server.url, model="demo")
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            app.chat.prompt.text = "/model"
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ModelPicker) and len(app.screen.rows) > 0, timeout=30)
            options = app.screen.query_one(OptionList)
            shown = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
            assert any("shapes:latest" in line for line in shown), shown
            assert not any("llava-1.5-7b" in line for line in shown), shown  # the local registry's
            assert any(line.startswith("● demo") for line in shown)
            await pilot.press("escape")

    drive()
