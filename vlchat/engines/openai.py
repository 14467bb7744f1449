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

import email.utils
import io
import json
import queue
import socket
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

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


class MalformedStreamError(GenerationError):
    """A chunk of the answer's stream is not the JSON it should be."""


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
    parts = urllib.parse.urlsplit(text)
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
    """The endpoint as it may be shown or saved: no user:password@, no query (keys hide there too)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return clean(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")), keep_newlines=False)


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
    """Lines in, the data of each complete event out (multi-line data joined with newlines)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> list[str]:
        if line == "":
            return self.flush()
        if line.startswith(":"):  # a comment: servers send these as keep-alives
            return []
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        return []

    def flush(self) -> list[str]:
        if not self._data:
            return []
        data, self._data = "\n".join(self._data), []
        return [data]


class _StreamingCall:
    """One POST read in a thread; what happens arrives on ``events`` as (kind, value) pairs.

    Kinds: "open" (200 and headers received), "line", "eof", "status" (an error status: code,
    headers, body text), "error" (an exception from httpx). ``abort`` shuts the socket down from
    any thread, which both wakes a blocked read and tells the server the client has gone.
    """

    def __init__(self, engine: "OpenAIEngine", url: str, body: bytes):
        self.engine = engine
        self.url = url
        self.body = body
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
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

    def _trace(self, event: str, info: dict[str, Any]) -> None:
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
        if aborted:
            _shutdown(sock)

    def _run(self) -> None:
        try:
            # A fresh client per answer: the connection is then always a new one, so _trace sees
            # its socket (a pooled, reused connection would not be reported).
            with self.engine.http_client() as client:
                with client.stream(
                    "POST",
                    self.url,
                    content=self.body,
                    headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                    extensions={"trace": self._trace},
                ) as response:
                    if response.status_code != 200:
                        text = _read_capped(response)
                        self.events.put(("status", (response.status_code, dict(response.headers), text)))
                        return
                    if "json" in response.headers.get("content-type", ""):
                        # A server that ignored stream: true sends the whole answer at once.
                        self.events.put(("whole", _read_capped(response)))
                        return
                    self.events.put(("open", None))
                    for line in response.iter_lines():
                        if self._aborted:
                            return
                        self.events.put(("line", line))
            self.events.put(("eof", None))
        except BaseException as error:  # handed to the reader, never lost in this thread
            if not self._aborted:
                self.events.put(("error", error))


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
        for label, value in (("connect_timeout", connect_timeout), ("token_timeout", token_timeout)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise BadOptionError(f"{label} must be a number of seconds above 0, not {value!r}", "give e.g. 10")
        self.image_max_side = image_max_side
        self.connect_timeout = float(connect_timeout)
        self.token_timeout = float(token_timeout)
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
        )

    def __repr__(self) -> str:  # never the key
        return f"OpenAIEngine({self.endpoint!r}, {self.name!r})"

    # -- http -------------------------------------------------------------------------------------------
    def http_client(self):
        import httpx

        headers = {"User-Agent": "vlchat"}
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
        """Text from a server may echo the key back; it never goes further than here."""
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
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
            if answering:
                return TokenTimeoutError(
                    f"the server at {self.endpoint} stopped sending the answer: nothing for {self.token_timeout:g} s (token_timeout)",
                    f"it may be overloaded or stuck; ask again, or raise --token-timeout{kept}",
                )
            return TokenTimeoutError(
                f"the server at {self.endpoint} accepted the request but sent nothing for {self.token_timeout:g} s (token_timeout)",
                "it may be busy or still loading the model; ask again, or raise --token-timeout",
            )
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

    def status_error(self, status: int, headers: dict[str, str], text: str, *, what: str, body_bytes: int = 0) -> EngineError:
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
        if status == 401:
            hint = (
                "give the server's key with --api-key or VLCHAT_API_KEY"
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
            return ModelNotFoundError(
                f"the server at {self.endpoint} has no model {name!r} ({head}){says}",
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
        import httpx

        try:
            with self.http_client() as client:
                with client.stream("GET", self.base_url + "/models") as response:
                    text = _read_capped(response)
                    status, headers = response.status_code, dict(response.headers)
        except httpx.HTTPError as error:
            raise self.network_error(error) from None
        if status != 200:
            raise self.status_error(status, headers, text, what="models")
        try:
            data = json.loads(text)
            cards = data["data"] if isinstance(data, dict) else data
            models = [ServerModel.from_card(card) for card in cards if isinstance(card, dict) and "id" in card]
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
        listed = ", ".join(clean(n, keep_newlines=False) for n in names[:12]) + (", …" if len(names) > 12 else "")
        wanted = self.requested_model
        if wanted is not None and self.model_is_default and wanted not in names:
            wanted = None
        chosen: ServerModel | None = None
        if wanted is None:
            if len(models) == 1:
                chosen = models[0]
            elif not models:
                raise ModelNotFoundError(f"the server at {self.endpoint} serves no models", "load one into it first")
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
            if chosen is None:
                shown = clean(wanted, keep_newlines=False)
                raise ModelNotFoundError(
                    f"the server at {self.endpoint} has no model {shown!r}"
                    + (f"; it serves {listed}" if models else " (it serves none)"),
                    "pass one of those names with --model (Ollama: `ollama pull NAME` first)",
                )
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
        for message in conversation.messages:
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
        call = _StreamingCall(self, self.base_url + "/chat/completions", payload)
        return TokenStream(self._pieces(call, cancel, stats, len(payload)), stats)

    def _pieces(self, call: _StreamingCall, cancel: threading.Event, stats: StreamStats, body_bytes: int) -> Iterator[str]:
        if cancel.is_set():
            stats.stopped = True
            stats.finished_at = time.perf_counter()
            return
        call.start()
        sse = SSEParser()
        state = _AnswerState(self, stats)
        done = False
        try:
            while not done:
                if cancel.is_set():
                    stats.stopped = True
                    return
                try:
                    kind, value = call.events.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if kind == "open":
                    continue
                if kind == "status":
                    status, headers, text = value
                    raise self.status_error(status, headers, text, what="chat/completions", body_bytes=body_bytes)
                if kind == "error":
                    raise self.network_error(value, answering=True, partial=bool(state.text)) from None
                if kind == "whole":
                    yield from state.take_whole(value)
                    done = True
                    break
                events = sse.feed(value) if kind == "line" else sse.flush()
                for data in events:
                    for piece in state.take(data):
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
        finally:
            if done:
                # Let the server finish its response cleanly, but never wait long for it.
                deadline = time.monotonic() + 1.0
                while call.thread.is_alive() and time.monotonic() < deadline and not cancel.is_set():
                    call.thread.join(POLL_S)
            call.abort()
            if call.thread.ident is not None:
                call.thread.join(0.2)  # the shut-down socket wakes it at once; never wait on a slow connect
            stats.finished_at = time.perf_counter()


class _AnswerState:
    """What the chunks of one answer have said so far."""

    def __init__(self, engine: OpenAIEngine, stats: StreamStats):
        self.engine = engine
        self.stats = stats
        self.text = ""
        self.done = False
        self.finish_reason: str | None = None
        self.usage_seen = False

    def take(self, data: str) -> list[str]:
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
            completion, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
            if isinstance(completion, int):
                self.stats.tokens = completion
                self.usage_seen = True
            if isinstance(prompt, int):
                self.stats.prompt_tokens = prompt
        pieces = []
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise self._malformed(data)
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                piece = clean(content)
                if not self.text:
                    piece = piece.lstrip()  # the answer starts at its first visible character
                if piece:
                    if self.stats.first_token_at is None:
                        self.stats.first_token_at = time.perf_counter()
                    if not self.usage_seen:
                        self.stats.tokens += 1  # one chunk is about one token, until usage says
                    self.text += piece
                    pieces.append(piece)
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
