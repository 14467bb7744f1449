"""Reading one HTTP request to the server in a thread, with its deadlines and its caps: the server-sent
events, lines of bounded length, a bounded queue, error bodies read up to a limit, and the clock that
keeps the deadlines from the caller's side (see openai.py for why).

httpx is imported inside the functions that use it, so importing this module stays cheap.
"""

from __future__ import annotations

import codecs
import queue
import re
import socket
import threading
import time
import urllib.parse
from typing import Any, Iterator

from vlchat.config import redact_url
from vlchat.core.errors import InputError
from vlchat.core.text import clean


# How often the caller's iterator looks at the cancel Event while no data arrives.
POLL_S = 0.05
# Error bodies and model lists are small; a server that sends more is not one we want to buffer.
MAX_BODY_BYTES = 4 << 20
# One line of the stream, and one event, are one piece of an answer: a few hundred bytes. A server
# that sends more without a line break is refused before it fills the memory.
MAX_LINE_CHARS = 1 << 20
MAX_QUEUED_LINES = 4096


class TooLong(Exception):
    """Raised where a line or event passes MAX_LINE_CHARS (StreamingCall and the engine catch it)."""


class SSEParser:
    """Lines in, the data of each complete event out (multi-line data joined with newlines).

    ``comments`` counts the comment lines (keep-alives), which are not part of any answer. An
    event whose data passes ``max_chars`` raises TooLong.
    """

    def __init__(self, max_chars: int = MAX_LINE_CHARS) -> None:
        self._data: list[str] = []
        self._size = 0
        self.max_chars = max_chars
        self.comments = 0

    def feed(self, line: str) -> list[str]:
        if line == "":
            return self.flush()
        if line.startswith(":"):  # a comment: servers send these as keep-alives
            self.comments += 1
            return []
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(value) + 1
            if self._size > self.max_chars:
                raise TooLong
            self._data.append(value)
        return []

    def flush(self) -> list[str]:
        if not self._data:
            return []
        data, self._data, self._size = "\n".join(self._data), [], 0
        return [data]


_NEWLINE = re.compile(r"\r\n|\r|\n")


