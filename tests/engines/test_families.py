"""Every native family, as a tiny random model saved to a folder and loaded by its path.

A two-turn conversation (a picture in each turn) must stream tokens, and the prompt must carry one
block of image tokens per picture the family can see. Random weights: the words mean nothing.
"""

from __future__ import annotations

import pytest

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.engines import engine_class, make_engine
from vlchat.engines.registry import resolve
from tests import tiny_families

pytestmark = pytest.mark.timeout(240)

SHORT = GenerationParams(max_new_tokens=4)


def image_blocks(ids: list[int], image_id: int) -> list[int]:
    """Lengths of the runs of image tokens in the prompt, in order."""
    runs, length = [], 0
    for token in ids + [None]:
        if token == image_id:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def two_turns(engine, picture) -> tuple[Conversation, list[list[int]]]:
    """Turn 1 with a picture, an answer, turn 2 with another picture; the prompt of each turn."""
    conversation = Conversation()
    conversation.add_user("What colour is the shape?", [picture("circle", "red", "blue").ref])
    prompts = [engine.prepare(conversation)["input_ids"][0].tolist()]
    stream = engine.stream(conversation, SHORT)
    pieces = list(stream)
    assert pieces and stream.stats.tokens >= 1 and "".join(pieces) == stream.text
    conversation.add_assistant(stream.text, model=engine.name)
    conversation.add_user("And this one?", [picture("square", "green", "white").ref])
    prompts.append(engine.prepare(conversation)["input_ids"][0].tolist())
    stream = engine.stream(conversation, SHORT)
    pieces = list(stream)
    assert pieces and stream.stats.tokens >= 1, "the second turn streamed nothing"
    return conversation, prompts


def load(folder, quant="none"):
    from vlchat.config import Settings

    engine = make_engine(Settings(model=str(folder), quant=quant, device="cpu", dtype="float32"))
    engine.load()
    return engine


@pytest.mark.parametrize(
    "family,quant",
    [("llava", "4bit"), ("llava_next", "4bit"), ("idefics3", "4bit"), ("blip-2", "4bit"), ("instructblip", "4bit"),
     ("minicpmv4_6", "4bit")],
)
def test_family_streams_a_two_picture_conversation(tiny_models, picture, family, quant):
    engine = load(tiny_models[family], quant)
    try:
        info = engine.describe()
        assert info.family == family
        assert info.quantization == ("nf4 4-bit" if quant == "4bit" else "none")
        image_id = engine.model.config.image_token_id
        _, (first, second) = two_turns(engine, picture)
        runs1, runs2 = image_blocks(first, image_id), image_blocks(second, image_id)
        if family in ("blip-2", "instructblip"):
            # one picture at a time: the Q-Former's queries for the latest picture, before the text
            assert runs1 == runs2 == [tiny_families.QUERY_TOKENS]
            assert first[: tiny_families.QUERY_TOKENS] == [image_id] * tiny_families.QUERY_TOKENS
        else:
            assert len(runs1) == 1 and len(runs2) == 2, (runs1, runs2)
            assert runs2[0] == runs1[0]  # turn 1's picture is still there, as it was
            if family == "llava":
                assert runs1 == [16]  # (32 / 8)^2 patches, CLS dropped
            if family == "idefics3":
                assert runs1 == [4]  # 16 patches merged 2x2
            if family == "minicpmv4_6":
                assert runs1 == [1]  # 16 patches merged 16x
    finally:
        engine.unload()


def test_engine_is_chosen_by_the_models_config(tiny_models):
    from vlchat.engines.blip2 import Blip2Engine
    from vlchat.engines.joycaption import JoyCaptionEngine
    from vlchat.engines.transformers import TransformersEngine

    assert engine_class(resolve(str(tiny_models["blip-2"]))) is Blip2Engine
    assert engine_class(resolve(str(tiny_models["instructblip"]))) is Blip2Engine
    assert engine_class(resolve(str(tiny_models["llava_next"]))) is TransformersEngine
    assert engine_class(resolve("joycaption")) is JoyCaptionEngine
    assert engine_class(resolve("blip2-opt-2.7b")) is Blip2Engine


def test_qwen2_vl_streams_with_grid_sizes_from_its_processor(tiny_models, picture):
    """Qwen2-VL: the processor's image_grid_thw reaches the model (with or without torchvision,
    which transformers 5.23 wants for the processor's video half only)."""
    engine = load(tiny_models["qwen2_vl"], "4bit")
    try:
        image_id = engine.model.config.image_token_id
        conversation, (first, second) = two_turns(engine, picture)
        runs1, runs2 = image_blocks(first, image_id), image_blocks(second, image_id)
        assert runs1 == [4] and runs2 == [4, 4]  # 32x32 pixels: 4x4 patches of 8, merged 2x2
        grids = engine.prepare(conversation)["image_grid_thw"].tolist()
        assert grids == [[1, 4, 4], [1, 4, 4]]
        assert engine.describe().quantization == "nf4 4-bit"
    finally:
        engine.unload()
