"""BLIP-2 / InstructBLIP: the Question/Answer chain, its exact text, and the 512-token window."""

from __future__ import annotations

import pytest

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.engines.blip2 import ANSWER_ROOM, CONTEXT, Blip2Engine, fit_chain, qa_pairs, render_chain
from tests.tiny_families import CODE

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def blip2(tiny_models):
    engine = Blip2Engine(str(tiny_models["blip-2"]), quant="none", device="cpu")
    engine.load()
    yield engine
    engine.unload()


def test_chain_text_is_the_authors_format(picture):
    c = Conversation()
    c.add_user("What is in the picture?", [picture().ref])
    c.add_assistant("a red circle", model="blip2")
    c.add_user("Where is it?")
    pairs, question = qa_pairs(c)
    assert render_chain(pairs, question) == (
        "Question: What is in the picture? Answer: a red circle. Question: Where is it? Answer:"
    )
    c.add_assistant("In the middle.", model="blip2")  # an answer that ends its own sentence keeps it
    c.add_user("  What   colour? ")
    assert render_chain(*qa_pairs(c)) == (
        "Question: What is in the picture? Answer: a red circle. Question: Where is it? Answer: In the middle. "
        "Question: What colour? Answer:"
    )


def test_empty_prompt_is_a_plain_caption(blip2, picture):
    c = Conversation()
    c.add_user("", [picture().ref])
    assert blip2.prompt_for(c) == ("", 0)
    ids = blip2.prepare(c)["input_ids"][0].tolist()
    image_id = blip2.model.config.image_token_id
    # the picture alone and the BOS, as Blip2ForConditionalGeneration.generate starts without text
    bos = blip2.model.config.text_config.bos_token_id
    assert ids == [image_id] * blip2.model.config.num_query_tokens + [bos]
    stream = blip2.stream(c, GenerationParams(max_new_tokens=3))
    list(stream)
    assert stream.stats.tokens == 3 and stream.stats.notice is None


def test_prompt_follows_the_chain_after_the_picture(blip2, picture):
    c = Conversation()
    c.add_user("What is in the picture?", [picture().ref])
    c.add_assistant("a red circle", model="blip2")
    c.add_user("Where is it?")
    ids = blip2.prepare(c)["input_ids"][0].tolist()
    text = blip2.tokenizer.decode(ids[blip2.model.config.num_query_tokens :], skip_special_tokens=True)
    assert text == "Question: What is in the picture? Answer: a red circle. Question: Where is it? Answer:"


def test_oldest_turns_are_dropped_to_fit_and_the_stream_says_so(blip2, picture):
    c = Conversation()
    c.add_user("Describe the picture number 0 in great detail please.", [picture().ref])
    for n in range(1, 40):
        c.add_assistant(f"The shape is red and it is the answer number {n}.", model="blip2")
        c.add_user(f"What colour is the shape in question number {n}?")
    params = GenerationParams(max_new_tokens=200)
    budget = CONTEXT - blip2.model.config.num_query_tokens - ANSWER_ROOM
    prompt, dropped = blip2.prompt_for(c, params.max_new_tokens)
    pairs, question = qa_pairs(c)
    assert dropped > 0 and prompt == render_chain(pairs[dropped:], question)
    assert prompt.startswith(f"Question: What colour is the shape in question number {dropped}? Answer:")
    assert prompt.endswith("Question: What colour is the shape in question number 39? Answer:")
    count = lambda text: len(blip2.tokenizer(text)["input_ids"])  # noqa: E731
    assert count(prompt) <= budget < count(render_chain(pairs[dropped - 1 :], question))
    stream = blip2.stream(c, params)
    pieces = list(stream)
    assert pieces
    assert stream.stats.notice == (
        f"{blip2.name} reads only 512 tokens: the oldest {dropped} turns of this conversation "
        "were left out of its prompt"
    )
    # the whole window is respected: prompt plus answer stay within 512 tokens
    assert stream.stats.prompt_tokens + stream.stats.tokens <= CONTEXT


def test_a_question_too_long_alone_is_refused():
    from vlchat.engines.base import ContextTooLongError

    with pytest.raises(ContextTooLongError, match="512-token window"):
        fit_chain([("a", "b")], "x " * 600, lambda text: len(text.split()), 400)


def test_no_picture_says_to_add_one(blip2):
    from vlchat.engines.base import GenerationError

    c = Conversation()
    c.add_user("Hello?")
    with pytest.raises(GenerationError, match="/image"):
        blip2.prepare(c)




def test_instructblip_keeps_answering_a_long_conversation_full_of_code(tiny_models, picture):
    """The Q-Former reads the same chain with BERT, which splits every punctuation mark: the chain
    must fit its 512 positions too, or the model fails (568 vs 512) from about turn 8 on."""
    engine = Blip2Engine(str(tiny_models["instructblip"]), quant="none", device="cpu")
    engine.load()
    try:
        bert = engine.processor.qformer_tokenizer
        c = Conversation()
        c.add_user("What is in the picture?", [picture().ref])
        notices = []
        for turn in range(12):
            stream = engine.stream(c, GenerationParams(max_new_tokens=2))
            list(stream)  # a model that fails raises here (GenerationError: size 568 vs 512)
            assert stream.stats.tokens >= 1, f"turn {turn + 1} gave no answer"
            notices.append(stream.stats.notice)
            c.add_assistant(CODE[turn % len(CODE)], model="instructblip")
            c.add_user(f"And what does the code in answer {turn + 1} print?")
        # the window was really tight for BERT: turns had to go, and the stream said so
        assert any(notices), notices
        assert "the oldest" in [n for n in notices if n][-1]
        prompt, dropped = engine.prompt_for(c, 2)
        assert dropped > 0 and len(bert(prompt)["input_ids"]) <= 512
    finally:
        engine.unload()
