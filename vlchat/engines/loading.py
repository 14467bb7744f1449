"""Finding and loading a local model and its processor: the device, quantization and dtype asked
for, the files found in a folder, the Hugging Face cache or the hub, and a failure said in one line.

``ModelLoading`` holds TransformersEngine's loading methods (transformers.py); the families that load
otherwise (minicpm.py, remote.py, blip2.py) override or reuse them.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from vlchat.core.errors import VlchatError
from vlchat.core.text import clean
from vlchat.engines.base import (
    BadOptionError,
    EngineError,
    LoadProgress,
    ModelLoadError,
    ModelNotFoundError,
    OutOfMemoryError,
    ProgressCallback,
)

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


def first_line(error: BaseException) -> str:
    text = clean(str(error), keep_newlines=True).strip().splitlines()
    return text[0] if text else type(error).__name__


class ModelLoading:
    """TransformersEngine's loading: ``load`` and the steps it takes, on the engine's own state
    (``spec``, ``name``, ``requested``, ``device``, ``quant``, ``dtype``, ``model``, ``processor``)."""

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
                f"could not download model {repo}: {first_line(error)}",
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
            return ModelLoadError(f"loading {self.name} needs a missing package: {first_line(error)}", "install it with pip")
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
        return ModelLoadError(f"could not load {self.name}: {first_line(error)}", "check the model files")
