"""The status line: one row under the conversation, drawn from a ``StatusState`` snapshot.

The state says what is true (which model, loaded or not, the last answer's timings, the context
count); ``status_text`` turns it into words that fit the row: on a narrow terminal the least
useful items are shortened, then dropped, always whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from rich.text import Text
from textual.widgets import Static

from vlchat.core.conversation import Timings
from vlchat.core.text import clean
from vlchat.ui.transcript import model_label

NARROW_COLUMNS = 100


def size_text(n: int | None) -> str:
    """Bytes for people: 812 B, 3.4 MB, 1.2 GB."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass
class StatusState:
    """Everything the status line shows, gathered from the app (the model) and the chat (the rest)."""

    model: str  # the model the settings name (shown until the engine describes itself)
    info: Any = None  # the engine's EngineInfo once loaded
    loaded: bool = False
    load_error: str | None = None
    load_stage: str = "waiting"
    load_started: float | None = None  # monotonic clock when loading began
    switching_model: str | None = None  # the model /model is loading
    switch_stage: str = ""
    save_error: str | None = None
    read_only: bool = False
    context_tokens: int | None = None
    picture_tokens: int | None = None
    last_prompt_tokens: int | None = None
    last_tokens: int | None = None
    last_timings: Timings | None = None
    temperature: float | None = None
    answering: bool = False
    job: str = ""  # a /caption job's progress
    width: int = 120


@dataclass
class Part:
    """One item of the status line: its words, shorter words for a narrow line, and when (by rank:
    lower goes first) it is shortened or dropped, always whole."""

    text: str
    style: str = ""
    group: str = "fields"  # "head" (the model, not saved), "fields" (the figures), "tail" (what is going on)
    sep: str = " · "  # what comes before it within its group; groups are two spaces apart
    short: str | None = None
    shorten_at: int | None = None
    drop_at: int | None = None


def status_text(state: StatusState) -> Text:
    """The status line for ``state``, fitted to ``state.width`` cells."""
    return fit(status_parts(state), state.width)


def fit(parts: list[Part], width: int) -> Text:
    """The parts that fit in ``width`` cells: the least useful shortened, then dropped, one step at
    a time, each whole, until the line fits (only a model name longer than the line is cut)."""
    forms = ["long"] * len(parts)
    steps = sorted(
        [(p.shorten_at, i, "short") for i, p in enumerate(parts) if p.shorten_at is not None and p.short is not None]
        + [(p.drop_at, i, "gone") for i, p in enumerate(parts) if p.drop_at is not None]
    )
    text = _join(parts, forms)
    for _rank, index, form in steps:
        if text.cell_len <= width:
            break
        if forms[index] != "gone":
            forms[index] = form
        text = _join(parts, forms)
    text.truncate(max(width, 1), overflow="ellipsis")
    return text


def _join(parts: list[Part], forms: list[str]) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    group = None
    for part, form in zip(parts, forms):
        if form == "gone":
            continue
        if text:
            text.append(part.sep if part.group == group else "  ")
        group = part.group
        text.append(part.short if form == "short" else part.text, style=part.style)
    return text


def status_parts(state: StatusState) -> list[Part]:
    name = model_label(state.model)
    label = ""
    if state.info is not None:
        name = model_label(state.info.name)
        if state.info.label:
            label = f" ({clean(state.info.label, keep_newlines=False)})"
    parts = [Part(name + label, "bold", group="head", short=name, shorten_at=40)]
    # What must not be missed stays to the end: nothing is being saved, or nothing can be.
    if state.save_error:
        parts.append(Part("not saved", "bold red", group="head", sep="  "))
    elif state.read_only:
        parts.append(Part("read-only", "bold yellow", group="head", sep="  "))
    switching = []
    if state.switching_model:
        switching = [Part(f"loading {model_label(state.switching_model)}: {state.switch_stage}…", "italic", group="tail",
                          short=f"loading {model_label(state.switching_model)}…", shorten_at=30, drop_at=45)]
    if state.load_error:
        return parts + [Part("not loaded", "bold red", group="tail")] + switching
    if not state.loaded or state.info is None:
        waited = f" {time.monotonic() - state.load_started:.0f} s" if state.load_started else ""
        parts.append(Part(f"loading: {clean(state.load_stage, keep_newlines=False)}…{waited}", "italic", group="tail",
                          short=f"loading…{waited}", shorten_at=5))
        return parts
    parts += _fields(state)
    if state.answering:
        parts.append(Part("answering… Esc stops", "italic", group="tail", short="answering…", shorten_at=4, drop_at=50))
    if state.job:
        job = clean(state.job, keep_newlines=False)  # "captioning 8/40 pictures: 8 captioned; 4.2/s"
        parts.append(Part(job, "italic", group="tail", short=job.split(":")[0], shorten_at=55))
    return parts + switching


def _fields(state: StatusState) -> list[Part]:
    info = state.info
    quant = "no quant" if info.quantization == "none" else info.quantization
    fields = [Part(clean(str(info.device), keep_newlines=False), drop_at=11)]
    if info.dtype:
        fields.append(Part(clean(str(info.dtype), keep_newlines=False), drop_at=5))
    fields.append(Part(clean(str(quant), keep_newlines=False), drop_at=8))
    if info.memory_bytes is not None:  # a server does not say what its model takes
        fields.append(Part(f"mem {size_text(info.memory_bytes)}", short=size_text(info.memory_bytes), shorten_at=3, drop_at=7))
    limit = info.context_length
    if state.context_tokens is None and state.last_prompt_tokens is not None:
        # No local tokenizer to count with (a server): what the last answer's usage said.
        used = state.last_prompt_tokens + (state.last_tokens or 0)
        fields.append(Part(f"ctx {used}" + (f"/{limit}" if limit else ""), drop_at=60))
    elif state.context_tokens is not None:
        fields.append(Part(f"ctx {state.context_tokens}" + (f"/{limit}" if limit else ""), drop_at=60))
        if state.picture_tokens:
            fields.append(Part(f"({state.picture_tokens} in pictures)", sep=" ", short=f"({state.picture_tokens} pic)",
                               shorten_at=1, drop_at=6))
    elif limit:
        fields.append(Part(f"ctx -/{limit}", drop_at=60))
    timings = state.last_timings
    if timings and timings.first_token_s is not None:
        fields.append(Part(f"first token {timings.first_token_s:.2f} s", short=f"first {timings.first_token_s:.2f} s",
                           shorten_at=2, drop_at=9))
    if timings and timings.tokens_per_s:
        fields.append(Part(f"{timings.tokens_per_s:.0f} tok/s", drop_at=12))
    if state.temperature:
        fields.append(Part(f"temp {state.temperature:g}", drop_at=10))
    return fields


class StatusLine(Static):
    """The status row; ``show`` draws a state, fitted to the row's width (again after a resize)."""

    _state: StatusState | None = None

    def show(self, state: StatusState) -> None:
        self._state = state
        if self.content_size.width:
            state = replace(state, width=self.content_size.width)
        self.update(status_text(state))

    def on_resize(self, _event) -> None:
        if self._state is not None:
            self.show(self._state)
