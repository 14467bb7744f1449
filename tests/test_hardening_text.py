"""Issue 13, what reaches the terminal and what it costs: escape sequences, bidi and invisible
characters from session files, model answers and cache folders; long questions; broken chat
templates; huge answers; big pictures; and a few small crashes.

Each printer is given hostile text and what reaches stdout, stderr or the written file is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_models_cli import cache_model
from vlchat.core.sessions import SessionStore, store_root
from vlchat.core.text import clean
from vlchat.demo import MODEL_DIR, SAMPLES_DIR

pytestmark = pytest.mark.timeout(240)

RED_CIRCLE = SAMPLES_DIR / "red-circle.png"
# Everything that must never get through: escape sequences (a title change, a cleared screen),
# BEL, C1 CSI, the bidi controls, and the invisible characters.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e\u2066\u2067\u2068\u2069\u202a\u202b\u202c\u202d\u200e\u200f\u061c\u200b\u200d\ufeff"
FORBIDDEN = {c for c in HOSTILE if not " " <= c <= "~"}


def assert_clean(text: str) -> None:
    found = sorted({f"U+{ord(c):04X}" for c in text if c in FORBIDDEN})
    assert not found, f"{found} got through in {text!r}"


# -- the sanitiser ---------------------------------------------------------------------------------------------
def test_clean_takes_out_controls_bidi_and_invisible_characters():
    # The control characters go; the printable rest of a sequence stays, harmless, as a sign.
    assert clean(f"A{HOSTILE}B") == "A]0;pwned[2J31mB"
    assert clean("abc\u202edef\u2066g") == "abcdefg"
    assert clean("one\u2028two") == "one\ntwo"
    assert clean("x\U000e0041\U000e0042y") == "xy"  # tag characters smuggle text invisibly
    assert clean("tab\there\nnext", keep_newlines=False) == "tab here next"


def test_clean_keeps_emoji_sequences_and_the_joiners_scripts_need():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # 👨‍👩‍👧
    coder = "\U0001f469\u200d\U0001f4bb"  # 👩‍💻
    england = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    persian = "می\u200cخواهم"  # the non-joiner is part of the word's spelling
    for text in (family, coder, england, persian, "क्\u200dष"):
        assert clean(text) == text
    assert clean("pay\u200dpal") == "paypal"  # a joiner between Latin letters only hides something
    assert clean("\u200d" + coder) == coder
    # A streamed answer comes in pieces: a joiner at the end of one piece waits for the next emoji.
    assert clean(family[:2]) + clean(family[2:]) == family


@pytest.mark.parametrize("text", [HOSTILE, "plain", "a\u200d\u200d\U0001f469", "\U0001f468\u200b\u200d\U0001f469", "\x1b\x1b[2Jz"])
def test_cleaning_twice_changes_nothing(text):
    assert clean(clean(text)) == clean(text)


# -- vlchat sessions and export ------------------------------------------------------------------------------
def hostile_session(title: str = "Shapes", *, hostile_id: bool = True) -> Path:
    store = SessionStore(store_root())
    session = store.create(title=title)
    session.conversation.add_user("What is it?" + HOSTILE, [])
    session.conversation.add_assistant("It is red." + HOSTILE + " Really.", model="demo")
    session.save()
    folder = session.folder
    session.close()
    if hostile_id:  # such a session is listed as damaged, and its listing must be clean too
        data = json.loads((folder / "session.json").read_text())
        data["id"] = "abc" + HOSTILE
        (folder / "session.json").write_text(json.dumps(data))
    return folder


def test_sessions_never_print_what_a_session_file_says_raw(run_vlchat):
    hostile_session()
    table = run_vlchat("sessions")
    assert table.returncode == 0, table.stderr
    assert_clean(table.stdout + table.stderr)
    listed = run_vlchat("sessions", "--json")
    assert listed.returncode == 0, listed.stderr
    assert_clean(listed.stdout + listed.stderr)
    json.loads(listed.stdout)  # still JSON


def test_export_writes_no_escape_or_bidi_characters(run_vlchat, tmp_path):
    folder = hostile_session("Shapes" + HOSTILE, hostile_id=False)  # a hostile id is refused as damaged
    target = tmp_path / "out.md"
    result = run_vlchat("export", folder, "-o", target)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout + result.stderr)
    written = target.read_bytes().decode("utf-8")
    assert_clean(written)
    assert "It is red.]0;pwned[2J31m Really." in written


# -- answers from a server that sends escapes, bidi overrides and zero-width spaces -----------------------------
def test_an_answer_reaches_stdout_the_session_and_the_export_clean(run_vlchat, openai_server, tmp_path):
    args = ("ask", RED_CIRCLE, "What colour is the shape?", "--endpoint", openai_server.url, "--model", "demo-escape")
    result = run_vlchat(*args)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout)
    assert result.stdout.replace("]0;pwned", "").replace("[2J", "") == "The shape is red.\n"

    as_json = run_vlchat(*args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert_clean(as_json.stdout)
    assert json.loads(as_json.stdout)["answer"].replace("]0;pwned", "").replace("[2J", "") == "The shape is red."

    saved = run_vlchat(*args, "--session", "new")
    assert saved.returncode == 0, saved.stderr
    assert_clean(saved.stdout + saved.stderr)
    [folder] = SessionStore(store_root()).folders()
    assert_clean((folder / "session.json").read_text())
    target = tmp_path / "answer.md"
    exported = run_vlchat("export", folder, "-o", target)
    assert exported.returncode == 0, exported.stderr
    assert_clean(target.read_text())
    assert "The shape is red." in target.read_text().replace("]0;pwned", "").replace("[2J", "")


# -- vlchat models ---------------------------------------------------------------------------------------------
def test_models_marks_cached_models_with_their_own_code_and_prints_names_clean(run_vlchat, tmp_path):
    hf_home = tmp_path / "hf-home"
    cache_model(hf_home, "Someone/Own-Code-VLM", {"model_type": "custom_vlm", "vision_config": {},
                                                  "auto_map": {"AutoModelForCausalLM": "modeling_custom.CustomVLM"}})
    cache_model(hf_home, "Someone/Plain-VLM", {"model_type": "llava", "vision_config": {}})
    cache_model(hf_home, "Someone/evil\u202eFDP.exe", {"model_type": "llava\u2066x", "vision_config": {}})
    rows = {row["name"]: row for row in map(json.loads, run_vlchat("models", "--json").stdout.splitlines())}
    assert rows["Someone/Own-Code-VLM"]["remote_code"] is True
    assert rows["Someone/Plain-VLM"]["remote_code"] is False

    table = run_vlchat("models")
    assert table.returncode == 0, table.stderr
    assert_clean(table.stdout)
    own = next(line for line in table.stdout.splitlines() if "Someone/Own-Code-VLM" in line)
    assert "custom_vlm (remote code)" in own
    plain = next(line for line in table.stdout.splitlines() if "Someone/Plain-VLM" in line)
    assert "remote code" not in plain
    assert any("Someone/evilFDP.exe" in line for line in table.stdout.splitlines())
    assert_clean(run_vlchat("models", "--json").stdout)


# -- vlchat ask: a long question, a chat template the sandbox blocks ------------------------------------------
def test_a_question_longer_than_a_file_name_is_asked(run_vlchat, tmp_path):
    question = "What colour is the shape? " * 12  # 312 bytes: more than a file name may have
    plain = run_vlchat("ask", RED_CIRCLE, question)
    assert plain.returncode == 0, plain.stderr
    assert "red" in plain.stdout
    alone = run_vlchat("ask", question)  # no picture: the question alone is still not a file name
    assert "internal error" not in alone.stderr and "Traceback" not in alone.stderr
    assert alone.returncode == 0, alone.stderr
    saved = run_vlchat("ask", "--session", "new", question)
    assert saved.returncode == 0, saved.stderr
    [folder] = SessionStore(store_root()).folders()
    messages = json.loads((folder / "session.json").read_text())["conversation"]["messages"]
    assert messages[0]["text"] == question and messages[1]["role"] == "assistant"


@pytest.fixture
def blocked_template_model(tmp_path) -> Path:
    """The demo model with a chat template that reaches for what the jinja sandbox blocks."""
    folder = tmp_path / "blocked-template"
    shutil.copytree(MODEL_DIR, folder)
    template = folder / "chat_template.jinja"
    template.write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}" + template.read_text())
    return folder


def test_a_chat_template_the_sandbox_blocks_is_one_clear_line(run_vlchat, blocked_template_model):
    result = run_vlchat("ask", "--model", blocked_template_model, RED_CIRCLE, "What colour is the shape?")
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if line.startswith("vlchat: error")]
    assert line.startswith("vlchat: error: the model's chat template could not be used: access to attribute '__class__'")
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


# -- the app ---------------------------------------------------------------------------------------------------
def test_the_app_shows_a_hostile_session_clean(demo_engine):
    from tests.test_app import run_async, screen_text, settings, transcript_text
    from vlchat.ui.app import make_app

    store = SessionStore(store_root())
    session = store.create(title="Shapes" + HOSTILE)
    session.conversation.add_user("What is it?" + HOSTILE, [])
    session.conversation.add_assistant("It is **red**." + HOSTILE, model="demo" + HOSTILE)
    session.save()
    folder = session.folder
    session.close()

    @run_async
    async def check():
        opened = store.open(folder)
        app = make_app(settings(), [], engine=demo_engine, engine_loaded=True, store=store, session=opened)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.2)
            shown = transcript_text(app) + screen_text(app)
            assert "It is" in shown and "What is it?" in shown
            assert_clean(shown)
            assert_clean("".join(str(n.message) + str(n.title) for n in app._notifications))
        opened.close()

    check()


def test_a_read_only_app_does_not_answer_a_dangling_question(tmp_path):
    from tests.test_app import run_async, settings, settle, until
    from vlchat.engines.transformers import TransformersEngine
    from vlchat.ui.app import make_app

    store = SessionStore(store_root())
    holder = store.create()
    holder.conversation.add_user("What colour is the shape?", [])
    holder.save()  # the question has no answer; this vlchat still holds the session's lock
    before = (holder.folder / "session.json").read_text()

    @run_async
    async def check():
        opened = store.open(holder.folder, read_only=True)
        engine = TransformersEngine("demo", quant="none", device="cpu")  # loaded by the app
        app = make_app(settings(), [], engine=engine, store=store, session=opened)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.loaded, timeout=120)
            assert app.generating is None
            await settle(pilot)
            assert [m.role for m in app.conversation.messages] == ["user"]
        opened.close()
        engine.unload()

    try:
        check()
        assert (holder.folder / "session.json").read_text() == before
    finally:
        holder.close()


BIG_TABLE_APP = """
import asyncio, sys, time
from vlchat.config import Settings
from vlchat.core.sessions import SessionStore
from vlchat.engines import make_engine
from vlchat.ui.app import make_app

