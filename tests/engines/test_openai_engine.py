"""The OpenAI-compatible engine against a real HTTP server on 127.0.0.1 that answers from the demo model."""

from __future__ import annotations

import threading
import time

import pytest

from vlchat.config import describe_settings, load_settings, public_dict
from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.core.errors import InputError
from vlchat.engines import make_engine
from vlchat.engines.base import ChatEngine, GenerationError, ModelNotFoundError
from vlchat.engines.openai import (
    AuthenticationError,
    ConnectionRefusedByServerError,
    ConnectTimeoutError,
    EmptyAnswerError,
    EndpointNotFoundError,
    HostNotFoundError,
    IncompleteStreamError,
    MalformedStreamError,
    NoVisionError,
    OpenAIEngine,
    RateLimitedError,
    RequestTooLargeError,
    SSEParser,
    ServerError,
    bounded_lines,
    TokenTimeoutError,
    display_endpoint,
    normalize_endpoint,
)
from tests.openai_server import OpenAITestServer, unanswering_port
from tests.toolkit import free_port

pytestmark = pytest.mark.timeout(120)

SHORT = GenerationParams(max_new_tokens=24)
COLOURS = {"red", "blue", "green", "yellow", "orange", "purple"}


def connected(server, model="demo", **kwargs) -> OpenAIEngine:
    engine = OpenAIEngine(server.url, model, **kwargs)
    engine.load()
    return engine


def ask(engine, conversation, params=SHORT) -> str:
    stream = engine.stream(conversation, params)
    text = "".join(stream)
    conversation.add_assistant(text, model=engine.name, params=params, tokens=stream.stats.tokens)
    return text


def last_chat_request(server) -> dict:
    return [r for r in server.requests if r["method"] == "POST"][-1]


# -- answers ------------------------------------------------------------------------------------------
def test_engine_meets_the_protocol_and_names_its_server(openai_server):
    engine = connected(openai_server)
    assert isinstance(engine, ChatEngine)
    info = engine.describe()
    assert info.name == "demo" and info.family == "openai-compatible"
    assert info.endpoint == openai_server.url and info.device == openai_server.url
    assert info.context_length == 2048 and info.memory_bytes is None
    assert info.to_dict()["endpoint"] == openai_server.url


@pytest.mark.parametrize("colour", ["red", "blue"])
def test_answer_depends_on_the_picture(openai_server, picture, colour):
    engine = connected(openai_server)
    c = Conversation()
    c.add_user("What colour is the shape?", [picture("circle", colour, "white").ref])
    stream = engine.stream(c, SHORT)
    answer = "".join(stream)
    assert colour in answer.lower() and not (COLOURS - {colour}) & set(answer.lower().strip(".").split())
    # Usage figures from the server's final chunk, not a count of chunks.
    assert stream.stats.prompt_tokens and stream.stats.prompt_tokens > 10
    assert stream.stats.tokens >= 3 and stream.stats.first_token_at is not None and not stream.stats.stopped
    request = last_chat_request(openai_server)
    assert request["body"]["stream"] is True and request["body"]["stream_options"] == {"include_usage": True}
    part = request["body"]["messages"][0]["content"][0]
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
    assert request["pictures"] == [{"mime": "image/png", "bytes": request["pictures"][0]["bytes"], "width": 256, "height": 256}]


def test_the_answer_is_the_models_own_word_for_word(openai_server, demo_engine, picture):
    # PNG goes over the wire losslessly, so the server's model sees the very same pixels.
    c = Conversation()
    c.add_user("Describe the picture.", [picture("star", "orange", "black", count=2).ref])
    local = "".join(demo_engine.stream(c, SHORT))
    remote = connected(openai_server).stream(c, SHORT)
    pieces = list(remote)
    assert "".join(pieces) == local and len(pieces) >= 2  # streamed, not sent in one piece
    assert remote.stats.timings().first_token_s > 0


