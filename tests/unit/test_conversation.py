"""The conversation object: building it, and a JSON round trip that loses nothing."""

from __future__ import annotations

import json

import pytest

from vlchat.core.conversation import Conversation, GenerationParams, ImageRef, Message, Timings, how_it_ended
from vlchat.core.errors import InputError

pytestmark = pytest.mark.timeout(30)

RED = ImageRef("a" * 64, "/pictures/red.png", "PNG", 640, 480)
BLUE = ImageRef("b" * 64, "/pictures/blue.jpg", "JPEG", 1024, 768)


def full_conversation() -> Conversation:
    c = Conversation()
    c.set_system("Answer briefly.")
    c.add_user("What colour is the shape?", [RED])
    c.add_assistant(
        "The shape is red.",
        model="demo",
        params=GenerationParams(max_new_tokens=64, temperature=0.7, top_p=0.9, seed=3),
        tokens=6,
        timings=Timings(first_token_s=0.05, total_s=0.2, tokens_per_s=40.0),
    )
    c.add_user("And this one, next to the first?", [BLUE, RED])
    c.add_assistant("The shape is", model="llava-hf/llava-1.5-7b-hf", stopped=True, tokens=3)
    c.add_user("Thanks, no picture this time.")
    return c


def test_round_trip_is_exact_through_json():
    c = full_conversation()
    data = json.loads(json.dumps(c.to_dict()))
    again = Conversation.from_dict(data)
    assert again == c
    assert again.to_dict() == c.to_dict()


def test_pictures_keep_their_turns_and_order():
    c = full_conversation()
    assert [ref.path for ref in c.images()] == ["/pictures/red.png", "/pictures/blue.jpg", "/pictures/red.png"]
    assert [ref.sha256[0] for ref in c.unique_images()] == ["a", "b"]
    users = [m for m in c.messages if m.role == "user"]
    assert [len(m.images) for m in users] == [1, 2, 0]


def test_assistant_messages_record_model_params_and_stop():
    c = full_conversation()
    first, second = [m for m in c.messages if m.role == "assistant"]
    assert first.model == "demo" and first.params.temperature == 0.7 and first.tokens == 6
    assert first.timings.tokens_per_s == 40.0 and not first.stopped
    assert second.stopped and second.model.startswith("llava-hf/")


def test_system_prompt_is_one_and_first():
    c = full_conversation()
    c.set_system("Be poetic.")
    assert c.system == "Be poetic."
    assert [m.role for m in c.messages].count("system") == 1 and c.messages[0].role == "system"
    c.set_system(None)
    assert c.system is None and c.messages[0].role == "user"


def test_only_user_messages_carry_pictures():
    with pytest.raises(ValueError):
        Message("assistant", "hi", images=[RED])
    with pytest.raises(ValueError):
        Message("robot", "hi")


@pytest.mark.parametrize(
    "params, words",
    [
        (GenerationParams(max_new_tokens=0), "max_new_tokens"),
        (GenerationParams(temperature=-1), "temperature"),
        (GenerationParams(top_p=0), "top_p"),
        (GenerationParams(seed=-5), "seed"),
    ],
)
def test_bad_generation_params_are_refused_with_one_line(params, words):
    with pytest.raises(InputError) as caught:
        params.validate()
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_why_an_answer_ended_is_kept_and_older_answers_still_load():
    c = Conversation()
    c.add_user("Describe it.")
    c.add_assistant("A red circle on", model="demo", tokens=512, finish_reason="length")
    again = Conversation.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again.messages[1].finish_reason == "length"
    assert how_it_ended(again.messages[1]) == "cut at 512 tokens"
    # Written before the finish reason was recorded: a stopped answer reads as stopped, others as unknown.
    old = {"messages": [
        {"role": "user", "text": "q", "created": 1.0},
        {"role": "assistant", "text": "The sha", "created": 2.0, "model": "demo", "stopped": True, "tokens": 2},
        {"role": "assistant", "text": "Done.", "created": 3.0, "model": "demo", "stopped": False, "tokens": 2},
    ]}
    stopped, finished = Conversation.from_dict(old).messages[1:]
    assert stopped.finish_reason == "stopped" and how_it_ended(stopped) == "stopped"
    assert finished.finish_reason is None and how_it_ended(finished) is None

