"""The client against a real OpenAI-compatible server that no one here wrote: `transformers serve`
(from `transformers[serving]`, in the test extra) serving the demo model on the CPU.

The server is started once for the module, on a free port, with no model pinned: it loads a model
folder on demand when a request names it, and lists only the models it has loaded, as a user's
`transformers serve` does. If `transformers[serving]` is not installed the module is skipped with
the reason; `.ci/run` installs the test extra, so in CI it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import vlchat_command
from tests.toolkit import QUESTION, free_port, run_async, settle, until
from vlchat.demo import MODEL_DIR, SAMPLES_DIR, endless_copy

pytestmark = pytest.mark.timeout(180)

RED_CIRCLE = SAMPLES_DIR / "red-circle.png"
START_TIMEOUT_S = 90


def _serving_missing() -> str | None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        return f"transformers[serving] is not installed ({error.name} is missing): pip install -e '.[test]'"
    if shutil.which("transformers", path=os.path.dirname(sys.executable)) is None:
        return "the `transformers` command is not installed beside this Python"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`transformers serve` on 127.0.0.1:PORT, waited for until it answers; its log if it fails."""
    missing = _serving_missing()
    if missing:
        pytest.skip(missing)
    home = tmp_path_factory.mktemp("serve")
    log = open(home / "serve.log", "wb")
    port = free_port()
    env = dict(os.environ, HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "transformers"), "serve", "--host", "127.0.0.1",
         "--port", str(port), "--device", "cpu", "--dtype", "float32"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start: {(home / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield type("Served", (), {"url": url, "pid": process.pid, "endless": str(endless_copy(home / "models"))})
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def vlchat(tmp_path):
    def run(*args, timeout=120):
        env = {k: v for k, v in os.environ.items() if not k.startswith("VLCHAT_")}
        env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), VLCHAT_CONFIG=str(tmp_path / "none.toml"),
                   VLCHAT_SESSIONS_DIR=str(tmp_path / "sessions"))
        return subprocess.run([*vlchat_command(), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)

    return run


def test_ask_a_model_the_server_loads_on_demand(vlchat, server):
    # Nothing is loaded yet, so the server lists no models: vlchat asks for it anyway.
    result = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", server.url, "--model", MODEL_DIR)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "The shape is red.\n"
    assert "Traceback" not in result.stderr


def test_a_session_on_the_server_resumes_with_its_model(vlchat, server):
    first = vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", server.url, "--model", MODEL_DIR,
                   "--session", "new", "--json")
    assert first.returncode == 0, first.stderr
    record = json.loads(first.stdout)
    assert record["answer"] == "The shape is red." and record["endpoint"] == server.url and record["device"] is None
    folder = record["session"]["path"]
    # The same --endpoint again and no --model: the session's model is kept.
    again = vlchat("ask", "What shape is it?", "--session", folder, "--endpoint", server.url)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "It is a circle.\n"
    saved = json.loads(Path(folder, "session.json").read_text())
    assert saved["model"]["name"] == str(MODEL_DIR) and saved["model"]["endpoint"] == server.url
    assert [m["role"] for m in saved["conversation"]["messages"]] == ["user", "assistant", "user", "assistant"]


def test_caption_with_concurrent_requests(vlchat, server, tmp_path):
    pictures = tmp_path / "pics"
    pictures.mkdir()
    for sample in sorted(SAMPLES_DIR.glob("*.png")):
        shutil.copy(sample, pictures / sample.name)
    out = tmp_path / "captions.jsonl"
    result = vlchat("caption", pictures, "-o", out, "--endpoint", server.url, "--model", MODEL_DIR,
                    "--concurrency", "3", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr
    assert "3 requests at a time" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    captions = {Path(r["path"]).name: r["caption"] for r in rows}
    assert captions == {
        "green-triangle.png": "A green triangle on a white background.",
        "red-circle.png": "A red circle on a blue background.",
        "three-yellow-stars.png": "Three yellow stars on a purple background.",
        "two-blue-squares.png": "Two blue squares on an orange background.",  # "an", not "a" (issue 16, 21)
    }, captions


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the server's CPU time from /proc")
@run_async
async def test_escape_in_the_app_stops_the_servers_generation(server, tmp_path):
    from vlchat.core.images import load_image
    from vlchat.engines.openai import OpenAIEngine
    from tests.toolkit import app_for

    engine = OpenAIEngine(server.url, server.endless)  # the demo model with no end-of-answer token
    engine.load()
    app = app_for(engine, [load_image(RED_CIRCLE)], max_new_tokens=100_000, endpoint=server.url, model=server.endless)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.chat.prompt.text = QUESTION
        await pilot.press("enter")
        from vlchat.ui.transcript import LiveText

        def shown() -> str:
            view = app.chat.answer_view
            return view.query_one(LiveText).text if view is not None and view.query(LiveText) else ""

        await until(pilot, lambda: app.chat.generating is not None and len(shown()) > 40, timeout=60)
        busy = cpu_seconds(server.pid)
        await pilot.press("escape")
        await until(pilot, lambda: app.chat.generating is None, timeout=10)
        await settle(pilot)
        assert app.chat.conversation.last("assistant").stopped
        assert cpu_seconds(server.pid) > busy - 1  # it was working

        # The server stops too: its CPU time stops growing (it would go on for 100 000 tokens).
        def idle() -> bool:
            before = cpu_seconds(server.pid)
            time.sleep(0.5)
            return cpu_seconds(server.pid) - before < 0.1

        await until(pilot, idle, timeout=20, step=0.01)
