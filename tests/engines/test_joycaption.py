"""JoyCaption: its system prompt, string contents, pictures where added, and exactly one BOS."""

from __future__ import annotations

import pytest

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.engines.joycaption import SYSTEM_PROMPT, JoyCaptionEngine
from vlchat.engines.registry import ModelSpec
from tests.tiny_families import build_joycaption

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def joy(tmp_path_factory):
    folder = build_joycaption(tmp_path_factory.mktemp("joy") / "joycaption")
    spec = ModelSpec("joycaption", str(folder), "joycaption", is_local=True)
    engine = JoyCaptionEngine("joycaption", quant="none", device="cpu", spec=spec)
    engine.load()
    yield engine
    engine.unload()


def test_prompt_has_its_system_prompt_string_contents_and_one_bos(joy, picture):
    c = Conversation()
    c.add_user("Write a long descriptive caption for this image.", [picture().ref])
    prompt, pictures = joy.render(c)
    assert prompt == (
        "<s><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_PROMPT + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWrite a long descriptive caption for this image.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert len(pictures) == 1
    ids = joy.prepare(c)["input_ids"][0].tolist()
    bos = joy.tokenizer.bos_token_id
    assert ids.count(bos) == 1 and ids[0] == bos
    # the plain tokenizer would have added a second one: the check above can fail
    assert joy.tokenizer(prompt)["input_ids"][:2] == [bos, bos]


def test_two_turns_with_a_picture_each_stream(joy, picture):
    c = Conversation()
    c.set_system("Caption tersely.")
    c.add_user("Caption this.", [picture().ref])
    first = joy.stream(c, GenerationParams(max_new_tokens=3))
    assert list(first)
    c.add_assistant(first.text, model="joycaption")
    c.add_user("And this one?", [picture("square", "green").ref])
    prompt, pictures = joy.render(c)
    assert SYSTEM_PROMPT not in prompt and "Caption tersely." in prompt  # the person's own system prompt wins
    assert prompt.count("<image>") == 2 and len(pictures) == 2
    ids = joy.prepare(c)["input_ids"][0].tolist()
    assert ids.count(joy.tokenizer.bos_token_id) == 1
    assert list(joy.stream(c, GenerationParams(max_new_tokens=3)))
