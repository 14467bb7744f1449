"""The app's model in a process of its own (vlchat/engines/process.py), with the real engine.

The same answers, counts and errors as the engine in this process; stopping reaches the model;
a crashed model process is one line, and /model loads it again; the model's process never
outlives the app, and a switch ends the old one.
"""

from __future__ import annotations

import os
from pathlib import Path
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.toolkit import ask, command, run_async, screen_text, settings, settle, status_text, stop_midway, transcript_text, until
from vlchat.core.conversation import Conversation, GenerationParams, ImageRef
from vlchat.engines import make_engine
from vlchat.engines.process import ModelProcessError, ProcessEngine
from vlchat.ui.app import make_app

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.name != "posix", reason="models run in a process of their own on POSIX only"),
]

QUESTION = "What colour is the shape?"


@pytest.fixture(scope="module")
def demo_process():
    engine = make_engine(settings(), separate=True)
    assert isinstance(engine, ProcessEngine)
    engine.load()
    yield engine
    engine.unload()


def conversation_about(*pictures, question: str = QUESTION) -> Conversation:
    conversation = Conversation()
    conversation.add_user(question, [p.ref for p in pictures])
    return conversation


def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A child of this process that ended but was not reaped yet is a zombie: gone as well.
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_answers_counts_and_timings_match_the_engine_here(demo_process, demo_engine, picture):
    for scene in (("circle", "red", "blue"), ("square", "green", "white")):
        conversation = conversation_about(picture(*scene))
        params = GenerationParams(max_new_tokens=24)
        here = demo_engine.stream(conversation, params)
        there = demo_process.stream(conversation, params)
        assert "".join(there) == "".join(here) and there.text == here.text
        assert f"The shape is {scene[1]}." == there.text
        assert there.stats.tokens == here.stats.tokens and there.stats.prompt_tokens == here.stats.prompt_tokens
        timings = there.stats.timings()
        assert 0 < timings.first_token_s <= timings.total_s and timings.tokens_per_s > 0
        assert demo_process.count_context(conversation) == demo_engine.count_context(conversation)
    info = demo_process.describe()
    assert (info.name, info.family, info.device) == ("demo", "llava", "cpu") and info.memory_bytes > 0


def test_stop_reaches_the_model_process(endless_model, picture):
    engine = ProcessEngine(settings(model=str(endless_model)))
    engine.load()
    try:
        cancel = threading.Event()
        stream = engine.stream(conversation_about(picture()), GenerationParams(max_new_tokens=100_000), cancel)
        pieces = 0
        for _piece in stream:
            pieces += 1
            if pieces == 3:
                stopped_at = time.monotonic()
                cancel.set()
        assert time.monotonic() - stopped_at < 2.0
        assert stream.stats.stopped and stream.text and 0 < stream.stats.tokens < 100_000
        # The next request gets its own answer, not the rest of the stopped one.
        again = engine.stream(conversation_about(picture("circle", "red", "blue")), GenerationParams(max_new_tokens=5))
        assert "".join(again).startswith("The shape is red") and again.stats.tokens == 5
        # A reader that walks away mid-answer stops the model too.
        walked = engine.stream(conversation_about(picture()), GenerationParams(max_new_tokens=100_000))
        next(iter(walked))
        walked.close()
        assert engine.count_context(conversation_about(picture()))[0] > 0
    finally:
        engine.unload()


