"""Hostile servers and borrowed sessions, as a user meets them: `vlchat ask` against the hostile
modes of tests/openai_server.py, and a session folder that names someone else's server.

Each test asserts what the user sees: the exit code, the one line on stderr, what reaches stdout
and session.json, and how long it took. Deadlines are short and passed as options, so a server
that would hold vlchat forever fails the test in seconds (each hostile mode ends on its own after
HOSTILE_MAX_S anyway).
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.openai_server import HOSTILE_MAX_S, OpenAITestServer
from tests.toolkit import run_async, transcript_text, until
from tests.cli.test_cli_openai import KEY, RED_CIRCLE, one_error_line, vlchat  # noqa: F401 (vlchat is a fixture)
from vlchat.config import load_settings

pytestmark = pytest.mark.timeout(120)

QUESTION = "What colour is the shape?"
# Well under HOSTILE_MAX_S: a vlchat that only stops when the server gives up is too slow.
PROMPT_S = 20.0


def ask_timed(vlchat, *args, **kwargs):
    started = time.monotonic()
    result = vlchat("ask", RED_CIRCLE, QUESTION, *args, **kwargs)
    return result, time.monotonic() - started


# -- deadlines: the token clock counts pieces of the answer, not bytes or keep-alives ----------------------
@pytest.mark.parametrize(
    "mode, words, shown",
    [
        ("demo-trickle", ["sent no answer within 1 s", "--token-timeout"], ""),
        ("demo-keepalive", ["sent no answer within 1 s", "keep-alive messages)", "--token-timeout"], ""),
        ("demo-slow-headers", ["sent no answer within 1 s", "--token-timeout"], ""),
        ("demo-keepalive-midway", ["stopped sending the answer: nothing for 1 s", "partial answer was kept"], "The\n"),
    ],
)
def test_a_server_that_sends_no_answer_is_left_after_the_token_timeout(vlchat, openai_server, mode, words, shown):
    result, took = ask_timed(vlchat, "--endpoint", openai_server.url, "--model", mode, "--token-timeout", "1")
    assert result.returncode == 1, result.stderr
    one_error_line(result, *words)
    assert result.stdout == shown
    assert took < PROMPT_S < HOSTILE_MAX_S


def test_a_model_list_sent_a_byte_at_a_time_is_left_after_the_token_timeout(vlchat, openai_server):
    started = time.monotonic()
    result = vlchat("models", "--endpoint", openai_server.url.replace("/v1", "/trickle/v1"), "--token-timeout", "1")
    assert result.returncode == 1, result.stderr
    one_error_line(result, "sent no model list within 1 s", "--token-timeout")
    assert time.monotonic() - started < PROMPT_S


def test_an_answer_that_never_ends_is_left_at_the_answer_timeout(vlchat, openai_server):
    # A piece every half second, well within --token-timeout: only the total deadline holds.
    result, took = ask_timed(vlchat, "--endpoint", openai_server.url, "--model", "demo-drip",
                             "--max-new-tokens", "100000", "--token-timeout", "5", "--answer-timeout", "3")
    assert result.returncode == 1, result.stderr
    one_error_line(result, "did not finish the answer within 3 s", "--answer-timeout", "partial answer was kept")
    assert result.stdout.startswith("drip drip") and result.stdout.endswith("\n")  # what arrived stays on screen
    assert took < PROMPT_S


# -- caps: max_new_tokens holds on our side; no line is read whole past a bound ------------------------------
def test_a_server_that_ignores_max_tokens_is_cut_at_the_limit(vlchat, openai_server, tmp_path):
    sent_before = len(openai_server.hostile_sent)
    result, took = ask_timed(vlchat, "--endpoint", openai_server.url, "--model", "demo-flood", "--max-new-tokens", "20",
                             "--session", "new", "--json", env={"VLCHAT_SESSIONS_DIR": str(tmp_path / "sessions")})
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["answer"] == ("la " * 20).strip() and record["tokens"] == 20
    assert "went on past --max-new-tokens (20)" in record["notice"]
    saved = json.loads((tmp_path / "sessions").glob("*/session.json").__next__().read_text())
    answer = saved["conversation"]["messages"][-1]
    assert answer["text"] == ("la " * 20).strip() and answer["tokens"] == 20
    # The connection was closed at once, not read on until the server gave up.
    deadline = time.monotonic() + 5
    while len(openai_server.hostile_sent) == sent_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert openai_server.hostile_sent[-1]["seconds"] < PROMPT_S and took < PROMPT_S


def test_a_line_with_no_end_is_refused_without_reading_it_all(vlchat, openai_server):
    sent_before = len(openai_server.hostile_sent)
    result, took = ask_timed(vlchat, "--endpoint", openai_server.url, "--model", "demo-huge-line", "--token-timeout", "10")
    assert result.returncode == 1, result.stderr
    one_error_line(result, "a line of over 1.0 MB", "stopped reading")
    deadline = time.monotonic() + 5
    while len(openai_server.hostile_sent) == sent_before and time.monotonic() < deadline:
        time.sleep(0.05)
    # 64 MB were on offer: what left the server is what fits in the two sockets' buffers, not the line.
    assert openai_server.hostile_sent[-1]["bytes"] < openai_server.huge_line_bytes // 4


def test_usage_figures_no_model_could_count_are_not_recorded(vlchat, openai_server):
    result = vlchat("ask", RED_CIRCLE, QUESTION, "--endpoint", openai_server.url, "--model", "demo-bad-usage", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["answer"] == "The shape is red."
    assert 0 < record["tokens"] <= 512 and record["prompt_tokens"] is None


# -- credentials: every one we sent is scrubbed from what the server says -----------------------------------
def credentials_sent(server, how: str):
    """(endpoint, environment, the secrets in every form they went out in) for each way of sending one."""
    if how == "key":
        return server.url, {"VLCHAT_API_KEY": KEY}, [KEY]
    basic = base64.b64encode(b"alice:hunter2-secret").decode()
    endpoint = f"http://alice:hunter2-secret@127.0.0.1:{server.port}/v1?api_key=sk-query-secret-77&tenant=lab"
    return endpoint, {}, ["hunter2-secret", basic, "sk-query-secret-77"]


@pytest.mark.parametrize("how", ["key", "userinfo and query"])
def test_credentials_echoed_in_an_error_never_reach_the_screen(vlchat, openai_server, how):
    endpoint, env, secrets = credentials_sent(openai_server, how)
    result = vlchat("ask", RED_CIRCLE, QUESTION, "--endpoint", endpoint, "--model", "demo-echo-error", env=env)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result, "400", "***")
    sent = openai_server.requests[-1]
    assert sent["authorization"] and sent["authorization"].split()[-1] in secrets  # the server did get one
    for secret in secrets:
        assert secret not in line and secret not in result.stdout
    if how != "key":
        # The query stays at the end of the URL: the model list and the question both reached the API.
        assert sent["path"] == "/v1/chat/completions?api_key=sk-query-secret-77&tenant=lab"
        assert "tenant=lab" in line and "hunter2" not in line


@pytest.mark.parametrize("how", ["key", "userinfo and query"])
def test_credentials_echoed_in_an_answer_are_neither_shown_nor_saved(vlchat, openai_server, tmp_path, how):
    endpoint, env, secrets = credentials_sent(openai_server, how)
    sessions = tmp_path / "sessions"
    result = vlchat("ask", RED_CIRCLE, QUESTION, "--endpoint", endpoint, "--model", "demo-echo-answer",
                    "--session", "new", env={**env, "VLCHAT_SESSIONS_DIR": str(sessions)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("You sent Authorization=") and "***" in result.stdout
    saved = next(sessions.glob("*/session.json")).read_text()
    assert json.loads(saved)["conversation"]["messages"][-1]["text"] == result.stdout.strip()
    for secret in secrets:
        assert secret not in result.stdout and secret not in result.stderr and secret not in saved


def test_print_config_shows_the_endpoint_without_its_credentials(vlchat):
    endpoint = "http://alice:hunter2-secret@gpu-box:8000/v1?api_key=sk-query-secret-77&tenant=lab"
    shown = vlchat("--print-config", env={"VLCHAT_ENDPOINT": endpoint})
    assert shown.returncode == 0, shown.stderr
    assert "endpoint = 'http://***@gpu-box:8000/v1?api_key=***&tenant=lab'    # $VLCHAT_ENDPOINT" in shown.stdout
    assert "hunter2" not in shown.stdout and "sk-query" not in shown.stdout and "alice" not in shown.stdout


def test_a_redirect_names_where_it_goes(vlchat, openai_server):
    moved = openai_server.url.replace("/v1", "/moved/v1")
    result = vlchat("ask", RED_CIRCLE, QUESTION, "--endpoint", moved, "--model", "demo", env={"VLCHAT_API_KEY": KEY})
    assert result.returncode == 1
    one_error_line(result, f"redirects to {openai_server.url}", f"Use that URL: --endpoint {openai_server.url}")
    assert openai_server.requests[-1]["path"] == "/moved/v1/models"  # not followed: the key went nowhere else


# -- a session folder names a server: it gets no key unless the user names it too ----------------------------
def session_on(vlchat, server, sessions) -> str:
    """A session whose model ran on ``server`` (as a session folder from someone else would say)."""
    made = vlchat("ask", RED_CIRCLE, QUESTION, "--endpoint", server.url, "--model", "demo", "--session", "new", "--json",
                  env={"VLCHAT_SESSIONS_DIR": str(sessions)})
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)["session"]["path"]


def test_ask_session_sends_no_key_to_the_server_the_session_names(vlchat, demo_engine, tmp_path):
    with OpenAITestServer(demo_engine) as server:
        folder = session_on(vlchat, server, tmp_path / "sessions")
        env = {"VLCHAT_API_KEY": KEY, "VLCHAT_SESSIONS_DIR": str(tmp_path / "sessions")}
        seen = len(server.requests)
        result = vlchat("ask", "What shape is it?", "--session", folder, env=env)
        assert result.returncode == 0, result.stderr
        assert "circle" in result.stdout
        assert result.stderr.splitlines()[0] == (
            f"vlchat: note: your API key is not sent to {server.url}: that server was named by the session file, "
            f"not by you (pass --endpoint {server.url} to send it)"
        )
        assert [r["authorization"] for r in server.requests[seen:]] == [None, None]  # the model list, the question

        # Named by the user: the key goes, and nothing is said about it.
        seen = len(server.requests)
        confirmed = vlchat("ask", "What shape is it?", "--session", folder, "--endpoint", server.url, env=env)
        assert confirmed.returncode == 0, confirmed.stderr
        assert "note" not in confirmed.stderr
        assert [r["authorization"] for r in server.requests[seen:]] == [f"Bearer {KEY}"] * 2


@run_async
async def test_resuming_in_the_app_sends_no_key_to_the_server_the_session_names(vlchat, demo_engine, tmp_path, monkeypatch):
    from vlchat.commands.app import resume_session
    from vlchat.ui.app import make_app

    monkeypatch.setenv("VLCHAT_CONFIG_DIR", str(tmp_path / "config"))  # never the person's own themes

    with OpenAITestServer(demo_engine) as server:
        session_on(vlchat, server, tmp_path / "sessions")
        settings, sources = load_settings(
            {"sessions_dir": str(tmp_path / "sessions"), "image_protocol": "halfblock"},
            env={"VLCHAT_API_KEY": KEY}, path=tmp_path / "none.toml",
        )
        session, notes = resume_session("", settings, sources)
        seen = len(server.requests)
        app = make_app(settings, session=session, session_notes=notes, sources=sources, remember_theme=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.loaded, timeout=30)
            await until(pilot, lambda: "API key is not sent to" in transcript_text(app), timeout=10)
            app.chat.prompt.text = "What shape is it?"
            await pilot.press("enter")
            await until(pilot, lambda: app.chat.generating is None and len(app.chat.conversation.messages) == 4, timeout=60)
            assert "circle" in app.chat.conversation.messages[-1].text
        session.close()
        assert [r["authorization"] for r in server.requests[seen:]] == [None, None]
