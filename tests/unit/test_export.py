"""Markdown transcripts: the exact text of the example session, pictures beside it, nothing overwritten."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest

from vlchat.core.export import ExportError, export_markdown
from vlchat.core.sessions import SessionStore, load_session

pytestmark = pytest.mark.timeout(60)

EXAMPLE = Path(__file__).resolve().parents[2] / "sessions" / "example"

EXPECTED = """\
# Blue squares and a green triangle

- **Session:** `5e551014e8a1`
- **Model:** demo
- **Date:** 2025-11-20 09:15 UTC (last updated 2025-11-20 09:16 UTC)
- **Parameters:** max_new_tokens 512, temperature 0, top_p 1, seed none
- **Turns:** 3, **pictures:** 2

**System prompt:**

> Answer in one short sentence.

---

## Turn 1

### User

![two-blue-squares.png](transcript_assets/01-two-blue-squares.png)

How many shapes are there?

### Assistant (demo)

There are two shapes.

---

## Turn 2

### User

What colour are they?

### Assistant (demo)

The shapes are blue.

---

## Turn 3

### User

![green-triangle.png](transcript_assets/02-green-triangle.png)

And in this one: what shape is it?

### Assistant (demo)

It is a tri

*(stopped before the end of the answer)*

---

<!-- vlchat export of session 5e551014e8a1: exporting again replaces this file -->
"""


@pytest.fixture
def example():
    session = load_session(EXAMPLE, read_only=True)
    yield session
    session.close()


def test_example_exports_to_exactly_this_text(example, tmp_path):
    result = export_markdown(example, tmp_path / "transcript.md")
    assert (tmp_path / "transcript.md").read_text(encoding="utf-8") == EXPECTED
    assert result.missing == [] and len(result.pictures) == 2


def test_pictures_are_copied_beside_and_links_resolve(example, tmp_path):
    out = tmp_path / "share" / "transcript.md"
    export_markdown(example, out)
    text = out.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 2
    for link in links:
        assert not os.path.isabs(link)
        target = out.parent / unquote(link)
        sha = hashlib.sha256(target.read_bytes()).hexdigest()
        assert (EXAMPLE / "images" / f"{sha}.png").is_file()  # the same bytes as in the session
    assert sorted(p.name for p in (out.parent / "transcript_assets").iterdir()) == [
        "01-two-blue-squares.png", "02-green-triangle.png"]
    # The transcript travels: moved with its assets folder, the links still work.
    moved = tmp_path / "elsewhere"
    shutil.move(out.parent, moved)
    assert all((moved / unquote(link)).is_file() for link in links)


def test_exporting_twice_gives_identical_bytes(example, tmp_path):
    out = tmp_path / "transcript.md"
    export_markdown(example, out)
    first = {p.name: p.read_bytes() for p in [out, *(tmp_path / "transcript_assets").iterdir()]}
    os.utime(out, (0, 0))
    export_markdown(example, out)  # a previous vlchat export is replaced without asking
    second = {p.name: p.read_bytes() for p in [out, *(tmp_path / "transcript_assets").iterdir()]}
    assert first == second


def test_a_file_that_is_not_a_vlchat_export_is_not_overwritten(example, tmp_path):
    out = tmp_path / "notes.md"
    out.write_text("# My own notes\n")
    with pytest.raises(ExportError) as caught:
        export_markdown(example, out)
    line = str(caught.value)
    assert "notes.md" in line and "--force" in line and "\n" not in line
    assert out.read_text() == "# My own notes\n"
    assert not (tmp_path / "notes_assets").exists()
    export_markdown(example, out, force=True)
    assert out.read_text().startswith("# Blue squares and a green triangle\n")


def test_an_existing_assets_folder_is_not_overwritten(example, tmp_path):
    assets = tmp_path / "transcript_assets"
    assets.mkdir()
    (assets / "01-two-blue-squares.png").write_bytes(b"mine")
    with pytest.raises(ExportError) as caught:
        export_markdown(example, tmp_path / "transcript.md")
    assert "transcript_assets" in str(caught.value)
    assert (assets / "01-two-blue-squares.png").read_bytes() == b"mine"


def test_answers_keep_markdown_and_code_blocks_and_each_shows_its_model(tmp_path, picture):
    store = SessionStore(tmp_path / "sessions")
    session = store.create(model={"name": "demo"})
    ref = session.attach(picture("circle", "red", "blue"))
    session.conversation.add_user("Write code for it, please.\n\n- as a *list*", [ref])
    answer = "Here:\n\n```python\ndef shape():\n    return 'circle'  # **not bold**\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    session.conversation.add_assistant(answer, model="demo")
    session.conversation.add_user("And in Rust?")
    session.conversation.add_assistant("Sure:\n\n```rust\nfn main() {\n    println!(\"red", model="llava-hf/llava-1.5-7b-hf", stopped=True)
    session.conversation.add_user("Evil \x1b]0;title\x07 question")
    session.conversation.add_assistant("Fine\x1b[2J answer", model="demo")
    session.save()
    out = tmp_path / "code.md"
    export_markdown(session, out)
    text = out.read_text()
    assert answer in text
    assert "Write code for it, please.\n\n- as a *list*" in text
    assert "- **Models:** demo, llava-hf/llava-1.5-7b-hf" in text
    assert text.count("### Assistant (demo)") == 2 and text.count("### Assistant (llava-hf/llava-1.5-7b-hf)") == 1
    # The stopped answer's open code fence is closed, so the rest of the transcript is not swallowed.
    assert '    println!("red\n```\n\n*(stopped before the end of the answer)*' in text
    assert text.count("```") % 2 == 0
    assert "\x1b" not in text and "\x07" not in text and "Fine[2J answer" in text
    session.close()


def test_missing_picture_is_marked_and_the_rest_exported(tmp_path):
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE, folder)
    sha = next(p.stem for p in (folder / "images").iterdir() if p.stat().st_size == 1550)
    (folder / "images" / f"{sha}.png").unlink()
    session = load_session(folder, read_only=True)
    result = export_markdown(session, tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    assert "*(picture missing from the session: two-blue-squares.png)*" in text
    assert "![green-triangle.png](t_assets/02-green-triangle.png)" in text
    assert "There are two shapes." in text and result.missing == ["two-blue-squares.png"]


def test_names_with_spaces_are_linked_so_github_finds_them(example, tmp_path):
    out = tmp_path / "my holiday" / "the chat.md"
    export_markdown(example, out)
    text = out.read_text()
    assert "](the%20chat_assets/01-two-blue-squares.png)" in text
    assert (out.parent / "the chat_assets" / "01-two-blue-squares.png").is_file()


def test_unanswered_question_is_said_so(tmp_path):
    store = SessionStore(tmp_path / "sessions")
    session = store.create()
    session.conversation.add_user("Killed before the answer?")
    session.save()
    export_markdown(session, tmp_path / "t.md")
    assert "Killed before the answer?\n\n*(no answer was saved for this question)*" in (tmp_path / "t.md").read_text()
    session.close()


def test_answers_cut_at_the_token_limit_or_ended_by_an_error_are_marked(tmp_path):
    store = SessionStore(tmp_path / "sessions")
    session = store.create(model={"name": "demo"})
    session.conversation.add_user("Describe the picture.")
    session.conversation.add_assistant("A red circle on a blue", model="demo", tokens=512, finish_reason="length")
    session.conversation.add_user("Again?")
    session.conversation.add_assistant("A red", model="demo", stopped=True, tokens=2, finish_reason="error")
    session.conversation.add_user("Once more?")
    session.conversation.add_assistant("A red circle.", model="demo", tokens=5, finish_reason="stop")
    session.save()
    out = tmp_path / "cut.md"
    export_markdown(session, out)
    text = out.read_text()
    assert "A red circle on a blue\n\n*(cut at 512 tokens)*" in text
    assert "A red\n\n*(ended by an error)*" in text
    assert "stopped before the end" not in text  # an error is not the person's stop
    assert "A red circle.\n\n---" in text  # a finished answer has no mark
    session.close()