def test_second_picture_in_turn_two_is_the_one_answered_about(openai_server, picture):
    engine = connected(openai_server)
    c = Conversation()
    c.set_system("Answer briefly.")
    c.add_user("What shape is it?", [picture("circle", "red", "blue").ref])
    assert "circle" in ask(engine, c)
    c.add_user("What colour is the shape?", [picture("square", "green", "purple").ref])
    second = ask(engine, c)
    assert "green" in second and "red" not in second
    messages = last_chat_request(openai_server)["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == c.messages[2].text  # the earlier answer goes back as it was
    assert len(last_chat_request(openai_server)["pictures"]) == 2


def test_ollama_style_server_and_a_model_name_without_its_tag(openai_server, picture):
    engine = connected(openai_server, "shapes")  # Ollama lists shapes:latest, answers to shapes
    c = Conversation()
    c.add_user("What shape is it?", [picture("triangle", "yellow", "black").ref])
    stream = engine.stream(c, SHORT)
    assert "triangle" in "".join(stream)
    assert stream.stats.prompt_tokens and stream.stats.tokens >= 3


def test_make_engine_with_an_endpoint_uses_the_servers_only_model(demo_engine, picture):
    with OpenAITestServer(demo_engine, models=["shapes:latest"]) as server:
        settings, _ = load_settings({"endpoint": server.url.removesuffix("/v1").removeprefix("http://")}, env={})
        engine = make_engine(settings)
        assert isinstance(engine, OpenAIEngine)
        engine.load()
        assert engine.name == "shapes:latest"
        c = Conversation()
        c.add_user("How many shapes are there?", [picture("star", "blue", "white", count=3).ref])
        assert "three" in ask(engine, c)


def test_server_with_several_models_needs_one_named(openai_server):
    engine = OpenAIEngine(openai_server.url)
    with pytest.raises(ModelNotFoundError) as caught:
        engine.load()
    assert "several models" in str(caught.value) and "--model" in str(caught.value)


def test_pictures_are_shrunk_to_image_max_side(openai_server, picture):
    engine = connected(openai_server, image_max_side=128)
    big = picture("square", "blue", "yellow", size=640)
    c = Conversation()
    c.add_user("What colour is the shape?", [big.ref])
    assert "blue" in ask(engine, c)
    shrunk = last_chat_request(openai_server)["pictures"][0]
    assert (shrunk["width"], shrunk["height"]) == (128, 128)


def test_jpeg_goes_as_jpeg(openai_server, picture, tmp_path):
    from vlchat.core.images import load_image

    png = picture("circle", "green", "white")
    path = tmp_path / "photo.jpg"
    png.image.save(path, quality=95)
    engine = connected(openai_server)
    c = Conversation()
    c.add_user("What colour is the shape?", [load_image(path).ref])
    assert "green" in ask(engine, c)
    assert last_chat_request(openai_server)["pictures"][0]["mime"] == "image/jpeg"


def test_control_characters_from_the_server_never_come_through(openai_server, picture):
    engine = connected(openai_server, "demo-escape")
    c = Conversation()
    c.add_user("What colour is the shape?", [picture("circle", "red", "white").ref])
    stream = engine.stream(c, SHORT)
    pieces = list(stream)
    assert "red" in stream.text
    assert not any(ch in piece for piece in pieces for ch in "\x1b\x07")


def test_a_server_that_ignores_streaming_still_answers(openai_server, picture):
    engine = connected(openai_server, "demo-whole")
    c = Conversation()
    c.add_user("What shape is it?", [picture("star", "red", "white").ref])
    stream = engine.stream(c, SHORT)
    assert "star" in "".join(stream)
    assert stream.stats.tokens >= 3 and stream.stats.prompt_tokens > 10


# -- cancel: the server sees the connection closed --------------------------------------------------------
def _disconnect_after(server, since: float, within: float = 1.0) -> float:
    deadline = time.monotonic() + within + 1.0
    while time.monotonic() < deadline:
        seen = [t for t in server.disconnects if t >= since]
        if seen:
            return seen[0] - since
        time.sleep(0.01)
    raise AssertionError("the server never saw the client go")


def test_cancel_closes_the_connection_and_the_server_stops_generating(openai_server, picture):
    engine = connected(openai_server, "demo-endless")
    c = Conversation()
    c.add_user("Describe the picture.", [picture().ref])
    before = len(c.messages)
    generations_before = len(openai_server.generations_done)
    cancel = threading.Event()
    stream = engine.stream(c, GenerationParams(max_new_tokens=3000), cancel)
    cancelled_at = None
    for n, _piece in enumerate(stream, 1):
        if n == 1:
            cancelled_at = time.monotonic()
            cancel.set()
    ended_after = time.monotonic() - cancelled_at
    assert stream.stats.stopped and ended_after < 0.5
    assert stream.text.strip() and stream.stats.tokens < 200  # the partial answer is kept
    assert _disconnect_after(openai_server, cancelled_at) < 1.0
    deadline = time.monotonic() + 5
    while len(openai_server.generations_done) == generations_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert openai_server.generations_done[generations_before:] == ["client gone"]  # the model was stopped
    assert len(c.messages) == before
    deadline = time.monotonic() + 1
    while any(t.name == "vlchat-http-stream" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "vlchat-http-stream" for t in threading.enumerate())


def test_cancel_while_a_read_is_blocked_returns_at_once(openai_server, picture):
    engine = connected(openai_server, "demo-stall", token_timeout=60)
    c = Conversation()
    c.add_user("What colour is the shape?", [picture().ref])
    cancel = threading.Event()
    stream = engine.stream(c, SHORT, cancel)
    first = next(stream)  # then the server goes silent: the reading thread blocks in recv
    assert first
    time.sleep(0.3)
    cancelled_at = time.monotonic()
    cancel.set()
    rest = list(stream)
    assert time.monotonic() - cancelled_at < 0.5 and stream.stats.stopped
    assert stream.text.startswith(first) and rest is not None
    assert _disconnect_after(openai_server, cancelled_at) < 1.0


def test_abandoned_stream_closes_the_connection(openai_server, picture):
    engine = connected(openai_server, "demo-endless")
    c = Conversation()
    c.add_user("Describe the picture.", [picture().ref])
    stream = engine.stream(c, GenerationParams(max_new_tokens=3000))
    next(stream)
    closed_at = time.monotonic()
    stream.close()
    assert _disconnect_after(openai_server, closed_at) < 1.0


# -- errors: one line each, the conversation untouched -------------------------------------------------
ERRORS = {
    "demo-forbidden": (AuthenticationError, ["403", "demo-forbidden"], False),
    "demo-busy": (RateLimitedError, ["429", "Retry in 7 s", "conversation is kept"], False),
    "demo-crash": (ServerError, ["500", "illegal memory access", "server's log"], False),
    "demo-gone": (ModelNotFoundError, ["demo-gone", "404", "vlchat models --endpoint"], False),
    "demo-text-only": (NoVisionError, ["does not accept pictures", "not a multimodal model"], False),
    "demo-no-mmproj": (NoVisionError, ["does not accept pictures", "mmproj"], False),
    "demo-cut": (IncompleteStreamError, ["ended without its final event", "partial answer was kept"], True),
    "demo-drop": (IncompleteStreamError, ["broke off the answer", "partial answer was kept"], True),
    "demo-bad-json": (MalformedStreamError, ["not valid JSON", "partial answer was kept"], True),
    "demo-fail-midway": (GenerationError, ["EngineCore encountered an issue", "partial answer was kept"], True),
    "demo-stall": (TokenTimeoutError, ["nothing for 2 s", "--token-timeout", "partial answer was kept"], True),
}
# The first piece waits for the server to read the pictures: on a busy CPU that takes a second or
# so, hence no shorter limit for the stalled server.
STALL_TIMEOUT_S = 2.0


@pytest.mark.parametrize("mode", sorted(ERRORS))
def test_server_errors_are_one_clear_line_and_lose_nothing(openai_server, picture, mode):
    kind, words, partial = ERRORS[mode]
    engine = connected(openai_server, mode, token_timeout=STALL_TIMEOUT_S if mode == "demo-stall" else 60)
    c = Conversation()
    c.add_user("What colour is the shape?", [picture("circle", "red", "white").ref])
    saved = c.to_dict()
    stream = engine.stream(c, SHORT)
    started = time.monotonic()
    with pytest.raises(kind) as caught:
        for _ in stream:
            pass
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, (word, message)
    if partial:
        # What arrived before the failure is kept, and it is the start of the real answer.
        assert stream.text and "The shape is red.".startswith(stream.text.strip()[:8])
    else:
        assert stream.text == ""
    assert c.to_dict() == saved
    if mode == "demo-busy":
        assert caught.value.retry_after_s == 7


def test_unknown_model_is_named_with_what_the_server_has(openai_server):
    # Not listed is not refused (a server may load it on demand): the server's 404 decides.
    engine = OpenAIEngine(openai_server.url, "llava-hf/llava-1.5-7b-hf")
    engine.load()
    conversation = Conversation()
    conversation.add_user("What colour is the shape?")
    with pytest.raises(ModelNotFoundError) as caught:
        "".join(engine.stream(conversation, SHORT))
    message = str(caught.value)
    assert "llava-hf/llava-1.5-7b-hf" in message and "demo, shapes:latest" in message


def test_endpoint_that_is_not_an_openai_api(openai_server):
    engine = OpenAIEngine(openai_server.url.removesuffix("/v1") + "/api")
    with pytest.raises(EndpointNotFoundError) as caught:
        engine.load()
    assert "404" in str(caught.value) and "/v1" in str(caught.value)


def test_api_key_wanted_refused_and_accepted(demo_engine, picture):
    key = "sk-test-0123456789abcdef"
    with OpenAITestServer(demo_engine, api_key=key) as server:
        with pytest.raises(AuthenticationError) as caught:
            OpenAIEngine(server.url, "demo").load()
        assert "401" in str(caught.value) and "--api-key" in str(caught.value)

        wrong = "sk-wrong-key-that-must-not-be-shown"
        engine = OpenAIEngine(server.url, "demo", api_key=wrong)
        with pytest.raises(AuthenticationError) as caught:
            engine.load()
        # The server echoed the key it was given; the message does not.
        assert wrong not in str(caught.value) and "not accepted" in str(caught.value)
        assert wrong not in repr(engine) and wrong not in str(engine.describe().to_dict())

        engine = connected(server, api_key=key)
        c = Conversation()
        c.add_user("What colour is the shape?", [picture("circle", "blue", "white").ref])
        assert "blue" in ask(engine, c)
        assert server.requests[-1]["authorization"] == f"Bearer {key}"


def test_request_too_large_then_shrunk(demo_engine, picture):
    big = picture("circle", "yellow", "purple", size=1024)
    with OpenAITestServer(demo_engine, max_body=10_000) as server:
        c = Conversation()
        c.add_user("What colour is the shape?", [big.ref])
        stream = connected(server).stream(c, SHORT)
        with pytest.raises(RequestTooLargeError) as caught:
            list(stream)
        assert "413" in str(caught.value) and "--image-max-side" in str(caught.value)
        assert "kB" in str(caught.value) or "MB" in str(caught.value)
        assert "yellow" in ask(connected(server, image_max_side=192), c)


def test_connection_refused():
    engine = OpenAIEngine(f"http://127.0.0.1:{free_port()}/v1", "demo")
    with pytest.raises(ConnectionRefusedByServerError) as caught:
        engine.load()
    assert "connection refused" in str(caught.value) and "ssh -L" in str(caught.value)


def test_dns_failure():
    engine = OpenAIEngine("http://no-such-host.invalid:8000/v1", "demo", connect_timeout=5)
    with pytest.raises(HostNotFoundError) as caught:
        engine.load()
    assert "no-such-host.invalid" in str(caught.value) and "DNS" in str(caught.value)


def test_connect_timeout():
    with unanswering_port() as port:
        time.sleep(0.1)
        engine = OpenAIEngine(f"http://127.0.0.1:{port}/v1", "demo", connect_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ConnectTimeoutError) as caught:
            engine.load()
        assert time.monotonic() - started < 3
        assert "0.5 s" in str(caught.value) and "--connect-timeout" in str(caught.value)


# -- the endpoint, the key, the stream format ------------------------------------------------------------------
@pytest.mark.parametrize(
    "typed, base",
    [
        ("localhost:8000", "http://localhost:8000/v1"),
        ("http://gpu-box:11434", "http://gpu-box:11434/v1"),
        ("http://gpu-box:8000/v1/", "http://gpu-box:8000/v1"),
        ("https://api.example.org/v1/chat/completions", "https://api.example.org/v1"),
    ],
)
def test_endpoint_forms(typed, base):
    assert normalize_endpoint(typed) == base


@pytest.mark.parametrize("typed", ["ftp://host/v1", "", "http://", "http://host:port/v1", "http://[::1/v1"])
def test_bad_endpoints_are_input_errors(typed):
    with pytest.raises(InputError):
        OpenAIEngine(typed, "demo")


def test_endpoint_shown_without_credentials():
    assert display_endpoint("http://user:hunter2@gpu-box:8000/v1?key=abc") == "http://gpu-box:8000/v1"
    engine = OpenAIEngine("http://user:hunter2@gpu-box:8000/v1", "m")
    assert "hunter2" not in engine.describe().endpoint and "hunter2" not in repr(engine)


def test_the_key_is_never_shown_by_settings():
    key = "sk-live-never-show-me"
    settings, sources = load_settings({"api_key": key}, env={})
    assert settings.api_key == key
    assert key not in repr(settings) and key not in describe_settings(settings, sources)
    assert public_dict(settings)["api_key"] == "(set, hidden)" and key not in str(public_dict(settings))


def test_sse_parser_follows_the_spec():
    parser = SSEParser()
    lines = [": keep-alive", "event: message", 'data: {"a":', "data:1}", "", "data: [DONE]", ""]
    events = [data for line in lines for data in parser.feed(line)]
    assert events == ['{"a":\n1}', "[DONE]"]


def test_stream_lines_split_on_any_line_break_even_across_reads():
    reads = [b"data: a\r", b"\ndata: b\rdata: c\n\n", b"data: \xe2\x82", b"\xac\r\n", b"data: last"]
    assert list(bounded_lines(iter(reads))) == ["data: a", "data: b", "data: c", "", "data: \u20ac", "data: last"]


def test_an_unanswered_question_is_not_sent_but_its_picture_is(openai_server, picture):
    """A failed turn leaves two questions in a row; the server sees alternating roles, and the
    picture of the unanswered question goes with the next one."""
    engine = connected(openai_server)
    red = picture("circle", "red", "white")
    conversation = Conversation()
    conversation.add_user("What colour is the shape?", [red.ref])  # its answer never came
    conversation.add_user("What shape is it?")
    answer = "".join(engine.stream(conversation, SHORT))
    assert answer == "It is a circle."
    sent = [r for r in openai_server.requests if r["method"] == "POST"][-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user"]
    assert [m.text for m in conversation.unanswered()] == ["What colour is the shape?"]
    assert len(conversation.messages) == 2  # the conversation itself keeps it


def test_an_empty_stream_is_an_error_not_an_empty_answer(openai_server, picture):
    engine = connected(openai_server, "demo-empty")
    conversation = Conversation()
    conversation.add_user("What colour is the shape?", [picture().ref])
    with pytest.raises(EmptyAnswerError) as caught:
        "".join(engine.stream(conversation, SHORT))
    assert "without sending any of it" in str(caught.value)
