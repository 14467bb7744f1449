"""MiniCPM-V 2.6 / MiniCPM-o 2.6 natively, proven against the authors' own code (both models' chat()).

tests/reference/minicpm/figures.json was recorded by run_reference.py: the authors' published
MiniCPM-V 2.6 code (transformers 4.44.2, trust_remote_code) calling its ``chat()`` greedily on a
tiny checkpoint. The same checkpoint is rebuilt here from its recipe (tiny.py) and loaded with
vlchat's native family, which must build the same prompt ids, give the same first-step logits and
the same greedy tokens, turn after turn. The checkpoint's non-weight files are the published ones
(tests/data/minicpm, sources in its README): the real Qwen2 vocabulary with MiniCPM-V 2.6's added
tokens at their published ids, so the prompt ids are those the real checkpoint gets.
figures_o.json is the same for the authors' MiniCPM-o 2.6 code (run_reference_o.py) on a tiny -o
checkpoint built from MiniCPM-o's own config and tokenizer files.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.reference.minicpm import tiny
from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.core.images import load_image

pytestmark = pytest.mark.timeout(120)

FIGURES = json.loads((Path(tiny.__file__).parent / "figures.json").read_text(encoding="utf-8"))
LOGIT_IDS = FIGURES["logit_ids"]  # every 101st id of the real vocabulary and all its special ids
# The same conversations through the authors' MiniCPM-o 2.6 chat() (run_reference_o.py)
FIGURES_O = json.loads((Path(tiny.__file__).parent / "figures_o.json").read_text(encoding="utf-8"))
GREEDY = GenerationParams(max_new_tokens=tiny.MAX_NEW_TOKENS)


def poison_code(folder: Path, names: tuple[str, ...]) -> Path:
    """Any Python file in the folder (the published checkpoints ship several) must never be imported."""
    for name in names:
        (folder / name).write_text(
            f"import pathlib\npathlib.Path({str(folder / 'IMPORTED')!r}).write_text({name!r})\n"
            f"raise RuntimeError('the checkpoint code {name} was imported')\n",
            encoding="utf-8",
        )
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tiny.build(tmp_path_factory.mktemp("minicpm") / "MiniCPM-V-2_6-tiny")
    return poison_code(folder, ("modeling_minicpmv.py", "configuration_minicpm.py", "processing_minicpmv.py",
                                "image_processing_minicpmv.py", "tokenization_minicpmv_fast.py"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    from vlchat.engines.minicpm import MiniCPMEngine

    engine = MiniCPMEngine(str(checkpoint), quant="none", device="cpu", dtype="float32")
    engine.load()
    yield engine
    engine.unload()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("minicpm-pictures")
    loaded = {}
    for name, image in tiny.pictures().items():
        path = folder / f"{name}.png"
        image.save(path)
        loaded[name] = load_image(path)
    return loaded


def conversation_of(name: str, pictures, upto: int, figures: dict = FIGURES) -> Conversation:
    """The recorded conversation up to its ``upto``-th user turn, with the authors' answers before it."""
    conversation = Conversation()
    calls = figures["conversations"][name]
    for i, (picture, text) in enumerate(tiny.CONVERSATIONS[name][: upto + 1]):
        conversation.add_user(text, [pictures[picture].ref] if picture else [])
        if i < upto:
            conversation.add_assistant(calls[i]["answer"], model="reference")
    return conversation


CASES = [(name, turn) for name, calls in FIGURES["conversations"].items() for turn in range(len(calls))]


@pytest.mark.parametrize(("name", "turn"), CASES, ids=[f"{n}-turn{t + 1}" for n, t in CASES])
def test_prompt_ids_logits_and_greedy_tokens_match_the_authors_code(engine, pictures, name, turn):
    import torch

    recorded = FIGURES["conversations"][name][turn]
    inputs = engine.prepare(conversation_of(name, pictures, turn))
    assert inputs["input_ids"][0].tolist() == recorded["input_ids"]
    assert inputs["tgt_sizes"].tolist()[-len(recorded["tgt_sizes"]):] == recorded["tgt_sizes"]
    with torch.inference_mode():
        logits = engine.model(**inputs).logits[0, -1]
    torch.testing.assert_close(logits[LOGIT_IDS], torch.tensor(recorded["first_logits"]), atol=2e-4, rtol=1e-4)
    assert logits.topk(10).indices.tolist() == recorded["top_ids"]

    kwargs = engine.generation_kwargs(inputs, GREEDY)
    with torch.inference_mode():
        out = engine.model.generate(**kwargs)
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == recorded["generated"]


