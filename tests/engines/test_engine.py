"""The transformers engine, run for real on the demo model: answers, follow-ups, 4-bit, cancel, errors."""

from __future__ import annotations

import threading
import time

import pytest

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.engines.base import ChatEngine, GenerationError, ModelLoadError, ModelNotFoundError

pytestmark = pytest.mark.timeout(300)

GREEDY = GenerationParams(max_new_tokens=32)


def ask(engine, conversation, params=GREEDY) -> str:
    stream = engine.stream(conversation, params)
    text = "".join(stream)
    conversation.add_assistant(text, model=engine.name, params=params, tokens=stream.stats.tokens)
    return text


def test_engine_meets_the_protocol(demo_engine):
    assert isinstance(demo_engine, ChatEngine)
    info = demo_engine.describe()
    assert info.name == "demo" and info.label == "demo model"
    assert info.family == "llava" and info.device == "cpu" and info.quantization == "none"
    assert info.memory_bytes > 0 and info.context_length >= 2048


@pytest.mark.parametrize("colour", ["red", "blue", "green", "yellow"])
def test_answer_depends_on_the_picture(demo_engine, picture, colour):
    c = Conversation()
    c.add_user("What colour is the shape?", [picture("circle", colour, "white" if colour != "white" else "black").ref])
    answer = ask(demo_engine, c)
    assert colour in answer.lower()
    others = {"red", "blue", "green", "yellow", "orange", "purple"} - {colour}
    assert not any(word in answer.lower() for word in others)


def test_second_picture_in_turn_two_is_the_one_answered_about(demo_engine, picture):
    c = Conversation()
    c.add_user("What shape is it?", [picture("circle", "red", "blue").ref])
    assert "circle" in ask(demo_engine, c)
    c.add_user("What colour is the shape?", [picture("square", "green", "purple").ref])
    second = ask(demo_engine, c)
    assert "green" in second and "red" not in second
    c.add_user("What shape is it?")  # no new picture: still about the latest one
    assert "square" in ask(demo_engine, c)


def test_prompt_has_exactly_one_bos(demo_engine, picture):
    c = Conversation()
    c.add_user("What colour is the shape?", [picture().ref])
    ids = demo_engine.prepare(c)["input_ids"][0].tolist()
    assert ids.count(demo_engine.tokenizer.bos_token_id) == 1 and ids[0] == demo_engine.tokenizer.bos_token_id


def test_tokens_arrive_as_a_stream(demo_engine, picture):
    c = Conversation()
    c.add_user("Describe the picture.", [picture("triangle", "orange", "black", count=2).ref])
    stream = demo_engine.stream(c, GREEDY)
    pieces = list(stream)
    assert len(pieces) > 2, pieces
    assert "".join(pieces) == stream.text
    assert "orange" in stream.text and "triangles" in stream.text
    t = stream.stats.timings()
    assert stream.stats.tokens >= len(pieces) and 0 < t.first_token_s < t.total_s


def test_4bit_loads_and_answers(demo_engine_4bit, demo_engine, picture):
    info = demo_engine_4bit.describe()
    assert info.quantization == "nf4 4-bit"
    assert info.memory_bytes < demo_engine.describe().memory_bytes * 0.6
    import bitsandbytes as bnb

    layer = demo_engine_4bit.model.model.language_model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    c = Conversation()
    c.add_user("What colour is the shape?", [picture("square", "blue", "yellow").ref])
    assert "blue" in ask(demo_engine_4bit, c)


def test_cancel_stops_the_model_within_a_few_tokens(endless_engine, picture):
    c = Conversation()
    c.add_user("Describe the picture.", [picture().ref])
    cancel = threading.Event()
    before = set(threading.enumerate())  # other tests' servers may have threads of their own in this process
    stream = endless_engine.stream(c, GenerationParams(max_new_tokens=3000), cancel)
    tokens_at_cancel = None
    for n, _piece in enumerate(stream, 1):
        if n == 5:
            tokens_at_cancel = stream.stats.tokens
            cancel.set()
    assert tokens_at_cancel is not None
    assert stream.stats.stopped
    # The model itself stopped: at most a couple more decoding steps ran after the event was set.
    assert stream.stats.tokens - tokens_at_cancel <= 3, (tokens_at_cancel, stream.stats.tokens)
    assert stream.stats.tokens < 100
    assert stream.text.strip()  # the partial answer is kept
    left = [t for t in threading.enumerate() if t not in before]
    assert not left and not any(t.name == "vlchat-generate" for t in threading.enumerate()), left


def test_abandoned_stream_stops_the_model(endless_engine, picture):
    c = Conversation()
    c.add_user("Describe the picture.", [picture().ref])
    stream = endless_engine.stream(c, GenerationParams(max_new_tokens=3000))
    next(stream)
    started = time.perf_counter()
    stream.close()
    assert time.perf_counter() - started < 5
    assert not any(t.name == "vlchat-generate" for t in threading.enumerate())
    assert stream.stats.tokens < 100


def test_cancel_stops_an_answer_handed_over_from_the_generation_thread(endless_engine, picture):
    c = Conversation()
    c.add_user("Describe the picture.", [picture().ref])
    cancel = threading.Event()
    stream = endless_engine.stream(c, GenerationParams(max_new_tokens=3000), cancel)
    at_cancel: list[int] = []

    def sink(_piece: str) -> None:
        if not at_cancel:
            at_cancel.append(stream.stats.tokens)
            cancel.set()  # as the model process's listener sets it while the answer runs

    stream.drive(sink)
    assert stream.stats.stopped and at_cancel
    assert stream.stats.tokens - at_cancel[0] <= 3, (at_cancel, stream.stats.tokens)
    assert stream.stats.tokens < 100
    assert stream.text.strip()  # the partial answer is kept
    assert not any(t.name == "vlchat-generate" for t in threading.enumerate())


@pytest.mark.parametrize("read", ["iterate", "drive"])
def test_error_inside_generation_reaches_the_caller(endless_engine, picture, read):
    calls = {"n": 0}

    def explode(_module, _args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("simulated device fault")

    handle = endless_engine.model.model.language_model.register_forward_pre_hook(explode)
    try:
        c = Conversation()
        c.add_user("Describe the picture.", [picture().ref])
        stream = endless_engine.stream(c, GenerationParams(max_new_tokens=3000))
        with pytest.raises(GenerationError) as caught:
            if read == "drive":
                stream.drive(lambda _piece: None)
            else:
                for _ in stream:
                    pass
    finally:
        handle.remove()
    assert "simulated device fault" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert stream.text  # what came before the fault is kept


def test_remote_code_is_refused_without_the_flag(tmp_path):
    from vlchat.engines.transformers import TransformersEngine

    folder = tmp_path / "custom-model"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"model_type": "my_custom_vlm", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",'
        ' "AutoModelForImageTextToText": "modeling_custom.CustomModel"}}'
    )
    (folder / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    engine = TransformersEngine(str(folder), quant="none", device="cpu")
    with pytest.raises(ModelLoadError) as caught:
        engine.load()
    assert "--trust-remote-code" in str(caught.value)


def test_hub_model_missing_offline_names_it_and_how_to_get_it(tmp_path, monkeypatch):
    from vlchat.engines.transformers import TransformersEngine

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = TransformersEngine("vlchat-tests/no-such-model-here", quant="none", device="cpu")
    with pytest.raises(ModelNotFoundError) as caught:
        engine.load()
    message = str(caught.value)
    assert "vlchat-tests/no-such-model-here" in message
    assert "hf download" in message and "HF_HUB_OFFLINE" in message
