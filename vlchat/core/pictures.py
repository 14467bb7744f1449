"""Finding the pictures in folders by what the files hold, not only by their names.

A file counts as a picture when its first bytes say so (JPEG, PNG, WebP, GIF, BMP, TIFF, and the
formats vlchat names but cannot read, such as HEIC, so that those get a clear error), or when its
name says it is one: a ``photo.jpg`` that is not a picture is a broken picture, worth an error line.
Anything else (captions, JSON sidecars, our own output, videos, notes) is left alone without a word.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image

from vlchat.core.errors import InputError
from vlchat.core.images import sniff_supported, sniff_unsupported
from vlchat.core.text import clean

PICTURE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .webp .gif .bmp .dib .tif .tiff .heic .heif .avif .jxl .svg .mpo".split()
)
_HEAD_BYTES = 4096


@dataclass(frozen=True)
class Found:
    path: str  # as the person named it, or joined onto the folder they named
    named: bool  # named on the command line (always tried), not found in a folder


def looks_like_picture(path: str | os.PathLike) -> bool:
    """Whether a file found in a folder is (or claims to be) a picture."""
    if os.path.splitext(os.fsdecode(path))[1].lower() in PICTURE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError:
        return False
    if not head:
        return False
    if sniff_supported(head) or sniff_unsupported(head):
        return True
    # Pillow knows more formats by their first bytes (PPM, TGA with a footer aside, ICO, ...);
    # Image.open reads only the header.
    try:
        with Image.open(path) as image:
            return bool(image.format)
    except Exception:
        return False


def _walk(folder: str, recursive: bool, visited: set[str] | None = None) -> Iterator[str]:
    visited = set() if visited is None else visited
    real = os.path.realpath(folder)
    if real in visited:  # a link back up the tree: each folder is read once
        return
    visited.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    subfolders = []
    for entry in entries:
        if entry.name.startswith("."):
            continue  # hidden files and folders (.git, .cache, our own manifests)
        try:
            if entry.is_dir():
                subfolders.append(entry.path)
            elif entry.is_file():
                yield entry.path
        except OSError:
            continue
    if recursive:
        for sub in subfolders:
            yield from _walk(sub, recursive, visited)


def find_pictures(
    items: Iterable[str], *, recursive: bool = False, exclude: Iterable[str] = ()
) -> Iterator[Found]:
    """The pictures the command line names: files as they are, folders searched (sorted by name).

    ``exclude`` holds paths never to return (the output file). A path is returned once however
    often it is named. A named path that does not exist is an InputError: a typo should stop the
    run before any model loads.
    """
    excluded = {os.path.realpath(p) for p in exclude}
    seen: set[str] = set()
    for item in items:
        if not os.path.lexists(item):
            raise InputError(
                f"{clean(item, keep_newlines=False)} does not exist",
                "check the name; give picture files or folders of pictures",
            )
        candidates: Iterable[tuple[str, bool]]
        if os.path.isdir(item):
            candidates = ((p, False) for p in _walk(item, recursive))
        else:
            candidates = [(item, True)]
        for path, named in candidates:
            real = os.path.realpath(path)
            if real in seen or real in excluded:
                continue
            if named or looks_like_picture(path):
                seen.add(real)
                yield Found(path=os.fsdecode(Path(path)), named=named)
