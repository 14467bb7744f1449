"""Shared fixtures: the real engine on the demo model, pictures drawn on demand, the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlchat.core.images import load_image
from vlchat.demo import MODEL_DIR
from vlchat.demo.shapes import Scene, draw_scene

# Tests never reach for the network, and never touch the person's own Hugging Face cache.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path, monkeypatch):
    """Every app saves its conversations: tests keep them in their own folder, never the person's."""
    folder = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(folder))
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
    folder = tmp_path_factory.mktemp("endless") / "demo-endless"
    shutil.copytree(MODEL_DIR, folder)
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = None
    config_path.write_text(json.dumps(config))
    return folder


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
def endless_engine_for_server(endless_model):
    from vlchat.engines.transformers import TransformersEngine

    engine = TransformersEngine(str(endless_model), quant="none", device="cpu")
    engine.load()
    yield engine
    engine.unload()


@pytest.fixture(scope="session")
def openai_server(demo_engine, endless_engine_for_server):
    """A real OpenAI-compatible server on 127.0.0.1 (random port) answering from the demo model."""
    from tests.openai_server import OpenAITestServer

    server = OpenAITestServer(demo_engine, endless_engine=endless_engine_for_server).start()
    yield server
    server.stop()
