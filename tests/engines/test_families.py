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
            queries = engine.model.config.num_query_tokens
            assert runs1 == runs2 == [queries]
            assert first[:queries] == [image_id] * queries
        else:
            if family == "idefics3":
                # SmolVLM-Instruct's processor: a 256-pixel picture grows to 1536 pixels, 4x4 tiles of 384
                # and the whole picture again, 81 tokens each (27x27 patches of 14, pixel-shuffled by 3)
                assert runs1 == [81] * 17 and runs2 == runs1 * 2, (runs1, runs2)
            else:
                assert len(runs1) == 1 and len(runs2) == 2, (runs1, runs2)
                assert runs2[0] == runs1[0]  # turn 1's picture is still there, as it was
            if family == "llava":
                assert runs1 == [576]  # (336 / 14)^2 patches of the published config, CLS dropped
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


# -- the published files, over four turns --------------------------------------------------------
# Each family's real config.json (shrunk: few layers, small hidden sizes; token ids, image token,
# patch and pixel settings kept), chat template, tokenizer and processor files, from
# tests/data/families/<name>/ (SOURCES.md there says where each file came from), with tiny random
# weights. The model card's call is `processor.apply_chat_template(messages, add_generation_prompt=True,
# tokenize=True, return_dict=True)` on a processor loaded afresh from the same folder.

GREEDY = GenerationParams(max_new_tokens=6)
TURNS = [
    ("What colour is the shape?", ("circle", "red", "blue")),
    ("What shape is it?", None),
    ("And what is in this picture?", ("square", "green", "white")),
    ("Which of the two is bigger?", None),
]


# Families with no published copy of their files found (SOURCES.md): the project-made ones stand in.
FOLDERS = {"llava-1.5": "llava", "qwen2.5-vl": "qwen2_5_vl", "minicpm-v-4.6": "minicpmv4_6", "blip-2": "blip-2",
           "llava-next": "llava_next", "smolvlm": "idefics3",
           # no published copy of its files found (SOURCES.md): its two real tokenizers, project-made sizes
           "instructblip": "instructblip"}


@pytest.fixture(scope="module")
def real_models(tiny_models):
    return lambda family: tiny_models[FOLDERS[family]]


def card_processor(folder):
    """AutoProcessor.from_pretrained(folder), as the card loads it. transformers 5.23+ builds the
    Qwen2.5-VL processor only with torchvision (for its video half): without it, the same class
    without the video half (vlchat.engines.novideo), as vlchat itself loads it."""
    import json

    from transformers import AutoProcessor, InstructBlipProcessor

    try:
        if json.loads((folder / "config.json").read_text())["model_type"] == "instructblip":
            # its card loads InstructBlipProcessor by name: the published processor_config.json names
            # the video processor, which AutoProcessor would build (with torchvision only)
            processor = InstructBlipProcessor.from_pretrained(folder)
        else:
            processor = AutoProcessor.from_pretrained(folder)
        if "InstructBlip" in type(processor).__name__ and isinstance(processor.image_token, str):
            # transformers 5.23's InstructBLIP processor reads .content of a token it was given as a
            # string, so its own call fails; vlchat's engine does the same repair (blip2.py load)
            from tokenizers import AddedToken

            processor.image_token = AddedToken(processor.image_token, normalized=False, special=True)
        return processor
    except Exception as error:
        from vlchat.engines.novideo import needs_torchvision, picture_only_processor

        if not needs_torchvision(error):
            raise
        return picture_only_processor(str(folder), {})


def load_pair(folder):
    from vlchat.config import Settings

    engines = []
    for reuse in (True, False):
        engine = make_engine(Settings(model=str(folder), quant="none", device="cpu", dtype="float32",
                                      kv_cache_reuse=reuse))
        engine.load()
        engines.append(engine)
    return engines


