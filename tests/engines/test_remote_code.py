"""A model folder with its own code (an auto_map to Python files beside its weights).

Its code is the MiniCPM-o shape: AutoModel, and a ``chat(msgs, tokenizer, stream=True)`` that takes
the whole history with PIL pictures inside the messages' content lists.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.engines import engine_class, make_engine
from vlchat.engines.base import ModelLoadError
from vlchat.engines.registry import resolve

pytestmark = pytest.mark.timeout(120)

CONFIG_CODE = '''
from transformers import PreTrainedConfig


class TinyChatConfig(PreTrainedConfig):
    model_type = "tinychat"

    def __init__(self, vocab_size=384, hidden_size=64, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
'''

MODEL_CODE = '''
import threading

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, TextIteratorStreamer

from .configuration_tinychat import TinyChatConfig

RAN = []  # what chat() was given, for the test to read


class TinyChatModel(PreTrainedModel):
    config_class = TinyChatConfig

    def __init__(self, config):
        super().__init__(config)
        self.llm = LlamaForCausalLM(LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2))
        self.post_init()

    def chat(self, msgs, tokenizer, stream=False, sampling=False, max_new_tokens=8, system_prompt=None, **kwargs):
        text, pictures = "", 0
        for message in msgs:
            for part in message["content"]:
                if isinstance(part, str):
                    text += message["role"] + ": " + part + "\\n"
                else:
                    pictures += 1
        RAN.append({"prompt": text, "pictures": pictures, "stream": stream})
        ids = tokenizer(text, return_tensors="pt").input_ids
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        args = dict(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=sampling, streamer=streamer,
                    suppress_tokens=tokenizer.all_special_ids, **kwargs)
        threading.Thread(target=self.llm.generate, kwargs=args, daemon=True).start()
        return streamer
'''


@pytest.fixture(scope="module")
def own_code_model(tmp_path_factory):
    from tests.tiny_families import build_tokenizer

    folder = tmp_path_factory.mktemp("remote") / "tinychat"
    folder.mkdir()
    (folder / "configuration_tinychat.py").write_text(CONFIG_CODE)
    (folder / "modeling_tinychat.py").write_text(MODEL_CODE)
    (folder / "__init__.py").write_text("")
    # import the files as a package once, only to write the weights the way the author would
    spec = importlib.util.spec_from_file_location("tinychat_pkg", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["tinychat_pkg"] = package
    try:
        from tinychat_pkg.modeling_tinychat import TinyChatConfig, TinyChatModel  # type: ignore

        model = TinyChatModel(TinyChatConfig())
        model.save_pretrained(folder)
    finally:
        for name in [n for n in sys.modules if n.startswith("tinychat_pkg")]:
            del sys.modules[name]
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_tinychat.TinyChatConfig",
                          "AutoModel": "modeling_tinychat.TinyChatModel"}
    (folder / "config.json").write_text(json.dumps(config))
    build_tokenizer([]).save_pretrained(folder)
    return folder


def settings(folder, trust):
    from vlchat.config import Settings

    return Settings(model=str(folder), quant="none", device="cpu", dtype="float32", trust_remote_code=trust)


def test_refused_without_the_flag_before_any_code_runs(own_code_model):
    from vlchat.engines.remote import RemoteCodeEngine

    assert engine_class(resolve(str(own_code_model))) is RemoteCodeEngine
    engine = make_engine(settings(own_code_model, False))
    with pytest.raises(ModelLoadError) as caught:
        engine.load()
    message = str(caught.value)
    assert "ships its own Python code" in message and "--trust-remote-code" in message
    assert not any("tinychat" in name for name in sys.modules)  # nothing of it was imported


def test_refused_on_the_command_line_in_one_line(own_code_model, run_vlchat):
    from vlchat.demo import SAMPLES_DIR

    result = run_vlchat("ask", "--model", own_code_model, SAMPLES_DIR / "red-circle.png", "hi")
    assert result.returncode == 1
    assert "--trust-remote-code" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_streams_with_the_flag_and_the_whole_history(own_code_model, picture):
    engine = make_engine(settings(own_code_model, True))
    engine.load()
    try:
        c = Conversation()
        c.add_user("What colour is the shape?", [picture().ref])
        first = engine.stream(c, GenerationParams(max_new_tokens=4))
        assert list(first) and first.stats.tokens >= 1
        c.add_assistant(first.text, model=engine.name)
        c.add_user("And this one?", [picture("square", "green").ref])
        second = engine.stream(c, GenerationParams(max_new_tokens=4))
        assert list(second)
        ran = sys.modules[type(engine.model).__module__].RAN
        assert ran[-1]["pictures"] == 2 and ran[-1]["stream"] is True
        assert ran[-1]["prompt"].startswith("user: What colour is the shape?\nassistant: ")
        assert ran[-1]["prompt"].endswith("user: And this one?\n")
    finally:
        engine.unload()


def test_own_code_written_for_another_transformers_is_explained(own_code_model, tmp_path):
    """MiniCPM-o 2.6's code was written for transformers 4.x; where it does not run, say what to use."""
    import shutil

    folder = tmp_path / "old-code"
    shutil.copytree(own_code_model, folder)
    code = (folder / "modeling_tinychat.py").read_text()
    (folder / "modeling_tinychat.py").write_text(
        "from transformers.generation.utils import NameOnlyInTransformers4\n" + code
    )
    engine = make_engine(settings(folder, True))
    with pytest.raises(ModelLoadError) as caught:
        engine.load()
    message = str(caught.value)
    assert "does not run with the installed transformers" in message
    assert "minicpm-v-4.6" in message and "vLLM" in message
    assert "\n" not in message


def test_a_missing_package_of_the_own_code_is_named(own_code_model, tmp_path):
    """MiniCPM-o's code imports soundfile; where it is missing, say so, not "does not run with transformers"."""
    import shutil

    folder = tmp_path / "needs-a-package"
    shutil.copytree(own_code_model, folder)
    code = (folder / "modeling_tinychat.py").read_text()
    (folder / "modeling_tinychat.py").write_text("import vlchat_test_absent_audio_package\n" + code)
    engine = make_engine(settings(folder, True))
    with pytest.raises(ModelLoadError) as caught:
        engine.load()
    message = str(caught.value)
    assert "needs vlchat_test_absent_audio_package, which is not installed" in message
    assert "pip install vlchat_test_absent_audio_package" in message
    assert "transformers" not in message and "\n" not in message
