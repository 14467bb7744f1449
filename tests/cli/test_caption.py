"""`vlchat caption` as a user runs it, on folders of synthetic pictures with the demo model.

Every run is the installed command in a subprocess; batched generation is also checked in process
against the engine's own one-at-a-time answers, with prompts of different lengths so the left
padding and the attention mask matter.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import vlchat_command
from vlchat.demo.shapes import PLURALS, Scene, draw_scene

pytestmark = pytest.mark.timeout(180)

SCENES = [
    Scene("circle", "red", "blue", 1),
    Scene("square", "green", "white", 2),
    Scene("triangle", "yellow", "black", 1),
    Scene("star", "purple", "orange", 3),
    Scene("cross", "blue", "yellow", 1),
]
FAST = ("--max-new-tokens", "16", "--device", "cpu", "--quant", "none")


def draw(folder: Path, scenes=SCENES, size=128) -> dict[str, Scene]:
    """The scenes as PNGs in ``folder``: {path as the command records it: scene}."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for i, scene in enumerate(scenes):
        path = folder / f"{i:03d}-{scene.colour}-{scene.shape}.png"
        draw_scene(scene, size=size, rng=random.Random(i)).save(path)
        made[str(path)] = scene
    return made


def records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def names_the_scene(caption: str, scene: Scene) -> bool:
    words = caption.lower()
    shape = PLURALS[scene.shape] if scene.count > 1 else scene.shape
    return scene.colour in words and shape in words and scene.background in words