def test_the_pictures_reach_the_logits(engine, pictures):
    """Without the vision features the first step's logits differ: the comparison above sees the tower."""
    import torch

    recorded = FIGURES["conversations"]["sliced"][0]
    inputs = engine.prepare(conversation_of("sliced", pictures, 0))
    with torch.inference_mode():
        blind = engine.model(input_ids=inputs["input_ids"]).logits[0, -1]
    assert (blind[LOGIT_IDS] - torch.tensor(recorded["first_logits"])).abs().max() > 1e-2


def test_a_sliced_picture_has_the_authors_slice_layout(engine, pictures):
    processor = engine.processor
    blue = pictures["blue"].image
    grid = processor.grid(blue.size)
    assert grid == [3, 2]  # 1300x900: six slices in two rows
    text = processor.placeholder(blue.size, 0)
    assert text.startswith("<image_id>0</image_id><image>") and text.count("<slice>") == 6
    assert text.count("\n") == 1 and text.count("<unk>") == 64 * 7


def test_the_written_tokenizer_is_qwen2s_own_from_the_published_vocabulary(checkpoint):
    """tokenizer.json (not stored: 7 MB) is written from vocab.json and merges.txt; transformers'
    own Qwen2 tokenizer built from those two files alone must be the same BPE and encode alike."""
    import shutil

    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

    bare = checkpoint.parent / "vocab-and-merges-only"
    bare.mkdir(exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(checkpoint / name, bare / name)
    qwen2 = json.loads(Qwen2Tokenizer.from_pretrained(str(bare)).backend_tokenizer.to_str())
    ours = json.loads(PreTrainedTokenizerFast.from_pretrained(str(checkpoint)).backend_tokenizer.to_str())
    for part in ("normalizer", "pre_tokenizer", "decoder", "model"):
        assert ours[part] == qwen2[part], part
    assert len(ours["model"]["vocab"]) == 151643 and len(ours["model"]["merges"]) == 151387


def test_the_prompt_uses_the_published_token_ids(engine):
    """MiniCPM-V 2.6's added_tokens.json puts <image> at 151646 ... </image_id> at 151659 and its
    tokenizer_config.json marks Qwen2's own <unk> (128244) special; a sliced picture's prompt carries them."""
    ids = FIGURES["conversations"]["sliced"][0]["input_ids"]
    published = {"<|im_start|>": 151644, "<|im_end|>": 151645, "<image>": 151646, "</image>": 151647,
                 "<slice>": 151656, "</slice>": 151657, "<image_id>": 151658, "</image_id>": 151659, "<unk>": 128244}
    for token, token_id in published.items():
        assert engine.processor.token_id(token) == token_id
        assert token_id in ids
    assert ids.count(128244) == 64 * 7 and ids.count(151656) == 6


def test_streaming_answers_as_greedy_generate_and_counts_the_context(engine, pictures):
    conversation = conversation_of("one_turn", pictures, 0)
    stream = engine.stream(conversation, GREEDY)
    text = "".join(stream)
    recorded = FIGURES["conversations"]["one_turn"][0]
    expected = engine.tokenizer.decode(recorded["generated"], skip_special_tokens=True).strip()
    assert text.strip() == expected.replace("\ufffd", "").strip() or text.strip() == expected
    assert stream.stats.tokens == len(recorded["generated"])
    total, picture_tokens = engine.count_context(conversation)
    assert total == len(recorded["input_ids"])
    # <image_id>0</image_id> <image> 64 x <unk> </image>: the thumbnail of a picture that needs no slicing
    assert picture_tokens == 3 + 1 + 64 + 1
    info = engine.describe()
    assert info.family == "minicpm-2.6" and info.context_length == 32768


def test_cache_reuse_gives_the_same_greedy_tokens_as_a_fresh_prompt(checkpoint, engine, pictures):
    from vlchat.engines.minicpm import MiniCPMEngine

    fresh = MiniCPMEngine(str(checkpoint), quant="none", device="cpu", dtype="float32", kv_cache_reuse=False)
    fresh.load()
    try:
        reuse_conv, fresh_conv = Conversation(), Conversation()
        turns = [("red", "What colour is the shape?"), (None, "Say it again."), ("green", "And this one?")]
        for i, (picture, text) in enumerate(turns):
            refs = [pictures[picture].ref] if picture else []
            reuse_conv.add_user(text, refs)
            fresh_conv.add_user(text, refs)
            a = engine.stream(reuse_conv, GREEDY)
            a_text = "".join(a)
            b = fresh.stream(fresh_conv, GREEDY)
            b_text = "".join(b)
            assert a_text == b_text
            assert b.stats.cached_tokens == 0
            if i:
                # the earlier turns (and the first picture) come from the cache, not the model
                assert a.stats.cached_tokens > 60, a.stats.cached_tokens
            reuse_conv.add_assistant(a_text, model="tiny")
            fresh_conv.add_assistant(b_text, model="tiny")
    finally:
        fresh.unload()


def test_cancel_stops_within_a_step(engine, pictures):
    conversation = conversation_of("one_turn", pictures, 0)
    cancel = threading.Event()
    stream = engine.stream(conversation, GenerationParams(max_new_tokens=400), cancel)
    for _piece in stream:
        cancel.set()
    assert stream.stats.stopped
    assert stream.stats.tokens <= 4, stream.stats.tokens


def test_batched_captions_equal_one_at_a_time(engine, pictures):
    from vlchat.engines.batch import can_batch, caption_one_by_one, generate_batch, prepare_batch

    assert can_batch(engine)
    names = ["red", "blue", "green"]
    batch = prepare_batch(engine, [pictures[n].image for n in names], ["Describe the picture."] * 3)
    assert batch.inputs["attention_mask"][:, -1].all() and not batch.inputs["attention_mask"][:, 0].all()
    batched = generate_batch(engine, batch, GREEDY)
    alone = caption_one_by_one(engine, [pictures[n].ref for n in names], "Describe the picture.", GREEDY)
    assert [c.text for c in batched] == [c.text for c in alone]


def test_vlchat_ask_answers_natively_without_running_the_folders_code(checkpoint, pictures, run_vlchat):
    recorded = FIGURES["conversations"]["one_turn"][0]
    from vlchat.core.text import clean

    question = ("ask", "--model", checkpoint, "--max-new-tokens", tiny.MAX_NEW_TOKENS, pictures["red"].ref.path,
                "What colour is the shape?")
    result = run_vlchat(*question, "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["tokens"] == len(recorded["generated"])
    # the authors' greedy tokens, as vlchat shows any answer: special tokens left out, control characters too
    expected = clean(engine_tokenizer(checkpoint).decode(recorded["generated"], skip_special_tokens=True)).strip()
    assert record["answer"] == expected
    assert not (checkpoint / "IMPORTED").exists()
    plain = run_vlchat(*question)
    assert plain.returncode == 0 and plain.stdout.strip() == expected, plain.stderr
    assert not (checkpoint / "IMPORTED").exists()


def engine_tokenizer(checkpoint):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(checkpoint))


@pytest.fixture(scope="module")
def engine_o(tmp_path_factory):
    """MiniCPM-o 2.6's own files (config with audio and speech parts, its tokenizer) and, in its
    weights, audio and speech tensors that the native family must leave out."""
    import torch

    from vlchat.engines.minicpm import MiniCPMEngine

    extra = {"apm.layers.0.fc1.weight": torch.zeros(4, 4), "tts.emb_text.weight": torch.zeros(4, 4),
             "audio_projection_layer.linear1.weight": torch.zeros(4, 4)}
    folder = tiny.build(tmp_path_factory.mktemp("minicpm-o") / "MiniCPM-o-2_6-tiny", variant="o", extra_tensors=extra)
    poison_code(folder, ("modeling_minicpmo.py", "configuration_minicpm.py", "processing_minicpmo.py",
                         "image_processing_minicpmv.py", "tokenization_minicpmo_fast.py", "utils.py"))
    engine = MiniCPMEngine(str(folder), quant="none", device="cpu", dtype="float32")
    engine.load()
    yield engine
    engine.unload()
    assert not (folder / "IMPORTED").exists()


def test_minicpm_o_goes_to_the_native_family_and_its_audio_parts_are_skipped(engine_o):
    from vlchat.engines import engine_class
    from vlchat.engines.minicpm import MiniCPMEngine

    assert engine_class(engine_o.spec) is MiniCPMEngine
    assert not any(name.startswith(("apm.", "tts.", "audio_")) for name in engine_o.model.state_dict())
    assert engine_o.processor.token_id("<image>") == 151665 and engine_o.processor.token_id("<|tts_eos|>") == 151692


O_CASES = [(name, turn) for name, calls in FIGURES_O["conversations"].items() for turn in range(len(calls))]


@pytest.mark.parametrize(("name", "turn"), O_CASES, ids=[f"{n}-turn{t + 1}" for n, t in O_CASES])
def test_minicpm_o_prompt_ids_logits_and_greedy_tokens_match_the_authors_chat(engine_o, pictures, name, turn):
    """The authors' MiniCPM-o 2.6 chat() (init_tts=False, greedy) on the tiny -o checkpoint."""
    import torch

    recorded = FIGURES_O["conversations"][name][turn]
    assert recorded["attention_mask_zeros"] == 0
    inputs = engine_o.prepare(conversation_of(name, pictures, turn, FIGURES_O))
    assert inputs["input_ids"][0].tolist() == recorded["input_ids"]
    assert inputs["tgt_sizes"].tolist()[-len(recorded["tgt_sizes"]):] == recorded["tgt_sizes"]
    with torch.inference_mode():
        logits = engine_o.model(**inputs).logits[0, -1]
    torch.testing.assert_close(logits[FIGURES_O["logit_ids"]], torch.tensor(recorded["first_logits"]), atol=2e-4, rtol=1e-4)
    assert logits.topk(10).indices.tolist() == recorded["top_ids"]

    kwargs = engine_o.generation_kwargs(inputs, GREEDY)
    with torch.inference_mode():
        out = engine_o.model.generate(**kwargs)
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == recorded["generated"]


def test_registry_names_use_the_native_family():
    from vlchat.engines import engine_class
    from vlchat.engines.minicpm import MiniCPMEngine
    from vlchat.engines.registry import resolve

    for name in ("minicpm-o-2.6", "minicpm-v-2.6"):
        spec = resolve(name)
        assert spec.family == "minicpm-2.6" and not spec.remote_code
        assert engine_class(spec) is MiniCPMEngine
    assert resolve("minicpm-v-2.6").source == "openbmb/MiniCPM-V-2_6"


@pytest.mark.parametrize(("quant", "label", "layer"), [("4bit", "nf4 4-bit", "Linear4bit"), ("8bit", "int8", "Linear8bitLt")])
def test_quantized_loads_and_answers(checkpoint, pictures, quant, label, layer):
    pytest.importorskip("bitsandbytes")  # it runs on CPU here, as the demo model's 4-bit test shows
    from vlchat.engines.minicpm import MiniCPMEngine

    engine = MiniCPMEngine(str(checkpoint), quant=quant, device="cpu", dtype="float32")
    engine.load()
    try:
        assert engine.describe().quantization == label
        assert type(engine.model.llm.model.layers[0].mlp.up_proj).__name__ == layer
        assert type(engine.model.vpm.encoder.layers[0].mlp.fc1).__name__ == "Linear"  # vision stays exact
        stream = engine.stream(conversation_of("one_turn", pictures, 0), GREEDY)
        "".join(stream)
        assert stream.stats.tokens > 0
    finally:
        engine.unload()


def test_a_folder_without_its_tokenizer_is_one_clear_line(tmp_path, pictures, run_vlchat):
    folder = tiny.build(tmp_path / "MiniCPM-V-2_6-broken")
    (folder / "tokenizer.json").unlink()
    result = run_vlchat("ask", "--model", folder, pictures["red"].ref.path, "What colour is the shape?")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("vlchat: error:")]
    assert len(lines) == 1 and "tokenizer.json" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