def status_mb(field):
    # VmHWM, not ru_maxrss: a process started with vfork has its parent's peak in ru_maxrss.
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024

async def main():
    store = SessionStore(sys.argv[1])
    # No model is needed to read a session: a server that is not there will do.
    settings = Settings(model="x", endpoint="http://127.0.0.1:9/v1", image_protocol="halfblock")
    session = store.open(sys.argv[2])
    app = make_app(settings, [], engine=make_engine(settings), session=session, store=store)
    before = status_mb("VmRSS")
    started = time.monotonic()
    async with app.run_test(size=(120, 40)) as pilot:
        up = time.monotonic() - started
        started = time.monotonic()
        await pilot.pause(0.5)  # a responsive app gives the time back when it is up
        paused = time.monotonic() - started
        started = time.monotonic()
        await pilot.press("ctrl+q")
        while app.is_running:
            await asyncio.sleep(0.01)
    print(up, paused, time.monotonic() - started, before, status_mb("VmHWM"))
    session.close()

asyncio.run(main())
"""


def big_table(rows: int) -> str:
    return ("Here it is:\n\n| n | square | name |\n|---|---|---|\n"
            + "".join(f"| {i} | {i * i} | row number {i} |\n" for i in range(rows)) + "\nThat is all.")


def test_a_session_with_a_3000_row_table_opens_and_quits_at_once_in_bounded_memory():
    store = SessionStore(store_root())
    session = store.create()
    session.conversation.add_user("Make me a big table", [])
    session.conversation.add_assistant(big_table(3000), model="demo")
    session.save()
    session.close()
    result = subprocess.run([sys.executable, "-c", BIG_TABLE_APP, str(store.root), str(session.folder)],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    up, paused, quit, before, peak = map(float, result.stdout.split())
    # Before: tens of seconds at 100% CPU (minutes in a real terminal) and hundreds of MB, keys not taken.
    assert up < 10, f"the app took {up:.1f} s to come up"
    assert paused < 3, f"the app was busy for {paused:.1f} s after coming up"
    assert quit < 3, f"ctrl+q took {quit:.1f} s"
    assert peak - before < 250, f"memory grew by {peak - before:.0f} MB"


def test_a_streamed_3000_row_table_costs_little_per_frame(demo_engine):
    import time

    from tests.test_app import app_for, run_async, screen_text
    from vlchat.core.conversation import Message
    from vlchat.ui.transcript import AnswerView

    text = big_table(3000)

    @run_async
    async def check():
        app = app_for(demo_engine)
        async with app.run_test(size=(120, 40)) as pilot:
            view = AnswerView(model="demo")
            await app.transcript.mount(view)
            slowest, shown = 0.0, 0
            while shown < len(text):
                shown = min(len(text), shown + 2000)  # a frame's worth of a fast model, and more
                started = time.monotonic()
                await view.show_progress(text[:shown], app.transcript.size.height)
                await pilot.pause()
                slowest = max(slowest, time.monotonic() - started)
                assert slowest < 2.0, f"a frame took {slowest:.1f} s at {shown} characters"
            started = time.monotonic()
            await view.finish(Message("assistant", text, model="demo"))
            await pilot.pause()
            assert time.monotonic() - started < 5.0
            # The rest is plain text, all of it there; the start is still Markdown.
            plain = view.query_one("PlainText")
            assert plain.text.endswith("| 2999 | 8994001 | row number 2999 |\n\nThat is all.")
            assert "a long answer: the rest of it is shown as plain text" in screen_text(app) or app.transcript.max_scroll_y > 0
            assert view.query_one(".answer-body").source.startswith("Here it is:")

    check()


# -- pictures --------------------------------------------------------------------------------------------------
def test_a_png_whose_text_chunk_unpacks_to_50_mb_is_read(tmp_path, run_vlchat):
    from PIL import Image, PngImagePlugin

    from vlchat.core.images import load_image

    # 50 MB of text packed into a few KB: Pillow refuses any compressed text chunk over
    # PngImagePlugin.MAX_TEXT_CHUNK (1 MB unpacked), a guard against decompression bombs.
    path = tmp_path / "metadata.png"
    image = Image.open(RED_CIRCLE)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x" * 50_000_000, zip=True)
    image.save(path, pnginfo=info)
    assert path.stat().st_size < 200_000
    loaded = load_image(path)
    assert loaded.image.tobytes() == load_image(RED_CIRCLE).image.tobytes()
    result = run_vlchat("ask", path, "What colour is the shape?")
    assert result.returncode == 0, result.stderr
    assert "red" in result.stdout


PEAK_OF_CHILD = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
sys.stderr.write(done.stderr)
"""