def one_line_per_problem(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "\x1b" not in stderr


# -- captions, bad pictures, what is found ----------------------------------------------------------
def test_a_folder_is_captioned_and_bad_pictures_are_recorded(tmp_path, run_vlchat):
    folder = tmp_path / "pics"
    made = draw(folder, SCENES[:4])
    # found by content: no extension, and a wrong one
    no_ext = folder / "scan"
    draw_scene(SCENES[4], size=128, rng=random.Random(7)).save(no_ext, format="PNG")
    made[str(no_ext)] = SCENES[4]
    broken = folder / "broken\x1b[31m.jpg"  # claims to be a picture, is not; its name holds an escape
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not the rest of a JPEG")
    (folder / "notes.txt").write_text("not a picture, and not claiming to be one\n")
    (folder / "000-red-circle.json").write_text("{}")
    draw(folder / "sub", [Scene("circle", "white", "black", 1)])  # not looked at without --recursive
    out = tmp_path / "captions.jsonl"

    result = run_vlchat("caption", folder, "-o", out, "--batch-size", "4", *FAST)

    assert result.returncode == 0, result.stderr
    one_line_per_problem(result.stderr)
    rows = records(out)
    assert sorted(r["path"] for r in rows) == sorted([*made, str(broken)])
    for row in rows:
        if row["path"] == str(broken):
            continue
        scene = made[row["path"]]
        assert names_the_scene(row["caption"], scene), (row["caption"], scene)
        assert row["sha256"] == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()
        assert row["model"] == "demo" and row["prompt"] == "Describe the picture in one sentence."
        assert row["tokens"] > 3 and row["seconds"] > 0 and "error" not in row
    bad = next(r for r in rows if r["path"] == str(broken))
    assert "cut short or corrupt" in bad["error"] and "caption" not in bad
    problem_lines = [line for line in result.stderr.splitlines() if "corrupt" in line]
    assert len(problem_lines) == 1 and "broken[31m.jpg" in problem_lines[0]
    assert "5 captioned, 1 failed" in result.stderr.splitlines()[-1]

    # again: nothing left to do, nothing written twice (the bad picture is not retried unasked)
    again = run_vlchat("caption", folder, "-o", out, *FAST)
    assert again.returncode == 0, again.stderr
    assert records(out) == rows
    assert "0 captioned, 5 already done, 1 failed in an earlier run (--retry-errors tries them again)" in again.stderr

    # --recursive finds the sub-folder's picture and captions only that; a copy of a captioned
    # picture under a new name gets its own record, with the caption it already has
    first = next(r for r in rows if r["path"].endswith("000-red-circle.png"))
    shutil.copy(first["path"], folder / "zz-copy.png")
    deeper = run_vlchat("caption", folder, "-o", out, "--recursive", *FAST)
    assert deeper.returncode == 0, deeper.stderr
    new = {r["path"]: r for r in records(out)[len(rows):]}
    sub = str(folder / "sub" / "000-white-circle.png")
    assert sorted(new) == sorted([sub, str(folder / "zz-copy.png")])
    assert names_the_scene(new[sub]["caption"], Scene("circle", "white", "black", 1))
    assert new[str(folder / "zz-copy.png")]["caption"] == first["caption"]
    assert "1 captioned, 6 already done, 1 failed in an earlier run" in deeper.stderr


def test_batched_captions_equal_one_at_a_time_captions(tmp_path, run_vlchat):
    folder = tmp_path / "pics"
    made = draw(folder, SCENES + [Scene("star", "white", "green", 2), Scene("square", "orange", "purple", 1)])
    one, batched = tmp_path / "one.jsonl", tmp_path / "batched.jsonl"
    assert run_vlchat("caption", folder, "-o", one, "--batch-size", "1", *FAST).returncode == 0
    result = run_vlchat("caption", folder, "-o", batched, "--batch-size", "4", *FAST)
    assert result.returncode == 0, result.stderr
    assert "batches of 4" in result.stderr
    by_path = lambda rows: {r["path"]: r["caption"] for r in rows}  # noqa: E731
    assert by_path(records(batched)) == by_path(records(one))
    assert len(by_path(records(one))) == len(made)


def test_a_batch_with_prompts_of_different_lengths_answers_as_one_at_a_time(demo_engine, picture):
    """Left padding and the attention mask: each row of a padded batch answers as it would alone."""
    from vlchat.core.conversation import Conversation, GenerationParams
    from vlchat.engines.batch import can_batch, generate_batch, prepare_batch

    assert can_batch(demo_engine)
    pictures = [picture("circle", "red", "blue"), picture("star", "yellow", "black", 3), picture("cross", "green", "white", 2)]
    prompts = ["Describe the picture.", "How many shapes are there?", "What colour is the background?"]
    params = GenerationParams(max_new_tokens=16)
    alone = []
    for loaded, prompt in zip(pictures, prompts):
        conversation = Conversation()
        conversation.add_user(prompt, [loaded.ref])
        alone.append("".join(demo_engine.stream(conversation, params)).strip())
    side = demo_engine.tokenizer.padding_side

    batch = prepare_batch(demo_engine, [p.image for p in pictures], prompts)

    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    assert (mask[:, 0] == 0).any(), "the prompts should differ in length, so some rows are padded"
    assert (mask[:, -1] == 1).all(), "padding goes on the left: every row's prompt ends in the last column"
    assert (ids[mask == 0] == demo_engine.tokenizer.pad_token_id).all()
    assert demo_engine.tokenizer.padding_side == side  # restored for the chat and `ask`
    captions = generate_batch(demo_engine, batch, params)
    assert [c.text for c in captions] == alone
    assert alone == ["A red circle on a blue background.", "There are three shapes.", "The background is white."]
    assert all(c.tokens >= 4 for c in captions)


# -- stopping and going on -------------------------------------------------------------------------
def test_ctrl_c_leaves_a_valid_file_and_the_next_run_goes_on_without_duplicates(tmp_path, run_vlchat):
    rng = random.Random(3)
    scenes = [Scene(rng.choice(list(PLURALS)), c, b, 1) for c, b in [("red", "blue"), ("green", "white"), ("yellow", "black"), ("purple", "orange")] * 20]
    folder = tmp_path / "pics"
    made = draw(folder, scenes, size=96)
    out = tmp_path / "captions.jsonl"
    process = subprocess.Popen(
        [*vlchat_command(), "caption", str(folder), "-o", str(out), "--batch-size", "1", *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 3:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    one_line_per_problem(stderr)
    assert "stopped" in stderr and "run the same command again" in stderr
    first = records(out)  # every line whole
    assert 3 <= len(first) < len(made)

    # a run killed harder leaves half a line: the next run drops it and captions that picture again
    with open(out, "a") as handle:
        handle.write('{"path": "' + first[0]["path"][:10])
    result = run_vlchat("caption", folder, "-o", out, "--batch-size", "8", *FAST)
    assert result.returncode == 0, result.stderr
    rows = records(out)
    assert rows[: len(first)] == first
    assert sorted(r["path"] for r in rows) == sorted(made)  # each picture exactly once
    assert f"{len(first)} already done" in result.stderr
    for row in rows:  # the right words are checked above on chosen pictures; here, that each has its caption
        assert made[row["path"]].colour in row["caption"] and "background" in row["caption"], row


# -- the other formats ----------------------------------------------------------------------------
def test_json_array_is_whole_after_each_run_and_resumes(tmp_path, run_vlchat):
    folder = tmp_path / "pics"
    made = draw(folder, SCENES[:4])
    out = tmp_path / "captions.json"
    first = run_vlchat("caption", folder, "-o", out, "--limit", "2", "--preset", "detailed", *FAST)
    assert first.returncode == 0, first.stderr
    data = json.loads(out.read_text())
    assert isinstance(data, list) and len(data) == 2
    second = run_vlchat("caption", folder, "-o", out, "--preset", "detailed", *FAST)
    assert second.returncode == 0, second.stderr
    data = json.loads(out.read_text())
    assert sorted(r["path"] for r in data) == sorted(made)
    for row in data:
        assert row["prompt"] == "Describe the picture in detail."
        assert names_the_scene(row["caption"], made[row["path"]])


def test_csv_has_a_header_and_a_row_per_picture(tmp_path, run_vlchat):
    folder = tmp_path / "pics"
    made = draw(folder, SCENES[:3])
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "captions.csv"
    result = run_vlchat("caption", folder, "-o", out, "--preset", "tags", *FAST)
    assert result.returncode == 0, result.stderr
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "sha256", "caption", "model", "prompt", "tokens", "seconds", "error"]
    assert len(rows) == 4
    for row in rows:
        if row["path"].endswith("empty.png"):
            assert "0 bytes" in row["error"] and row["caption"] == ""
            continue
        assert names_the_scene(row["caption"], made[row["path"]])
        assert row["prompt"] == "What is in the picture?" and int(row["tokens"]) > 3 and row["error"] == ""


def test_txt_sidecars_beside_the_pictures_never_replace_a_txt_vlchat_did_not_write(tmp_path, run_vlchat):
    folder = tmp_path / "pics"
    made = draw(folder, SCENES[:3])
    paths = sorted(made)
    theirs = Path(paths[0]).with_suffix(".txt")
    theirs.write_text("a caption somebody wrote by hand\n")

    result = run_vlchat("caption", folder, "--format", "txt-sidecar", *FAST)
    assert result.returncode == 0, result.stderr
    assert theirs.read_text() == "a caption somebody wrote by hand\n"
    assert "did not write it" in result.stderr and "--overwrite" in result.stderr
    for path in paths[1:]:
        text = Path(path).with_suffix(".txt").read_text()
        assert text.endswith("\n") and text.count("\n") == 1
        assert names_the_scene(text, made[path])
    ours = Path(paths[1]).with_suffix(".txt")
    before = ours.stat().st_mtime_ns

    again = run_vlchat("caption", folder, "--format", "txt-sidecar", *FAST)
    assert again.returncode == 0 and "2 already done" in again.stderr, again.stderr
    assert ours.stat().st_mtime_ns == before

    replaced = run_vlchat("caption", folder, "--format", "txt-sidecar", "--overwrite", *FAST)
    assert replaced.returncode == 0, replaced.stderr
    assert names_the_scene(theirs.read_text(), made[paths[0]])
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".txt") == sorted(Path(p).with_suffix(".txt").name for p in paths)


# -- a server ----------------------------------------------------------------------------------------
def test_captions_from_a_server_with_concurrent_requests(tmp_path, run_vlchat, openai_server):
    folder = tmp_path / "pics"
    made = draw(folder, SCENES)
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    out = tmp_path / "captions.jsonl"
    result = run_vlchat("caption", folder, "-o", out, "--endpoint", openai_server.url, "--model", "demo",
                        "--concurrency", "3", "--max-new-tokens", "16")
    assert result.returncode == 0, result.stderr
    one_line_per_problem(result.stderr)
    assert "3 requests at a time" in result.stderr
    rows = records(out)
    assert sorted(r["path"] for r in rows) == sorted([*made, str(folder / "cut.png")])
    for row in rows:
        if row["path"].endswith("cut.png"):
            assert "cut short or corrupt" in row["error"]
        else:
            assert names_the_scene(row["caption"], made[row["path"]]) and row["model"] == "demo"


# -- bad input -------------------------------------------------------------------------------------------
def test_an_output_file_that_is_not_ours_is_left_alone(tmp_path, run_vlchat):
    folder = tmp_path / "pics"
    draw(folder, SCENES[:1])
    out = tmp_path / "notes.jsonl"
    out.write_text("my own notes\nsecond line\n")
    result = run_vlchat("caption", folder, "-o", out)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlchat: error: ") and "not a vlchat caption file" in lines[0]
    assert out.read_text() == "my own notes\nsecond line\n"

    missing = run_vlchat("caption", tmp_path / "nowhere", "-o", tmp_path / "c.jsonl")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    no_output = run_vlchat("caption", folder)
    assert no_output.returncode == 2 and "-o captions.jsonl" in no_output.stderr


def test_caption_help_is_quick_and_names_the_options():
    code = (
        "import sys, contextlib, io\n"
        "import vlchat.cli as cli\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try: cli.main(['caption', '--help'])\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'PIL') if m in sys.modules]\n"
        "print(heavy, '--batch-size' in out.getvalue(), 'txt-sidecar' in out.getvalue())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[] True True", result.stdout + result.stderr


# -- other families ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl"])
def test_padded_batches_of_other_families_answer_as_one_at_a_time(family, tiny_models, tmp_path):
    """Families whose pictures take a number of tokens that depends on the picture's size: a batch of
    differently shaped pictures is padded, and must still answer as each picture alone."""
    from vlchat.core.conversation import Conversation, GenerationParams
    from vlchat.core.images import load_image
    from vlchat.engines.batch import can_batch, generate_batch, prepare_batch
    from vlchat.engines.transformers import TransformersEngine

    engine = TransformersEngine(str(tiny_models[family]), quant="none", device="cpu", kv_cache_reuse=False)
    engine.load()
    try:
        assert can_batch(engine)
        pictures = []
        for i, size in enumerate([(64, 64), (96, 48), (40, 80)]):
            path = tmp_path / f"{i}.png"
            draw_scene(SCENES[i], size=96, rng=random.Random(i)).resize(size).save(path)
            pictures.append(load_image(path))
        params = GenerationParams(max_new_tokens=8)
        alone = []
        for loaded in pictures:
            conversation = Conversation()
            conversation.add_user("Describe the picture.", [loaded.ref])
            stream = engine.stream(conversation, params)
            alone.append(clean_text("".join(stream)))
        batch = prepare_batch(engine, [p.image for p in pictures], ["Describe the picture."] * 3)
        assert (batch.inputs["attention_mask"] == 0).any()
        assert [c.text for c in generate_batch(engine, batch, params)] == alone
    finally:
        engine.unload()


def clean_text(text: str) -> str:
    from vlchat.core.text import clean

    return clean(text).strip()


def test_a_model_that_cannot_batch_captions_one_at_a_time_and_says_so(tmp_path, run_vlchat, tiny_models):
    folder = tmp_path / "pics"
    made = draw(folder, SCENES[:2])
    out = tmp_path / "captions.jsonl"
    result = run_vlchat("caption", folder, "-o", out, "--model", tiny_models["blip-2"], "--batch-size", "4",
                        "--max-new-tokens", "4", "--device", "cpu", "--quant", "none")
    assert result.returncode == 0, result.stderr
    assert "captions one picture at a time" in result.stderr
    assert "one at a time: this model cannot batch" in result.stderr.splitlines()[-1]
    rows = records(out)
    assert sorted(r["path"] for r in rows) == sorted(made)
    assert all("error" not in r and isinstance(r["caption"], str) and r["tokens"] <= 4 for r in rows)


def test_out_of_memory_halves_the_batch_and_the_run_goes_on(demo_engine, tmp_path, monkeypatch):
    """A GPU that runs out of memory at 8 pictures at once. A CPU never does, so the model's
    generate is wrapped to fail as CUDA does above 2 rows (fault injection, the model is real)."""
    import argparse
    import io

    import torch

    from vlchat.commands.caption import caption_all
    from vlchat.config import Settings
    from vlchat.core.captions import JsonLinesStore
    from vlchat.core.conversation import GenerationParams
    from vlchat.core.pictures import find_pictures

    made = draw(tmp_path / "pics", SCENES)
    real_generate = demo_engine.model.generate
    rows_seen = []

    def generate_that_runs_out_of_memory(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        rows_seen.append(rows)
        if rows > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(demo_engine.model, "generate", generate_that_runs_out_of_memory)
    threads = torch.get_num_threads()
    out, err = tmp_path / "captions.jsonl", io.StringIO()
    store = JsonLinesStore(out)
    try:
        code = caption_all(
            demo_engine, list(find_pictures([str(tmp_path / "pics")])), store,
            args=argparse.Namespace(prompt=None, preset=None, recursive=False, batch_size=8, retry_errors=False),
            settings=Settings(), params=GenerationParams(max_new_tokens=16), batch_size=8, concurrency=1,
            limit=None, err=err,
        )
    finally:
        store.close()
        torch.set_num_threads(threads)
    assert code == 0, err.getvalue()
    assert "out of memory with 5 pictures at once; going on with batches of 3" in err.getvalue()
    assert "going on with batches of 2" in err.getvalue()
    assert rows_seen[0] == 5 and max(rows_seen[rows_seen.index(2):]) <= 2
    rows = records(out)
    assert sorted(r["path"] for r in rows) == sorted(made)
    assert all(names_the_scene(r["caption"], made[r["path"]]) for r in rows)


def test_decoding_on_several_threads_hands_on_the_same_pictures_in_the_same_order(tmp_path):
    """The reader as it runs beside a GPU (several decoding threads) against one thread."""
    import threading

    from vlchat.commands.caption import Reader
    from vlchat.core.captions import JsonLinesStore
    from vlchat.core.pictures import find_pictures

    folder = tmp_path / "pics"
    made = sorted(draw(folder, SCENES + [Scene("star", "white", "green", 2), Scene("square", "orange", "purple", 1)]))
    shutil.copy(made[0], folder / "zz-same-bytes.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "captions.jsonl"
    done = {"path": made[0], "sha256": hashlib.sha256(Path(made[0]).read_bytes()).hexdigest(),
            "caption": "A red circle on a blue background.", "model": "demo", "prompt": "p"}
    out.write_text(json.dumps(done) + "\n")

    def read(workers: int) -> list[tuple[str, list[str]]]:
        store = JsonLinesStore(out)
        reader = Reader(list(find_pictures([str(folder)])), store, "demo", "p", group=3, retry_errors=False,
                        limit=None, stop=threading.Event(), workers=workers)
        reader.start()
        seen = []
        while True:
            kind, value = reader.out.get(timeout=30)
            if kind == "end":
                break
            items = value.items if kind == "work" else [value[0] if kind == "copy" else value]
            assert kind != "work" or all(i.picture is not None and i.sha256 == i.picture.ref.sha256 for i in items)
            seen.append((kind, [Path(i.found.path).name for i in items]))
        reader.join(timeout=10)
        store.close()
        assert reader.failure is None
        return seen

    one = read(1)
    assert one[0] == ("skip", [Path(made[0]).name])
    assert ("copy", ["zz-same-bytes.png"]) in one and ("error", ["broken.png"]) in one
    assert sum(len(names) for kind, names in one if kind == "work") == len(made) - 1
    assert read(3) == one
