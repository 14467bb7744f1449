"""Making text from models, files and file names safe to put on a terminal or into an export.

One sanitiser, ``clean``, for everything vlchat shows or writes as text. It takes out:

- C0 and C1 control characters (except tab and newline) and DEL: ESC starts terminal escape
  sequences (a title change, a cleared screen), and none of them belongs in displayed text;
- bidirectional controls (U+061C, U+200E/F, U+202A-202E, U+2066-2069): they reorder what is shown,
  so text can read differently from what it is ("Trojan Source");
- invisible characters (zero-width space, word joiner and the invisible operators, the BOM, the
  deprecated format characters, interlinear annotation, Unicode tags) that hide text inside text.

The zero-width joiner and non-joiner (U+200D, U+200C) are kept where they do a visible job and taken
out everywhere else: between two emoji (👩‍💻, 👨‍👩‍👧 are emoji joined by U+200D) and between two
letters or marks of a non-Latin script (Persian, Arabic and the Indic scripts need them to spell
words). At the very end of the text they are kept too when the character before qualifies, because
a streamed answer arrives in pieces and the next piece may start with the second emoji. Tag
characters are kept only as the tail of an emoji flag (🏴 + tags + cancel tag, e.g. the flag of
England). U+2028/U+2029 (line and paragraph separators) become newlines. Of an escape sequence only
its control characters go: the printable rest ("]0;title") is harmless, and a sign that something
was there (a file name stays recognisable).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

_REMOVE = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 (but tab and newline), DEL, C1
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidi controls
    "\u200b\u2060-\u2064\u206a-\u206f\ufeff\ufff9-\ufffb"  # invisible and format characters
    "\U000e0001"  # language tag
)
_UNSAFE = re.compile(f"[{_REMOVE}]")
_JOINER = re.compile("[\u200c\u200d]")
_TAGS = re.compile("(\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f)|[\U000e0020-\U000e007f]")
_ANY_TAG = re.compile("[\U000e0020-\U000e007f]")
_SEPARATORS = re.compile("[\u2028\u2029]")


def _is_emoji(char: str) -> bool:
    code = ord(char)
    return (
        0x1F000 <= code <= 0x1FAFF  # pictographs, emoticons, transport, flags, skin tones, ...
        or 0x2600 <= code <= 0x27BF  # symbols and dingbats (❤, ☕, ✈)
        or 0x2300 <= code <= 0x23FF  # technical symbols with emoji forms (⌚, ⏰)
        or 0x2B00 <= code <= 0x2BFF  # arrows and stars with emoji forms (⭐, ⬛)
        or code in (0xFE0F, 0x20E3, 0x00A9, 0x00AE, 0x203C, 0x2049, 0x2122, 0x2139, 0x3030, 0x303D)
    )


def _is_script_letter(char: str) -> bool:
    return ord(char) > 0x2FF and unicodedata.category(char)[0] in "LM"


def _joiner(match: re.Match) -> str:
    text, at = match.string, match.start()
    before = text[at - 1] if at else ""
    after = text[at + 1] if at + 1 < len(text) else ""
    if not before:
        return ""
    if _is_emoji(before) and (not after or _is_emoji(after)):
        return match.group()
    if _is_script_letter(before) and (not after or _is_script_letter(after)):
        return match.group()
    return ""


def _tag(match: re.Match) -> str:
    return match.group(1) or ""


def clean(text: str, *, keep_newlines: bool = True) -> str:
    """``text`` without the characters that can drive the terminal or hide or reorder text.

    ``keep_newlines=False`` also turns newlines and tabs into spaces, for one-line places (a table
    cell, an error line, a title). Cleaning cleaned text changes nothing.
    """
    text = text.replace("\r\n", "\n")
    text = _UNSAFE.sub("", text)
    if "\u2028" in text or "\u2029" in text:
        text = _SEPARATORS.sub("\n", text)
    if "\u200c" in text or "\u200d" in text:
        text = _JOINER.sub(_joiner, text)
    if _ANY_TAG.search(text):
        text = _TAGS.sub(_tag, text)
    if not keep_newlines:
        text = text.replace("\n", " ").replace("\t", " ")
    return text


def clean_data(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string in it cleaned.

    JSON output escapes control characters (ESC becomes \\u001b) but a script that prints a value
    puts the escape back on the terminal, and bidi and invisible characters are not escaped at all.
    """
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean_data(k): clean_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_data(v) for v in value]
    return value
