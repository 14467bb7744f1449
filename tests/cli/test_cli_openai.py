"""`vlchat ask --endpoint` and `vlchat models` as a user runs them, against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import vlchat_command
from tests.openai_server import OpenAITestServer, unanswering_port
from tests.toolkit import free_port
from vlchat.demo import SAMPLES_DIR

pytestmark = pytest.mark.timeout(120)

RED_CIRCLE = SAMPLES_DIR / "red-circle.png"
KEY = "sk-cli-test-key-do-not-show-4242"


@pytest.fixture
def vlchat(tmp_path):
    """Run `vlchat` with a clean environment: no config file, no VLCHAT_* from whoever runs the tests."""

    def run(*args, env=None, timeout=60):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("VLCHAT_")}
        full_env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), VLCHAT_CONFIG=str(tmp_path / "none.toml"))
        full_env.update(env or {})
        return subprocess.run(
            [*vlchat_command(), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=full_env
        )

    return run


def one_error_line(result, *words: str) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vlchat: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# -- answers -----------------------------------------------------------------------------------------------
def test_ask_a_server_streams_the_models_answer(vlchat, openai_server):
    result = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", openai_server.url, "--model", "demo")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "The shape is red.\n"
    assert result.stderr == ""  # no "using the demo model" note: the model is the server's


def test_ask_with_the_endpoint_from_the_environment_and_json(vlchat, openai_server, picture):
    blue = picture("square", "blue", "white")
    result = vlchat("ask", blue.ref.path, "What colour is the shape?", "--json", "--model", "demo",
                    env={"VLCHAT_ENDPOINT": openai_server.url})
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert "blue" in record["answer"] and record["model"] == "demo"
    assert record["endpoint"] == openai_server.url and record["quantization"] == "server-side"
    assert record["tokens"] >= 3 and record["prompt_tokens"] > 10 and record["stopped"] is False


def test_ask_two_pictures_answers_about_the_last(vlchat, openai_server, picture):
    first, second = picture("circle", "red", "white"), picture("triangle", "green", "black")
    result = vlchat("ask", first.ref.path, second.ref.path, "What shape is it?", "--endpoint", openai_server.url,
                    "--model", "shapes", "--image-max-side", "128")
    assert result.returncode == 0, result.stderr
    assert "triangle" in result.stdout
    sent = [r for r in openai_server.requests if r["method"] == "POST"][-1]["pictures"]
    assert [(p["width"], p["height"]) for p in sent] == [(128, 128), (128, 128)]


def test_models_lists_what_the_server_serves(vlchat, openai_server):
    result = vlchat("models", "--endpoint", openai_server.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "OWNED", "BY", "CONTEXT"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["demo"] == ["vllm", "2048"] and rows["shapes:latest"] == ["library"]

    result = vlchat("models", "--json", env={"VLCHAT_ENDPOINT": openai_server.url})
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0] == {"id": "demo", "owned_by": "vllm", "context_length": 2048, "endpoint": openai_server.url}
    assert {r["id"] for r in records} == set(openai_server.models)


def test_models_without_an_endpoint_shows_the_demo_model(vlchat):
    result = vlchat("models")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:2] == ["demo", "bundled"]
    assert json.loads(vlchat("models", "--json").stdout.splitlines()[0])["name"] == "demo"


def test_a_server_answer_never_imports_torch(openai_server):
    code = (
        "import sys, contextlib, io\n"
        "import vlchat.cli as cli\n"
        f"argv = ['ask', {str(RED_CIRCLE)!r}, 'What colour is the shape?', '--endpoint', {openai_server.url!r}, '--model', 'demo']\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    code = cli.main(argv)\n"
        "print(code, out.getvalue().strip(), [m for m in ('torch', 'transformers', 'textual') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "0 The shape is red. []", result.stdout + result.stderr


def test_escape_sequences_from_the_server_are_stripped(vlchat, openai_server):
    result = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", openai_server.url, "--model", "demo-escape")
    assert result.returncode == 0, result.stderr
    assert "red" in result.stdout and "\x1b" not in result.stdout and "\x07" not in result.stdout


# -- the key ----------------------------------------------------------------------------------------------------
def test_the_key_is_sent_but_never_shown(vlchat, demo_engine):
    with OpenAITestServer(demo_engine, api_key=KEY) as server:
        result = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", server.url, "--model", "demo",
                        "--json", env={"VLCHAT_API_KEY": KEY})
        assert result.returncode == 0, result.stderr
        assert "red" in json.loads(result.stdout)["answer"] and KEY not in result.stdout + result.stderr
        assert server.requests[-1]["authorization"] == f"Bearer {KEY}"

        missing = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", server.url)
        assert missing.returncode == 1
        one_error_line(missing, "401", "--api-key", "VLCHAT_API_KEY")

        wrong_key = "sk-wrong-" + KEY[::-1]
        wrong = vlchat("models", "--endpoint", server.url, "--api-key", wrong_key)
        assert wrong.returncode == 1 and wrong_key not in wrong.stderr + wrong.stdout
        one_error_line(wrong, "401", "not accepted")

    shown = vlchat("--print-config", env={"VLCHAT_API_KEY": KEY, "VLCHAT_ENDPOINT": "http://gpu-box:8000/v1"})
    assert shown.returncode == 0 and KEY not in shown.stdout
    assert "api_key = (set, hidden)    # $VLCHAT_API_KEY" in shown.stdout
    assert "endpoint = 'http://gpu-box:8000/v1'" in shown.stdout


# -- errors: one line on stderr, exit 1; the partial answer stays on stdout -------------------------------------------
SERVER_ERRORS = {
    "demo-forbidden": (["403"], False),
    "demo-busy": (["429", "Retry in 7 s"], False),
    "demo-crash": (["500", "server's log"], False),
    "demo-gone": (["no model 'demo-gone'"], False),
    "no-such-model": (["no model 'no-such-model'", "demo, shapes:latest"], False),
    "demo-text-only": (["does not accept pictures"], False),
    "demo-cut": (["ended without its final event", "partial answer was kept"], True),
    "demo-drop": (["broke off the answer", "partial answer was kept"], True),
    "demo-bad-json": (["not valid JSON"], True),
    "demo-stall": (["nothing for 2 s", "--token-timeout"], True),
}


@pytest.mark.parametrize("model", sorted(SERVER_ERRORS))
def test_server_errors(vlchat, openai_server, model):
    words, partial = SERVER_ERRORS[model]
    result = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", openai_server.url, "--model", model,
                    "--token-timeout", "2")
    assert result.returncode == 1, result.stderr
    one_error_line(result, *words)
    if partial:
        assert result.stdout.endswith("\n") and "The shape is red.".startswith(result.stdout.strip())
        assert result.stdout.strip()
    else:
        assert result.stdout == ""


def test_request_too_large(vlchat, demo_engine, picture):
    big = picture("circle", "red", "white", size=1024)
    with OpenAITestServer(demo_engine, max_body=10_000) as server:
        result = vlchat("ask", big.ref.path, "What colour is the shape?", "--endpoint", server.url)
        assert result.returncode == 1
        one_error_line(result, "413", "--image-max-side")
        result = vlchat("ask", big.ref.path, "What colour is the shape?", "--endpoint", server.url, "--image-max-side", "192")
        assert result.returncode == 0 and "red" in result.stdout


def test_connection_refused_dns_and_bad_path(vlchat, openai_server):
    refused = vlchat("ask", RED_CIRCLE, "What colour?", "--endpoint", f"127.0.0.1:{free_port()}")
    assert refused.returncode == 1
    one_error_line(refused, "connection refused", "ssh -L")
    dns = vlchat("models", "--endpoint", "http://no-such-host.invalid:8000/v1", "--connect-timeout", "5")
    assert dns.returncode == 1
    one_error_line(dns, "no-such-host.invalid", "DNS")
    wrong_path = vlchat("models", "--endpoint", openai_server.url.removesuffix("/v1") + "/api")
    assert wrong_path.returncode == 1
    one_error_line(wrong_path, "404", "/v1")


def test_connect_timeout(vlchat):
    with unanswering_port() as port:
        result = vlchat("models", "--endpoint", f"http://127.0.0.1:{port}/v1", "--connect-timeout", "0.5")
    assert result.returncode == 1
    one_error_line(result, "0.5 s", "--connect-timeout")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--endpoint", "ftp://gpu-box/v1"], ["ftp://gpu-box/v1", "http://"]),
        (["--endpoint", "http://gpu-box:port/v1"], ["port"]),
        (["--image-max-side", "0"], ["image_max_side"]),
        (["--token-timeout", "0"], ["token_timeout"]),
        (["--connect-timeout", "soon"], ["--connect-timeout"]),
    ],
)
def test_bad_usage_exits_2(vlchat, openai_server, args, words):
    base = ["--endpoint", openai_server.url] if "--endpoint" not in args else []
    result = vlchat("ask", RED_CIRCLE, "What colour?", *base, *args)
    assert result.returncode == 2, result.stderr
    one_error_line(result, *words)


# -- Ctrl-C closes the connection ------------------------------------------------------------------------------------
def test_ctrl_c_closes_the_connection_at_once(openai_server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLCHAT_")}
    env.update(PYTHONUNBUFFERED="1", VLCHAT_CONFIG=str(tmp_path / "none.toml"))
    process = subprocess.Popen(
        [*vlchat_command(), "ask", str(RED_CIRCLE), "Describe the picture.", "--endpoint", openai_server.url,
         "--model", "demo-endless", "--max-new-tokens", "3000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        assert os.read(process.stdout.fileno(), 64)  # the answer is streaming
        interrupted_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert b"Traceback" not in err and b"stopped" in err
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not any(t >= interrupted_at for t in openai_server.disconnects):
        time.sleep(0.01)
    seen = [t for t in openai_server.disconnects if t >= interrupted_at]
    assert seen and seen[0] - interrupted_at < 1.0


# -- sessions: the server is remembered, the key never -------------------------------------------------------
def test_a_session_records_the_endpoint_not_the_key_and_resumes_on_the_server(vlchat, demo_engine, tmp_path, picture):
    sessions = tmp_path / "sessions"
    green = picture("triangle", "green", "black")
    with OpenAITestServer(demo_engine, api_key=KEY) as server:
        env = {"VLCHAT_API_KEY": KEY, "VLCHAT_SESSIONS_DIR": str(sessions)}
        first = vlchat("ask", green.ref.path, "What colour is the shape?", "--endpoint", server.url, "--model", "demo",
                       "--session", "new", "--json", env=env)
        assert first.returncode == 0, first.stderr
        folder = json.loads(first.stdout)["session"]["path"]
        saved = open(os.path.join(folder, "session.json"), encoding="utf-8").read()
        assert KEY not in saved
        assert json.loads(saved)["model"]["endpoint"] == server.url
        def chats() -> int:
            return sum(1 for r in server.requests if r["method"] == "POST")

        asked = chats()
        # No --endpoint this time: the session says where its model runs, but a server named only by
        # a session file never gets the key, and vlchat says so.
        unnamed = vlchat("ask", "What shape is it?", "--session", folder, env=env)
        assert unnamed.returncode == 1
        assert "your API key is not sent to" in unnamed.stderr and "401" in unnamed.stderr
        assert chats() == asked and server.requests[-1]["authorization"] is None
        again = vlchat("ask", "What shape is it?", "--session", folder, "--endpoint", server.url, env=env)
        assert again.returncode == 0, again.stderr
        assert "triangle" in again.stdout
        assert chats() == asked + 1
        assert KEY not in open(os.path.join(folder, "session.json"), encoding="utf-8").read()
        out = tmp_path / "talk.md"
        exported = vlchat("export", folder, "-o", out, env=env)
        assert exported.returncode == 0, exported.stderr
        assert f"- **Server:** {server.url}" in out.read_text() and KEY not in out.read_text()


def test_ask_json_says_why_the_servers_answer_ended(vlchat, openai_server):
    cut = vlchat("ask", RED_CIRCLE, "Describe the picture.", "--endpoint", openai_server.url, "--model", "demo-endless",
                 "--max-new-tokens", "5", "--json")
    assert cut.returncode == 0, cut.stderr
    assert json.loads(cut.stdout)["finish_reason"] == "length"
    done = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", openai_server.url, "--model", "demo", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["finish_reason"] == "stop"
