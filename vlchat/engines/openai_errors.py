"""What can go wrong with a server, each in one line: the errors, the reading of an error body, and
``ServerErrors``, the OpenAIEngine methods that turn an httpx error, a timeout or an error status
into one of them."""

from __future__ import annotations

import email.utils
import json
import socket
import time
import urllib.parse
from typing import Any, Iterator

from vlchat.core.errors import InputError, VlchatError
from vlchat.core.text import clean
from vlchat.engines.base import ContextTooLongError, EngineError, GenerationError, ModelNotFoundError
from vlchat.engines.openai_http import display_endpoint, normalize_endpoint


MAX_MESSAGE_CHARS = 240
SSH_HINT = "over SSH, forward the port first (ssh -L 8000:localhost:8000 gpu-box)"


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


def server_message(text: str) -> str:
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


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
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


def megabytes(n: int) -> str:
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


def mentions_context(message: str) -> bool:
    text = message.lower()
    return ("context" in text and ("length" in text or "window" in text or "exceed" in text)) or "too many tokens" in text


class ServerErrors:
    """OpenAIEngine's errors, said for its ``endpoint`` and ``base_url`` with its credentials scrubbed."""

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
            text = shorten(self._scrub(server_message(str(error)) or type(error).__name__))
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
            text = shorten(self._scrub(clean(str(error), keep_newlines=False)))
            return ServerUnreachableError(f"talking to {self.endpoint} failed: {type(error).__name__}: {text}", "check the endpoint and the network")
        text = shorten(self._scrub(clean(str(error), keep_newlines=False)))
        return GenerationError(f"reading the answer from {self.endpoint} failed: {type(error).__name__}: {text}", f"ask again{kept}")

    def timeout_error(self, which: str, *, partial: bool = False, keepalives: int = 0, what: str = "answer") -> TokenTimeoutError:
        """One line for a deadline that passed: ``which`` is "total", "first" or "next" (see Clock)."""
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
        said = shorten(self._scrub(server_message(text)))
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
            size = f" (it was {megabytes(body_bytes)} with its pictures)" if body_bytes else ""
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
        if mentions_context(said):
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
