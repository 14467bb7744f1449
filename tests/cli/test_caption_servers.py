"""`vlchat caption` over several servers: two test servers behind two --endpoint flags (or a file
of them) share the pictures; one of them going away mid-run loses nothing."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time

import pytest

from tests.conftest import vlchat_command
from tests.openai_server import OpenAITestServer
from vlchat.demo.shapes import PLURALS, Scene, draw_scene

pytestmark = pytest.mark.timeout(180)


def draw(folder, count=40) -> list[str]:
    rng = random.Random(5)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        colour, background = rng.sample(["red", "green", "yellow", "purple", "blue", "white"], 2)
        path = folder / f"{i:03d}.png"
        draw_scene(Scene(rng.choice(list(PLURALS)), colour, background, 1), size=128, rng=random.Random(i)).save(path)
        paths.append(str(path))
    return paths


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def two_servers():
    """Two servers, each with its own copy of the demo model (one model is not shared by threads)."""
    from vlchat.engines.transformers import TransformersEngine

    servers = []
    for _ in range(2):
        engine = TransformersEngine("demo", quant="none", device="cpu")
        engine.load()
        servers.append(OpenAITestServer(engine).start())
    yield servers
    for server in servers:
        server.stop()


def posts(server) -> int:
    return sum(1 for r in server.requests if r.get("method") != "GET")


def by_server(stderr: str) -> dict[str, int]:
    line = next(l for l in stderr.splitlines() if l.startswith("vlchat: captioned by server: "))
    return {url: int(n) for url, n in re.findall(r"(http://[^:]+:\d+/v1): (\d+)", line)}


def test_two_servers_share_the_work_and_the_summary_says_who_did_what(two_servers, tmp_path):
    a, b = two_servers
    paths = draw(tmp_path / "pics", 24)
    out = tmp_path / "captions.jsonl"
    listed = tmp_path / "servers.txt"
    listed.write_text(f"# the second server\n{b.url}\n")
    result = subprocess.run(
        [*vlchat_command(), "caption", str(tmp_path / "pics"), "-o", str(out), "--endpoint", a.url,
         "--endpoints-file", str(listed), "--model", "demo", "--concurrency", "2", "--max-new-tokens", "16"],
        capture_output=True, text=True, timeout=150, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stderr
    assert "2 requests at a time on each of 2 servers" in result.stderr
    rows = records(out)
    assert sorted(r["path"] for r in rows) == sorted(paths) and all(r.get("caption") for r in rows)
    counts = by_server(result.stderr)
    assert counts[a.url] > 0 and counts[b.url] > 0 and counts[a.url] + counts[b.url] == 24
    assert counts == {a.url: posts(a), b.url: posts(b)}


def test_a_server_that_dies_mid_run_loses_nothing(two_servers, tmp_path):
    a, b = two_servers
    paths = draw(tmp_path / "pics", 40)
    out = tmp_path / "captions.jsonl"
    err = tmp_path / "err.txt"
    process = subprocess.Popen(
        [*vlchat_command(), "caption", str(tmp_path / "pics"), "-o", str(out), "--endpoint", a.url, "--endpoint", b.url,
         "--model", "demo", "--concurrency", "1", "--max-new-tokens", "16", "--token-timeout", "10"],
        stdout=subprocess.DEVNULL, stderr=err.open("w"), env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and len(records(out)) < 6:
            time.sleep(0.01)
        b.stop()  # gone: its listening socket closed, new requests refused
        assert process.wait(timeout=150) == 0, err.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    said = err.read_text()
    rows = records(out)
    assert sorted(r["path"] for r in rows) == sorted(paths), "every picture exactly once"
    assert all(r.get("caption") and not r.get("error") for r in rows), said
    counts = by_server(said)
    assert counts[a.url] + counts[b.url] == 40 and counts[a.url] > counts[b.url]
    assert f"{b.url} failed" in said and "its pictures go to the others" in said, said
    assert "Traceback" not in said and "\x1b" not in said
