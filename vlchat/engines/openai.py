"""An engine for models served elsewhere, by anything that speaks the OpenAI chat API (vLLM, Ollama, llama.cpp).

The conversation goes to ``POST {endpoint}/chat/completions`` as chat messages, pictures as base64
data URLs in ``image_url`` parts, and the answer comes back as server-sent events. Reading happens
in a thread; the caller's iterator waits on a queue and checks the cancel Event between waits, so a
cancel is honoured at once even while the socket read is blocked: the socket is shut down from the
caller's side, which wakes the blocked read and closes the connection, and the server, seeing it
closed, stops generating.

httpx is imported inside the functions that use it, so importing this module stays cheap.
"""

from __future__ import annotations

import base64
import codecs
import email.utils
import io
import json
import queue
import re
import socket
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from vlchat.config import REDACTED, redact_url, secret_query_item
from vlchat.core.conversation import Conversation, GenerationParams, ImageRef
from vlchat.core.errors import InputError, VlchatError
from vlchat.core.images import open_ref, preview_image
from vlchat.core.text import clean
from vlchat.engines.base import (
    BadOptionError,
    ContextTooLongError,
    EngineError,
    EngineInfo,
    GenerationError,
    LoadProgress,
    ModelNotFoundError,
    ProgressCallback,
    StreamStats,
    TokenStream,
)
from vlchat.engines.base import ChatEngine

if TYPE_CHECKING:
    import os

    from vlchat.config import Settings

FAMILY = "openai-compatible"
# How often the caller's iterator looks at the cancel Event while no data arrives.
POLL_S = 0.05
# Error bodies and model lists are small; a server that sends more is not one we want to buffer.
MAX_BODY_BYTES = 4 << 20
# One line of the stream, and one event, are one piece of an answer: a few hundred bytes. A server
# that sends more without a line break is refused before it fills the memory.
MAX_LINE_CHARS = 1 << 20
MAX_QUEUED_LINES = 4096
# The answer's text is capped at this much per token of max_new_tokens (the longest tokens of
# common vocabularies are runs of whitespace, well under this).
MAX_CHARS_PER_TOKEN = 256
# Usage figures above this are not counts from any real model.
MAX_PROMPT_TOKENS = 10**8
# Credentials shorter than this are not scrubbed from text: "abc" would mangle every answer.
MIN_SECRET_CHARS = 4
MAX_MESSAGE_CHARS = 240
SSH_HINT = "over SSH, forward the port first (ssh -L 8000:localhost:8000 gpu-box)"


# -- errors -----------------------------------------------------------------------------------
class ServerUnreachableError(EngineError):
    """No connection to the server could be made."""


class ConnectionRefusedByServerError(ServerUnreachableError):
    """Nothing listens at that host and port."""


class HostNotFoundError(ServerUnreachableError):
    """The host name in the endpoint does not resolve."""


class ConnectTimeoutError(ServerUnreachableError):
    """The server did not accept the connection within connect_timeout."""


class TokenTimeoutError(GenerationError):
    """The server went quiet for longer than token_timeout (before or during the answer)."""


class AnswerTimeoutError(TokenTimeoutError):
    """The whole answer took longer than answer_timeout, however steadily it came."""


class EndpointNotFoundError(EngineError):
    """The URL answers, but not as an OpenAI-compatible API (usually a missing /v1)."""


class AuthenticationError(EngineError):
    """401 or 403: the server wants a (different) API key, or forbids this model."""


class RateLimitedError(EngineError):
    """429: the server asks to come back later; ``retry_after_s`` says when, if it said."""

    def __init__(self, message: str, hint: str | None = None, retry_after_s: float | None = None):
        self.retry_after_s = retry_after_s
        super().__init__(message, hint)


class RequestTooLargeError(EngineError):
    """413: the request, pictures included, is over the server's size limit."""


class NoVisionError(EngineError):
    """The model on the server does not take pictures."""


class ServerError(EngineError):
    """The server failed (5xx) or answered in a way that is not an answer."""


class IncompleteStreamError(GenerationError):
    """The answer's stream ended without its final event ([DONE] or a finish_reason)."""


class EmptyAnswerError(GenerationError):
    """The stream ended properly but held no answer and no finish_reason: the server dropped the
    request (llama-cpp-python's server does when another arrives). Asking again may work."""


class MalformedStreamError(GenerationError):
    """A chunk of the answer's stream is not the JSON it should be."""


class LineTooLongError(MalformedStreamError):
    """A line or event of the stream is longer than any piece of an answer can be."""


class _TooLong(Exception):
    """Raised inside this module where a line or event passes MAX_LINE_CHARS."""


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


