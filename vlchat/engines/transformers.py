"""The local engine: AutoProcessor + AutoModelForImageTextToText, optionally in 4- or 8-bit.

The conversation is rendered with the model's own chat template, pictures as ``{"type": "image"}``
entries at the turn where they were added. Tokens stream from a generation thread through a
TokenFeed (streaming.py: the thread only hands over token ids, the reader decodes them); a
stopping criterion that reads a threading.Event makes cancel stop the model itself within one
decoding step, not just the display.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Sequence

from vlchat.core.conversation import Conversation, GenerationParams, ImageRef
from vlchat.core.errors import VlchatError
from vlchat.core.images import open_ref
from vlchat.core.text import clean
from vlchat.engines.base import (
    BadOptionError,
    ContextTooLongError,
    EngineError,
    EngineInfo,
    GenerationError,
    LoadProgress,
    ModelLoadError,
    ModelNotFoundError,
    OutOfMemoryError,
    ProgressCallback,
    StreamStats,
    TokenStream,
)
from vlchat.engines.base import ChatEngine
from vlchat.engines.registry import ModelSpec, resolve
from vlchat.engines.templates import apply_template

QUANTS = ("auto", "4bit", "8bit", "none")

# Only the language model is quantized: vision towers and projectors are small next to it and
# far more sensitive (their features feed every answer), and the output head stays exact too.
# Module names of the families transformers ships (LLaVA, BLIP-2, Idefics/SmolVLM, Qwen-VL, MiniCPM).
KEEP_UNQUANTIZED = (
    "lm_head",
    "vision_tower",
    "multi_modal_projector",
    "vision_model",
    "qformer",
    "language_projection",
    "connector",
    "visual",
    "resampler",
)


def skip_patterns() -> list[str]:
    """KEEP_UNQUANTIZED as transformers 5 matches them: a pattern must match from the start of the
    module's full name (``model.multi_modal_projector.linear_1``), so each one may follow any prefix."""
    return [rf"(?:.*\.)?{name}" for name in KEEP_UNQUANTIZED]
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "bfloat16", "float16", "float32")


