"""The demo model really answers: accuracy per question type on fresh pictures, through the real engine."""

from __future__ import annotations

import random

import pytest

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.core.images import load_image
from vlchat.demo.shapes import QUESTION_TYPES, QUESTIONS, answer, draw_scene, random_scene

pytestmark = pytest.mark.timeout(900)

PER_TYPE = 40
GREEDY = GenerationParams(max_new_tokens=24)


def accuracy(engine, tmp_path, seed: int, follow_up: bool = False) -> dict[str, float]:
    """Exact-answer accuracy per question type, on pictures the model has never seen."""
    rng = random.Random(seed)
    scores = {}
    for kind in QUESTION_TYPES:
        right = 0
        for i in range(PER_TYPE):
            conversation = Conversation()
            if follow_up:  # a first turn about another picture, then the question about a new one
                first = random_scene(rng)
                path = tmp_path / f"{kind}-{i}-first.png"
                draw_scene(first, size=rng.choice((96, 256, 512)), rng=rng).save(path)
                first_kind = rng.choice(QUESTION_TYPES)
                conversation.add_user(rng.choice(QUESTIONS[first_kind]), [load_image(path).ref])
                conversation.add_assistant(answer(first, first_kind), model=engine.name)
            scene = random_scene(rng)
            path = tmp_path / f"{kind}-{i}.png"
            draw_scene(scene, size=rng.choice((96, 256, 512)), rng=rng).save(path)
            conversation.add_user(rng.choice(QUESTIONS[kind]), [load_image(path).ref])
            reply = "".join(engine.stream(conversation, GREEDY)).strip()
            right += reply == answer(scene, kind)
        scores[kind] = right / PER_TYPE
    return scores


def test_full_precision_accuracy_is_at_least_95_percent_per_question_type(demo_engine, tmp_path):
    scores = accuracy(demo_engine, tmp_path, seed=20261121)
    assert all(score >= 0.95 for score in scores.values()), scores


def test_follow_up_about_a_new_picture_is_at_least_95_percent(demo_engine, tmp_path):
    scores = accuracy(demo_engine, tmp_path, seed=777, follow_up=True)
    assert all(score >= 0.95 for score in scores.values()), scores


def test_4bit_accuracy_is_at_least_90_percent_per_question_type(demo_engine_4bit, tmp_path):
    scores = accuracy(demo_engine_4bit, tmp_path, seed=20261122)
    assert all(score >= 0.90 for score in scores.values()), scores