# -- models the server has ----------------------------------------------------------------------
@dataclass
class ServerModel:
    id: str
    owned_by: str | None = None
    context_length: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "owned_by": self.owned_by, "context_length": self.context_length}

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> "ServerModel":
        context = card.get("max_model_len") or card.get("context_length") or card.get("context_window")
        meta = card.get("meta")
        if not context and isinstance(meta, dict):  # llama.cpp
            context = meta.get("n_ctx") or meta.get("n_ctx_train")
        owned = card.get("owned_by")
        return cls(
            id=str(card["id"]),
            owned_by=clean(str(owned), keep_newlines=False) if owned is not None else None,
            context_length=int(context) if isinstance(context, (int, float)) and context > 0 else None,
        )


# -- picture encoding ------------------------------------------------------------------------------
def encode_picture(image, fmt: str, max_side: int | None) -> tuple[str, bytes]:
    """(mime type, bytes): a JPEG stays JPEG (photos), anything else becomes lossless PNG."""
    if max_side:
        image = preview_image(image, max_side, max_side)
    buffer = io.BytesIO()
    if fmt.upper() == "JPEG":
        image.save(buffer, "JPEG", quality=92)
        return "image/jpeg", buffer.getvalue()
    image.save(buffer, "PNG")
    return "image/png", buffer.getvalue()


def data_url(mime: str, data: bytes) -> str:
    import base64

    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# -- server-sent events ----------------------------------------------------------------------------
class SSEParser:
    """Lines in, the data of each complete event out (multi-line data joined with newlines).

    ``comments`` counts the comment lines (keep-alives), which are not part of any answer. An
    event whose data passes ``max_chars`` raises _TooLong.
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
                raise _TooLong
            self._data.append(value)
        return []

    def flush(self) -> list[str]:
        if not self._data:
            return []
        data, self._data, self._size = "\n".join(self._data), [], 0
        return [data]


_NEWLINE = re.compile(r"\r\n|\r|\n")


def bounded_lines(chunks: Iterator[bytes], max_chars: int = MAX_LINE_CHARS) -> Iterator[str]:
    """The lines of a byte stream (CRLF, CR or LF), raising _TooLong as soon as one passes
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
            raise _TooLong
    pending += decoder.decode(b"", final=True)
    if pending:
        lines = _NEWLINE.split(pending)
        if lines[-1] == "":
            lines.pop()
        yield from lines


class _StreamingCall:
    """One request read in a thread; what happens arrives on ``events`` as (kind, value) pairs.

    Kinds: "connected" (the TCP connection is up), "sent" (the whole request is written), "open"
    (200 and headers received), "line", "eof", "status" (an error status: code, headers, body
    text), "whole" (a 200 JSON body instead of a stream), "body" (with ``stream`` off: code,
    headers, body text), "toolong" (a line passed MAX_LINE_CHARS), "error" (an exception from
    httpx). ``abort`` shuts the socket down from any thread, which both wakes a blocked read and
    tells the server the client has gone. The caller, not this thread, keeps the deadlines: httpx's
    read timeout is per read, which a server sending a byte at a time never trips.
    """

    def __init__(self, engine: "OpenAIEngine", url: str, body: bytes | None, *, stream: bool = True):
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
                    except _TooLong:
                        self._put("toolong", None)
                        self.abort()
                        return
            self._put("eof", None)
        except BaseException as error:  # handed to the reader, never lost in this thread
            if not self._aborted:
                self._put("error", error)


class _Clock:
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


class _SecretFilter:
    """Scrubs secrets from a stream of text pieces, holding back only a tail that could be the
    start of one, so a secret split across pieces is caught too."""

    def __init__(self, secrets: Sequence[str]):
        self.secrets = sorted(set(secrets), key=len, reverse=True)
        self._pending = ""

    def feed(self, piece: str) -> str:
        if not self.secrets:
            return piece
        text = self._pending + piece
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        hold = 0
        for secret in self.secrets:
            for n in range(min(len(secret) - 1, len(text)), hold, -1):
                if text.endswith(secret[:n]):
                    hold = n
                    break
        self._pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text


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


def _server_message(text: str) -> str:
    """The human part of an error body: OpenAI, vLLM, Ollama and llama.cpp each nest it differently."""
    message: Any = None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message") or error.get("type")
        elif isinstance(error, str):
            message = error
        message = message or data.get("message") or data.get("detail")
        if isinstance(message, (list, dict)):
            message = json.dumps(message)
    elif text.lstrip().startswith("<"):
        # An HTML page from a proxy (nginx's 413, say): its title is the message.
        import re

        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        message = title.group(1) if title else None
    else:
        message = text
    return " ".join(clean(str(message or ""), keep_newlines=False).split())


