"""A real OpenAI-compatible HTTP server on 127.0.0.1 for the tests, answering from the demo model.

It speaks the streaming chat format as vLLM and Ollama send it (a role delta first, content
deltas, a finish_reason, the usage chunk with empty choices when asked for, then ``data: [DONE]``)
and decodes each picture's data URL and runs the real TransformersEngine on it, so the answer
depends on the picture. The model name picks a behaviour, so every error a client meets in the
wild can be produced here:

    demo                vLLM-style stream (the answer from the demo model)
    shapes:latest       Ollama-style stream (Ollama lists models with their tag)
    demo-endless        the demo model with no end-of-answer token: talks until the client leaves
    demo-forbidden      403            demo-busy       429 with Retry-After: 7
    demo-crash          500            demo-gone       404 "model not found" (listed, but gone)
    demo-text-only      400 "not a multimodal model" when a picture is sent (vLLM's words)
    demo-no-mmproj      500 "image input is not supported" (llama.cpp without its projector)
    demo-cut            a few pieces, then the response ends with no finish_reason and no [DONE]
    demo-drop           a few pieces, then the connection is cut mid-chunk
    demo-bad-json       a few pieces, then a chunk that is not JSON
    demo-fail-midway    a few pieces, then {"error": ...} inside the stream (vLLM does this)
    demo-stall          a few pieces, then silence (for the client's token timeout)
    demo-escape         the answer with terminal escape sequences, bidi overrides and zero-width spaces mixed in
    demo-whole          ignores stream: true and sends the whole completion as one JSON body
    demo-empty          a role chunk and [DONE], nothing else (llama-cpp-python's server ends a request
                        this way when another arrives); ``empty_answers = N`` makes the next N
                        requests to any normal model end so too

Hostile servers (no model runs; each ends on its own after HOSTILE_MAX_S, so no test can hang):

    demo-trickle        a valid stream, one byte every ``trickle_s`` seconds
    demo-keepalive      headers, then only ": keep-alive" comments, never a piece of the answer
    demo-keepalive-midway  the first piece of the answer, then only keep-alive comments
    demo-slow-headers   the status line, then its headers one byte at a time
    demo-flood          an endless stream that ignores max_tokens, as fast as the client reads
    demo-drip           an endless stream, a piece of the answer every ``trickle_s`` seconds
    demo-huge-line      "data: " and then ``huge_line_bytes`` bytes with no line break
    demo-echo-error     400 whose message echoes the request's Authorization header and path
    demo-echo-answer    an answer that echoes the Authorization header and path, a few
                        characters per chunk (so a secret arrives split across chunks)
    demo-bad-usage      the demo model's answer with usage figures no model could have counted
    /moved/...          any path under /moved answers 302 to the same path without /moved
    GET /trickle/...    the model list as demo-slow-headers answers: its headers a byte at a time

Per server: ``api_key`` (401 without it) and ``max_body`` (413 above it, after reading the body,
as proxies do). Every generation loop watches its client's socket: when the client goes away the
time is recorded in ``disconnects`` and the model is stopped.

Run it by hand: ``python -m tests.openai_server --port 8123`` (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import json
import select
import socket
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.core.images import load_image

NORMAL = "demo"
OLLAMA = "shapes:latest"
ENDLESS = "demo-endless"
MODES = (
    "demo-forbidden", "demo-busy", "demo-crash", "demo-gone", "demo-text-only", "demo-no-mmproj",
    "demo-cut", "demo-drop", "demo-bad-json", "demo-fail-midway", "demo-stall", "demo-escape", "demo-whole", "demo-empty",
    "demo-trickle", "demo-keepalive", "demo-slow-headers", "demo-flood", "demo-huge-line", "demo-echo-error",
    "demo-echo-answer", "demo-bad-usage", "demo-keepalive-midway", "demo-drip",
)
HOSTILE = ("demo-drip", "demo-trickle", "demo-keepalive", "demo-keepalive-midway", "demo-slow-headers", "demo-flood", "demo-huge-line",
           "demo-echo-error", "demo-echo-answer")
HOSTILE_MAX_S = 30.0
MISBEHAVE_AFTER = 2  # pieces of a real answer sent before a broken mode breaks the stream
STALL_MAX_S = 30.0  # a stalled answer still ends, so no test can hang on it
CONTEXT = 2048


class OpenAITestServer:
    def __init__(
        self,
        engine,
        *,
        endless_engine=None,
        api_key: str | None = None,
        max_body: int | None = None,
        models: list[str] | None = None,
    ):
        self.engine = engine
        self._models = models
        self.endless_engine = endless_engine
        self.api_key = api_key
        self.max_body = max_body
        self.trickle_s = 0.5
        # What GET /models lists, when not every model served: a server that loads models on
        # demand (transformers serve) lists only those it has loaded.
        self.listed: list[str] | None = None
        self.empty_answers = 0  # the next N answers are a role chunk and [DONE] (see demo-empty)
        self.huge_line_bytes = 64 << 20
        self.requests: list[dict[str, Any]] = []
        # What each hostile answer got out before the client left: {"model", "bytes", "chunks", "seconds"}.
        self.hostile_sent: list[dict[str, Any]] = []
        self.disconnects: list[float] = []  # time.monotonic() when a generation saw its client gone
        self.generations_done: list[str] = []  # how each generation ended: "done", "client gone", "stopped"
        self.stopping = threading.Event()
        self._engine_lock = threading.Lock()
        self._engine_lock_counter = threading.Lock()
        self._pictures = tempfile.TemporaryDirectory(prefix="vlchat-test-server-")
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def take_empty(self) -> bool:
        with self._engine_lock_counter:
            if self.empty_answers > 0:
                self.empty_answers -= 1
                return True
            return False

    @property
    def models(self) -> list[str]:
        if self._models is not None:
            return list(self._models)
        names = [NORMAL, OLLAMA, *MODES]
        if self.endless_engine is not None:
            names.insert(2, ENDLESS)
        return names

    # -- lifetime --------------------------------------------------------------------------------------
    def start(self, port: int = 0) -> "OpenAITestServer":
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._pictures.cleanup()

    def __enter__(self) -> "OpenAITestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- requests to pictures and conversations -----------------------------------------------------------
    def picture_ref(self, url: str, record: list[dict[str, Any]]):
        head, _, payload = url.partition(",")
        if not head.startswith("data:image/") or ";base64" not in head:
            raise ValueError("image_url must be a base64 data URL of a picture")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("image_url holds invalid base64") from None
        mime = head[5:].split(";")[0]
        path = Path(self._pictures.name) / f"{hashlib.sha256(data).hexdigest()}.{mime.split('/')[1]}"
        path.write_bytes(data)
        loaded = load_image(path)
        record.append({"mime": mime, "bytes": len(data), "width": loaded.ref.width, "height": loaded.ref.height})
        return loaded.ref

    def conversation(self, messages: list[dict[str, Any]], pictures: list[dict[str, Any]]) -> Conversation:
        conversation = Conversation()
        for message in messages:
            content = message.get("content")
            refs = []
            if isinstance(content, list):
                text = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
                refs = [self.picture_ref(p["image_url"]["url"], pictures) for p in content if p.get("type") == "image_url"]
            else:
                text = str(content or "")
            if message["role"] == "system":
                conversation.set_system(text)
            elif message["role"] == "user":
                conversation.add_user(text, refs)
            else:
                conversation.add_assistant(text, model="earlier")
        return conversation


@contextlib.contextmanager
def unanswering_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose listen queue is full: the kernel leaves further connection
    attempts unanswered, which is how a connect timeout looks from the client."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            yield port
        finally:
            for filler in fillers:
                filler.close()


def client_gone(sock: socket.socket) -> bool:
    """True once the client has closed or reset its side of the connection."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAITestServer
    protocol_version = "HTTP/1.1"
    server_version = "vlchat-test-server/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the tests read records instead
        pass

    # -- plain responses ------------------------------------------------------------------------------------
    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        # vLLM's error body; OpenAI and Ollama nest it under "error", handled by the client alike.
        self.send_json(status, {"object": "error", "message": message, "type": kind, "param": None, "code": status}, headers)

    def authorised(self) -> bool:
        key = self.owner.api_key
        given = self.headers.get("Authorization")
        if key is None or given == f"Bearer {key}":
            return True
        # OpenAI's own 401 echoes the key it was given; a client must not pass that on.
        message = f"Incorrect API key provided: {given.removeprefix('Bearer ')}" if given else "Unauthorized"
        self.send_json(401, {"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}})
        return False

    # -- routes ------------------------------------------------------------------------------------------------
    def moved(self) -> bool:
        if not self.path.startswith("/moved/"):
            return False
        self.send_response(302)
        self.send_header("Location", f"http://127.0.0.1:{self.owner.port}{self.path.removeprefix('/moved')}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def do_GET(self) -> None:
        self.owner.requests.append({"method": "GET", "path": self.path, "authorization": self.headers.get("Authorization")})
        if self.moved() or not self.authorised():
            return
        if self.path.startswith("/trickle/"):
            self.hostile("demo-slow-headers")
            return
        if self.path.split("?")[0].rstrip("/") == "/v1/models":
            created = int(time.time())
            cards = []
            for name in self.owner.models if self.owner.listed is None else self.owner.listed:
                if name == OLLAMA:
                    cards.append({"id": name, "object": "model", "created": created, "owned_by": "library"})
                else:
                    cards.append({"id": name, "object": "model", "created": created, "owned_by": "vllm",
                                  "root": name, "max_model_len": CONTEXT})
            self.send_json(200, {"object": "list", "data": cards})
            return
        self.send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        record: dict[str, Any] = {"method": "POST", "path": self.path, "authorization": self.headers.get("Authorization"),
                                  "bytes": length, "pictures": []}
        self.owner.requests.append(record)
        raw = self.rfile.read(length) if length else b""
        limit = self.owner.max_body
        if limit is not None and length > limit:
            page = b"<html><head><title>413 Request Entity Too Large</title></head><body>nginx</body></html>"
            self.send_response(413)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if self.moved() or not self.authorised():
            return
        if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
            self.send_json(404, {"detail": "Not Found"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self.send_error_json(400, "request body is not JSON", "BadRequestError")
            return
        record["body"] = _without_pictures(body)
        model = body.get("model")
        if f"{model}:latest" in self.owner.models:
            model = f"{model}:latest"  # Ollama answers to a name without its tag
        if model not in self.owner.models:
            self.send_error_json(404, f"The model `{model}` does not exist.", "NotFoundError")
            return
        has_pictures = any(
            isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
            for m in body.get("messages", [])
        )
        if self.refused(model, has_pictures):
            return
        if model in HOSTILE:
            self.hostile(model)
            return
        try:
            conversation = self.owner.conversation(body.get("messages", []), record["pictures"])
        except Exception as error:  # a bad picture is the client's fault: say so, as servers do
            self.send_error_json(400, f"invalid image: {error}", "BadRequestError")
            return
        params = GenerationParams(
            max_new_tokens=int(body.get("max_tokens") or 64),
            temperature=float(body.get("temperature") or 0.0),
            top_p=float(body.get("top_p") or 1.0),
            seed=body.get("seed"),
        )
        if model == "demo-whole":
            self.whole_answer(model, conversation, params)
            return
        self.stream_answer(model, conversation, params, bool((body.get("stream_options") or {}).get("include_usage")))

    def whole_answer(self, model: str, conversation: Conversation, params: GenerationParams) -> None:
        with self.owner._engine_lock:
            stream = self.owner.engine.stream(conversation, params)
            text = "".join(stream)
        prompt = stream.stats.prompt_tokens or 0
        self.send_json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": stream.stats.tokens,
                      "total_tokens": prompt + stream.stats.tokens},
        })

    def refused(self, model: str, has_pictures: bool) -> bool:
        if model == "demo-forbidden":
            self.send_json(403, {"error": {"message": "this key may not use demo-forbidden", "type": "permission_error"}})
        elif model == "demo-busy":
            self.send_json(429, {"error": {"message": "Rate limit reached for requests", "type": "requests"}},
                           {"Retry-After": "7"})
        elif model == "demo-crash":
            self.send_error_json(500, "CUDA error: an illegal memory access was encountered", "InternalServerError")
        elif model == "demo-gone":
            # Ollama's words for a model that was removed after the list was read.
            self.send_json(404, {"error": {"message": 'model "demo-gone" not found, try pulling it first',
                                           "type": "api_error", "param": None, "code": None}})
        elif model == "demo-text-only" and has_pictures:
            self.send_error_json(400, "demo-text-only is not a multimodal model", "BadRequestError")
        elif model == "demo-no-mmproj" and has_pictures:
            self.send_json(500, {"error": {"code": 500, "type": "server_error", "message":
                                           "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"}})
        else:
            return False
        return True

    # -- the stream ---------------------------------------------------------------------------------------------
    gone: threading.Event | None = None  # set by the watcher of a streamed answer

    def client_left(self) -> None:
        """Record, once, the moment this request's client was seen gone."""
        if self.gone is not None and not self.gone.is_set():
            self.owner.disconnects.append(time.monotonic())
            self.gone.set()

    def watch_client(self, finished: threading.Event) -> None:
        # As vLLM does: a client that goes away is noticed at once, not at the next write, and its
        # generation is stopped (the Event is the engine's cancel).
        while not finished.is_set():
            if client_gone(self.connection):
                self.client_left()
                return
            finished.wait(0.01)

    def write_chunk(self, data: bytes) -> None:
        if self.gone is not None and self.gone.is_set():
            raise ClientGone
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError:
            self.client_left()
            raise ClientGone from None

    def event(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self.write_chunk(f"data: {text}\n\n".encode())

    def stream_answer(self, model: str, conversation: Conversation, params: GenerationParams, include_usage: bool) -> None:
        owner = self.owner
        ollama = model == OLLAMA
        ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, int] | None = None):
            data: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
            if ollama:
                data["system_fingerprint"] = "fp_ollama"
            if delta is None:
                data["choices"] = []
            else:
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
                if not ollama:
                    choice["logprobs"] = None
                    if finish:
                        choice["stop_reason"] = None
                data["choices"] = [choice]
            if usage is not None:
                data["usage"] = usage
            elif include_usage and not ollama:
                data["usage"] = None
            return data

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        engine = owner.endless_engine if model == ENDLESS else owner.engine
        outcome = "done"
        self.gone = threading.Event()
        finished = threading.Event()
        watcher = threading.Thread(target=self.watch_client, args=(finished,), daemon=True)
        with owner._engine_lock:
            stream = engine.stream(conversation, params, self.gone)
            watcher.start()
            try:
                self.event(chunk({"role": "assistant", "content": ""}))
                if model == "demo-empty" or owner.take_empty():
                    self.event("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                for n, piece in enumerate(stream, 1):
                    if owner.stopping.is_set():
                        outcome = "stopped"
                        return
                    if self.gone.is_set():
                        raise ClientGone
                    if model == "demo-escape":
                        piece = "\x1b]0;pwned\x07\u202e" + piece + "\u2066\u200b\x1b[2J"
                    delta = {"role": "assistant", "content": piece} if ollama else {"content": piece}
                    self.event(chunk(delta))
                    if n == MISBEHAVE_AFTER and self.misbehave(model):
                        return
                if self.misbehave(model):  # an answer shorter than MISBEHAVE_AFTER pieces
                    return
                usage = {"prompt_tokens": stream.stats.prompt_tokens or 0, "completion_tokens": stream.stats.tokens,
                         "total_tokens": (stream.stats.prompt_tokens or 0) + stream.stats.tokens}
                if model == "demo-bad-usage":
                    usage = {"prompt_tokens": 10**15, "completion_tokens": -7, "total_tokens": -1}
                self.event(chunk({"role": "assistant", "content": ""} if ollama else {"content": ""}, finish=stream.stats.finish()))
                if include_usage:
                    self.event(chunk(None, usage=usage))
                self.event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                finished.set()
            except ClientGone:
                outcome = "client gone"
                self.close_connection = True
            finally:
                finished.set()
                watcher.join()
                if self.gone.is_set():
                    outcome = "client gone"
                stream.close()  # stops the model itself
                owner.generations_done.append(outcome)

    # -- hostile servers ------------------------------------------------------------------------------------------
    def hostile(self, model: str) -> None:
        """Answer as the hostile mode says, until the client leaves or HOSTILE_MAX_S passes."""
        self.gone = threading.Event()
        self.close_connection = True
        sent = {"model": model, "bytes": 0, "chunks": 0, "seconds": 0.0}
        started = time.monotonic()
        deadline = started + HOSTILE_MAX_S

        def wait(seconds: float) -> bool:
            """Sleep, watching the client; False once it has gone or time is up."""
            end = min(time.monotonic() + seconds, deadline)
            while True:
                if client_gone(self.connection):
                    self.client_left()
                    return False
                if self.owner.stopping.is_set() or time.monotonic() >= deadline:
                    return False
                if time.monotonic() >= end:
                    return True
                time.sleep(0.01)

        def raw(data: bytes) -> bool:
            try:
                self.wfile.write(data)
                self.wfile.flush()
            except OSError:
                self.client_left()
                return False
            sent["bytes"] += len(data)
            return True

        echoed = f"Authorization={self.headers.get('Authorization')} path={self.path}"
        stream_head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                       b"Connection: close\r\n\r\n")

        def content(text: str) -> bytes:
            return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}).encode() + b"\n\n"

        try:
            if model == "demo-echo-error":
                self.send_error_json(400, f"bad request ({echoed})", "BadRequestError")
            elif model == "demo-slow-headers":
                for byte in stream_head:
                    if not (raw(bytes([byte])) and wait(self.owner.trickle_s)):
                        break
            elif model == "demo-trickle":
                body = content("The shape is red.") + b"data: [DONE]\n\n"
                if raw(stream_head):
                    for byte in body:
                        if not (wait(self.owner.trickle_s) and raw(bytes([byte]))):
                            break
            elif model in ("demo-keepalive", "demo-keepalive-midway"):
                first = content("The") if model == "demo-keepalive-midway" else b""
                if raw(stream_head + first):
                    while wait(0.2) and raw(b": keep-alive\n\n"):
                        sent["chunks"] += 1
            elif model == "demo-flood":
                if raw(stream_head):
                    # Written as fast as the client reads: a client that stops reading fills the
                    # socket's buffers and this write blocks until it closes the connection.
                    piece = content("la ")
                    while time.monotonic() < deadline and not self.owner.stopping.is_set() and raw(piece):
                        sent["chunks"] += 1
            elif model == "demo-drip":
                if raw(stream_head):
                    while raw(content("drip ")) and wait(self.owner.trickle_s):
                        sent["chunks"] += 1
            elif model == "demo-huge-line":
                if raw(stream_head) and raw(b"data: "):
                    block = b"x" * (64 << 10)
                    while sent["bytes"] < self.owner.huge_line_bytes and time.monotonic() < deadline and raw(block):
                        pass
            elif model == "demo-echo-answer":
                if raw(stream_head):
                    text = f"You sent {echoed}."
                    for i in range(0, len(text), 3):
                        if not raw(content(text[i:i + 3])):
                            break
                        sent["chunks"] += 1
                    else:
                        raw(b"data: " + json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode()
                            + b"\n\ndata: [DONE]\n\n")
        finally:
            sent["seconds"] = time.monotonic() - started
            self.owner.hostile_sent.append(sent)

    def misbehave(self, model: str) -> bool:
        """Break the stream the way the mode says; True when the response is over."""
        if model == "demo-cut":
            self.wfile.write(b"0\r\n\r\n")  # a clean end of the body: no finish_reason, no [DONE]
            return True
        if model == "demo-drop":
            self.wfile.write(b"40\r\ndata: {\"choices\": [{\"index\": 0, \"de")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return True
        if model == "demo-bad-json":
            self.event('{"id": "x", "choices": [{"index": 0, "delta": {"content": "oops"')
            self.wfile.write(b"0\r\n\r\n")
            return True
        if model == "demo-fail-midway":
            self.event({"error": {"object": "error", "message": "EngineCore encountered an issue", "type": "InternalServerError", "code": 500}})
            self.event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            return True
        if model == "demo-stall":
            deadline = time.monotonic() + STALL_MAX_S
            while time.monotonic() < deadline and not self.owner.stopping.is_set():
                if self.gone is not None and self.gone.wait(0.02):
                    raise ClientGone
            self.close_connection = True
            return True
        return False


