"""BLIP captions and answers exactly as its model card's call does.

The card (Salesforce/blip-image-captioning-base/-large, blip-vqa-base):

    inputs = processor(raw_image, text, return_tensors="pt")   # text left out for a plain caption
    out = model.generate(**inputs)
    print(processor.decode(out[0], skip_special_tokens=True))

Tiny random-weight models built from blip-image-captioning-base's real config.json and
preprocessor_config.json, the BLIP repositories' published tokenizer files and bert-base-uncased's
real vocabulary (tests/data/families/, SOURCES.md there); what vlchat prints must equal what that
call prints, word for word.
"""

from __future__ import annotations

import functools
import json
import random

import pytest

from vlchat.core.conversation import Conversation, GenerationParams
from tests.conftest import Scene, draw_scene
from tests.tiny_families import build_blip

pytestmark = pytest.mark.timeout(240)

TOKENS = 8


@pytest.fixture(scope="module")
def blip_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip")
    return {"caption": build_blip(root / "blip-caption"), "vqa": build_blip(root / "blip-vqa", vqa=True)}


@functools.cache
def card_model(folder):
    from transformers import AutoProcessor, BlipForConditionalGeneration, BlipForQuestionAnswering

    config = json.loads((folder / "config.json").read_text())
    cls = BlipForQuestionAnswering if "BlipForQuestionAnswering" in config["architectures"] else BlipForConditionalGeneration
    return AutoProcessor.from_pretrained(folder), cls.from_pretrained(folder).eval()


def card(folder, path, text=None) -> str:
    """The model card's call, on the same folder and picture."""
    from PIL import Image

    processor, model = card_model(folder)
    raw_image = Image.open(path).convert("RGB")
    inputs = processor(raw_image, text, return_tensors="pt") if text is not None else processor(raw_image, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=TOKENS)
    return processor.decode(out[0], skip_special_tokens=True)


def load(folder):
    from vlchat.config import Settings
    from vlchat.engines import make_engine

    engine = make_engine(Settings(model=str(folder), quant="none", device="cpu", dtype="float32"))
    engine.load()
    return engine


def answer(engine, text, ref):
    c = Conversation()
    c.add_user(text, [ref])
    stream = engine.stream(c, GenerationParams(max_new_tokens=TOKENS))
    return "".join(stream), stream.stats


def test_captions_are_the_model_cards_plain_and_continued(blip_folders, picture):
    shot = picture()
    engine = load(blip_folders["caption"])
    try:
        plain, stats = answer(engine, "", shot.ref)
        assert plain == card(blip_folders["caption"], shot.ref.path) and plain
        assert stats.notice is None and stats.tokens == TOKENS
        continued, _ = answer(engine, "a photography of", shot.ref)
        assert continued == card(blip_folders["caption"], shot.ref.path, "a photography of")
        assert continued.startswith("a photography of ") and continued != plain
        # a question: the model cannot answer it; it captions, and says what it can do
        text, stats = answer(engine, "What colour is the shape?", shot.ref)
        assert text == plain
        assert "writes captions and cannot answer questions" in stats.notice and "blip-vqa" in stats.notice
    finally:
        engine.unload()


def test_the_question_answering_checkpoint_answers_about_the_latest_picture(blip_folders, picture):
    first, latest = picture(), picture("square", "green", "white")
    engine = load(blip_folders["vqa"])
    try:
        c = Conversation()
        c.add_user("What colour is the shape?", [first.ref])
        c.add_assistant("red", model="blip-vqa")
        c.add_user("And what colour is this one?", [latest.ref])
        stream = engine.stream(c, GenerationParams(max_new_tokens=TOKENS))
        text = "".join(stream)
        assert text == card(blip_folders["vqa"], latest.ref.path, "And what colour is this one?") and text
        assert stream.stats.notice is None
    finally:
        engine.unload()


def test_ask_captions_with_an_empty_question_and_answers_with_a_vqa_folder(blip_folders, picture, run_vlchat):
    shot = picture()
    flags = ("--max-new-tokens", str(TOKENS), "--device", "cpu")
    result = run_vlchat("ask", "--model", blip_folders["caption"], *flags, shot.ref.path, "")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == card(blip_folders["caption"], shot.ref.path)
    result = run_vlchat("ask", "--model", blip_folders["vqa"], *flags, shot.ref.path, "Is there a circle?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == card(blip_folders["vqa"], shot.ref.path, "Is there a circle?")
    # an empty question to a model that is not a captioner is still a mistake, said in one line
    result = run_vlchat("ask", "--model", blip_folders["vqa"], *flags, shot.ref.path, "")
    assert result.returncode != 0 and "the question is empty" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_caption_command_batches_and_writes_the_cards_captions(blip_folders, tmp_path, run_vlchat):
    folder = tmp_path / "pics"
    folder.mkdir()
    scenes = [Scene("circle", "red", "blue", 1), Scene("square", "green", "white", 2), Scene("star", "yellow", "black", 1)]
    paths = []
    for i, scene in enumerate(scenes):
        path = folder / f"{i}.png"
        draw_scene(scene, size=128, rng=random.Random(i)).save(path)
        paths.append(str(path))
    out = tmp_path / "captions.jsonl"
    result = run_vlchat("caption", folder, "-o", out, "--model", blip_folders["caption"], "--batch-size", "3",
                        "--max-new-tokens", str(TOKENS), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "batches of 3" in result.stderr and "one at a time" not in result.stderr
    rows = {row["path"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert sorted(rows) == sorted(paths)
    for path in paths:
        assert rows[path]["caption"] == card(blip_folders["caption"], path), path
        assert rows[path]["prompt"] == "" and rows[path]["tokens"] == TOKENS


def test_registry_names_load_blip():
    from vlchat.engines import engine_class
    from vlchat.engines.blip import BlipEngine
    from vlchat.engines.registry import resolve

    for name, hub_id in [("blip-large", "Salesforce/blip-image-captioning-large"),
                         ("blip-base", "Salesforce/blip-image-captioning-base"),
                         ("blip-vqa", "Salesforce/blip-vqa-base")]:
        spec = resolve(name)
        assert spec.source == hub_id and spec.family == "blip"
        assert engine_class(spec) is BlipEngine


def test_in_the_app_a_question_to_a_captioner_says_what_it_can_do_and_shows_the_caption(blip_folders, picture):
    from tests.toolkit import ask, run_async, settings, transcript_text
    from vlchat.ui.app import make_app

    shot = picture()
    engine = load(blip_folders["caption"])
    expected = card(blip_folders["caption"], shot.ref.path)

    @run_async
    async def scenario():
        app = make_app(settings(model=str(blip_folders["caption"]), max_new_tokens=TOKENS), [shot.ref],
                       engine=engine, engine_loaded=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await ask(pilot, "What colour is the shape?")
            answers = [m for m in app.chat.conversation.messages if m.role == "assistant"]
            assert answers[-1].text == expected
            text = " ".join(transcript_text(app).split())
            assert expected in text
            assert "writes captions and cannot answer questions" in text

    try:
        scenario()
    finally:
        engine.unload()
