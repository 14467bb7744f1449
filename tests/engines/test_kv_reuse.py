"""Prefix reuse of the key/value cache across turns: same answers, less work, safe fallbacks."""

from __future__ import annotations

import pytest

from vlchat.core.conversation import Conversation, GenerationParams

pytestmark = pytest.mark.timeout(300)

GREEDY = GenerationParams(max_new_tokens=24)

# A multi-turn conversation with several pictures: (question, picture or None)
TURNS = [
    ("What colour is the shape?", ("circle", "red", "blue", 1)),
    ("What shape is it?", None),
    ("How many shapes are there?", ("star", "yellow", "purple", 3)),
    ("What colour is the background?", None),
    ("Describe the picture.", ("cross", "green", "white", 2)),
    ("What colour is the shape?", None),
    ("What shape is it?", ("triangle", "orange", "black", 1)),
]


@pytest.fixture(scope="module")
def engines():
    from vlchat.engines.transformers import TransformersEngine

    reuse = TransformersEngine("demo", quant="none", device="cpu", kv_cache_reuse=True)
    fresh = TransformersEngine("demo", quant="none", device="cpu", kv_cache_reuse=False)
    reuse.load()
    fresh.load()
    yield reuse, fresh
    reuse.unload()
    fresh.unload()


def answer(engine, conversation):
    stream = engine.stream(conversation, GREEDY)
    text = "".join(stream)
    return text, stream.stats


def test_greedy_answers_are_identical_with_and_without_reuse(engines, picture):
    reuse, fresh = engines
    with_reuse, without = Conversation(), Conversation()
    cached = []
    for question, scene in TURNS:
        refs = [picture(*scene).ref] if scene else []
        with_reuse.add_user(question, refs)
        without.add_user(question, refs)
        a, stats = answer(reuse, with_reuse)
        b, fresh_stats = answer(fresh, without)
        assert a == b, (question, a, b)
        assert fresh_stats.cached_tokens == 0
        cached.append(stats.cached_tokens)
        with_reuse.add_assistant(a, model="demo")
        without.add_assistant(b, model="demo")
    assert cached[0] == 0  # nothing to reuse on the first turn
    # every later turn reuses at least the whole of the previous turn's prompt
    assert all(c > 0 for c in cached[1:]), cached
    assert "orange" not in with_reuse.messages[-1].text and "triangle" in with_reuse.messages[-1].text


def test_reuse_covers_the_history_and_only_new_tokens_run(engines, picture):
    reuse, _ = engines
    c = Conversation()
    c.add_user("What colour is the shape?", [picture("square", "blue", "yellow").ref])
    first, stats1 = answer(reuse, c)
    c.add_assistant(first, model="demo")
    c.add_user("What shape is it?")
    second, stats2 = answer(reuse, c)
    assert "square" in second
    new_tokens = stats2.prompt_tokens - stats2.cached_tokens
    # Only the new question (and the template around it) is run again: the picture is not.
    assert stats2.cached_tokens >= stats1.prompt_tokens
    assert 0 < new_tokens < 20, (stats2.prompt_tokens, stats2.cached_tokens)


def test_changed_history_falls_back_to_a_full_prefill(engines, picture):
    reuse, fresh = engines
    c = Conversation()
    c.add_user("What colour is the shape?", [picture("circle", "red", "green").ref])
    text, _ = answer(reuse, c)
    c.add_assistant(text, model="demo")
    c.add_user("What shape is it?")
    answer(reuse, c)
    # A new system prompt changes the very start: nothing but the first token or so can be reused.
    c.set_system("Answer briefly.")
    text_reuse, stats = answer(reuse, c)
    text_fresh, _ = answer(fresh, c)
    assert stats.cached_tokens <= 2 and text_reuse == text_fresh


def test_regenerate_reuses_the_prompt_only(engines, picture):
    reuse, fresh = engines
    c = Conversation()
    c.add_user("Describe the picture.", [picture("star", "white", "black", 2).ref])
    first, stats1 = answer(reuse, c)
    again, stats2 = answer(reuse, c)  # same prompt again: /regenerate
    assert again == first
    assert stats2.cached_tokens == stats1.prompt_tokens - 1  # all but the last token, which must run


def test_a_picture_added_in_a_later_turn_is_seen(engines, picture):
    reuse, _ = engines
    c = Conversation()
    c.add_user("What colour is the shape?", [picture("circle", "red", "blue").ref])
    text, _ = answer(reuse, c)
    c.add_assistant(text, model="demo")
    c.add_user("What colour is the shape?", [picture("circle", "green", "blue").ref])
    second, stats = answer(reuse, c)
    assert "green" in second and stats.cached_tokens > 0


def test_reuse_can_be_turned_off_by_setting():
    from vlchat.config import load_settings
    from vlchat.engines import make_engine

    settings, _ = load_settings({}, env={"VLCHAT_KV_CACHE_REUSE": "false"})
    assert make_engine(settings).kv_cache_reuse is False


