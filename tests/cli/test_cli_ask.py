"""`vlchat ask` as a user runs it: answers on stdout, one clear line and the right exit code otherwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vlchat.demo import SAMPLES_DIR

pytestmark = pytest.mark.timeout(300)

RED_CIRCLE = SAMPLES_DIR / "red-circle.png"


def assert_one_clear_line(stderr: str, *words: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("vlchat: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_ask_streams_a_real_answer(run_vlchat):
    result = run_vlchat("ask", RED_CIRCLE, "What colour is the shape?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "The shape is red."
    assert "demo model" in result.stderr


def test_ask_about_two_pictures_answers_about_the_last(run_vlchat, picture):
    blue = picture("square", "blue", "yellow")
    result = run_vlchat("ask", blue.ref.path, "What shape is it?")
    assert result.returncode == 0, result.stderr
    assert "square" in result.stdout


def test_ask_json_record(run_vlchat):
    result = run_vlchat("ask", SAMPLES_DIR / "three-yellow-stars.png", "How many shapes are there?", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["answer"] == "There are three shapes."
    assert record["model"] == "demo" and record["model_label"] == "demo model"
    assert record["tokens"] > 0 and record["tokens_per_s"] > 0 and 0 < record["first_token_s"] <= record["total_s"]
    assert record["images"][0]["width"] == 384 and record["stopped"] is False


def test_ask_4bit(run_vlchat):
    result = run_vlchat("ask", SAMPLES_DIR / "green-triangle.png", "What shape is it?", "--quant", "4bit", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["answer"] == "It is a triangle." and record["quantization"] == "nf4 4-bit"


def test_ask_system_prompt_and_sampling_options(run_vlchat):
    result = run_vlchat(
        "ask", RED_CIRCLE, "What colour is the background?",
        "--system", "Answer briefly.", "--temperature", "0.3", "--top-p", "0.9", "--seed", "7",
        "--max-new-tokens", "20",
    )
    assert result.returncode == 0, result.stderr
    assert "blue" in result.stdout


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "import vlchat.cli as cli\n"
        "for argv in (['--help'], ['--version'], ['ask', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try: cli.main(argv)\n"
        "        except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'textual', 'PIL') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_version(run_vlchat):
    from vlchat import __version__

    result = run_vlchat("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"vlchat {__version__}"


# -- bad input: one line, exit 2 ------------------------------------------------------------------
def _truncated_png(tmp_path):
    data = RED_CIRCLE.read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_PICTURES = {
    "missing": (lambda tmp: tmp / "nowhere.jpg", ["nowhere.jpg"]),
    "folder": (lambda tmp: (tmp / "albums").mkdir() or tmp / "albums", ["albums", "folder"]),
    "not a picture": (lambda tmp: (tmp / "notes.txt").write_text("hello") and tmp / "notes.txt", ["notes.txt"]),
    "truncated": (_truncated_png, ["cut.png"]),
    "heic": (
        lambda tmp: (tmp / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
        and tmp / "photo.heic",
        ["photo.heic", "HEIC"],
    ),
    "svg": (
        lambda tmp: (tmp / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"></svg>') and tmp / "logo.svg",
        ["logo.svg", "SVG"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PICTURES))
def test_bad_picture_gives_one_line_and_exit_2(run_vlchat, tmp_path, case):
    make, words = BAD_PICTURES[case]
    path = make(tmp_path)
    started = time.perf_counter()
    result = run_vlchat("ask", path, "What colour is the shape?")
    assert result.returncode == 2, result.stderr
    assert_one_clear_line(result.stderr, *words)
    assert result.stdout == ""
    assert time.perf_counter() - started < 60  # refused before any model is loaded


@pytest.mark.parametrize(
    "args, words",
    [
        (["--temperature", "-1"], ["temperature"]),
        (["--top-p", "2"], ["top_p"]),
        (["--max-new-tokens", "0"], ["max_new_tokens"]),
        (["--max-new-tokens", "many"], ["--max-new-tokens"]),
        (["--quant", "3bit"], ["--quant"]),
        (["--device", "cuda"], ["cuda"]),
        (["--model", "no-such-model"], ["no-such-model"]),
        (["--model", "/nowhere/model"], ["/nowhere/model"]),
    ],
)
def test_bad_options_give_one_line_and_exit_2(run_vlchat, args, words):
    result = run_vlchat("ask", RED_CIRCLE, "What colour is the shape?", *args)
    assert result.returncode == 2, result.stderr
    assert_one_clear_line(result.stderr, *words)


def test_missing_question_is_named(run_vlchat):
    result = run_vlchat("ask", RED_CIRCLE)
    assert result.returncode == 2
    assert_one_clear_line(result.stderr, "no question", "red-circle.png")


def test_no_arguments_at_all(run_vlchat):
    result = run_vlchat("ask")
    assert result.returncode == 2
    assert_one_clear_line(result.stderr, "--help")


def test_file_name_with_control_characters_is_cleaned(run_vlchat, tmp_path):
    result = run_vlchat("ask", tmp_path / "evil\x1b]0;pwned\x07.png", "What colour?")
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert_one_clear_line(result.stderr, "evil")


def test_uncached_hub_model_offline_exits_1_naming_it(run_vlchat):
    result = run_vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--model", "llava-hf/llava-1.5-7b-hf")
    assert result.returncode == 1, result.stderr
    assert_one_clear_line(result.stderr, "llava-hf/llava-1.5-7b-hf", "hf download")


def test_ctrl_c_stops_at_once_with_130_and_no_traceback(endless_model, tmp_path):
    from tests.conftest import vlchat_command

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [*vlchat_command(), "ask", str(RED_CIRCLE), "Describe the picture.", "--model", str(endless_model),
         "--max-new-tokens", "3000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        first = process.stdout.read(8)  # the answer has started streaming
        assert first
        process.send_signal(signal.SIGINT)
        started = time.perf_counter()
        out, err = process.communicate(timeout=30)
        elapsed = time.perf_counter() - started
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert elapsed < 5
    assert b"Traceback" not in err and b"stopped" in err


def test_json_says_why_the_answer_ended(run_vlchat, endless_model, tmp_path):
    finished = run_vlchat("ask", RED_CIRCLE, "What colour is the shape?", "--json")
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["finish_reason"] == "stop"

    cut = run_vlchat("ask", RED_CIRCLE, "Describe the picture.", "--model", endless_model, "--max-new-tokens", "5", "--json")
    assert cut.returncode == 0, cut.stderr
    record = json.loads(cut.stdout)
    assert record["finish_reason"] == "length" and record["tokens"] == 5 and record["stopped"] is False

    # A model whose context fills up before --max-new-tokens: cut too, and the note says why.
    import shutil

    small = tmp_path / "small-context"
    shutil.copytree(endless_model, small)
    config = json.loads((small / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 96
    (small / "config.json").write_text(json.dumps(config))
    full = run_vlchat("ask", RED_CIRCLE, "Describe the picture.", "--model", small, "--max-new-tokens", "500", "--json")
    assert full.returncode == 0, full.stderr
    record = json.loads(full.stdout)
    assert record["finish_reason"] == "length" and 0 < record["tokens"] < 96
    assert "context (96 tokens) is full" in record["notice"]
    plain = run_vlchat("ask", RED_CIRCLE, "Describe the picture.", "--model", small, "--max-new-tokens", "500")
    assert plain.returncode == 0 and "context (96 tokens) is full" in plain.stderr
