"""Many pictures through a local transformers model in one ``generate`` call: what `vlchat caption` runs.

Each picture is its own one-turn conversation (the picture, then the prompt). The prompts are
rendered with the model's chat template once per distinct prompt, the processor makes the whole
batch in one call, left-padded so every row's last prompt token sits in the last column (what
decoder-only generation needs), with the attention mask that hides the padding. Under greedy
decoding a batch gives the same captions as one picture at a time.

The generic engine batches, and so does an engine that builds a batch its own way
(``batch_inputs`` and ``batch_outputs``: BLIP); other families with their own prompt building
(BLIP-2's chain, JoyCaption's, models that run their own code) caption one picture at a time
through ``stream``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from vlchat.core.conversation import GenerationParams
from vlchat.core.text import clean
from vlchat.engines.templates import apply_template


# The reader thread runs the processor on the next batch while the main thread decodes the last
# one; a fast tokenizer changes its padding state while it encodes, and Rust refuses ("Already
# borrowed") a decode that meets it half-way.
_TOKENIZER = threading.Lock()


@dataclass
class Caption:
    text: str
    tokens: int


@dataclass
class Batch:
    """A batch made ready for ``generate_batch`` (possibly on another thread than the model's)."""

    inputs: Any
    size: int
    prepared_s: float


def can_batch(engine: Any) -> bool:
    """Whether the engine renders prompts the generic way, so a batch means the same as one at a time."""
    from vlchat.engines.transformers import TransformersEngine

    if not isinstance(engine, TransformersEngine):
        return False
    if callable(getattr(engine, "batch_inputs", None)) and callable(getattr(engine, "batch_outputs", None)):
        return True
    cls = type(engine)
    if getattr(cls, "batches", False):  # a family whose processor takes a batch as the generic one does
        return True
    return all(
        getattr(cls, name) is getattr(TransformersEngine, name) for name in ("prepare", "chat_messages", "stream")
    )


def render_prompt(engine: Any, prompt: str, system: str | None = None) -> str:
    """The chat-template text of one turn: a picture, then ``prompt``, then the answer's start."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]})
    return apply_template(engine.processor, messages, add_generation_prompt=True, tokenize=False)


def prepare_batch(
    engine: Any,
    images: Sequence[Any],
    prompts: Sequence[str],
    *,
    system: str | None = None,
    rendered: dict[str, str] | None = None,
) -> Batch:
    """One processor call for the whole batch: token ids (left-padded), attention mask, pixels.

    ``rendered`` caches the template text per prompt across batches (the template is slow next to
    a tiny model).
    """
    if len(images) != len(prompts) or not images:
        raise ValueError("prepare_batch needs one prompt per picture, and at least one picture")
    started = time.perf_counter()
    if callable(getattr(engine, "batch_inputs", None)):
        with _TOKENIZER:
            inputs = engine.batch_inputs(images, prompts)
        return Batch(inputs=inputs, size=len(images), prepared_s=time.perf_counter() - started)
    cache = rendered if rendered is not None else {}
    texts = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = render_prompt(engine, prompt, system)
        texts.append(cache[prompt])
    tokenizer = engine.tokenizer
    side = getattr(tokenizer, "padding_side", "right")
    # Left padding for this call only: the chat and `ask` paths never pad, and right padding
    # would put pad tokens between a row's prompt and its answer.
    with _TOKENIZER:
        tokenizer.padding_side = "left"
        try:
            inputs = engine.processor(
                text=texts, images=[[image] for image in images], padding=True, return_tensors="pt"
            )
        finally:
            tokenizer.padding_side = side
    inputs = engine.on_device(inputs)
    return Batch(inputs=inputs, size=len(images), prepared_s=time.perf_counter() - started)


def _end_ids(engine: Any) -> set[int]:
    ids: set[int] = set()
    config = getattr(engine.model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), engine.tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def generate_batch(
    engine: Any,
    batch: Batch,
    params: GenerationParams,
    cancel: threading.Event | None = None,
) -> list[Caption] | None:
    """Captions for a prepared batch, in order; None when ``cancel`` stopped it part-way.

    Setting ``cancel`` stops the model within one decoding step; a stopped batch's captions are
    incomplete, so none of them is returned.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    kwargs = engine.generation_kwargs(batch.inputs, params)
    stop = cancel or threading.Event()

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **_kw):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    kwargs["stopping_criteria"] = StoppingCriteriaList([Cancelled()])
    try:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.inference_mode():
            out = engine.model.generate(**kwargs)
    except Exception as error:
        raise engine._generation_error(error) from error
    if stop.is_set():
        return None
    if callable(getattr(engine, "batch_outputs", None)):
        kept, counts = zip(*engine.batch_outputs(out, batch.inputs))
    else:
        prompt_len = int(batch.inputs["input_ids"].shape[-1])
        ends = _end_ids(engine)
        rows = out[:, prompt_len:].tolist()
        counts = [next((i for i, t in enumerate(row) if t in ends), len(row)) for row in rows]
        kept = [row[:n] for row, n in zip(rows, counts)]
    with _TOKENIZER:
        texts = engine.tokenizer.batch_decode(list(kept), skip_special_tokens=True)
    return [Caption(text=clean(text).strip(), tokens=n) for text, n in zip(texts, counts)]


def caption_one_by_one(
    engine: Any,
    refs: Sequence[Any],
    prompt: str,
    params: GenerationParams,
    *,
    system: str | None = None,
    cancel: threading.Event | None = None,
) -> list[Caption] | None:
    """The fallback for engines that cannot batch: each picture through ``engine.stream``."""
    from vlchat.core.conversation import Conversation

    captions = []
    for ref in refs:
        conversation = Conversation()
        if system:
            conversation.set_system(system)
        conversation.add_user(prompt, [ref])
        stream = engine.stream(conversation, params, cancel)
        text = "".join(stream)
        if cancel is not None and cancel.is_set():
            return None
        captions.append(Caption(text=clean(text).strip(), tokens=stream.stats.tokens))
    return captions
