"""MiniCPM-V 2.6 and MiniCPM-o 2.6, native: no trust_remote_code, none of the checkpoint's Python run.

The published checkpoints ship their own code (``auto_map`` in config.json), written for
transformers 4.44; vlchat loads the same files (config.json, the safetensors weights under their
published names, tokenizer, preprocessor_config.json) into minicpm_model.py, built from
transformers 5 parts, and builds the prompt as the authors' ``chat()`` does:

- each message's pictures become ``(<image>./</image>)`` lines before its text, the messages go
  through the tokenizer's chat template (its default system prompt when the conversation has none);
- each placeholder becomes ``<image_id>N</image_id><image>`` + 64 ``<unk>`` + ``</image>`` for the
  thumbnail, then, for a picture larger than 448x448, rows of ``<slice>`` + 64 ``<unk>`` +
  ``</slice>`` (up to 9 slices; rows joined by a newline), with the authors' grid choice and resizing
  (image_processing_minicpmv.py);
- greedy decoding stops at ``<|im_end|>`` or ``<|endoftext|>``.

Proven against the authors' code on a tiny checkpoint: tests/test_minicpm.py and
tests/reference/minicpm/.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from vlchat.core.conversation import Conversation
from vlchat.core.errors import VlchatError
from vlchat.core.text import clean
from vlchat.engines.base import GenerationError, LoadProgress, ModelLoadError, ProgressCallback
from vlchat.engines.transformers import TransformersEngine, skip_patterns

FAMILY = "minicpm-2.6"
PICTURE = "(<image>./</image>)"
TERMINATORS = ("<|im_end|>", "<|endoftext|>")


def is_minicpm26(config: dict | None) -> bool:
    """A MiniCPM-V 2.6 or MiniCPM-o 2.6 config.json (not V 2.0/2.5, whose language models differ)."""
    if not config or config.get("model_type") not in ("minicpmv", "minicpmo"):
        return False
    version = str(config.get("version", ""))
    if version:
        return version == "2.6"
    # MiniCPM-o 2.6 is the only minicpmo before 4.5, which says its version
    return config.get("model_type") == "minicpmo"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class MiniCPMProcessor:
    """The authors' image slicing and placeholder layout, with the checkpoint's own tokenizer.

    Callable as the generic engine calls a transformers processor (text, images, padding), so
    batched captioning works the same; pixels come back as one tensor of slices, each in the
    authors' one-row patch layout ``(3, patch, n_patches * patch)``, zero-padded to the widest.
    """

    def __init__(self, tokenizer: Any, settings: dict):
        self.tokenizer = tokenizer
        self.max_slice_nums = int(settings.get("max_slice_nums", 9))
        self.scale_resolution = int(settings.get("scale_resolution", 448))
        self.patch_size = int(settings.get("patch_size", 14))
        self.use_image_id = bool(settings.get("use_image_id", True))
        self.query_num = int(settings.get("image_feature_size", 64))
        self.slice_mode = bool(settings.get("slice_mode", True))
        self.im_start = settings.get("im_start", "<image>")
        self.im_end = settings.get("im_end", "</image>")
        self.slice_start = settings.get("slice_start", "<slice>")
        self.slice_end = settings.get("slice_end", "</slice>")
        self.unk = settings.get("unk", "<unk>")
        self.id_start = settings.get("im_id_start", "<image_id>")
        self.id_end = settings.get("im_id_end", "</image_id>")
        self.mean = [float(x) for x in settings.get("norm_mean", [0.5, 0.5, 0.5])]
        self.std = [float(x) for x in settings.get("norm_std", [0.5, 0.5, 0.5])]
        self.chat_template = getattr(tokenizer, "chat_template", None)

    @classmethod
    def from_folder(cls, folder: str, kwargs: dict[str, Any]) -> "MiniCPMProcessor":
        from transformers import PreTrainedTokenizerFast

        # tokenizer_config.json names the checkpoint's own class (MiniCPMVTokenizerFast, a Qwen2
        # tokenizer with bracket names added); tokenizer.json itself is all there is to it
        if not (Path(folder) / "tokenizer.json").is_file():
            raise ModelLoadError(
                f"the MiniCPM folder {clean(folder, keep_newlines=False)} has no tokenizer.json",
                "download the whole checkpoint again (hf download openbmb/MiniCPM-V-2_6)",
            )
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, **kwargs)
        settings = _read_json(Path(folder) / "preprocessor_config.json")
        return cls(tokenizer, settings)

    def token_id(self, token: str) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(token))

    # -- the authors' slicing (image_processing_minicpmv.py) --------------------------------------
    def _ensure_divide(self, length: float, patch: int) -> int:
        return max(round(length / patch) * patch, patch)

    def _best_resize(self, size, allow_upscale: bool = False) -> tuple[int, int]:
        width, height = size
        if width * height > self.scale_resolution * self.scale_resolution or allow_upscale:
            r = width / height
            height = int(self.scale_resolution / math.sqrt(r))
            width = int(height * r)
        return self._ensure_divide(width, self.patch_size), self._ensure_divide(height, self.patch_size)

    def _refine_size(self, size, grid) -> tuple[int, int]:
        width, height = size
        grid_x, grid_y = grid
        refine_w = self._ensure_divide(width, grid_x)
        refine_h = self._ensure_divide(height, grid_y)
        best = self._best_resize((refine_w / grid_x, refine_h / grid_y), allow_upscale=True)
        return best[0] * grid_x, best[1] * grid_y

    def grid(self, size) -> list[int] | None:
        width, height = size
        if not self.slice_mode:
            return None
        log_ratio = math.log(width / height)
        ratio = width * height / (self.scale_resolution * self.scale_resolution)
        multiple = min(math.ceil(ratio), self.max_slice_nums)
        if multiple <= 1:
            return None
        candidates = []
        for n in (multiple - 1, multiple, multiple + 1):
            if n == 1 or n > self.max_slice_nums:
                continue
            candidates.extend([m, n // m] for m in range(1, n + 1) if n % m == 0)
        best, error = [1, 1], float("inf")
        for grid in candidates:
            e = abs(log_ratio - math.log(grid[0] / grid[1]))
            if e < error:
                best, error = grid, e
        return best

    def slices(self, image) -> list[Any]:
        """The thumbnail, then the slices row by row."""
        from PIL import Image

        bicubic = Image.Resampling.BICUBIC
        grid = self.grid(image.size)
        if grid is None:
            return [image.resize(self._best_resize(image.size, allow_upscale=True), resample=bicubic)]
        out = [image.copy().resize(self._best_resize(image.size), resample=bicubic)]
        refine = image.resize(self._refine_size(image.size, grid), resample=bicubic)
        width, height = refine.size
        step_x, step_y = int(width / grid[0]), int(height / grid[1])
        for top in range(0, height, step_y):
            for left in range(0, width, step_x):
                out.append(refine.crop((left, top, left + step_x, top + step_y)))
        return out

    def placeholder(self, size, index: int) -> str:
        queries = self.unk * self.query_num
        text = f"{self.im_start}{queries}{self.im_end}"
        if self.use_image_id:
            text = f"{self.id_start}{index}{self.id_end}" + text
        grid = self.grid(size)
        if grid is not None:
            row = f"{self.slice_start}{queries}{self.slice_end}" * grid[0]
            text += "\n".join([row] * grid[1])
        return text

    def pixels(self, image):
        """(3, patch, n * patch) float32 and the (rows, columns) of patches of one slice."""
        import numpy as np
        import torch

        array = np.asarray(image.convert("RGB")).astype(np.float32) / 255
        mean = np.array(self.mean, dtype=np.float32)
        std = np.array(self.std, dtype=np.float32)
        array = ((array - mean) / std).transpose(2, 0, 1)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        p = self.patch_size
        patches = torch.nn.functional.unfold(tensor, (p, p), stride=(p, p))
        patches = patches.reshape(3, p, p, -1).permute(0, 1, 3, 2).reshape(3, p, -1)
        return patches, (tensor.shape[1] // p, tensor.shape[2] // p)

    # -- the processor interface -----------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False, **_kw) -> str:
        """Messages with list contents ({"type": "image"} / {"type": "text"}) as the authors join them."""
        flat = []
        for message in messages:
            content = message["content"]
            if isinstance(content, list):
                parts = [PICTURE if part.get("type") == "image" else str(part.get("text", "")) for part in content]
                content = "\n".join(parts)
            flat.append({"role": message["role"], "content": content})
        return self.tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=add_generation_prompt)

    def __call__(self, text, images=None, padding: bool = False, return_tensors: str = "pt", **_kw):
        import torch

        texts = [text] if isinstance(text, str) else list(text)
        groups = images if images is not None else [[] for _ in texts]
        if len(groups) != len(texts):
            raise ValueError("one list of pictures per text")
        rows, all_pixels, sizes = [], [], []
        for prompt, pictures in zip(texts, groups):
            pictures = list(pictures or [])
            chunks = prompt.split(PICTURE)
            if len(chunks) - 1 != len(pictures):
                raise GenerationError(
                    f"the prompt has {len(chunks) - 1} picture places but {len(pictures)} pictures were given",
                    "this is a bug in vlchat; please report it",
                )
            final = chunks[0]
            for i, picture in enumerate(pictures):
                picture = picture.convert("RGB")
                final += self.placeholder(picture.size, i) + chunks[i + 1]
                for piece in self.slices(picture):
                    patches, grid = self.pixels(piece)
                    all_pixels.append(patches)
                    sizes.append(grid)
            rows.append(self.tokenizer.encode(final))
        longest = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        if len(set(map(len, rows))) > 1 and not padding:
            raise ValueError("texts of different lengths need padding=True")
        ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, row in enumerate(rows):
            span = slice(longest - len(row), longest) if left else slice(0, len(row))
            ids[r, span] = torch.tensor(row, dtype=torch.long)
            mask[r, span] = 1
        out = Inputs(input_ids=ids, attention_mask=mask)
        if all_pixels:
            width = max(p.shape[-1] for p in all_pixels)
            pixels = torch.zeros((len(all_pixels), 3, self.patch_size, width), dtype=torch.float32)
            for i, p in enumerate(all_pixels):
                pixels[i, :, :, : p.shape[-1]] = p
            out["pixel_values"] = pixels
            out["tgt_sizes"] = torch.tensor(sizes, dtype=torch.long)
        return out


class Inputs(dict):
    """What the processor makes; ``to(device)`` moves its tensors (pixels stay float32 until cast)."""

    def to(self, device):
        return Inputs({k: v.to(device) if hasattr(v, "to") and k != "tgt_sizes" else v for k, v in self.items()})


class MiniCPMEngine(TransformersEngine):
    """MiniCPM-V 2.6 / MiniCPM-o 2.6 (vision and text; -o's audio and speech parts are not built)."""

    batches = True  # `vlchat caption` may put many pictures through one generate call

    def load(self, progress: ProgressCallback | None = None) -> None:
        report = progress or (lambda _p: None)
        # never the checkpoint's own code, whatever --trust-remote-code says
        source, kwargs = self._start_load(report, False)
        kwargs.pop("trust_remote_code", None)
        quant_config = self._quantization_config()
        report(LoadProgress(f"loading {self.name} on {self.device}"))
        try:
            from vlchat.engines.minicpm_model import MiniCPM26Config, MiniCPM26Model

            raw = self._raw_config(source, kwargs)
            if not is_minicpm26(raw):
                raise ModelLoadError(
                    f"{self.name} is not a MiniCPM-V 2.6 or MiniCPM-o 2.6 checkpoint",
                    "use the model's own family: leave out the registry name and give its folder or hub id",
                )
            folder = self._folder(source, kwargs)
            processor = MiniCPMProcessor.from_folder(folder, kwargs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = MiniCPM26Model.from_pretrained(
                    folder,
                    config=MiniCPM26Config.from_checkpoint(raw),
                    dtype=self.dtype,
                    quantization_config=quant_config,
                    device_map={"": self.device},
                    **kwargs,
                )
        except VlchatError:
            raise
        except Exception as error:
            raise self._load_error(error) from error
        model.opening_ids = (processor.token_id(processor.im_start), processor.token_id(processor.slice_start))
        model.closing_ids = (processor.token_id(processor.im_end), processor.token_id(processor.slice_end))
        model.eval()
        self.model, self.processor = model, processor
        self._images.clear()
        report(LoadProgress("ready"))

    def _raw_config(self, source: str, kwargs: dict[str, Any]) -> dict:
        path = Path(source) / "config.json"
        if not path.is_file():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "config.json", **{k: v for k, v in kwargs.items() if k == "local_files_only"}))
        return _read_json(path)

    def _folder(self, source: str, kwargs: dict[str, Any]) -> str:
        if Path(source).is_dir():
            return source
        from huggingface_hub import snapshot_download

        return snapshot_download(
            source, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja"],
            **{k: v for k, v in kwargs.items() if k == "local_files_only"},
        )

    def _quantization_config(self):
        config = super()._quantization_config()
        if config is not None:
            # the vision tower stays in 16-bit like every family's (see KEEP_UNQUANTIZED)
            config.llm_int8_skip_modules = [*skip_patterns(), r"(?:.*\.)?vpm"]
        return config

    # -- prompts ---------------------------------------------------------------------------------
    def render(self, conversation: Conversation) -> tuple[str, list[Any]]:
        """The chat-template text, pictures as the authors' placeholders, and the pictures in order."""
        messages: list[dict[str, Any]] = []
        pictures: list[Any] = []
        if conversation.system:
            messages.append({"role": "system", "content": conversation.system})
        for message in conversation.for_model().messages:  # unanswered questions left out
            parts = []
            for ref in message.images:
                pictures.append(self._picture(ref))
                parts.append(PICTURE)
            parts.append(message.text)
            messages.append({"role": message.role, "content": "\n".join(parts)})
        prompt = self.processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt, pictures

    def prepare(self, conversation: Conversation) -> dict[str, Any]:
        self.require_question(conversation)
        prompt, pictures = self.render(conversation)
        inputs = self.processor(prompt, [pictures]).to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def generation_kwargs(self, inputs: dict[str, Any], params) -> dict[str, Any]:
        kwargs = super().generation_kwargs(inputs, params)
        ends = [self.processor.token_id(t) for t in TERMINATORS]
        kwargs["eos_token_id"] = [t for t in ends if t is not None and t >= 0]
        return kwargs

    # -- key/value cache reuse -------------------------------------------------------------------
    def picture_spans(self, ids: list[int]) -> list[tuple[int, int, int]]:
        """(start, end, slices) of each picture's tokens: from its <image_id> (or <image>) to its
        last closing tag, and how many thumbnails and slices it has."""
        p = self.processor
        first = p.token_id(p.id_start if p.use_image_id else p.im_start)
        opening = set(self.model.opening_ids)
        closing = set(self.model.closing_ids)
        starts = [i for i, t in enumerate(ids) if t == first]
        spans = []
        for k, start in enumerate(starts):
            limit = starts[k + 1] if k + 1 < len(starts) else len(ids)
            inside = ids[start:limit]
            ends = [start + j for j, t in enumerate(inside) if t in closing]
            end = (ends[-1] + 1) if ends else start + 1
            spans.append((start, end, sum(1 for t in ids[start:end] if t in opening)))
        return spans

    def _cut_outside_pictures(self, ids: list[int], n: int, kwargs: dict[str, Any], same=lambda _i: True) -> int:
        pixels = kwargs.get("pixel_values")
        if pixels is None:
            return n
        spans = self.picture_spans(ids)
        for i, (start, end, _slices) in enumerate(spans):
            if start < n and (n < end or not same(i)):
                n = start
                break
        drop = sum(slices for _s, end, slices in spans if end <= n)
        if drop:
            rest = pixels[drop:]
            if rest.shape[0]:
                kwargs["pixel_values"] = rest
                kwargs["tgt_sizes"] = kwargs["tgt_sizes"][drop:]
            else:
                kwargs.pop("pixel_values")
                kwargs.pop("tgt_sizes")
        return n

    def count_context(self, conversation: Conversation) -> tuple[int, int | None]:
        """Tokens of the whole prompt, and of the pictures (brackets, ids and query tokens)."""
        ids = self.prepare(conversation)["input_ids"][0].tolist()
        return len(ids), sum(end - start for start, end, _n in self.picture_spans(ids))

    def describe(self):
        info = super().describe()
        info.family = FAMILY
        return info
