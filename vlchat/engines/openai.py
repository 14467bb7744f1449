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

import io
import json
import queue
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from vlchat.config import REDACTED
from vlchat.core.conversation import Conversation, GenerationParams, ImageRef
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
# The reading, the errors and the scrubbing live beside this module; every public name they have
# is re-exported here, where it has always been imported from.
from vlchat.engines.openai_errors import (  # noqa: F401
    MAX_MESSAGE_CHARS,
    SSH_HINT,
    AnswerTimeoutError,
    AuthenticationError,
    ConnectionRefusedByServerError,
    ConnectTimeoutError,
    EmptyAnswerError,
    EndpointNotFoundError,
    HostNotFoundError,
    IncompleteStreamError,
    LineTooLongError,
    MalformedStreamError,
    NoVisionError,
    RateLimitedError,
    RequestTooLargeError,
    ServerError,
    ServerErrors,
    ServerUnreachableError,
    TokenTimeoutError,
    megabytes,
    mentions_context,
    server_message,
    shorten,
)
from vlchat.engines.openai_http import (  # noqa: F401
    MAX_BODY_BYTES,
    MAX_LINE_CHARS,
    MAX_QUEUED_LINES,
    POLL_S,
    Clock,
    SSEParser,
    StreamingCall,
    TooLong,
    api_url,
    bounded_lines,
    display_endpoint,
    normalize_endpoint,
)
from vlchat.engines.openai_secrets import MIN_SECRET_CHARS, SecretFilter, sent_secrets  # noqa: F401

if TYPE_CHECKING:
    import os

    from vlchat.config import Settings

FAMILY = "openai-compatible"
# The answer's text is capped at this much per token of max_new_tokens (the longest tokens of
# common vocabularies are runs of whitespace, well under this).
MAX_CHARS_PER_TOKEN = 256
# Usage figures above this are not counts from any real model.
MAX_PROMPT_TOKENS = 10**8


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


def _valid_count(value: Any, most: int) -> int | None:
    """A token count from the server's usage, if it is one: a whole number from 0 to ``most``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        return None
    return value


# -- the engine --------------------------------------------------------------------------------------
class OpenAIEngine(ServerErrors, ChatEngine):
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
        self._secrets = sent_secrets(self.base_url, self._api_key)
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


    # -- models ------------------------------------------------------------------------------------------
    def list_models(self) -> list[ServerModel]:
        """The models the server serves, from GET {endpoint}/models."""
        url = api_url(self.base_url, "/models")
        call = StreamingCall(self, url, None, stream=False)
        clock = Clock(self.token_timeout, self.answer_timeout)
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
        call = StreamingCall(self, api_url(self.base_url, "/chat/completions"), payload)
        return TokenStream(self._pieces(call, cancel, stats, len(payload), params.max_new_tokens), stats)

    def _pieces(
        self, call: StreamingCall, cancel: threading.Event, stats: StreamStats, body_bytes: int, max_new_tokens: int
    ) -> Iterator[str]:
        if cancel.is_set():
            stats.stopped = True
            stats.finished_at = time.perf_counter()
            return
        clock = Clock(self.token_timeout, self.answer_timeout)
        call.start()
        sse = SSEParser()
        state = _AnswerState(self, stats, max_new_tokens)
        secrets = SecretFilter(self._secrets)
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
                except TooLong:
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
            f"the server at {self.endpoint} sent a line of over {megabytes(MAX_LINE_CHARS)} in its answer, "
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
            said = shorten(self.engine._scrub(server_message(json.dumps(chunk))))
            kept = "; the partial answer was kept" if self.text else ""
            if mentions_context(said):
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
        sample = shorten(self.engine._scrub(clean(data, keep_newlines=False)), 80)
        return MalformedStreamError(
            f"the server at {self.engine.endpoint} sent a piece of the answer that is not valid JSON: {sample!r}",
            "ask again; if it keeps happening, the server is not speaking the OpenAI streaming format"
            + ("; the partial answer was kept" if self.text else ""),
        )