def _shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _retry_after(value: str | None) -> float | None:
    """Seconds from now, from a Retry-After header (seconds, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _sent_secrets(base_url: str, api_key: str | None) -> list[str]:
    """Every credential a request to ``base_url`` carries, in each form it is sent in: the key,
    user:password (as typed, decoded, and base64 as in the Basic header), the password alone, and
    secret-looking query values (as in the URL and decoded). Longest first, so a longer one is
    scrubbed whole before a shorter one inside it."""
    found: list[str] = []
    if api_key:
        found.append(api_key)
    parts = urllib.parse.urlsplit(base_url)
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        raw_user, _, raw_password = userinfo.partition(":")
        user, password = urllib.parse.unquote(raw_user), urllib.parse.unquote(raw_password)
        basic = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
        found += [userinfo, f"{user}:{password}", basic, raw_password, password]
    for item in parts.query.split("&") if parts.query else ():
        name, _, value = item.partition("=")
        plain = urllib.parse.unquote_plus(value)
        if secret_query_item(urllib.parse.unquote_plus(name), plain):
            found += [value, plain, urllib.parse.quote(plain, safe="")]
    return sorted({f for f in found if len(f) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def _valid_count(value: Any, most: int) -> int | None:
    """A token count from the server's usage, if it is one: a whole number from 0 to ``most``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        return None
    return value


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n / 1000:.0f} kB"


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__  # type: ignore[assignment]


def _mentions_pictures(message: str) -> bool:
    text = message.lower()
    about_pictures = any(w in text for w in ("image", "vision", "multimodal", "multi-modal", "picture", "mmproj"))
    refusal = any(
        w in text for w in ("not support", "unsupported", "does not", "doesn't", "not a multimodal", "not multimodal",
                            "cannot", "can't", "not enabled", "not allowed", "only text", "text-only", "no vision")
    )
    return about_pictures and refusal


def _mentions_context(message: str) -> bool:
    text = message.lower()
    return ("context" in text and ("length" in text or "window" in text or "exceed" in text)) or "too many tokens" in text


