"""Streaming: the pieces a reader gets add up to exactly the non-streamed decode.

The detokenizer is driven with real tokenizers (the demo model's byte-level BPE, and a Llama-style
one built here: sentencepiece spaces, byte fallback, a decoder that strips the first space) over
text with accents, CJK and emoji fed in uneven chunks, as a reader that wakes late would see it;
and the real engine's streamed answer is compared with `model.generate` decoded in one go.
"""

from __future__ import annotations

import random

import pytest

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.engines.streaming import REPLACEMENT, Detokenizer

pytestmark = pytest.mark.timeout(300)

TEXTS = [
    "The shape is red.",
    "Two orange triangles on a black background.\nNext line, café, naïve — “quoted”.",
    "Émoji 🎨🖼️ and CJK 图片里有一个红色的圆形 mixed in, then 日本語テキスト.",
    "   leading spaces, tabs\tand trailing   ",
]


@pytest.fixture(scope="module")
def demo_tokenizer():
    from transformers import AutoTokenizer

    from vlchat.demo import MODEL_DIR

    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


@pytest.fixture(scope="module")
def llama_style_tokenizer():
    """Metaspace + byte fallback + strip-first-space decoder, as Llama/Mistral/LLaVA-1.5 use."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens])
    tok.train_from_iterator(["the shape is red and the background is blue . " * 20, TEXTS[1]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def stream_pieces(tokenizer, ids, rng=None) -> list[str]:
    """What a reader would get if it woke after random numbers of new tokens (every token: no rng)."""
    text = Detokenizer(lambda part: tokenizer.decode(part, skip_special_tokens=True))
    pieces, count = [], 0
    while count < len(ids):
        count = min(len(ids), count + (rng.choice([1, 1, 1, 2, 3, 5]) if rng else 1))
        pieces.append(text.step(ids, count))
    pieces.append(text.step(ids, len(ids), end=True))
    return [p for p in pieces if p]


@pytest.mark.parametrize("which", ["demo_tokenizer", "llama_style_tokenizer"])
def test_pieces_add_up_to_the_whole_decode_and_never_split_a_character(which, request):
    tokenizer = request.getfixturevalue(which)
    rng = random.Random(7)
    for source in TEXTS:
        ids = tokenizer(source, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        whole = tokenizer.decode(ids, skip_special_tokens=True)
        assert REPLACEMENT not in whole  # the text round-trips, so a U+FFFD below is a split character
        for _ in range(5):
            pieces = stream_pieces(tokenizer, ids, rng)
            assert "".join(pieces) == whole
            assert not any(REPLACEMENT in p for p in pieces), pieces
        one_by_one = stream_pieces(tokenizer, ids)
        assert "".join(one_by_one) == whole and not any(REPLACEMENT in p for p in one_by_one)


def test_a_truncated_character_at_the_end_still_shows_as_the_decode_does(demo_tokenizer):
    ids = demo_tokenizer("red 🎨", add_special_tokens=False)["input_ids"][:-1]  # the emoji's last byte is cut
    whole = demo_tokenizer.decode(ids, skip_special_tokens=True)
    assert whole.endswith(REPLACEMENT)
    assert "".join(stream_pieces(demo_tokenizer, ids, random.Random(3))) == whole


def plain_answer(engine, conversation: Conversation, params: GenerationParams) -> tuple[list[int], str]:
    """The model card's call: generate, then decode the new ids; the engine's cache dropped after."""
    import torch

    inputs = engine.prepare(conversation)
    kwargs = engine.generation_kwargs(inputs, params)
    with torch.inference_mode():
        out = engine.model.generate(**kwargs)
    new = out[0, inputs["input_ids"].shape[-1] :].tolist()
    engine.drop_cache()
    return new, engine.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_streamed_answer_equals_plain_generate_decoded(demo_engine, picture):
    conversation = Conversation()
    conversation.add_user("Describe the picture.", [picture("triangle", "green", "white", count=3).ref])
    params = GenerationParams(max_new_tokens=40)
    new, expected = plain_answer(demo_engine, conversation, params)
    stream = demo_engine.stream(conversation, params)
    pieces = list(stream)
    assert len(pieces) > 3, pieces  # it really streamed
    assert stream.text.strip() == expected and "green" in expected
    assert stream.stats.tokens == len(new)


def test_an_answer_handed_over_from_the_generation_thread_is_the_same_answer(demo_engine, picture):
    """TokenStream.drive, as the model's own process sends an answer: the pieces come from the
    thread that generates (nothing is woken to read them) and add up to plain generate's answer."""
    import threading

    conversation = Conversation()
    conversation.add_user("Describe the picture.", [picture("square", "blue", "white", count=2).ref])
    params = GenerationParams(max_new_tokens=40)
    new, expected = plain_answer(demo_engine, conversation, params)
    stream = demo_engine.stream(conversation, params)
    received: list[tuple[str, str]] = []
    stream.drive(lambda piece: received.append((threading.current_thread().name, piece)))
    assert "".join(piece for _, piece in received).strip() == expected and "blue" in expected
    assert stream.text == "".join(piece for _, piece in received)
    assert stream.stats.tokens == len(new) and stream.stats.finish_reason == "stop"
    # all but possibly the last piece (the rest of the answer, after the model ended) came from the
    # generation thread, as it made them
    made_there = [name for name, _ in received[:-1]]
    assert len(made_there) > 3 and set(made_there) == {"vlchat-generate"}, received
