"""The local engine: AutoProcessor + AutoModelForImageTextToText, optionally in 4- or 8-bit.

The conversation is rendered with the model's own chat template, pictures as ``{"type": "image"}``
entries at the turn where they were added. Tokens stream from a generation thread through a
TokenFeed (streaming.py: the thread only hands over token ids, the reader decodes them); a
stopping criterion that reads a threading.Event makes cancel stop the model itself within one
decoding step, not just the display.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence

from vlchat.core.conversation import Conversation, GenerationParams, ImageRef
from vlchat.core.errors import VlchatError
from vlchat.core.images import open_ref
from vlchat.core.text import clean
from vlchat.engines.base import (
    ContextTooLongError,
    EngineError,
    EngineInfo,
    GenerationError,
    OutOfMemoryError,
    StreamStats,
    TokenStream,
)
from vlchat.engines.base import ChatEngine
from vlchat.engines.kv_reuse import PrefixReuse, cache_argument, generated_cache
from vlchat.engines.loading import (
    DEVICES,
    DTYPES,
    KEEP_UNQUANTIZED,
    QUANTS,
    ModelLoading,
    first_line,
    offline,
    pick_device,
    pick_dtype,
    pick_quant,
    quiet_libraries,
    skip_patterns,
)
from vlchat.engines.registry import ModelSpec, resolve
from vlchat.engines.templates import apply_template

# The names other modules (families, the CLI, bench/) have always imported from here.
__all__ = [
    "DEVICES",
    "DTYPES",
    "KEEP_UNQUANTIZED",
    "QUANTS",
    "TransformersEngine",
    "cache_argument",
    "first_line",
    "generated_cache",
    "offline",
    "pick_device",
    "pick_dtype",
    "pick_quant",
    "quiet_libraries",
    "skip_patterns",
]


class TransformersEngine(ModelLoading, PrefixReuse, ChatEngine):
    """A local image-text-to-text model through transformers: loading in ModelLoading (loading.py),
    the key/value cache's reuse in PrefixReuse (kv_reuse.py), the conversation and the stream here."""

    counts_context = True

    # Whether the prompt is the whole conversation in order, so that the last turn's key/value
    # cache can serve as the start of the next one (not so for BLIP-2's cut-down chain).
    prefix_reuse = True
    # Whether the answer is the whole output, the prompt's text included (BLIP's captions continue it).
    answer_includes_prompt = False

    def __init__(
        self,
        model: str,
        *,
        quant: str = "auto",
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        image_dirs: Sequence[str | os.PathLike] = (),
        spec: ModelSpec | None = None,
        kv_cache_reuse: bool = True,
    ):
        self.spec = spec or resolve(model)
        self.name = self.spec.name
        self.requested = (quant, device, dtype)
        self.trust_remote_code = trust_remote_code
        self.image_dirs = list(image_dirs)
        self.model: Any = None
        self.processor: Any = None
        self.device = "cpu"
        self.quant = "none"
        self.dtype: Any = None
        self._images: OrderedDict[str, Any] = OrderedDict()
        self.kv_cache_reuse = kv_cache_reuse
        # The key/value cache of the last turn and the token ids it holds, for prefix reuse.
        # Pictures are compared by content: their tokens are the same placeholder id whatever the picture.
        self._kept: tuple[list[int], Any, list[str]] | None = None

    # -- generating ------------------------------------------------------------------------------
    def _picture(self, ref: ImageRef):
        image = self._images.get(ref.sha256)
        if image is None:
            image = open_ref(ref, self.image_dirs)
            self._images[ref.sha256] = image
            while len(self._images) > 32:
                self._images.popitem(last=False)
        else:
            self._images.move_to_end(ref.sha256)
        return image

    def chat_messages(self, conversation: Conversation) -> list[dict[str, Any]]:
        """The conversation as chat-template messages, each picture at the turn it was added."""
        messages = []
        for message in conversation.for_model().messages:  # unanswered questions left out
            content: list[dict[str, Any]] = [
                {"type": "image", "image": self._picture(ref)} for ref in message.images
            ]
            content.append({"type": "text", "text": message.text})
            messages.append({"role": message.role, "content": content})
        return messages

    def prepare(self, conversation: Conversation) -> dict[str, Any]:
        """Token ids, pixel values and whatever else the processor makes, on the model's device."""
        self.require_question(conversation)
        inputs = apply_template(
            self.processor,
            self.chat_messages(conversation),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        return self.on_device(inputs)

    def require_question(self, conversation: Conversation) -> None:
        """The model loaded and a question at the end of the conversation: where every family's
        prepare starts."""
        self._require_loaded()
        if not conversation.messages or conversation.messages[-1].role != "user":
            raise GenerationError("there is no question to answer", "add a user message first")

    def on_device(self, inputs: Any) -> Any:
        """The processor's output on the model's device, its pixels in the model's dtype."""
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def generation_kwargs(self, inputs: dict[str, Any], params: GenerationParams) -> dict[str, Any]:
        params.validate()
        prompt_tokens = int(inputs["input_ids"].shape[-1])
        limit = self.context_length()
        if limit and prompt_tokens >= limit:
            raise ContextTooLongError(
                f"the conversation is {prompt_tokens} tokens, more than the model's context of {limit}",
                "start a new conversation, or remove pictures or earlier turns",
            )
        max_new = params.max_new_tokens if not limit else min(params.max_new_tokens, limit - prompt_tokens)
        kwargs: dict[str, Any] = dict(inputs)
        kwargs["max_new_tokens"] = max_new
        tokenizer = self.tokenizer
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(params.temperature), top_p=float(params.top_p))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if tokenizer.pad_token_id is not None:
            kwargs["pad_token_id"] = tokenizer.pad_token_id
        elif tokenizer.eos_token_id is not None:
            kwargs["pad_token_id"] = tokenizer.eos_token_id
        return kwargs

    def stream(
        self,
        conversation: Conversation,
        params: GenerationParams,
        cancel: threading.Event | None = None,
    ) -> TokenStream:
        import torch
        from transformers import StoppingCriteriaList

        from vlchat.engines.streaming import CancelCheck, Detokenizer, TokenFeed, cut_at_limit, eos_ids

        # The clock starts before the prompt is rendered and the pictures processed: the time to
        # the first token is what the person waits, and those grow with the conversation too.
        started = time.perf_counter()
        try:
            inputs = self.prepare(conversation)
        except ValueError as error:
            if "image" not in str(error).lower():
                raise
            # the processor found the template's prompt and the pictures at odds ("Found total 0
            # <image> tokens and 1 images"): the model folder's doing, said in one line
            raise GenerationError(
                f"the chat template of {clean(self.name, keep_newlines=False)} does not fit its pictures: {first_line(error)}",
                "the model folder's chat template does not place pictures; use a model whose template does",
            ) from error
        kwargs = self.generation_kwargs(inputs, params)
        cancel = cancel or threading.Event()
        abandon = threading.Event()  # the reader went away: stop the model too
        stats = StreamStats(prompt_tokens=int(inputs["input_ids"].shape[-1]), started=started)
        pictures = [ref.sha256 for message in conversation.messages for ref in message.images]
        stats.cached_tokens = self._reuse_prefix(kwargs, pictures)
        kwargs["return_dict_in_generate"] = True
        limit = kwargs["max_new_tokens"]
        ends = eos_ids(getattr(self.model, "generation_config", None), self.tokenizer)

        # The generation thread only hands over token ids; the reader decodes (see streaming.py).
        feed = TokenFeed(stats, keep_prompt=self.answer_includes_prompt)
        kwargs["streamer"] = feed
        kwargs["stopping_criteria"] = StoppingCriteriaList([CancelCheck(cancel, abandon)])
        failure: list[BaseException] = []
        model = self.model
        tokenizer = self.tokenizer

        def generate() -> None:
            try:
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                with torch.inference_mode():
                    out = model.generate(**kwargs)
                cache = generated_cache(out)
                if self.kv_cache_reuse and self.prefix_reuse and cache is not None:
                    self._kept = (out.sequences[0].tolist(), cache, pictures)
            except BaseException as error:  # handed to the reader, never lost in this thread
                self._kept = None
                failure.append(error)
            finally:
                feed.end()

        worker = threading.Thread(target=generate, name="vlchat-generate", daemon=True)

        text = Detokenizer(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        begun = False  # the answer starts at its first visible character
        seen = 0

        def take(done: bool) -> str:
            """The next piece of the answer from the ids the feed holds ("" when none is ready)."""
            nonlocal begun, seen
            seen = len(feed.ids)
            piece = text.step(feed.ids, seen, end=done)
            if not begun:
                piece = piece.lstrip()
                begun = bool(piece)
            return clean(piece) if piece else ""

        def wind_up() -> None:
            if worker.is_alive():
                abandon.set()
                worker.join()
            stats.finished_at = time.perf_counter()
            stats.stopped = cancel.is_set()
            if cut_at_limit(feed.ids, stats.tokens, limit, ends):
                stats.finish_reason = "length"
                stats.context_full = limit < params.max_new_tokens
                if stats.context_full and not stats.notice:
                    stats.notice = (
                        f"the answer was cut because the model's context ({self.context_length()} tokens) is full; "
                        "start a new conversation (/clear in the app) to go on"
                    )
            else:
                stats.finish_reason = "stop"

        def pieces() -> Iterator[str]:
            worker.start()
            try:
                done = False
                while not done:
                    done = feed.wait(seen)
                    piece = take(done)
                    if piece:
                        yield piece
                worker.join()
            finally:
                wind_up()
            if failure:
                raise self._generation_error(failure[0]) from failure[0]

        def push(sink: Callable[[str], None]) -> None:
            # The pieces are made and handed over by the generation thread itself (TokenFeed.inline),
            # at the times a reader would be woken; this thread only waits for the end.
            def hand_over(done: bool = False) -> None:
                piece = take(done)
                if piece:
                    sink(piece)

            feed.inline = hand_over
            worker.start()
            try:
                worker.join()
                hand_over(True)  # the rest of the answer, on this thread
            finally:
                wind_up()
            if failure:
                raise self._generation_error(failure[0]) from failure[0]

        return TokenStream(pieces(), stats, push)

    def _generation_error(self, error: BaseException) -> EngineError:
        import torch

        if isinstance(error, VlchatError):
            return error  # type: ignore[return-value]
        if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
            return OutOfMemoryError(
                f"{self.device} ran out of memory while answering",
                "shorten the conversation, lower max_tokens, or use --quant 4bit",
            )
        return GenerationError(f"generation failed: {type(error).__name__}: {first_line(error)}", "the partial answer was kept")

    # -- the rest of the protocol ----------------------------------------------------------------
    @property
    def tokenizer(self):
        self._require_loaded()
        return getattr(self.processor, "tokenizer", self.processor)

    def _require_loaded(self) -> None:
        if self.model is None:
            raise EngineError(f"model {self.name} is not loaded", "load it first")

    def context_length(self) -> int | None:
        if self.model is None:
            return None
        config = self.model.config
        text = getattr(config, "text_config", None) or config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(text, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def memory_bytes(self) -> int | None:
        if self.model is None:
            return None
        import torch

        if self.device.startswith("cuda"):
            return int(torch.cuda.memory_allocated())
        return int(self.model.get_memory_footprint())

    def count_context(self, conversation: Conversation) -> tuple[int, int | None]:
        """Tokens the conversation takes in the model's context, and how many of them are the
        pictures' (None when the model has no picture token to count)."""
        ids = self.prepare(conversation)["input_ids"][0]
        config = getattr(self.model, "config", None)
        image_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
        pictures = int((ids == image_id).sum()) if image_id is not None else None
        return int(ids.shape[-1]), pictures

    def describe(self) -> EngineInfo:
        config = getattr(self.model, "config", None)
        family = self.spec.family
        if config is not None and family == "auto":
            family = getattr(config, "model_type", "auto")
        return EngineInfo(
            name=self.name,
            family=family,
            device=self.device,
            dtype=str(self.dtype).replace("torch.", "") if self.dtype is not None else "",
            quantization="nf4 4-bit" if self.quant == "4bit" else "int8" if self.quant == "8bit" else "none",
            memory_bytes=self.memory_bytes(),
            context_length=self.context_length(),
            label=self.spec.label,
        )

    def unload(self) -> None:
        self._kept = None
        self.model = None
        self.processor = None
        self._images.clear()
        gc.unfreeze()  # the app freezes what is alive once a model is loaded; the old model must go
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