def test_a_question_begun_is_at_work_before_anyone_reads_and_ends_if_nobody_does(endless_model, picture):
    """begin() (the app's UI thread, as a question is sent) hands the model the question there and
    then: the model answers while nobody reads yet; only one answer is the model's at a time; and
    a begun answer nobody reads ends when dropped, so the next question gets its own answer."""
    engine = ProcessEngine(settings(model=str(endless_model)))
    engine.load()
    try:
        question = conversation_about(picture("circle", "red", "blue"))
        short = GenerationParams(max_new_tokens=24)
        expected = "".join(engine.stream(question, short))
        cancel = threading.Event()
        stream = engine.begin(question, GenerationParams(max_new_tokens=100_000), cancel)
        assert stream is not None
        assert engine.begin(question, short) is None  # the model is this answer's: stream() waits its turn
        cpu = engine.cpu_seconds()
        deadline = time.monotonic() + 60
        while cpu is not None and engine.cpu_seconds() < cpu + 0.3:  # at work, though nobody reads
            assert time.monotonic() < deadline, "the model did not start on a begun question"
            time.sleep(0.02)
        reading = time.perf_counter()
        assert next(stream)
        cancel.set()
        rest = "".join(stream)
        assert stream.stats.stopped and stream.stats.started < reading
        # The same answer as far as it went (how far depends on the machine's speed).
        assert rest and (stream.text.startswith(expected) or expected.startswith(stream.text))

        abandoned = engine.begin(question, GenerationParams(max_new_tokens=100_000))
        assert abandoned is not None
        del abandoned  # never read: the answer is stopped and read to its end
        assert "".join(engine.stream(question, short)) == expected
        again = engine.begin(question, short)
        assert again is not None and "".join(again) == expected
    finally:
        engine.unload()


def test_errors_come_back_as_the_engine_here_raises_them(demo_process, demo_engine, picture, tmp_path):
    missing = ImageRef(sha256="0" * 64, path=str(tmp_path / "gone.png"), format="PNG", width=8, height=8)
    conversation = Conversation()
    conversation.add_user(QUESTION, [missing])
    with pytest.raises(Exception) as here:
        "".join(demo_engine.stream(conversation, GenerationParams(max_new_tokens=4)))
    with pytest.raises(Exception) as there:
        "".join(demo_process.stream(conversation, GenerationParams(max_new_tokens=4)))
    assert type(there.value) is type(here.value) and str(there.value) == str(here.value)
    # ...and the model's process goes on answering.
    ok = demo_process.stream(conversation_about(picture("circle", "red", "blue")), GenerationParams(max_new_tokens=24))
    assert "".join(ok) == "The shape is red." and demo_process.alive


def test_a_model_that_cannot_load_says_why_as_here(tmp_path):
    from vlchat.engines.transformers import TransformersEngine

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llava", "text_config": {}}')
    with pytest.raises(Exception) as here:
        TransformersEngine(str(broken), quant="none", device="cpu").load()
    engine = ProcessEngine(settings(model=str(broken)))
    try:
        with pytest.raises(Exception) as there:
            engine.load()
        assert type(there.value).__name__ == type(here.value).__name__ and str(there.value) == str(here.value)
    finally:
        engine.unload()


def test_a_crashed_model_process_is_one_line(endless_model, picture):
    engine = ProcessEngine(settings(model=str(endless_model)))
    engine.load()
    stream = engine.stream(conversation_about(picture()), GenerationParams(max_new_tokens=100_000))
    next(iter(stream))
    os.kill(engine.pid, signal.SIGKILL)
    with pytest.raises(ModelProcessError) as error:
        for _piece in stream:
            pass
    # The log is in the cache folder, named, and kept; its last lines were warnings, which say nothing.
    log = Path(os.environ["XDG_CACHE_HOME"]) / "vlchat" / "model-process.log"
    assert str(error.value) == (
        "the model's process ended unexpectedly (killed by signal 9; the machine may have run out of memory); "
        f"its log is {log}. Load it again with /model {endless_model}."
    )
    assert log.is_file() and "vlchat model process" in log.read_text()
    assert stream.text and not engine.alive
    engine.unload()