@pytest.mark.parametrize("family", ["llava-1.5", "qwen2.5-vl", "minicpm-v-4.6", "llava-next", "smolvlm"])
def test_real_files_give_the_cards_input_ids_one_bos_and_the_same_answers_with_reuse(real_models, picture, family):
    import torch

    folder = real_models(family)
    card = card_processor(folder)
    reuse, fresh = load_pair(folder)
    try:
        with_reuse, without = Conversation(), Conversation()
        messages = []
        cached = []
        for question, scene in TURNS:
            shot = picture(*scene) if scene else None
            refs = [shot.ref] if shot else []
            with_reuse.add_user(question, refs)
            without.add_user(question, refs)
            content = ([{"type": "image", "path": shot.ref.path}] if shot else []) + [{"type": "text", "text": question}]
            messages.append({"role": "user", "content": content})

            ours = reuse.prepare(with_reuse)
            theirs = card.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True, return_tensors="pt")
            ids = ours["input_ids"][0].tolist()
            assert ids == theirs["input_ids"][0].tolist(), question
            assert torch.equal(ours["pixel_values"], theirs["pixel_values"].to(ours["pixel_values"].dtype))
            bos = card.tokenizer.bos_token_id
            if bos is not None:
                assert ids.count(bos) == 1 and ids[0] == bos
            else:  # Qwen adds none: its template starts the prompt itself
                assert ids[0] == card.tokenizer.convert_tokens_to_ids("<|im_start|>")

            a = reuse.stream(with_reuse, GREEDY)
            b = fresh.stream(without, GREEDY)
            text_a, text_b = "".join(a), "".join(b)
            assert text_a == text_b and a.stats.tokens == GREEDY.max_new_tokens, question
            cached.append(a.stats.cached_tokens)
            # the earlier turns' pictures are in the reused prefix, not encoded again
            spans = reuse.picture_runs(ids, ours)
            assert all(runs[-1][1] <= a.stats.cached_tokens for runs in spans[: len(spans) - bool(shot)])
            with_reuse.add_assistant(text_a, model=family)
            without.add_assistant(text_b, model=family)
            messages.append({"role": "assistant", "content": [{"type": "text", "text": text_a}]})
        assert cached[0] == 0 and all(n > 0 for n in cached[1:]), cached
    finally:
        reuse.unload()
        fresh.unload()


@pytest.mark.parametrize("family", ["blip-2", "instructblip"])
def test_blip2_families_give_the_authors_chain_over_four_turns(real_models, picture, family):
    """BLIP-2 and InstructBLIP have no chat template: the card's call is processor(images=...,
    text=prompt), with the prompt in the authors' chat format (LAVIS: "Question: {} Answer: {}."
    turns). The Q-Former sees the latest picture; the prompt has one BOS after the picture's query
    tokens; InstructBLIP's Q-Former gets the same text in its own tokens."""
    import torch

    from vlchat.engines.blip2 import Blip2Engine

    folder = real_models(family)
    card = card_processor(folder)
    reuse, fresh = load_pair(folder)
    try:
        assert isinstance(reuse, Blip2Engine)
        c, plain = Conversation(), Conversation()
        chain, latest = [], None
        for question, scene in TURNS:
            shot = picture(*scene) if scene else None
            latest = shot or latest
            c.add_user(question, [shot.ref] if shot else [])
            plain.add_user(question, [shot.ref] if shot else [])
            prompt = " ".join(chain + [f"Question: {question} Answer:"])
            from PIL import Image

            theirs = card(images=Image.open(latest.ref.path).convert("RGB"), text=prompt, return_tensors="pt")
            ours = reuse.prepare(c)
            ids = ours["input_ids"][0].tolist()
            assert ids == theirs["input_ids"][0].tolist(), question
            assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
            queries = reuse.model.config.num_query_tokens
            assert ids.count(card.tokenizer.bos_token_id) == 1
            assert ids[queries] == card.tokenizer.bos_token_id  # after the query tokens
            if "qformer_input_ids" in theirs:
                assert torch.equal(ours["qformer_input_ids"], theirs["qformer_input_ids"])
            a, b = reuse.stream(c, GREEDY), fresh.stream(plain, GREEDY)
            text = "".join(a)
            assert text == "".join(b)
            c.add_assistant(text, model=family)
            plain.add_assistant(text, model=family)
            answer = " ".join(text.split())
            chain.append(f"Question: {question} Answer: {answer if not answer or answer[-1] in '.!?' else answer + '.'}".rstrip())
    finally:
        reuse.unload()
        fresh.unload()
