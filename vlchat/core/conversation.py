"""The conversation: an ordered list of messages, each user message with zero or more pictures.

Pictures are held as ``ImageRef``s (a content hash plus where they came from), never as pixels,
so one picture named twice costs nothing and a conversation serialises to plain JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterator, Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
# Why an answer ended: the model finished it, it was cut at the token limit (or a full context),
# the person stopped it, or an error ended it (the text is what had arrived).
FINISH_REASONS: tuple[str, ...] = ("stop", "length", "stopped", "error")


@dataclass(frozen=True)
class ImageRef:
    """A picture by content: sha256 of the file's bytes, the path it was read from, its format and size."""

    sha256: str
    path: str
    format: str
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "path": self.path,
            "format": self.format,
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageRef":
        return cls(
            sha256=str(data["sha256"]),
            path=str(data["path"]),
            format=str(data["format"]),
            width=int(data["width"]),
            height=int(data["height"]),
        )


@dataclass
class GenerationParams:
    """How an answer is sampled. ``temperature`` 0 means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def validate(self) -> "GenerationParams":
        from vlchat.core.errors import InputError

        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError(
                f"max_new_tokens must be a whole number of at least 1, not {self.max_new_tokens!r}",
                "give a positive number such as 256",
            )
        if not 0.0 <= float(self.temperature) <= 5.0:
            raise InputError(
                f"temperature must be between 0 and 5, not {self.temperature!r}",
                "use 0 for greedy answers or about 0.7 for varied ones",
            )
        if not 0.0 < float(self.top_p) <= 1.0:
            raise InputError(
                f"top_p must be above 0 and at most 1, not {self.top_p!r}", "1 turns it off"
            )
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED):
            # torch's manual_seed takes 64 bits, but servers (transformers serve, numpy's seeding)
            # stop at 32: one bound that every engine accepts.
            shown = self.seed if not isinstance(self.seed, int) or self.seed.bit_length() < 80 else "a larger number"
            raise InputError(f"seed must be a whole number from 0 to {MAX_SEED}, not {shown}",
                             "any number in that range makes sampled answers repeatable")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationParams":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


MAX_SEED = 2**32 - 1


@dataclass
class Timings:
    """Measured for one answer: seconds to the first token and in all, and the decode rate."""

    first_token_s: float | None = None
    total_s: float | None = None
    tokens_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Timings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Message:
    """One turn. User messages may carry pictures; assistant messages record who wrote them and how."""

    role: Role
    text: str
    images: list[ImageRef] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    # Assistant messages only:
    model: str | None = None
    params: GenerationParams | None = None
    stopped: bool = False
    tokens: int | None = None
    timings: Timings | None = None
    # One of FINISH_REASONS; None for an answer saved before vlchat recorded it.
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}")
        if self.images and self.role != "user":
            raise ValueError("only user messages carry pictures")
        if self.finish_reason is None and self.stopped and self.role == "assistant":
            self.finish_reason = "stopped"  # said the old way (or by a caller that knows only that)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "text": self.text, "created": self.created}
        if self.images:
            data["images"] = [ref.to_dict() for ref in self.images]
        if self.role == "assistant":
            data["model"] = self.model
            data["params"] = self.params.to_dict() if self.params else None
            data["stopped"] = self.stopped
            data["tokens"] = self.tokens
            data["timings"] = self.timings.to_dict() if self.timings else None
            data["finish_reason"] = self.finish_reason or ("stopped" if self.stopped else None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Message":
        params = data.get("params")
        timings = data.get("timings")
        stopped = bool(data.get("stopped", False))
        finish = data.get("finish_reason")
        if finish not in FINISH_REASONS:  # older sessions say only whether the answer was stopped
            finish = ("stopped" if stopped else None) if data.get("role") == "assistant" else None
        return cls(
            role=data["role"],
            text=str(data.get("text", "")),
            images=[ImageRef.from_dict(d) for d in data.get("images", [])],
            created=float(data.get("created", 0.0)),
            model=data.get("model"),
            params=GenerationParams.from_dict(params) if params else None,
            stopped=stopped,
            tokens=data.get("tokens"),
            timings=Timings.from_dict(timings) if timings else None,
            finish_reason=finish,
        )


def how_it_ended(message: Message) -> str | None:
    """In words, why an answer did not reach its own end ("cut at 512 tokens", "stopped", "ended by
    an error"); None for an answer the model finished. The app, the export and `ask` say it alike."""
    reason = message.finish_reason or ("stopped" if message.stopped else None)
    if reason == "length":
        return f"cut at {message.tokens} tokens" if message.tokens else "cut at the token limit"
    if reason == "stopped":
        return "stopped"
    if reason == "error":
        return "ended by an error"
    return None


@dataclass
class Conversation:
    """An ordered list of messages. A system message, if any, comes first and there is at most one."""

    messages: list[Message] = field(default_factory=list)

    # -- building -----------------------------------------------------------------------------
    @property
    def system(self) -> str | None:
        if self.messages and self.messages[0].role == "system":
            return self.messages[0].text
        return None

    def set_system(self, text: str | None) -> None:
        """Set, replace or (with None or empty text) remove the system prompt."""
        if self.messages and self.messages[0].role == "system":
            del self.messages[0]
        if text:
            self.messages.insert(0, Message("system", text))

    def add_user(self, text: str, images: list[ImageRef] | tuple[ImageRef, ...] = ()) -> Message:
        message = Message("user", text, images=list(images))
        self.messages.append(message)
        return message

    def add_assistant(
        self,
        text: str,
        *,
        model: str | None,
        params: GenerationParams | None = None,
        stopped: bool = False,
        tokens: int | None = None,
        timings: Timings | None = None,
        finish_reason: str | None = None,
    ) -> Message:
        message = Message(
            "assistant",
            text,
            model=model,
            params=params,
            stopped=stopped,
            tokens=tokens,
            timings=timings,
            finish_reason=finish_reason,
        )
        self.messages.append(message)
        return message

    # -- reading ------------------------------------------------------------------------------
    def images(self) -> list[ImageRef]:
        """Every picture in the order the model sees them (a picture attached twice appears twice)."""
        return [ref for message in self.messages for ref in message.images]

    def unique_images(self) -> list[ImageRef]:
        seen: dict[str, ImageRef] = {}
        for ref in self.images():
            seen.setdefault(ref.sha256, ref)
        return list(seen.values())

    def unanswered(self) -> list[Message]:
        """Questions that got no answer (a failed turn), not counting the last message."""
        return [m for m, after in zip(self.messages, self.messages[1:]) if m.role == "user" and after.role == "user"]

    def for_model(self) -> "Conversation":
        """The conversation as a model is shown it: a question that got no answer is left out, so
        the roles alternate as chat templates require; its pictures go with the next question, so
        the model still sees every picture that was attached."""
        kept: list[Message] = []
        carried: list[ImageRef] = []
        for message, after in zip(self.messages, [*self.messages[1:], None]):
            if message.role == "user" and after is not None and after.role == "user":
                carried.extend(message.images)
                continue
            if carried and message.role == "user":
                message = replace(message, images=[*carried, *message.images])
                carried = []
            kept.append(message)
        return Conversation(messages=kept)

    def turns(self) -> Iterator[Message]:
        return (m for m in self.messages if m.role != "system")

    def last(self, role: Role) -> Message | None:
        for message in reversed(self.messages):
            if message.role == role:
                return message
        return None

    def __len__(self) -> int:
        return len(self.messages)

    # -- serialising --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"messages": [m.to_dict() for m in self.messages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Conversation":
        return cls(messages=[Message.from_dict(m) for m in data.get("messages", [])])