def test_unload_drops_the_cache(picture):
    from vlchat.engines.transformers import TransformersEngine

    engine = TransformersEngine("demo", quant="none", device="cpu")
    engine.load()
    c = Conversation()
    c.add_user("What colour is the shape?", [picture().ref])
    answer(engine, c)
    assert engine._kept is not None
    engine.unload()
    assert engine._kept is None and engine.model is None


def test_a_different_picture_in_the_same_place_is_encoded_again(engines, picture):
    """Every picture has the same placeholder tokens: reuse must compare the pictures themselves."""
    reuse, fresh = engines
    first = Conversation()
    first.add_user("What colour is the shape?", [picture("circle", "red", "blue").ref])
    answer(reuse, first)
    second = Conversation()
    second.add_user("What colour is the shape?", [picture("circle", "green", "blue").ref])
    text, stats = answer(reuse, second)
    assert "green" in text and text == answer(fresh, second)[0]
    image_id = reuse.model.config.image_token_id
    start = reuse.prepare(second)["input_ids"][0].tolist().index(image_id)
    assert stats.cached_tokens <= start


# -- every native family: past pictures stay in the cache ---------------------------------------
# The tiny models of tests/tiny_families.py (the published files where found). Four turns, a second
# picture in turn 3: with reuse, follow-ups run only their new tokens, the vision tower sees only the
# new picture, and greedy answers equal those of an engine that computes every turn afresh.
FAMILY_TURNS = [
    ("What colour is the shape?", ("circle", "red", "blue")),
    ("What shape is it?", None),
    ("And what is in this picture?", ("square", "green", "white")),
    ("Which of the two is bigger?", None),
]
VISION_TOWERS = ("vision_tower", "vision_model", "visual")


def tiled(folder, tmp_path):
    """The project-made SmolVLM with its processor cutting each picture into 2x2 tiles and a global one,
    as the published SmolVLM's does (each tile a run of image tokens of its own)."""
    import json
    import shutil

    copy = tmp_path / "idefics3-tiled"
    shutil.copytree(folder, copy)
    config_file = copy / "processor_config.json"
    config = json.loads(config_file.read_text())
    image = config.get("image_processor", config)
    image.update(do_image_splitting=True, size={"longest_edge": 64})
    config_file.write_text(json.dumps(config))
    return copy


def tower_inputs(engine) -> list[int]:
    """Sizes (elements) of every input the model's vision tower is called with, recorded by a hook."""
    import torch

    tower = next(m for name, m in engine.model.named_modules() if name.rsplit(".", 1)[-1] in VISION_TOWERS)
    seen: list[int] = []

    def record(_module, args, kwargs):
        tensors = [kwargs.get("pixel_values"), kwargs.get("hidden_states"), *args, *kwargs.values()]
        seen.append(next(t for t in tensors if isinstance(t, torch.Tensor)).numel())

    tower.register_forward_pre_hook(record, with_kwargs=True)
    return seen


@pytest.mark.parametrize("family", ["llava", "llava_next", "idefics3", "idefics3-tiled", "qwen2_vl", "qwen2_5_vl",
                                    "minicpmv4_6"])
def test_every_native_family_keeps_its_pictures_in_the_cache(tiny_models, picture, tmp_path, family):
    from vlchat.config import Settings
    from vlchat.engines import make_engine

    folder = tiled(tiny_models["idefics3"], tmp_path) if family == "idefics3-tiled" else tiny_models[family]
    reuse, fresh = (make_engine(Settings(model=str(folder), quant="none", device="cpu", dtype="float32",
                                         kv_cache_reuse=flag)) for flag in (True, False))
    reuse.load()
    fresh.load()
    try:
        towers = {reuse: tower_inputs(reuse), fresh: tower_inputs(fresh)}
        with_reuse, without = Conversation(), Conversation()
        runs = {reuse: [], fresh: []}  # per turn: the tower's inputs, in elements
        for turn, (question, scene) in enumerate(FAMILY_TURNS):
            refs = [picture(*scene).ref] if scene else []
            texts = []
            for engine, conversation in ((reuse, with_reuse), (fresh, without)):
                conversation.add_user(question, refs)
                inputs = engine.prepare(conversation)
                spans = engine.picture_runs(inputs["input_ids"][0].tolist(), inputs)
                towers[engine].clear()
                stream = engine.stream(conversation, GenerationParams(max_new_tokens=6))
                texts.append("".join(stream))
                runs[engine].append(sum(towers[engine]))
                conversation.add_assistant(texts[-1], model=family)
                if engine is reuse:
                    cached, earlier = stream.stats.cached_tokens, spans[:-1] if scene else spans
                    # every picture of the earlier turns is inside the reused prefix
                    assert all(pic[-1][1] <= cached for pic in earlier), (question, cached, earlier)
                    assert len(earlier) == [0, 1, 1, 2][turn]
                else:
                    assert stream.stats.cached_tokens == 0
            assert texts[0] == texts[1], (question, texts)
        one = runs[fresh][0]
        assert one > 0 and runs[fresh] == [one, one, 2 * one, 2 * one]  # afresh: every picture, every turn
        assert runs[reuse] == [one, 0, one, 0]  # reused: each picture once, in its own turn
    finally:
        reuse.unload()
        fresh.unload()