def _without_pictures(body: Any) -> Any:
    """The request as recorded: data URLs shortened to their first characters."""
    if isinstance(body, dict):
        return {k: (v[:40] + "…" if k == "url" and isinstance(v, str) else _without_pictures(v)) for k, v in body.items()}
    if isinstance(body, list):
        return [_without_pictures(v) for v in body]
    return body


def main() -> None:
    import os
    import shutil

    from vlchat.demo import MODEL_DIR
    from vlchat.engines.transformers import TransformersEngine

    parser = argparse.ArgumentParser(description="A test OpenAI-compatible server answering from the vlchat demo model")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--api-key")
    parser.add_argument("--max-body", type=int)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    engine = TransformersEngine("demo", quant="none", device="cpu")
    engine.load()
    with tempfile.TemporaryDirectory() as folder:
        endless = Path(folder) / "demo-endless"
        shutil.copytree(MODEL_DIR, endless)
        config = json.loads((endless / "generation_config.json").read_text())
        config["eos_token_id"] = None
        (endless / "generation_config.json").write_text(json.dumps(config))
        endless_engine = TransformersEngine(str(endless), quant="none", device="cpu")
        endless_engine.load()
        server = OpenAITestServer(engine, endless_engine=endless_engine, api_key=args.api_key, max_body=args.max_body)
        server.start(args.port)
        print(f"serving the demo model at {server.url} (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()


if __name__ == "__main__":
    main()