def bounded_lines(chunks: Iterator[bytes], max_chars: int = MAX_LINE_CHARS) -> Iterator[str]:
    """The lines of a byte stream (CRLF, CR or LF), raising TooLong as soon as one passes
    ``max_chars`` without its line break, so a line never has to arrive whole to be refused."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""
    for chunk in chunks:
        pending += decoder.decode(chunk)
        # A CR at the end may be the first half of a CRLF that the next chunk completes.
        cut = len(pending) - 1 if pending.endswith("\r") else len(pending)
        lines = _NEWLINE.split(pending[:cut])
        pending = lines.pop() + pending[cut:]
        yield from lines
        if len(pending) > max_chars:
            raise TooLong
    pending += decoder.decode(b"", final=True)
    if pending:
        lines = _NEWLINE.split(pending)
        if lines[-1] == "":
            lines.pop()
        yield from lines


class StreamingCall:
    """One request read in a thread; what happens arrives on ``events`` as (kind, value) pairs.

    Kinds: "connected" (the TCP connection is up), "sent" (the whole request is written), "open"
    (200 and headers received), "line", "eof", "status" (an error status: code, headers, body
    text), "whole" (a 200 JSON body instead of a stream), "body" (with ``stream`` off: code,
    headers, body text), "toolong" (a line passed MAX_LINE_CHARS), "error" (an exception from
    httpx). ``abort`` shuts the socket down from any thread, which both wakes a blocked read and
    tells the server the client has gone. The caller, not this thread, keeps the deadlines: httpx's
    read timeout is per read, which a server sending a byte at a time never trips.
    """

    def __init__(self, engine: Any, url: str, body: bytes | None, *, stream: bool = True):
        self.engine = engine
        self.url = url
        self.body = body
        self.stream = stream
        # Bounded: a server that sends faster than the caller reads is held back by TCP, not
        # buffered here without limit.
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=MAX_QUEUED_LINES)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._aborted = False
        self.thread = threading.Thread(target=self._run, name="vlchat-http-stream", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def _put(self, kind: str, value: Any = None) -> bool:
        """Queue an event, waiting while the queue is full; False once the call is aborted."""
        while not self._aborted:
            try:
                self.events.put((kind, value), timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event in ("http11.send_request_body.complete", "http11.receive_response_headers.started"):
            self._put("sent", None)
            return
        # httpcore reports each new connection here: the only public way to reach its socket.
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            aborted = self._aborted
        self._put("connected", None)
        if aborted:
            _shutdown(sock)

    def _run(self) -> None:
        try:
            # A fresh client per answer: the connection is then always a new one, so _trace sees
            # its socket (a pooled, reused connection would not be reported).
            with self.engine.http_client() as client:
                headers = {"Accept": "text/event-stream"} if self.stream else {"Accept": "application/json"}
                if self.body is not None:
                    headers["Content-Type"] = "application/json"
                with client.stream(
                    "POST" if self.body is not None else "GET",
                    self.url,
                    content=self.body,
                    headers=headers,
                    extensions={"trace": self._trace},
                ) as response:
                    if not self.stream:
                        text = _read_capped(response)
                        self._put("body", (response.status_code, dict(response.headers), text))
                        return
                    if response.status_code != 200:
                        text = _read_capped(response)
                        self._put("status", (response.status_code, dict(response.headers), text))
                        return
                    if "json" in response.headers.get("content-type", ""):
                        # A server that ignored stream: true sends the whole answer at once.
                        self._put("whole", _read_capped(response))
                        return
                    self._put("open", None)
                    try:
                        for line in bounded_lines(response.iter_bytes()):
                            if not self._put("line", line):
                                return
                    except TooLong:
                        self._put("toolong", None)
                        self.abort()
                        return
            self._put("eof", None)
        except BaseException as error:  # handed to the reader, never lost in this thread
            if not self._aborted:
                self._put("error", error)


class Clock:
    """The deadlines of one request: ``total_s`` for all of it, and ``token_s`` from the request
    being sent to the first piece of the answer and then between pieces. Only a piece of the
    answer restarts the token clock: keep-alive comments, empty chunks and single bytes do not."""

    def __init__(self, token_s: float, total_s: float):
        self.started = time.monotonic()
        self.token_s = token_s
        self.total_s = total_s
        self.sent_at: float | None = None
        self.last_piece_at: float | None = None

    def sent(self) -> None:
        if self.sent_at is None:
            self.sent_at = time.monotonic()

    def piece(self) -> None:
        self.last_piece_at = time.monotonic()

    def expired(self) -> str | None:
        """None while in time; else "total", "first" (no piece yet) or "next"."""
        now = time.monotonic()
        if now - self.started >= self.total_s:
            return "total"
        if self.sent_at is not None:
            if self.last_piece_at is None and now - self.sent_at >= self.token_s:
                return "first"
            if self.last_piece_at is not None and now - self.last_piece_at >= self.token_s:
                return "next"
        return None


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing left to stop


def _read_capped(response) -> str:
    data = bytearray()
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= MAX_BODY_BYTES:
                break
    except Exception:
        pass  # an error body that breaks off is still worth what arrived
    return bytes(data[:MAX_BODY_BYTES]).decode("utf-8", "replace")


# -- the endpoint ---------------------------------------------------------------------------------
def normalize_endpoint(url: str) -> str:
    """The API base URL (…/v1) for what a person typed: a bare host:port gets http:// and /v1."""
    text = (url or "").strip()
    shown = clean(text, keep_newlines=False)
    example = "give one like http://localhost:8000/v1"
    if not text:
        raise InputError("the endpoint is empty", example)
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # an unclosed [IPv6 address
        raise InputError(f"the endpoint {shown!r} is not a valid URL", example) from None
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError:
        raise InputError(f"the endpoint {display_endpoint(text)} has a port that is not a number", example) from None
    if parts.scheme not in ("http", "https"):
        raise InputError(f"the endpoint {display_endpoint(text)} is not an http:// or https:// URL", example)
    if not parts.hostname:
        raise InputError(f"the endpoint {shown!r} names no host", example)
    path = parts.path.rstrip("/")
    for tail in ("/chat/completions", "/completions", "/models"):
        if path.endswith(tail):
            path = path[: -len(tail)]
    if not path:
        path = "/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def display_endpoint(url: str) -> str:
    """The endpoint as it may be shown or saved: no user:password@ and no secret-looking query
    values (?api_key=...); the rest of the query is kept, as the server may need it."""
    return clean(redact_url(url.partition("#")[0], None), keep_newlines=False)


def api_url(base: str, tail: str) -> str:
    """``tail`` (/models, /chat/completions) after the base URL's path, its query kept at the end."""
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + tail, parts.query, ""))
