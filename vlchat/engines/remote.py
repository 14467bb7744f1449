"""Models that ship their own Python code and a ``chat`` method (MiniCPM-o 2.6, MiniCPM-V 2.x).

Their code runs only with --trust-remote-code: a model folder or hub repo can hold any Python, and
vlchat never runs it unless the person asked. Without the flag the load is refused with a line that
says so, before transformers touches the code.

Such models take the whole history on every turn through ``model.chat(msgs=..., tokenizer=...,
stream=True)``, each message's content a list of PIL pictures and strings. MiniCPM-o loads without
its audio and speech parts (``init_audio=False, init_tts=False``): vlchat only talks about pictures.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.core.errors import VlchatError
from vlchat.core.text import clean
from vlchat.engines.base import (
    GenerationError,
    LoadProgress,
    ModelLoadError,
    ProgressCallback,
    StreamStats,
    TokenStream,
)
from vlchat.engines.transformers import TransformersEngine, first_line

# model_type values of the MiniCPM-o/-V remote code: they take init_* switches for their audio parts
_MINICPM_O = ("minicpmo",)


def read_config(source: str) -> dict[str, Any] | None:
    """config.json of a local folder or of a hub repo already in the cache; None when not at hand."""
    path: str | None = None
    folder = Path(source)
    if folder.is_dir():
        path = str(folder / "config.json") if (folder / "config.json").is_file() else None
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json")
            path = cached if isinstance(cached, str) else None
        except Exception:
            path = None
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def missing_packages(error: BaseException) -> list[str]:
    """The packages an import error says are missing: transformers checks a model's own code for
    them before running it ("... not found in your environment: soundfile. Run `pip install ...`"),
    and a module imported later fails with its own name."""
    import re

    found = re.search(r"not found in your environment: ([A-Za-z0-9_.\-, ]+?)\.(?:\s|$)", str(error))
    if found:
        return [clean(name.strip(), keep_newlines=False) for name in found.group(1).split(",") if name.strip()]
    name = getattr(error, "name", None)
    if isinstance(error, ModuleNotFoundError) and isinstance(name, str) and name:
        return [clean(name.split(".")[0], keep_newlines=False)]
    return []


def uses_chat_api(config: dict[str, Any]) -> bool:
    """Own code with no image-text-to-text class: it is driven through its ``chat`` method."""
    auto_map = config.get("auto_map") or {}
    return bool(auto_map) and "AutoModelForImageTextToText" not in auto_map


class RemoteCodeEngine(TransformersEngine):
    """A model whose own code does the prompting: ``AutoModel`` + ``chat(..., stream=True)``."""

    def load(self, progress: ProgressCallback | None = None) -> None:
        report = progress or (lambda _p: None)
        if not self.trust_remote_code:
            raise ModelLoadError(
                f"model {self.name} ships its own Python code, and vlchat runs such code only when asked",
                "read the code in the model's repository, then start again with --trust-remote-code",
            )
        source, kwargs = self._start_load(report, trust_remote_code=True)
        from transformers import AutoModel, AutoTokenizer

        config = read_config(source) or {}
        extra: dict[str, Any] = {}
        if config.get("model_type") in _MINICPM_O:
            extra = {"init_vision": True, "init_audio": False, "init_tts": False, "attn_implementation": "sdpa"}
        report(LoadProgress(f"loading {self.name} (its own code) on {self.device}"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
                model = AutoModel.from_pretrained(
                    source,
                    dtype=self.dtype,
                    quantization_config=self._quantization_config(),
                    device_map={"": self.device},
                    **extra,
                    **kwargs,
                )
        except VlchatError:
            raise
        except (ImportError, AttributeError, TypeError, NameError) as error:
            missing = missing_packages(error)
            if missing:
                raise ModelLoadError(
                    f"the own code of {self.name} needs {', '.join(missing)}, which is not installed",
                    f"install it: pip install {' '.join(missing)}",
                ) from error
            raise ModelLoadError(
                f"the own code of {self.name} does not run with the installed transformers: {first_line(error)}",
                "use the native minicpm-v-4.6 instead, or serve this model with vLLM and connect to it",
            ) from error
        except Exception as error:
            raise self._load_error(error) from error
        if not callable(getattr(model, "chat", None)):
            raise ModelLoadError(
                f"model {self.name} ships its own code but has no chat method vlchat can drive",
                "use a model that transformers supports natively (see `vlchat models`)",
            )
        model.eval()
        self.model, self.processor = model, tokenizer
        self._images.clear()
        report(LoadProgress("ready"))

    def chat_messages(self, conversation: Conversation) -> list[dict[str, Any]]:
        """MiniCPM's message shape: content is a list of PIL pictures and strings, whole history."""
        messages = []
        for message in conversation.for_model().messages:  # unanswered questions left out
            if message.role == "system":
                continue  # passed as system_prompt
            content: list[Any] = [self._picture(ref) for ref in message.images]
            content.append(message.text)
            messages.append({"role": message.role, "content": content})
        return messages

    def stream(
        self,
        conversation: Conversation,
        params: GenerationParams,
        cancel: threading.Event | None = None,
    ) -> TokenStream:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        self._require_loaded()
        params.validate()
        if not conversation.messages or conversation.messages[-1].role != "user":
            raise GenerationError("there is no question to answer", "add a user message first")
        cancel = cancel or threading.Event()
        abandon = threading.Event()
        stats = StreamStats()

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **_kw):
                stop = cancel.is_set() or abandon.is_set()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        kwargs: dict[str, Any] = {
            "msgs": self.chat_messages(conversation),
            "tokenizer": self.processor,
            "stream": True,
            "sampling": params.temperature > 0,
            "max_new_tokens": params.max_new_tokens,
            "stopping_criteria": StoppingCriteriaList([Cancelled()]),
        }
        if params.temperature > 0:
            kwargs.update(temperature=float(params.temperature), top_p=float(params.top_p))
        if conversation.system:
            kwargs["system_prompt"] = conversation.system
        model = self.model

        def pieces() -> Iterator[str]:
            started = False
            try:
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                with torch.inference_mode():
                    answer = model.chat(**kwargs)
                for text in answer if not isinstance(answer, str) else [answer]:
                    if stats.first_token_at is None:
                        stats.first_token_at = time.perf_counter()
                    stats.tokens += 1  # the model's streamer yields about one token per piece
                    if not started:
                        text = text.lstrip()
                        started = bool(text)
                    if text:
                        yield clean(text)
                    if cancel.is_set():
                        break
            except VlchatError:
                raise
            except Exception as error:
                raise self._generation_error(error) from error
            finally:
                abandon.set()
                stats.finished_at = time.perf_counter()
                stats.stopped = cancel.is_set()

        return TokenStream(pieces(), stats)

    def context_length(self) -> int | None:
        if self.model is None:
            return None
        config = self.model.config
        text = getattr(config, "text_config", None) or getattr(config, "llm_config", None) or config
        value = getattr(text, "max_position_embeddings", None)
        return value if isinstance(value, int) and value > 0 else None