# -- the engine --------------------------------------------------------------------------------------
class OpenAIEngine(ChatEngine):
    """A model on an OpenAI-compatible server, behind the same ChatEngine protocol as a local one."""

    def __init__(
        self,
        endpoint: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        image_max_side: int | None = None,
        connect_timeout: float = 10.0,
        token_timeout: float = 120.0,
        answer_timeout: float = 1800.0,
        image_dirs: Sequence["str | os.PathLike[str]"] = (),
        model_is_default: bool = False,
    ):
        self.base_url = normalize_endpoint(endpoint)
        self.endpoint = display_endpoint(self.base_url)
        # None: use the server's model if it serves exactly one. A default name (not chosen by the
        # person) is used only if the server has it, and otherwise means the same as None.
        self.requested_model = model.strip() if model and model.strip() else None
        self.model_is_default = model_is_default
        self.name = (None if model_is_default else self.requested_model) or "(the server's model)"
        self._api_key = api_key or None
        if image_max_side is not None and (not isinstance(image_max_side, int) or image_max_side < 16):
            raise BadOptionError(
                f"image_max_side must be a whole number of pixels, at least 16, not {image_max_side!r}",
                "give a size such as 1024, or leave it unset to send pictures as they are",
            )
        for label, value in (
            ("connect_timeout", connect_timeout), ("token_timeout", token_timeout), ("answer_timeout", answer_timeout)
        ):
            if not isinstance(value, (int, float)) or not value > 0:
                raise BadOptionError(f"{label} must be a number of seconds above 0, not {value!r}", "give e.g. 10")
        self.image_max_side = image_max_side
        self.connect_timeout = float(connect_timeout)
        self.token_timeout = float(token_timeout)
        self.answer_timeout = float(answer_timeout)
        self._secrets = _sent_secrets(self.base_url, self._api_key)
        self.image_dirs = list(image_dirs)
        self.model_info: ServerModel | None = None
        self.loaded = False
        self._pictures: OrderedDict[tuple[str, int | None], str] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: "Settings", model: str | None, *, model_is_default: bool = False) -> "OpenAIEngine":
        return cls(
            settings.endpoint or "",
            model,
            model_is_default=model_is_default,
            api_key=settings.api_key,
            image_max_side=settings.image_max_side,
            connect_timeout=settings.connect_timeout,
            token_timeout=settings.token_timeout,
            answer_timeout=settings.answer_timeout,
        )

    def __repr__(self) -> str:  # never the key
        return f"OpenAIEngine({self.endpoint!r}, {self.name!r})"

    # -- http -------------------------------------------------------------------------------------------
    def http_client(self):
        import httpx

        # identity: a compressed body could grow far past the limits on what is read.
        headers = {"User-Agent": "vlchat", "Accept-Encoding": "identity"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        timeout = httpx.Timeout(
            connect=self.connect_timeout,
            read=self.token_timeout,
            write=max(self.token_timeout, 30.0),
            pool=self.connect_timeout,
        )
        # A loopback endpoint (a local server, an SSH tunnel) is never reached through an HTTP(S)_PROXY.
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        return httpx.Client(headers=headers, timeout=timeout, follow_redirects=False, trust_env=not loopback)

    def _scrub(self, text: str) -> str:
        """Text from a server may echo back any credential sent to it; none goes further than here."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def _where(self) -> str:
        parts = urllib.parse.urlsplit(self.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"

    def network_error(self, error: BaseException, *, answering: bool = False, partial: bool = False) -> VlchatError:
        """One clear line for anything httpx raised."""
        import httpx

        kept = "; the partial answer was kept" if partial else ""
        if isinstance(error, VlchatError):
            return error
        if isinstance(error, httpx.ConnectTimeout):
            return ConnectTimeoutError(
                f"the server at {self.endpoint} did not accept a connection within {self.connect_timeout:g} s (connect_timeout)",
                f"check that it is up and reachable (firewall, VPN, SSH tunnel), or raise --connect-timeout",
            )
        if isinstance(error, httpx.ReadTimeout):
            return self.timeout_error("next" if partial else "first", partial=partial)
        if isinstance(error, httpx.WriteTimeout):
            return TokenTimeoutError(
                f"sending the request to {self.endpoint} took longer than {max(self.token_timeout, 30.0):g} s",
                "the connection is slow; shrink the pictures with --image-max-side 1024, or raise --token-timeout",
            )
        if isinstance(error, httpx.ConnectError):
            for cause in _causes(error):
                if isinstance(cause, socket.gaierror):
                    host = clean(urllib.parse.urlsplit(self.base_url).hostname or "", keep_newlines=False)
                    return HostNotFoundError(
                        f"cannot find the host {host!r} of {self.endpoint} (DNS lookup failed)",
                        "check the host name in --endpoint (or VLCHAT_ENDPOINT)",
                    )
                if isinstance(cause, ConnectionRefusedError):
                    return ConnectionRefusedByServerError(
                        f"nothing is listening at {self._where()} (connection refused by {self.endpoint})",
                        f"start the server (vllm serve, ollama serve, llama-server) or check the port; {SSH_HINT}",
                    )
            text = _shorten(self._scrub(_server_message(str(error)) or type(error).__name__))
            if "ssl" in text.lower() or "certificate" in text.lower():
                return ServerUnreachableError(
                    f"the secure connection to {self.endpoint} failed: {text}",
                    "check the certificate, or use http:// if the server does not speak https",
                )
            return ServerUnreachableError(f"cannot connect to {self.endpoint}: {text}", "check the endpoint and the network")
        if isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError)):
            if answering:
                return IncompleteStreamError(
                    f"the server at {self.endpoint} broke off the answer (the connection closed before its final event)",
                    f"ask again; if it keeps happening, look at the server's log{kept}",
                )
            return ServerError(
                f"the server at {self.endpoint} closed the connection without answering",
                "look at the server's log; it may have crashed or restarted",
            )
        if isinstance(error, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return InputError(f"the endpoint {self.endpoint} is not a usable URL", "give one like http://localhost:8000/v1")
        if isinstance(error, httpx.HTTPError):
            text = _shorten(self._scrub(clean(str(error), keep_newlines=False)))
            return ServerUnreachableError(f"talking to {self.endpoint} failed: {type(error).__name__}: {text}", "check the endpoint and the network")
        text = _shorten(self._scrub(clean(str(error), keep_newlines=False)))
        return GenerationError(f"reading the answer from {self.endpoint} failed: {type(error).__name__}: {text}", f"ask again{kept}")

    def timeout_error(self, which: str, *, partial: bool = False, keepalives: int = 0, what: str = "answer") -> TokenTimeoutError:
        """One line for a deadline that passed: ``which`` is "total", "first" or "next" (see _Clock)."""
        kept = "; the partial answer was kept" if partial else ""
        if which == "total":
            return AnswerTimeoutError(
                f"the server at {self.endpoint} did not finish the {what} within {self.answer_timeout:g} s (answer_timeout)",
                f"ask again, lower --max-new-tokens, or raise --answer-timeout{kept}",
            )
        if which == "next":
            return TokenTimeoutError(
                f"the server at {self.endpoint} stopped sending the {what}: nothing for {self.token_timeout:g} s (token_timeout)",
                f"it may be overloaded or stuck; ask again, or raise --token-timeout{kept}",
            )
        only = f" (only {keepalives} keep-alive message{'s' if keepalives != 1 else ''})" if keepalives else ""
        return TokenTimeoutError(
            f"the server at {self.endpoint} sent no {what} within {self.token_timeout:g} s (token_timeout){only}",
            "it may be busy or still loading the model; ask again, or raise --token-timeout",
        )

    def _redirect_error(self, status: int, head: str, location: str | None, url: str) -> EngineError:
        target = urllib.parse.urljoin(url, location or "")
        try:
            suggested = self._scrub(display_endpoint(normalize_endpoint(target))) if location else None
        except InputError:
            suggested = None
        if suggested and suggested != self.endpoint:
            return EndpointNotFoundError(
                f"the endpoint {self.endpoint} redirects to {suggested} ({head})",
                f"use that URL: --endpoint {suggested}",
            )
        return EndpointNotFoundError(
            f"the endpoint {self.endpoint} answers with a redirect ({head})",
            "check --endpoint: give the server's API URL itself, usually ending in /v1",
        )

    def status_error(
        self, status: int, headers: dict[str, str], text: str, *, what: str, body_bytes: int = 0, url: str = ""
    ) -> EngineError:
        """One clear line for an HTTP error status, with the server's own words when it gave some."""
        import http

        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "error"
        said = _shorten(self._scrub(_server_message(text)))
        name = clean(self.name, keep_newlines=False)
        says = f": {said}" if said and said.lower() != reason.lower() else ""
        head = f"{status} {reason}"
        lowered_headers = {k.lower(): v for k, v in headers.items()}
        if 300 <= status < 400:
            return self._redirect_error(status, head, lowered_headers.get("location"), url or self.base_url)
        if status == 401:
            hint = (
                "give the server's key with --api-key or VLCHAT_API_KEY (a server named only by a session "
                "gets it once you name it with --endpoint)"
                if not self._api_key
                else "the key given (--api-key or VLCHAT_API_KEY) was not accepted; check it"
            )
            return AuthenticationError(f"the server at {self.endpoint} wants a valid API key ({head}){says}", hint)
        if status == 403:
            return AuthenticationError(
                f"the server at {self.endpoint} refused access to {name} ({head}){says}",
                "check that the API key is allowed to use this model",
            )
        if status == 404:
            if what == "models" or "model" not in said.lower():
                return EndpointNotFoundError(
                    f"no OpenAI-compatible API at {self.endpoint} ({head} for /{what}){says}",
                    "check --endpoint; it usually ends in /v1 (vLLM http://host:8000/v1, Ollama http://host:11434/v1)",
                )
            listed = getattr(self, "listed_models", [])
            lists = ("; it lists " + ", ".join(clean(n, keep_newlines=False) for n in listed[:12])) if listed else ""
            return ModelNotFoundError(
                f"the server at {self.endpoint} has no model {name!r} ({head}){says}{lists}",
                f"see what it serves with `vlchat models --endpoint {self.endpoint}` and pass that name with --model",
            )
        if status == 413:
            size = f" (it was {_megabytes(body_bytes)} with its pictures)" if body_bytes else ""
            return RequestTooLargeError(
                f"the server at {self.endpoint} refused the request as too large ({head}){size}",
                "send smaller pictures with --image-max-side 1024 (or image_max_side in the config file)",
            )
        if status == 429:
            wait = _retry_after(lowered_headers.get("retry-after"))
            if wait is not None:
                at = time.strftime("%H:%M:%S", time.localtime(time.time() + wait))
                when = f"retry in {wait:.0f} s (at {at})"
            else:
                when = "retry in a little while"
            return RateLimitedError(
                f"the server at {self.endpoint} is rate-limiting requests ({head}){says}",
                f"{when}; the conversation is kept",
                retry_after_s=wait,
            )
        if _mentions_pictures(said):
            return NoVisionError(
                f"the model {name!r} at {self.endpoint} does not accept pictures ({head}){says}",
                "serve a vision model (vLLM: llava-hf/llava-1.5-7b-hf; Ollama: llava), or ask without pictures",
            )
        if _mentions_context(said):
            return ContextTooLongError(
                f"the conversation does not fit in the context of {name!r} at {self.endpoint} ({head}){says}",
                "start a new conversation, lower --max-new-tokens, or send smaller pictures with --image-max-side",
            )
        if status >= 500:
            wait = _retry_after(lowered_headers.get("retry-after"))
            again = f"retry in {wait:.0f} s" if wait is not None else "try again"
            return ServerError(
                f"the server at {self.endpoint} failed ({head}){says}",
                f"{again}; if it keeps failing, look at the server's log",
            )
        return ServerError(
            f"the server at {self.endpoint} rejected the request ({head}){says}",
            "check the options given (model, --max-new-tokens, --temperature)",
        )

    # -- models ------------------------------------------------------------------------------------------
    def list_models(self) -> list[ServerModel]:
        """The models the server serves, from GET {endpoint}/models."""
        url = api_url(self.base_url, "/models")
        call = _StreamingCall(self, url, None, stream=False)
        clock = _Clock(self.token_timeout, self.answer_timeout)
        call.start()
        try:
            while True:
                late = clock.expired()
                if late:
                    raise self.timeout_error("total" if late == "total" else "first", what="model list")
                try:
                    kind, value = call.events.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if kind == "sent":
                    clock.sent()
                elif kind == "error":
                    raise self.network_error(value) from None
                elif kind == "body":
                    break
        finally:
            call.abort()
        status, headers, text = value
        if status != 200:
            raise self.status_error(status, headers, text, what="models", url=url)
        try:
            data = json.loads(text)
            cards = data["data"] if isinstance(data, dict) else data
            models = [
                ServerModel.from_card({
                    **card, "id": self._scrub(str(card["id"])),
                    "owned_by": None if card.get("owned_by") is None else self._scrub(str(card["owned_by"])),
                })
                for card in cards if isinstance(card, dict) and "id" in card
            ]
            if not isinstance(cards, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise EndpointNotFoundError(
                f"{self.endpoint}/models did not answer with a model list, so this is not an OpenAI-compatible API",
                "check --endpoint; it usually ends in /v1",
            ) from None
        return models

    # -- the protocol ------------------------------------------------------------------------------------
    def load(self, progress: ProgressCallback | None = None) -> None:
        """Check that the server answers and serves the model; pick its only model if none was named."""
        report = progress or (lambda _p: None)
        report(LoadProgress(f"connecting to {self.endpoint}"))
        models = self.list_models()
        names = [m.id for m in models]
        self.listed_models = names
        listed = ", ".join(clean(n, keep_newlines=False) for n in names[:12]) + (", …" if len(names) > 12 else "")
        wanted = self.requested_model
        if wanted is not None and self.model_is_default and wanted not in names:
            wanted = None
        chosen: ServerModel | None = None
        if wanted is None:
            if len(models) == 1:
                chosen = models[0]
            elif not models:
                raise ModelNotFoundError(
                    f"the server at {self.endpoint} lists no models",
                    "name the model with --model (a server that loads models on demand lists only those it has loaded)",
                )
            else:
                raise ModelNotFoundError(
                    f"the server at {self.endpoint} serves several models ({listed})",
                    "choose one with --model",
                )
        else:
            for model in models:
                # Ollama lists "llava:latest" but answers to "llava" too.
                if model.id == wanted or model.id == f"{wanted}:latest":
                    chosen = model
                    break
            # Not listed is not refused: a server that loads models on demand (`transformers serve`
            # with no model pinned) lists only the ones it has loaded. Its answer to the request
            # decides, and its "model not found" is reported as any server error is.
        self.model_info = chosen
        self.name = wanted or chosen.id
        self.loaded = True
        report(LoadProgress("ready"))

    def unload(self) -> None:
        self.loaded = False
        self._pictures.clear()

    def describe(self) -> EngineInfo:
        return EngineInfo(
            name=self.name,
            family=FAMILY,
            device=self.endpoint,
            dtype="",
            quantization="server-side",
            memory_bytes=None,
            context_length=self.model_info.context_length if self.model_info else None,
            label="",
            endpoint=self.endpoint,
        )

    # -- the request ---------------------------------------------------------------------------------------
    def _picture_url(self, ref: ImageRef) -> str:
        key = (ref.sha256, self.image_max_side)
        url = self._pictures.get(key)
        if url is None:
            image = open_ref(ref, self.image_dirs)
            url = data_url(*encode_picture(image, ref.format, self.image_max_side))
            self._pictures[key] = url
            while len(self._pictures) > 16:
                self._pictures.popitem(last=False)
        else:
            self._pictures.move_to_end(key)
        return url

    def request_body(self, conversation: Conversation, params: GenerationParams) -> dict[str, Any]:
        """The chat completion request: each picture as an image_url part at the turn it was added."""
        messages: list[dict[str, Any]] = []
        for message in conversation.for_model().messages:  # unanswered questions left out
            if message.images:
                content: Any = [
                    {"type": "image_url", "image_url": {"url": self._picture_url(ref)}} for ref in message.images
                ]
                content.append({"type": "text", "text": message.text})
            else:
                content = message.text
            messages.append({"role": message.role, "content": content})
        body: dict[str, Any] = {
            "model": self.name,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens,
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
        }
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def stream(
        self,
        conversation: Conversation,
        params: GenerationParams,
        cancel: threading.Event | None = None,
    ) -> TokenStream:
        if not self.loaded:
            raise EngineError(f"not connected to {self.endpoint} yet", "load the engine first")
        params.validate()
        if not conversation.messages or conversation.messages[-1].role != "user":
            raise GenerationError("there is no question to answer", "add a user message first")
        payload = json.dumps(self.request_body(conversation, params)).encode("utf-8")
        cancel = cancel or threading.Event()
        stats = StreamStats()
        call = _StreamingCall(self, api_url(self.base_url, "/chat/completions"), payload)
        return TokenStream(self._pieces(call, cancel, stats, len(payload), params.max_new_tokens), stats)

    def _pieces(
        self, call: _StreamingCall, cancel: threading.Event, stats: StreamStats, body_bytes: int, max_new_tokens: int
    ) -> Iterator[str]:
        if cancel.is_set():
            stats.stopped = True
            stats.finished_at = time.perf_counter()
            return
        clock = _Clock(self.token_timeout, self.answer_timeout)
        call.start()
        sse = SSEParser()
        state = _AnswerState(self, stats, max_new_tokens)
        secrets = _SecretFilter(self._secrets)
        done = False
        try:
            while not done:
                if cancel.is_set():
                    stats.stopped = True
                    return
                late = clock.expired()
                if late:
                    raise self.timeout_error(late, partial=bool(state.text), keepalives=sse.comments)
                try:
                    kind, value = call.events.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if kind == "connected":
                    continue
                clock.sent()  # anything from the server means the request went out
                if kind in ("sent", "open"):
                    continue
                if kind == "status":
                    status, headers, text = value
                    raise self.status_error(status, headers, text, what="chat/completions", body_bytes=body_bytes, url=call.url)
                if kind == "error":
                    raise self.network_error(value, answering=True, partial=bool(state.text)) from None
                if kind == "toolong":
                    raise self._too_long(bool(state.text))
                if kind == "whole":
                    piece = secrets.feed("".join(state.take_whole(value))) + secrets.flush()
                    if piece:
                        yield piece
                    done = True
                    break
                try:
                    events = sse.feed(value) if kind == "line" else sse.flush()
                except _TooLong:
                    raise self._too_long(bool(state.text)) from None
                for data in events:
                    pieces = state.take(data)
                    if state.active:
                        clock.piece()
                    for piece in pieces:
                        piece = secrets.feed(piece)
                        if not piece:
                            continue
                        yield piece
                        if cancel.is_set():  # set while the caller had the piece
                            stats.stopped = True
                            return
                    if state.done:
                        break
                if state.done:
                    done = True
                elif kind == "eof":
                    if state.finish_reason:
                        done = True  # a finish_reason without [DONE] is a complete answer too
                    else:
                        raise IncompleteStreamError(
                            f"the answer from {self.endpoint} ended without its final event ([DONE] or a finish_reason)",
                            "ask again" + ("; the partial answer was kept" if state.text else ""),
                        )
            tail = secrets.flush()
            if tail:
                yield tail
            if not state.text and not state.finish_reason and not stats.stopped:
                # A role chunk and [DONE]: llama-cpp-python's server ends a request this way when
                # another one arrives. It is not an empty answer, and must not be kept as one.
                raise EmptyAnswerError(
                    f"the server at {self.endpoint} ended the answer without sending any of it (no text and no finish_reason)",
                    "ask again; a server that takes one request at a time may have dropped it for another",
                )
        finally:
            if done:  # the server's finish_reason: "length" is a cut answer, anything else a finished one
                stats.finish_reason = "length" if state.finish_reason == "length" else "stop"
            if done and not state.cut:
                # Let the server finish its response cleanly, but never wait long for it.
                deadline = time.monotonic() + 1.0
                while call.thread.is_alive() and time.monotonic() < deadline and not cancel.is_set():
                    call.thread.join(POLL_S)
            call.abort()
            if call.thread.ident is not None:
                call.thread.join(0.2)  # the shut-down socket wakes it at once; never wait on a slow connect
            stats.finished_at = time.perf_counter()

    def _too_long(self, partial: bool) -> LineTooLongError:
        return LineTooLongError(
            f"the server at {self.endpoint} sent a line of over {_megabytes(MAX_LINE_CHARS)} in its answer, "
            "more than any piece of an answer; vlchat stopped reading",
            "the server is not speaking the OpenAI streaming format; check --endpoint"
            + ("; the partial answer was kept" if partial else ""),
        )


class _AnswerState:
    """What the chunks of one answer have said so far."""

    def __init__(self, engine: OpenAIEngine, stats: StreamStats, max_new_tokens: int):
        self.engine = engine
        self.stats = stats
        self.max_new_tokens = max_new_tokens
        self.max_chars = max_new_tokens * MAX_CHARS_PER_TOKEN
        self.text = ""
        self.done = False
        self.finish_reason: str | None = None
        self.usage_seen = False
        self.chunks = 0  # chunks that carried answer text: one token each, as servers send them
        self.active = False  # whether the last chunk taken carried any of the answer
        self.cut = False  # the server went past max_new_tokens and was cut off here

    def _cut(self) -> None:
        # The server did not keep to max_tokens: the answer ends here, as a local model's would.
        self.cut = self.done = True
        self.finish_reason = "length"
        self.stats.notice = (
            f"the server at {self.engine.endpoint} went on past --max-new-tokens ({self.max_new_tokens}); "
            "vlchat cut the answer there and closed the connection"
        )

    def take(self, data: str) -> list[str]:
        self.active = False
        if self.cut:
            return []
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(data)
        except ValueError:
            raise self._malformed(data) from None
        if not isinstance(chunk, dict):
            raise self._malformed(data)
        error = chunk.get("error")
        if error:
            # vLLM and Ollama report failures inside the stream as {"error": {...}}.
            said = _shorten(self.engine._scrub(_server_message(json.dumps(chunk))))
            kept = "; the partial answer was kept" if self.text else ""
            if _mentions_context(said):
                raise ContextTooLongError(
                    f"the conversation no longer fits in the context of {self.engine.name!r}: {said}",
                    f"start a new conversation or lower --max-new-tokens{kept}",
                )
            raise GenerationError(f"the server at {self.engine.endpoint} failed while answering: {said}", f"ask again{kept}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            # Figures a server could not have counted (negative, or past the limit it was given)
            # are left out rather than recorded.
            completion = _valid_count(usage.get("completion_tokens"), max(self.max_new_tokens, self.chunks))
            prompt = _valid_count(usage.get("prompt_tokens"), MAX_PROMPT_TOKENS)
            if completion is not None:
                self.stats.tokens = completion
                self.usage_seen = True
            if prompt is not None:
                self.stats.prompt_tokens = prompt
        pieces = []
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise self._malformed(data)
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta, dict) and any(isinstance(v, str) and v for k, v in delta.items() if k != "role"):
                self.active = True  # reasoning_content counts too: the model is at work
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                self.chunks += 1
                if self.chunks > self.max_new_tokens:
                    self._cut()
                    break
                piece = clean(content)
                room = self.max_chars - len(self.text)
                if len(piece) > room:
                    piece = piece[: max(room, 0)]
                    self._cut()
                if not self.text:
                    piece = piece.lstrip()  # the answer starts at its first visible character
                if piece:
                    if self.stats.first_token_at is None:
                        self.stats.first_token_at = time.perf_counter()
                    if not self.usage_seen:
                        self.stats.tokens += 1  # one chunk is about one token, until usage says
                    self.text += piece
                    pieces.append(piece)
                if self.cut:
                    break
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
        return pieces

    def take_whole(self, text: str) -> list[str]:
        """A complete (non-streamed) chat completion: its message becomes one piece."""
        try:
            data = json.loads(text)
            message = data["choices"][0]["message"]
            content = message.get("content") or ""
            if not isinstance(content, str):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise self._malformed(text) from None
        self.finish_reason = data["choices"][0].get("finish_reason") or "stop"
        # Usage first, so take() does not count the one piece as the token count.
        usage = data.get("usage")
        pieces = self.take(json.dumps({"usage": usage, "choices": [{"index": 0, "delta": {"content": content}}]}))
        self.done = True
        return pieces

    def _malformed(self, data: str) -> MalformedStreamError:
        sample = _shorten(self.engine._scrub(clean(data, keep_newlines=False)), 80)
        return MalformedStreamError(
            f"the server at {self.engine.endpoint} sent a piece of the answer that is not valid JSON: {sample!r}",
            "ask again; if it keeps happening, the server is not speaking the OpenAI streaming format"
            + ("; the partial answer was kept" if self.text else ""),
        )