def quiet_libraries() -> None:
    """Keep library chatter (warnings, progress bars, kernel hints) off the person's terminal."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module=r"(transformers|torch|bitsandbytes|accelerate)(\.|$)")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def pick_device(requested: str) -> str:
    import torch

    if requested not in DEVICES and not requested.startswith("cuda:"):
        raise BadOptionError(f"unknown device {requested!r}", "use auto, cuda, mps or cpu")
    has_cuda = torch.cuda.is_available()
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if requested == "auto":
        return "cuda" if has_cuda else "mps" if has_mps else "cpu"
    if requested.startswith("cuda") and not has_cuda:
        raise BadOptionError(
            "--device cuda was asked for, but torch sees no CUDA GPU here",
            "use --device cpu (or auto), or install a CUDA build of torch",
        )
    if requested == "mps" and not has_mps:
        raise BadOptionError("--device mps was asked for, but this machine has no Apple GPU", "use --device cpu")
    return requested


def pick_quant(requested: str, device: str) -> str:
    if requested not in QUANTS:
        raise BadOptionError(f"unknown quantization {requested!r}", "use 4bit, 8bit, none or auto")
    if requested == "auto":
        return "4bit" if device.startswith("cuda") else "none"
    if requested != "none" and device == "mps":
        raise BadOptionError(
            f"--quant {requested} needs bitsandbytes, which does not run on Apple GPUs", "use --quant none"
        )
    return requested


def pick_dtype(requested: str, device: str):
    import torch

    if requested not in DTYPES:
        raise BadOptionError(f"unknown dtype {requested!r}", "use auto, bfloat16, float16 or float32")
    if requested != "auto":
        return getattr(torch, requested)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def cache_argument() -> str:
    """The name generate() takes a key/value cache by: ``cache`` since transformers 5.x deprecated
    ``past_key_values`` (removed in 6), the old name where the installed version predates it."""
    import inspect

    from transformers import GenerationMixin

    return "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else "past_key_values"


def generated_cache(out: Any) -> Any:
    """The key/value cache a generate() output holds, under either name (reading the old one warns)."""
    cache = out.get("cache")
    return out.get("past_key_values") if cache is None else cache


def _first_line(error: BaseException) -> str:
    text = clean(str(error), keep_newlines=True).strip().splitlines()
    return text[0] if text else type(error).__name__


first_line = _first_line  # the public name, for the engines built on this one


class TransformersEngine(ChatEngine):
    """A local image-text-to-text model through transformers."""

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

    # -- loading -------------------------------------------------------------------------------
    def _start_load(self, report: ProgressCallback, trust_remote_code: bool) -> tuple[str, dict[str, Any]]:
        """Torch started, device, quantization and dtype settled, the files found: the folder to load
        from and the arguments every ``from_pretrained`` call gets."""
        report(LoadProgress("starting torch"))
        quiet_libraries()
        import torch  # noqa: F401  (imported here, not at module level: `vlchat --help` stays fast)

        quant_req, device_req, dtype_req = self.requested
        self.device = pick_device(device_req)
        self.quant = pick_quant(quant_req, self.device)
        self.dtype = pick_dtype(dtype_req, self.device)
        source = self._locate(report)
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if offline():
            kwargs["local_files_only"] = True
        return source, kwargs

    def load(self, progress: ProgressCallback | None = None) -> None:
        report = progress or (lambda _p: None)
        source, kwargs = self._start_load(report, self.trust_remote_code)
        from transformers import AutoConfig

        quant_config = self._quantization_config()
        report(LoadProgress(f"loading {self.name} on {self.device}"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # The config first: it is where a model's own code and a model of the wrong kind
                # show, before anything larger is read.
                AutoConfig.from_pretrained(source, **kwargs)
                processor = self._load_processor(source, kwargs)
                model = self.model_loader().from_pretrained(
                    source,
                    dtype=self.dtype,
                    quantization_config=quant_config,
                    device_map={"": self.device},
                    **kwargs,
                )
        except VlchatError:
            raise
        except Exception as error:  # transformers raises bare ValueError/OSError/ImportError
            raise self._load_error(error) from error
        model.eval()
        self.model, self.processor = model, processor
        self._images.clear()
        report(LoadProgress("ready"))

    def model_loader(self):
        """The transformers class whose from_pretrained loads this model."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    def _load_processor(self, source: str, kwargs: dict[str, Any]):
        from transformers import AutoProcessor

        try:
            return AutoProcessor.from_pretrained(source, **kwargs)
        except Exception as error:
            from vlchat.engines.novideo import needs_torchvision, picture_only_processor

            # Qwen2-VL and MiniCPM-V 4.6 processors want torchvision for their video half only
            processor = picture_only_processor(source, kwargs) if needs_torchvision(error) else None
            if processor is None:
                raise
            return processor

    def _quantization_config(self):
        if self.quant == "none":
            return None
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise ModelLoadError(
                f"--quant {self.quant} needs bitsandbytes, which is not installed",
                "pip install bitsandbytes, or use --quant none",
            ) from error
        from transformers import BitsAndBytesConfig

        if self.quant == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_patterns())
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=self.dtype,
            llm_int8_skip_modules=skip_patterns(),
        )

    def _locate(self, report: ProgressCallback) -> str:
        """A local folder as it is; a hub id from the cache, or downloaded unless offline."""
        if self.spec.is_local:
            if not (Path(self.spec.source) / "config.json").is_file():
                raise ModelNotFoundError(
                    f"the model folder {clean(self.spec.source, keep_newlines=False)} has no config.json",
                    "reinstall vlchat for the demo model, or point --model at a complete model folder",
                )
            return self.spec.source
        from huggingface_hub import try_to_load_from_cache

        repo = self.spec.source
        cached = try_to_load_from_cache(repo, "config.json")
        if isinstance(cached, str):
            return repo
        if offline():
            raise ModelNotFoundError(
                f"model {repo} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                f"download it where there is network with `hf download {repo}` (and copy the cache here), or unset HF_HUB_OFFLINE",
            )
        report(LoadProgress(f"downloading {repo}"))
        return self._download(repo, report)

    def _download(self, repo: str, report: ProgressCallback) -> str:
        from huggingface_hub import snapshot_download
        from huggingface_hub import errors as hub_errors

        try:
            return snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"])
        except hub_errors.RepositoryNotFoundError as error:
            raise ModelNotFoundError(
                f"no model named {repo} on the Hugging Face hub (or it is private)",
                "check the name; for a gated or private model run `hf auth login` first",
            ) from error
        except hub_errors.GatedRepoError as error:
            raise ModelNotFoundError(
                f"model {repo} is gated on the Hugging Face hub",
                "accept its licence on its hub page and run `hf auth login`",
            ) from error
        except Exception as error:
            raise ModelNotFoundError(
                f"could not download model {repo}: {_first_line(error)}",
                "check the network, or download it elsewhere with `hf download` and set HF_HUB_OFFLINE=1",
            ) from error

    def _load_error(self, error: Exception) -> EngineError:
        text = str(error)
        if "trust_remote_code" in text:
            return ModelLoadError(
                f"model {self.name} ships its own Python code, which vlchat does not run unless asked",
                "read that code first; then pass --trust-remote-code to run it",
            )
        if "torchvision" in text.lower() or "VIDEO_PROCESSOR_MAPPING" in text:
            # transformers builds the processors of video-capable families (Qwen2-VL, MiniCPM-V 4.6)
            # only with torchvision installed, even for pictures alone
            return ModelLoadError(
                f"the processor of {self.name} needs torchvision, which is not installed",
                "install it: pip install torchvision (the build that matches your torch)",
            )
        if "Unrecognized configuration class" in text or "Unrecognized model" in text:
            return ModelLoadError(
                f"{self.name} is not an image-text-to-text model that transformers can load",
                "use a vision-language model such as llava-hf/llava-1.5-7b-hf",
            )
        if isinstance(error, ImportError):
            return ModelLoadError(f"loading {self.name} needs a missing package: {_first_line(error)}", "install it with pip")
        if "out of memory" in text.lower():
            return OutOfMemoryError(
                f"not enough memory to load {self.name} on {self.device}",
                "try --quant 4bit, a smaller model, or free the GPU",
            )
        if isinstance(error, OSError) and offline():
            return ModelNotFoundError(
                f"model {self.name} is incomplete in the local cache and HF_HUB_OFFLINE is set",
                f"download it again with `hf download {self.spec.source}` where there is network",
            )
        return ModelLoadError(f"could not load {self.name}: {_first_line(error)}", "check the model files")

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
        self._require_loaded()
        if not conversation.messages or conversation.messages[-1].role != "user":
            raise GenerationError("there is no question to answer", "add a user message first")
        inputs = apply_template(
            self.processor,
            self.chat_messages(conversation),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
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
                f"the chat template of {clean(self.name, keep_newlines=False)} does not fit its pictures: {_first_line(error)}",
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

        def pieces() -> Iterator[str]:
            worker.start()
            text = Detokenizer(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
            started = False  # the answer starts at its first visible character
            seen = 0
            try:
                done = False
                while not done:
                    done = feed.wait(seen)
                    seen = len(feed.ids)
                    piece = text.step(feed.ids, seen, end=done)
                    if not started:
                        piece = piece.lstrip()
                        started = bool(piece)
                    if piece:
                        yield clean(piece)
                worker.join()
            finally:
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
            if failure:
                raise self._generation_error(failure[0]) from failure[0]

        return TokenStream(pieces(), stats)

    def _reuse_prefix(self, kwargs: dict[str, Any], pictures: list[str]) -> int:
        """Let generation start from the kept cache where the new prompt repeats what it holds.

        The longest common prefix of token ids with the last turn (its prompt and its answer) is
        kept; the cache is cropped to it and generate() runs only the new tokens. A picture whose
        tokens lie wholly inside the prefix is not encoded again: only the pictures after the cut
        go to the model. The cut never falls inside a picture's tokens, nor after a picture the
        cache did not see. Returns how many tokens were reused (0: a full prefill).
        """
        kept, self._kept = self._kept, None  # this generation will change the cache: never reuse it twice
        if not (self.kv_cache_reuse and self.prefix_reuse) or kept is None:
            return 0
        ids = kwargs["input_ids"]
        if ids.shape[0] != 1:
            return 0
        new_ids = ids[0].tolist()
        kept_ids, cache, kept_pictures = kept
        limit = min(len(kept_ids), cache.get_seq_length(), len(new_ids) - 1)  # at least one token to run
        n = 0
        while n < limit and kept_ids[n] == new_ids[n]:
            n += 1
        same = lambda i: i < min(len(pictures), len(kept_pictures)) and pictures[i] == kept_pictures[i]  # noqa: E731
        n = self._cut_outside_pictures(new_ids, n, kwargs, same=same)
        if n <= 0:
            return 0
        extra = cache.get_seq_length() - n
        if extra > 0:
            cache.crop(-extra)  # a negative count removes that many from the end, in every 4.x and 5.x
        kwargs[cache_argument()] = cache
        return n

    def _cut_outside_pictures(self, ids: list[int], n: int, kwargs: dict[str, Any], same=lambda _i: True) -> int:
        """Move the cut before any picture it would split or that is not the cached one, and take the
        pictures before it out of the model's inputs (picture_runs and drop_pictures say how).

        ``same(i)`` says whether the i-th picture of the prompt is the picture the cache saw there:
        every picture has the same placeholder tokens, so equal ids do not mean equal pictures.
        """
        if kwargs.get("pixel_values") is None:
            return n
        spans = self.picture_runs(ids, kwargs)
        if spans is None:
            return 0  # pictures whose tokens cannot be found: nothing is safe to reuse
        for i, runs in enumerate(spans):
            start, end = runs[0][0], runs[-1][1]
            if start < n and (n < end or not same(i)):
                n = start
                break
        before = sum(1 for runs in spans if runs[-1][1] <= n)
        if before and not self.drop_pictures(kwargs, spans, before):
            n = min(n, spans[0][0][0])  # this layout of pixels is not known: encode every picture
        return n

    def picture_token(self) -> int | None:
        config = getattr(self.model, "config", None)
        token = getattr(config, "image_token_id", None)
        return getattr(config, "image_token_index", None) if token is None else token

    def picture_runs(self, ids: list[int], inputs: dict[str, Any]) -> list[list[tuple[int, int]]] | None:
        """Each picture's runs of image tokens in the prompt, in order: (start, end) of each run.

        A picture the processor cuts into tiles (Idefics3/SmolVLM) has one run per tile, separated
        by row and column tokens; its last run is the whole picture's, after the global-image tag.
        A family with another layout overrides this and drop_pictures (or _cut_outside_pictures
        whole); None: not known.
        """
        token = self.picture_token()
        if token is None:
            return None
        runs: list[tuple[int, int]] = []
        start = None
        for i, t in enumerate(ids):
            if t == token and start is None:
                start = i
            elif t != token and start is not None:
                runs.append((start, i))
                start = None
        if start is not None:
            runs.append((start, len(ids)))
        # Markers of a picture's first run (MiniCPM-V: <image>..</image> then a <slice> run per slice)
        # or of its last (Idefics3: the global picture, after <global-img>, ends it).
        first = last = None
        if getattr(self.processor, "slice_start_token", None):
            first = self.tokenizer.convert_tokens_to_ids(self.processor.image_start_token)
        else:
            last = getattr(self.processor, "global_image_token_id", None)
        if (first if first is not None else last) not in ids:
            return [[run] for run in runs]
        pictures: list[list[tuple[int, int]]] = []
        opening = True
        for run in runs:
            before = ids[run[0] - 1] if run[0] > 0 else None
            if opening or (first is not None and before == first):
                pictures.append([])
            pictures[-1].append(run)
            opening = last is not None and before == last
        return pictures

    def drop_pictures(self, kwargs: dict[str, Any], spans: list[list[tuple[int, int]]], count: int) -> bool:
        """Take the first ``count`` pictures out of the processor's inputs (their tokens are in the
        cache), so the vision tower sees only the new ones; False where the layout is not known.

        Layouts: one row of ``pixel_values`` per picture (LLaVA, LLaVA-NeXT with ``image_sizes``);
        Qwen-VL's patches in one sequence, ``image_grid_thw`` rows saying how many are each
        picture's; Idefics3's tiles along the second dimension (one per run of image tokens);
        MiniCPM-V 4.6's slices side by side (one per run).
        Where a model's positions depend on its pictures (Qwen-VL's 3-D rope), the positions of the
        whole prompt are computed first, with every picture, as generate() would without a cache.
        """
        import torch

        pixels = kwargs["pixel_values"]
        if "image_grid_thw" in kwargs:
            grids = kwargs["image_grid_thw"]
            if grids.shape[0] != len(spans) or not self._whole_prompt_positions(kwargs):
                return False
            rows = int(grids[:count].prod(-1).sum())
            kwargs["pixel_values"], kwargs["image_grid_thw"] = pixels[rows:], grids[count:]
        elif "pixel_attention_mask" in kwargs and pixels.dim() == 5 and pixels.shape[0] == 1:
            tiles = sum(len(runs) for runs in spans[:count])
            if pixels.shape[1] != sum(len(runs) for runs in spans):
                return False
            kwargs["pixel_values"] = pixels[:, tiles:]
            kwargs["pixel_attention_mask"] = kwargs["pixel_attention_mask"][:, tiles:]
        elif pixels.shape[0] == len(spans) and all(
            getattr(kwargs.get(key), "shape", (len(spans),))[0] == len(spans) for key in ("image_sizes",)
        ):
            for key in ("pixel_values", "image_sizes"):
                if kwargs.get(key) is not None:
                    kwargs[key] = kwargs[key][count:]
        elif "target_sizes" in kwargs and pixels.dim() == 4 and pixels.shape[0] == 1:
            # MiniCPM-V 4.6: every slice's patches side by side along the width, its grid in target_sizes
            sizes, patch = kwargs["target_sizes"], pixels.shape[2]
            slices = sum(len(runs) for runs in spans[:count])
            if sizes.shape[0] != sum(len(runs) for runs in spans) or int(sizes.prod(-1).sum()) * patch != pixels.shape[-1]:
                return False
            kwargs["pixel_values"] = pixels[..., int(sizes[:slices].prod(-1).sum()) * patch :]
            kwargs["target_sizes"] = sizes[slices:]
        else:
            return False
        left = kwargs["pixel_values"]
        if not isinstance(left, torch.Tensor) or left.numel() == 0 or count == len(spans):
            for key in ("pixel_values", "image_sizes", "image_grid_thw", "pixel_attention_mask", "target_sizes"):
                kwargs.pop(key, None)
        return True

    def _whole_prompt_positions(self, kwargs: dict[str, Any]) -> bool:
        """Position ids of the whole prompt, as the model computes them from all its pictures,
        passed to generate() so that dropping the cached pictures' inputs cannot change them."""
        from transformers import GenerationMixin

        own = getattr(type(self.model), "_prepare_position_ids_for_generation", None)
        if own is None or own is GenerationMixin._prepare_position_ids_for_generation:
            return True  # plain positions: 0, 1, 2... whatever the pictures
        model_kwargs = {k: v for k, v in kwargs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids",
                                                                  "image_grid_thw", "video_grid_thw")}
        try:
            kwargs["position_ids"] = self.model._prepare_position_ids_for_generation(kwargs["input_ids"], model_kwargs)
        except Exception:  # a version of transformers that computes them otherwise: no picture is reused
            return False
        return True

    def drop_cache(self) -> None:
        """Forget the kept cache (its memory is needed, or the model is going away)."""
        self._kept = None

    def _generation_error(self, error: BaseException) -> EngineError:
        import torch

        if isinstance(error, VlchatError):
            return error  # type: ignore[return-value]
        if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
            return OutOfMemoryError(
                f"{self.device} ran out of memory while answering",
                "shorten the conversation, lower max_tokens, or use --quant 4bit",
            )
        return GenerationError(f"generation failed: {type(error).__name__}: {_first_line(error)}", "the partial answer was kept")

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
