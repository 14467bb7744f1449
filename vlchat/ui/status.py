"""The status line: one row under the conversation, drawn from a ``StatusState`` snapshot.

The state says what is true (which model, loaded or not, the last answer's timings, the context
count); ``status_text`` turns it into words, fewer of them on a narrow terminal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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


def status_text(state: StatusState) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    name = model_label(state.model)
    if state.info is not None:
        name = model_label(state.info.name)
        if state.info.label:
            name += f" ({clean(state.info.label, keep_newlines=False)})"
    text.append(name, style="bold")
    # First after the name: at 80 columns the end of the line is cut off.
    if state.save_error:
        text.append("  not saved", style="bold red")
    elif state.read_only:
        text.append("  read-only", style="bold yellow")
    if state.load_error:
        text.append("  not loaded", style="bold red")
        if state.switching_model:
            text.append(f"  loading {model_label(state.switching_model)}: {state.switch_stage}…", style="italic")
        return text
    if not state.loaded or state.info is None:
        waited = f" {time.monotonic() - state.load_started:.0f} s" if state.load_started else ""
        text.append(f"  loading: {state.load_stage}…{waited}", style="italic")
        return text
    text.append("  " + " · ".join(clean(str(f), keep_newlines=False) for f in _fields(state)))
    if state.answering:
        text.append("  answering… Esc stops", style="italic")
    if state.job:
        text.append(f"  {clean(state.job, keep_newlines=False)}", style="italic")
    if state.switching_model:
        text.append(f"  loading {model_label(state.switching_model)}: {state.switch_stage}…", style="italic")
    return text


def _fields(state: StatusState) -> list[str]:
    info = state.info
    narrow = state.width < NARROW_COLUMNS  # at 80 columns: the same figures, fewer words
    quant = "no quant" if info.quantization == "none" else info.quantization
    fields = [info.device] + ([] if narrow or not info.dtype else [info.dtype]) + [quant]
    if info.memory_bytes is not None:  # a server does not say what its model takes
        fields.append(size_text(info.memory_bytes) if narrow else f"mem {size_text(info.memory_bytes)}")
    limit = info.context_length
    if state.context_tokens is None and state.last_prompt_tokens is not None:
        # No local tokenizer to count with (a server): what the last answer's usage said.
        used = state.last_prompt_tokens + (state.last_tokens or 0)
        fields.append(f"ctx {used}" + (f"/{limit}" if limit else ""))
    elif state.context_tokens is not None:
        ctx = f"ctx {state.context_tokens}" + (f"/{limit}" if limit else "")
        if state.picture_tokens:
            ctx += f" ({state.picture_tokens} pic)" if narrow else f" ({state.picture_tokens} in pictures)"
        fields.append(ctx)
    elif limit:
        fields.append(f"ctx -/{limit}")
    timings = state.last_timings
    if timings and timings.first_token_s is not None:
        fields.append(f"{timings.first_token_s:.2f} s" if narrow else f"first token {timings.first_token_s:.2f} s")
    if timings and timings.tokens_per_s:
        fields.append(f"{timings.tokens_per_s:.0f} tok/s")
    if state.temperature:
        fields.append(f"temp {state.temperature:g}")
    return fields


class StatusLine(Static):
    """The status row; ``show`` draws a state."""

    def show(self, state: StatusState) -> None:
        self.update(status_text(state))