def model_process_environ(engine) -> set[bytes]:
    return set(Path(f"/proc/{engine.pid}/environ").read_bytes().split(b"\0"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings are for Linux")
def test_the_model_process_keeps_freed_memory_for_the_next_token_unless_the_user_set_malloc(demo_process, monkeypatch):
    """A CPU model frees and takes its KV cache's blocks at every token: its process starts at the
    thresholds glibc moves towards by itself, not at the ones that give every block back."""
    assert {b"MALLOC_MMAP_THRESHOLD_=33554432", b"MALLOC_TRIM_THRESHOLD_=67108864"} <= model_process_environ(demo_process)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    engine = make_engine(settings(), separate=True)
    engine.load()
    try:
        environ = model_process_environ(engine)
        assert b"MALLOC_TRIM_THRESHOLD_=1048576" in environ  # the user's own, as it was
        assert not any(line.startswith(b"MALLOC_MMAP_THRESHOLD_") for line in environ)
    finally:
        engine.unload()


def test_the_model_process_ends_with_the_app(tmp_path):
    """However the app ends (here: killed, with no chance to clean up), its model's process follows."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from vlchat.config import Settings
        from vlchat.engines import make_engine
        engine = make_engine(Settings(model="demo", device="cpu", quant="none"), separate=True)
        engine.load()
        print(engine.pid, flush=True)
        time.sleep(600)
        """
    )
    app = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        pid = int(app.stdout.readline())
        assert not gone(pid, within=0.5)
        app.kill()
        app.wait()
        assert gone(pid), "the model's process outlived the app"
    finally:
        app.kill()


@run_async
async def test_app_with_its_model_in_a_process_of_its_own(picture, endless_model):
    """As `vlchat` runs: ask, stop, a crash of the model's process, /model to load it again, and a
    switch that ends the old model's process."""
    engine = make_engine(settings(max_new_tokens=24), separate=True)
    app = make_app(settings(max_new_tokens=24), [picture("circle", "red", "blue").ref], engine=engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.loaded, timeout=90)
        await ask(pilot, QUESTION)
        assert app.chat.conversation.last("assistant").text == "The shape is red."
        await until(pilot, lambda: app.chat.context_tokens is not None)
        assert "ctx " in status_text(app)

        first_pid = app.engine.pid
        os.kill(first_pid, signal.SIGKILL)
        app.chat.prompt.text = QUESTION
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.generating is None and "not loaded" in status_text(app))
        await settle(pilot)
        assert "the model's process ended unexpectedly" in transcript_text(app)
        assert "not loaded" in status_text(app)
        assert app.chat.prompt.text == QUESTION  # the question came back, nothing lost
        app.chat.prompt.text = ""
        await command(pilot, "/model demo")
        await until(pilot, lambda: app.switching_model is None and app.loaded and not app.load_error, timeout=90)
        await ask(pilot, "And now?")
        assert app.chat.conversation.last("assistant").text
        assert app.engine.pid != first_pid

        # A switch ends the old model's process once the new one is in.
        demo_pid = app.engine.pid
        await command(pilot, f"/model {endless_model}")
        await until(pilot, lambda: app.switching_model is None and app.info.name == str(endless_model), timeout=90)
        assert gone(demo_pid)
        await command(pilot, "/set max_tokens 100000")  # the endless model talks until stopped
        answer = await stop_midway(pilot, QUESTION)
        assert answer.stopped and answer.text
        assert "stopped" in screen_text(app)
        last_pid = app.engine.pid
    app.engine.unload()
    assert gone(last_pid)


@pytest.mark.parametrize("pythonpath", [None, ":"], ids=["no PYTHONPATH", "PYTHONPATH with an empty entry"])
def test_python_files_in_the_current_folder_never_run_in_the_model_process(tmp_path, monkeypatch, picture, pythonpath):
    # `python -m` puts the current folder first on sys.path: a torch.py or PIL.py left there (a
    # downloaded folder, a shared one) would run with the user's rights as the model loads.
    marker = tmp_path / "ran"
    for name in ("torch", "numpy", "PIL"):
        (tmp_path / f"{name}.py").write_text(
            f"import pathlib\npathlib.Path({str(marker)!r}).write_text({name!r})\nraise SystemExit('planted {name}')\n"
        )
    red = picture("circle", "red", "blue")
    monkeypatch.chdir(tmp_path)
    if pythonpath is not None:
        monkeypatch.setenv("PYTHONPATH", pythonpath)
    engine = ProcessEngine(settings())
    try:
        engine.load()
        answer = "".join(engine.stream(conversation_about(red), GenerationParams(max_new_tokens=24)))
    finally:
        engine.unload()
    assert not marker.exists(), f"the planted {marker.read_text()}.py ran in the model's process"
    assert answer == "The shape is red."