def caption_peak_mb(folder: Path, out: Path) -> int:
    from tests.conftest import vlchat_command

    # A small parent of its own: ru_maxrss of a child started by vfork includes its parent's peak.
    result = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, *vlchat_command(), "caption", str(folder), "-o", str(out)],
                            capture_output=True, text=True, timeout=240, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    code, peak = map(int, result.stdout.split())
    assert code == 0, result.stderr
    return peak


def test_caption_memory_follows_the_number_of_pictures_not_their_size(tmp_path):
    from PIL import Image, ImageDraw

    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir(), big.mkdir()
    for n in range(4):  # 4 pictures of 50 megapixels, about 170 KB each on disk
        image = Image.new("RGB", (10_000, 5_000), (0, 0, 200))
        ImageDraw.Draw(image).ellipse((1000 + 1000 * n, 1000, 5000 + 1000 * n, 4000), fill=(220, 0, 0))
        image.save(big / f"{n}.png", compress_level=9)
        image.resize((400, 200)).save(small / f"{n}.png")
        del image
    baseline = caption_peak_mb(small, tmp_path / "small.jsonl")
    peak = caption_peak_mb(big, tmp_path / "big.jsonl")
    records = [json.loads(line) for line in (tmp_path / "big.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r.get("caption") for r in records)
    # Each picture is 150 MB decoded: all four held at once (as before) was 1.6 GB over the baseline.
    assert peak - baseline < 700, f"captioning peaked at {peak} MB, {peak - baseline} MB over {baseline} MB for small pictures"


# -- the app in a real terminal --------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_invalid_utf8_typed_into_the_app_does_not_end_it(tmp_path):
    from tests.test_e2e_tmux import Terminal, ready

    terminal = Terminal(tmp_path)
    try:
        terminal.start(f"--model demo --image-protocol halfblock {RED_CIRCLE}")
        terminal.wait_for(ready, what="the picture and the loaded model")
        terminal.type("What colour")
        terminal.keys("-H", "ff", "fe", "c0", "20")  # bytes that are not UTF-8 (a Latin-1 terminal, a paste)
        terminal.type(" is the shape?")
        terminal.keys("Enter")
        screen = terminal.wait_for(lambda s: "first token" in s or "vlchat exited" in s, what="the answer")
        assert "vlchat exited" not in screen and "Traceback" not in terminal.history()
        assert "is the shape?" in screen  # the question went, with what was typed after the bad bytes
        terminal.type("/quit")
        terminal.keys("Enter")
        terminal.wait_for(lambda s: "vlchat exited 0" in s, timeout=30, what="vlchat to exit")
        assert "Traceback" not in terminal.history() and "UnicodeDecodeError" not in terminal.history()
    finally:
        terminal.close()


def test_the_model_picker_marks_cached_models_with_their_own_code(demo_engine, tmp_path, monkeypatch):
    from textual.widgets import OptionList

    from tests.test_app import app_for, command, run_async, until
    from vlchat.ui.models_screen import ModelPicker

    hf_home = tmp_path / "hf-home"
    cache_model(hf_home, "Someone/Own-Code-VLM", {"model_type": "custom_vlm", "vision_config": {},
                                                  "auto_map": {"AutoModelForCausalLM": "modeling_custom.CustomVLM"}})
    cache_model(hf_home, "Someone/Plain-VLM", {"model_type": "llava", "vision_config": {}})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hf_home / "hub"))

    @run_async
    async def check():
        app = app_for(demo_engine)
        async with app.run_test(size=(120, 40)) as pilot:
            await command(pilot, "/model")
            assert isinstance(app.screen, ModelPicker)
            await until(pilot, lambda: bool(app.screen.rows))
            options = app.screen.query_one(OptionList)
            shown = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
            own = next(line for line in shown if "Someone/Own-Code-VLM" in line)
            plain = next(line for line in shown if "Someone/Plain-VLM" in line)
            assert "custom_vlm, own code" in own
            assert "own code" not in plain
            await pilot.press("escape")

    check()
