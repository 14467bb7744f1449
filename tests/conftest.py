"""Shared fixtures: the real engine on the demo model, pictures drawn on demand, the CLI as a user runs it."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from vlchat.core.images import load_image
from vlchat.demo import endless_copy
from vlchat.demo.shapes import Scene, draw_scene

# Tests never reach for the network, and never touch the person's own Hugging Face cache.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path, monkeypatch):
    """Every app saves its conversations: tests keep them in their own folder, never the person's."""
    folder = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the model process's log, say
    monkeypatch.delenv("VLCHAT_SESSIONS_DIR", raising=False)
    return folder


@pytest.fixture(scope="session")
def demo_engine():
    from vlchat.engines.transformers import TransformersEngine

    engine = TransformersEngine("demo", quant="none", device="cpu")
    engine.load()
    yield engine
    engine.unload()


@pytest.fixture(scope="session")
def demo_engine_4bit():
    from vlchat.engines.transformers import TransformersEngine

    engine = TransformersEngine("demo", quant="4bit", device="cpu")
    engine.load()
    yield engine
    engine.unload()


@pytest.fixture
def picture(tmp_path):
    """picture(shape, colour, background, count=1) -> a loaded picture (LoadedImage) saved as PNG."""
    counter = iter(range(10_000))

    def make(shape="circle", colour="red", background="blue", count=1, size=256, seed=None):
        n = next(counter)
        scene = Scene(shape, colour, background, count)
        path = tmp_path / f"{n}-{count}-{colour}-{shape}-on-{background}.png"
        draw_scene(scene, size=size, rng=random.Random(seed if seed is not None else n)).save(path)
        return load_image(path)

    return make


@pytest.fixture(scope="session")
def endless_model(tmp_path_factory) -> Path:
    """The demo model with no end-of-answer token: it talks until stopped (for cancel tests)."""
    return endless_copy(tmp_path_factory.mktemp("endless"))


def vlchat_command() -> list[str]:
    script = Path(sys.executable).parent / "vlchat"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vlchat.cli"]


@pytest.fixture
def run_vlchat(tmp_path):
    """Run the installed `vlchat` command as a user would; returns the CompletedProcess."""

    def run(*args, timeout=240, env=None, **kwargs):
        full_env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), **(env or {}))
        return subprocess.run(
            [*vlchat_command(), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            **kwargs,
        )

    return run


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random models of each native family (tests/tiny_families.py), saved as folders once."""
    from tests import tiny_families

    root = tmp_path_factory.mktemp("tiny-families")
    return {name: build(root / name.replace("-", "_")) for name, build in tiny_families.BUILDERS.items()}


def _loaded_endless(endless_model):
    from vlchat.engines.transformers import TransformersEngine

    engine = TransformersEngine(str(endless_model), quant="none", device="cpu")
    engine.load()
    yield engine
    engine.unload()


@pytest.fixture(scope="session")
def endless_engine(endless_model):
    """The endless demo model, loaded once for every test that stops a long answer."""
    yield from _loaded_endless(endless_model)


@pytest.fixture(scope="session")
def endless_engine_for_server(endless_model):
    """The server's own copy: a generation the server is still winding down after its client
    left never shares a model with the next test."""
    yield from _loaded_endless(endless_model)


@pytest.fixture(scope="session")
def openai_server(demo_engine, endless_engine_for_server):
    """A real OpenAI-compatible server on 127.0.0.1 (random port) answering from the demo model."""
    from tests.openai_server import OpenAITestServer

    server = OpenAITestServer(demo_engine, endless_engine=endless_engine_for_server).start()
    yield server
    server.stop()
