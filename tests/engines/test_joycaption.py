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
    # JoyCaption's own tokens: Llama 3.1's BOS, and its image token as its published processor_config.json names it
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_PROMPT + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<|reserved_special_token_69|>\n"
        "Write a long descriptive caption for this image.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert len(pictures) == 1
    ids = joy.prepare(c)["input_ids"][0].tolist()
    bos = joy.tokenizer.bos_token_id
    assert bos == 128000 and ids.count(bos) == 1 and ids[0] == bos
    assert ids.count(128077) == joy.prepare(c)["pixel_values"].shape[0] * 16  # 4x4 patches a picture, CLS dropped
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
    assert prompt.count("<|reserved_special_token_69|>") == 2 and len(pictures) == 2
    ids = joy.prepare(c)["input_ids"][0].tolist()
    assert ids.count(joy.tokenizer.bos_token_id) == 1
    assert list(joy.stream(c, GenerationParams(max_new_tokens=3)))


def test_a_joycaption_folder_given_by_path_is_known_by_its_template(tmp_path, run_vlchat, picture):
    """Its config.json says llava; its string-content Llama 3 template says JoyCaption."""
    import json

    from vlchat.config import Settings
    from vlchat.engines import engine_class, make_engine
    from vlchat.engines.registry import resolve
    from vlchat.engines.transformers import TransformersEngine

    folder = build_joycaption(tmp_path / "some-captioner")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llava"
    assert engine_class(resolve(str(folder))) is JoyCaptionEngine
    engine = make_engine(Settings(model=str(folder), quant="none", device="cpu", dtype="float32"))
    engine.load()
    try:
        c = Conversation()
        c.add_user("Write a short caption for this image.", [picture().ref])
        ids = engine.prepare(c)["input_ids"][0].tolist()
        bos = engine.tokenizer.bos_token_id
        assert ids.count(bos) == 1 and ids[0] == bos
        assert engine.describe().family == "joycaption"
    finally:
        engine.unload()
    shot = picture()
    result = run_vlchat("ask", "--model", folder, "--max-new-tokens", "3", "--json", shot.ref.path,
                        "Write a short caption for this image.")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["tokens"] >= 1 and record["prompt_tokens"] == len(ids)
    # the generic engine on the same folder: the template places no picture; one clear line, no "internal error"
    plain = TransformersEngine(str(folder), quant="none", device="cpu")
    plain.load()
    try:
        from vlchat.engines.base import GenerationError

        with pytest.raises(GenerationError) as caught:
            plain.stream(c, GenerationParams(max_new_tokens=2))
        assert "chat template" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        plain.unload()


def test_four_turns_with_a_second_picture_keep_one_bos_and_the_same_answers_with_reuse(tmp_path, picture):
    """No published copy of JoyCaption beta one's files was found (tests/data/families/SOURCES.md):
    on the JoyCaption-shaped folder (its template project-made; its special tokens, image token and
    token roles JoyCaption's own), every turn's prompt has one BOS and its pictures where they were
    added, and greedy answers with the cache reused equal those without."""
    from vlchat.config import Settings
    from vlchat.engines import make_engine

    folder = build_joycaption(tmp_path / "joy")
    engines = []
    for reuse in (True, False):
        engine = make_engine(Settings(model=str(folder), quant="none", device="cpu", dtype="float32", kv_cache_reuse=reuse))
        engine.load()
        engines.append(engine)
    reuse, fresh = engines
    try:
        a, b = Conversation(), Conversation()
        turns = [("Caption this.", picture()), ("Shorter, please.", None), ("And this one?", picture("square", "green")),
                 ("Which is brighter?", None)]
        cached = []
        for question, shot in turns:
            for c in (a, b):
                c.add_user(question, [shot.ref] if shot else [])
            ids = reuse.prepare(a)["input_ids"][0].tolist()
            bos = reuse.tokenizer.bos_token_id
            assert ids.count(bos) == 1 and ids[0] == bos
            first, second = reuse.stream(a, GenerationParams(max_new_tokens=4)), fresh.stream(b, GenerationParams(max_new_tokens=4))
            text = "".join(first)
            assert text == "".join(second)
            cached.append(first.stats.cached_tokens)
            a.add_assistant(text, model="joycaption")
            b.add_assistant(text, model="joycaption")
        assert reuse.render(a)[0].count("<|reserved_special_token_69|>") == 2
        assert cached[0] == 0 and all(n > 0 for n in cached[1:]), cached
    finally:
        reuse.unload()
        fresh.unload()
