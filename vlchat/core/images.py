"""Reading pictures safely: one file in, one RGB picture and its ``ImageRef`` out, or one clear error.

Everything that can go wrong with a file a person names (missing, a folder, unreadable, not a
picture, cut short, a format we do not read, a decompression bomb) becomes an ``ImageError`` with a
single line that names the file and says what to do, never a traceback or a Pillow warning.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import os
import re
import shlex
import stat
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image, ImageOps, UnidentifiedImageError

from vlchat.core.conversation import ImageRef
from vlchat.core.errors import InputError
from vlchat.core.text import clean

StrPath = str | os.PathLike

# 100 megapixels: more than any camera photo a vision model needs, yet it keeps the decoded RGB
# picture near 300 MB. Pillow also refuses anything over twice Image.MAX_IMAGE_PIXELS (~179 MP)
# on its own; that error is turned into ImageTooLargeError too.
MAX_PIXELS = 100_000_000

# The most any supported family's processor keeps of a picture by default (Qwen2-VL's max_pixels
# is 3584x3584; LLaVA, BLIP-2, MiniCPM-V and JoyCaption use far less): a batch job decodes bigger
# pictures down to this at once, rather than hold their full size until the processor shrinks them.
MODEL_MAX_SIDE = 3584

# Pillow format name -> the extension a picture of that format is stored under.
FORMAT_EXTENSIONS: dict[str, str] = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
}
SUPPORTED_FORMATS = frozenset(FORMAT_EXTENSIONS)

# Phone cameras write multi-picture JPEGs that Pillow calls MPO; to a person they are JPEGs, and
# the first picture is the photo.
_FORMAT_ALIASES = {"MPO": "JPEG"}

_SUPPORTED_LIST = "JPEG, PNG, WebP, GIF, BMP or TIFF"
_WHITE = (255, 255, 255)


# -- errors -----------------------------------------------------------------------------------
class ImageError(InputError):
    """A picture a person named cannot be used."""


class ImageNotFoundError(ImageError):
    """No file at that path, or (for a stored reference) the picture is gone or has changed."""


class ImageIsFolderError(ImageError):
    """The path names a folder."""


class ImageUnreadableError(ImageError):
    """The file exists but cannot be read (permissions, an I/O error, not a regular file)."""


class NotAnImageError(ImageError):
    """The file is readable but is not a picture at all (text, a PDF, a video, nothing)."""


class ImageTruncatedError(ImageError):
    """The file starts like a picture but its data is cut short or corrupt."""


class UnsupportedImageFormatError(ImageError):
    """A picture, but in a format vlchat does not read (HEIC, AVIF, SVG, PSD, ...)."""


class ImageTooLargeError(ImageError):
    """More pixels than allowed: decoding it could exhaust memory (a decompression bomb)."""


# -- the picture ------------------------------------------------------------------------------
@dataclass
class LoadedImage:
    """A decoded RGB picture, upright, and the reference that names it in a conversation."""

    image: Image.Image
    ref: ImageRef


def sha256_file(path: StrPath) -> str:
    """Hex sha256 of a file's bytes, read in chunks so a large file costs little memory."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def load_image(path: StrPath, *, max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> LoadedImage:
    """Read, check and decode one picture; raise an ``ImageError`` with a one-line message if it can't be used.

    With ``max_side`` the picture is made at most that many pixels on each side as it is decoded
    (JPEGs straight from the file at 1/2, 1/4 or 1/8 size; others decoded, shrunk and the full
    size freed at once), and only so many full-size pixels are decoded at a time across threads:
    memory then follows the number of pictures, not their size. The reference keeps the picture's
    own size.
    """
    name = _display(path)
    data = _read_bytes(path, name)
    if max_side is None:
        image, fmt = _decode(data, name, max_pixels)
        size = image.size
    else:
        image, fmt, size = _decode_sized(data, name, max_pixels, max_side)
    ref = ImageRef(
        sha256=hashlib.sha256(data).hexdigest(),
        path=os.path.abspath(os.fsdecode(path)),
        format=fmt,
        width=size[0],
        height=size[1],
    )
    return LoadedImage(image=image, ref=ref)


def load_image_bytes(data: bytes, name: str, *, path: str, max_pixels: int = MAX_PIXELS,
                     max_side: int | None = None) -> LoadedImage:
    """``load_image`` for a picture whose bytes were read elsewhere (a `vlchat caption --ray` worker
    gets them from the driver, with no shared filesystem): the same checks, decoding and reference."""
    if max_side is None:
        image, fmt = _decode(data, name, max_pixels)
        size = image.size
    else:
        image, fmt, size = _decode_sized(data, name, max_pixels, max_side)
    ref = ImageRef(sha256=hashlib.sha256(data).hexdigest(), path=path, format=fmt, width=size[0], height=size[1])
    return LoadedImage(image=image, ref=ref)


def inspect_image(path: StrPath, *, max_pixels: int = MAX_PIXELS) -> ImageRef:
    """The reference to a picture, checked as ``load_image`` checks it, without decoding its pixels
    when that is safe to skip: for the app's start, so a 24 MP photo does not hold up the first frame.

    A JPEG that ends in its end-of-image marker and a PNG that ends in its IEND chunk are whole
    files whose header has been read and checked; anything else (another format, a file that may be
    cut short) is decoded in full, so every error is the one ``load_image`` gives.
    """
    name = _display(path)
    data = _read_bytes(path, name)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        image, fmt = _open(data, name, max_pixels)
    if not _ends_whole(data, fmt):
        image.close()
        return load_image(path, max_pixels=max_pixels).ref
    width, height = image.size
    try:
        if image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn it a quarter
            width, height = height, width
    except Exception:
        pass  # a broken orientation tag is ignored when decoding too
    image.close()
    return ImageRef(
        sha256=hashlib.sha256(data).hexdigest(),
        path=os.path.abspath(os.fsdecode(path)),
        format=fmt,
        width=width,
        height=height,
    )


def _ends_whole(data: bytes, fmt: str) -> bool:
    tail = data[-16:]
    if fmt == "JPEG":
        return tail.rstrip(b"\0\r\n ").endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" in tail
    return False


def open_ref(
    ref: ImageRef,
    search_dirs: Sequence[StrPath] = (),
    *,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode the picture a reference names, looking in ``search_dirs`` (by hash) before its original path.

    A candidate counts only if its bytes still hash to ``ref.sha256``, so a conversation never
    silently shows the model a different picture than the one the person attached.
    """
    name = clean(ref.path, keep_newlines=False)
    unreadable: ImageUnreadableError | None = None
    changed = False
    for candidate in _ref_candidates(ref, search_dirs):
        try:
            data = _read_bytes(candidate, _display(candidate))
        except (ImageNotFoundError, ImageIsFolderError):
            continue
        except ImageUnreadableError as err:
            if os.fspath(candidate) == ref.path:
                unreadable = err
            continue
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            changed = changed or os.fspath(candidate) == ref.path
            continue
        image, _ = _decode(data, name, max_pixels)
        return image
    if unreadable is not None:
        raise unreadable
    if changed:
        raise ImageNotFoundError(
            f"{name} has changed since it was added to the conversation, so it is not the same picture",
            "Attach it again if the new version is the one you mean",
        )
    raise ImageNotFoundError(
        f"{name} is missing: the conversation names that picture, but it can no longer be found",
        "Put the file back where it was, or attach the picture again",
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """The picture in mode RGB, with transparency laid over white and deep pixels scaled to 8 bits.

    An RGB picture is returned as is; anything else is a new picture. Raises ``ValueError`` for a
    mode Pillow cannot convert.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        return _deep_to_rgb(image)
    if mode == "F":
        return _float_to_rgb(image)
    if mode == "RGB" and "transparency" not in image.info:
        return image
    # A transparent key colour (PNG tRNS, GIF transparency) is handled by converting to RGBA.
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _over_white(image)
    if mode == "P" and image.palette is not None and image.palette.mode == "RGBA":
        return _over_white(image)
    return image.convert("RGB")


def preview_image(image: Image.Image, max_width: int, max_height: int) -> Image.Image:
    """A copy that fits in ``max_width`` x ``max_height`` with the same aspect ratio; never enlarged."""
    if max_width < 1 or max_height < 1:
        raise ValueError(f"preview size must be at least 1x1, not {max_width}x{max_height}")
    width, height = image.size
    scale = min(max_width / width, max_height / height)
    if scale >= 1:
        return image.copy()
    size = (
        min(max_width, max(1, round(width * scale))),
        min(max_height, max(1, round(height * scale))),
    )
    # reducing_gap lets Pillow shrink by whole factors first (cheap) and finish with LANCZOS.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def load_preview(path: StrPath, max_side: int, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A small upright RGB copy of a picture, at most ``max_side`` on each side, for the terminal.

    JPEGs are decoded at 1/2, 1/4 or 1/8 size straight from the file (draft mode), so a 24 MP
    photo previews in a fraction of the time a full decode takes.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    name = _display(path)
    data = _read_bytes(path, name)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        image, fmt = _open(data, name, max_pixels)
        if fmt == "JPEG":
            image.draft("RGB", (max_side, max_side))
        rgb = _finish(image, name, fmt)
    return preview_image(rgb, max_side, max_side)


# -- reading the file -------------------------------------------------------------------------
def _display(path: StrPath) -> str:
    # File names can hold escape sequences; they must not reach the terminal, nor break the line.
    return clean(os.fsdecode(path), keep_newlines=False)


def _read_bytes(path: StrPath, name: str) -> bytes:
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise _not_found(path, name) from None
    except PermissionError:
        raise _unreadable(name, "permission denied") from None
    except OSError as err:
        raise _unreadable(name, err.strerror or str(err)) from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageIsFolderError(f"{name} is a folder, not a picture", "Name a picture file inside it")
    if not stat.S_ISREG(info.st_mode):
        # Reading a pipe or a device could block forever or never end.
        raise ImageUnreadableError(
            f"{name} is not a regular file (it is a device, pipe or socket)",
            "Save the picture to a file and name that file",
        )
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise _not_found(path, name) from None
    except IsADirectoryError:
        raise ImageIsFolderError(f"{name} is a folder, not a picture", "Name a picture file inside it") from None
    except PermissionError:
        raise _unreadable(name, "permission denied") from None
    except OSError as err:
        raise _unreadable(name, err.strerror or str(err)) from None


def _not_found(path: StrPath, name: str) -> ImageNotFoundError:
    hint = "Check the name and the folder it is in"
    if not os.path.isabs(os.fsdecode(path)):
        hint += f" (relative paths start from {clean(os.getcwd(), keep_newlines=False)})"
    return ImageNotFoundError(f"{name} does not exist", hint)


def _unreadable(name: str, reason: str) -> ImageUnreadableError:
    reason = clean(reason, keep_newlines=False)
    if reason == "permission denied":
        return ImageUnreadableError(
            f"{name} cannot be read: permission denied",
            f"Check the file's permissions (for example: `chmod u+r {shlex.quote(name)}`)",
        )
    return ImageUnreadableError(
        f"{name} cannot be read: {reason}", "Check the disk, or copy the file elsewhere and try again"
    )


def _ref_candidates(ref: ImageRef, search_dirs: Sequence[StrPath]) -> list[str]:
    candidates: list[str] = []
    # The hash comes from a saved session file: only a real hex digest may become part of a path.
    if re.fullmatch(r"[0-9a-f]{64}", ref.sha256):
        ext = FORMAT_EXTENSIONS.get(ref.format.upper())
        for folder in search_dirs:
            folder = Path(folder)
            if ext:
                candidates.append(str(folder / f"{ref.sha256}.{ext}"))
            try:
                candidates.extend(sorted(str(p) for p in folder.glob(f"{ref.sha256}.*")))
            except OSError:
                continue
    candidates.append(ref.path)
    return list(dict.fromkeys(candidates))


# -- decoding ---------------------------------------------------------------------------------
def _decode(data: bytes, name: str, max_pixels: int) -> tuple[Image.Image, str]:
    # Pillow speaks through warnings too (decompression bombs, odd EXIF, palette transparency);
    # on a terminal UI those would be stray text, and every case that matters is an error here.
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        image, fmt = _open(data, name, max_pixels)
        return _finish(image, name, fmt), fmt


# Full-size pixels decoded at once, across threads, by load_image(max_side=...): vlchat caption
# decodes several pictures side by side, and each full-size decode of a 100 MP picture is 300 MB.
_DECODE_BUDGET = MAX_PIXELS
_decode_room = threading.Condition()
_decoding_now = 0


@contextlib.contextmanager
def _decode_slot(pixels: int) -> Iterator[None]:
    global _decoding_now
    with _decode_room:
        # One picture over the budget still goes, alone: the budget bounds, it does not refuse.
        while _decoding_now and _decoding_now + pixels > _DECODE_BUDGET:
            _decode_room.wait()
        _decoding_now += pixels
    try:
        yield
    finally:
        with _decode_room:
            _decoding_now -= pixels
            _decode_room.notify_all()


def _decode_sized(data: bytes, name: str, max_pixels: int, max_side: int) -> tuple[Image.Image, str, tuple[int, int]]:
    """The picture at most ``max_side`` on each side, its format, and its own (upright) size."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        image, fmt = _open(data, name, max_pixels)
        size = _upright_size(image)
        if fmt == "JPEG" and max(image.size) > max_side:
            image.draft("RGB", (max_side, max_side))
        with _decode_slot(image.width * image.height):
            rgb = _finish(image, name, fmt)
            if max(rgb.size) <= max_side:
                return rgb, fmt, size
            scale = max_side / max(rgb.size)
            small_size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            # reducing_gap shrinks by a whole factor first (cheap), then finishes with LANCZOS.
            small = rgb.resize(small_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            rgb.close()
    return small, fmt, size


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    try:
        if image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn it a quarter
            return height, width
    except Exception:
        pass  # a broken orientation tag is ignored when decoding too
    return width, height


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt")
# Pillow refuses a compressed text chunk that unpacks to more than PngImagePlugin.MAX_TEXT_CHUNK
# (1 MB) and all text chunks together over MAX_TEXT_MEMORY (64 MB): guards against decompression
# bombs in metadata. vlchat never uses a PNG's text, so such a picture is read without it.
_PNG_TEXT_PLAIN_MAX = 1 << 20


def _png_without_big_text(data: bytes) -> bytes:
    """``data`` with its text chunks (metadata) left out when Pillow would refuse them, else as is."""
    if not data.startswith(_PNG_SIGNATURE) or not any(kind in data for kind in _PNG_TEXT):
        return data
    chunks, pos, refused, text = [], len(_PNG_SIGNATURE), False, 0
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            break  # cut short: left to Pillow to say so
        if kind in _PNG_TEXT:
            text += length
            refused = refused or kind != b"tEXt" or text > _PNG_TEXT_PLAIN_MAX
        else:
            chunks.append((pos, end))
        pos = end
        if kind == b"IEND":
            break
    if not refused:
        return data
    return _PNG_SIGNATURE + b"".join(data[a:b] for a, b in chunks) + data[pos:]


def _open(data: bytes, name: str, max_pixels: int) -> tuple[Image.Image, str]:
    """Identify the picture from its header and refuse it before any pixel is decoded."""
    if not data:
        raise NotAnImageError(f"{name} is empty (0 bytes), not a picture", f"Name a {_SUPPORTED_LIST} file")
    unsupported = _sniff_unsupported(data)
    if unsupported:
        raise _unsupported(name, unsupported)
    data = _png_without_big_text(data)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        # Pillow's own hard limit, which stands even when max_pixels is larger.
        claimed = re.search(r"\((\d+) pixels\)", str(err))
        limit = min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else max_pixels
        raise _too_large(name, None, int(claimed.group(1)) if claimed else None, limit) from None
    except UnidentifiedImageError:
        raise _not_an_image(data, name) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error):
        raise _damaged(name, _sniff_supported(data)) from None
    fmt = _FORMAT_ALIASES.get(image.format or "", image.format or "")
    if fmt not in SUPPORTED_FORMATS:
        raise _unsupported(name, fmt or "unknown", image.format_description)
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(name, (width, height), width * height, max_pixels)
    return image, fmt


def _finish(image: Image.Image, name: str, fmt: str) -> Image.Image:
    """Decode every pixel (so a cut-short file fails here, not later), stand it upright, make it RGB."""
    try:
        image.load()
    except MemoryError:
        raise _too_large(name, image.size, image.width * image.height, None) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error):
        raise _damaged(name, fmt) from None
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:
        # A broken orientation tag must not make an otherwise good picture unusable.
        upright = image.copy()
    image.close()
    try:
        return to_rgb(upright)
    except ValueError:
        raise _unsupported(name, f"{fmt} ({upright.mode} colour mode)") from None


def _over_white(image: Image.Image) -> Image.Image:
    # Transparent areas are usually background; black would hide dark line art and text.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _deep_to_rgb(image: Image.Image) -> Image.Image:
    wide = image if image.mode == "I" else image.convert("I")
    low, high = wide.getextrema()
    if image.mode != "I" or (low >= 0 and high <= 0xFFFF):
        # 16-bit samples: keep the top byte. Clipping instead would turn every mid grey white.
        scaled = wide.point(lambda v: v * (1 / 256))
    else:
        # 32-bit integers of unknown range: stretch what is there over 0..255.
        span = (high - low) or 1
        scaled = wide.point(lambda v: (v - low) * (255 / span))
    return scaled.convert("L").convert("RGB")


def _float_to_rgb(image: Image.Image) -> Image.Image:
    low, high = image.getextrema()
    if low >= 0 and high <= 1:
        scaled = image.point(lambda v: v * 255)
    elif low >= 0 and high <= 255:
        scaled = image
    else:
        span = (high - low) or 1
        scaled = image.point(lambda v: (v - low) * (255 / span))
    return scaled.convert("L").convert("RGB")


# -- recognising what a file is -----------------------------------------------------------------
_HEIC_BRANDS = {"heic", "heix", "heim", "heis", "hevc", "hevx", "hevm", "hevs"}
_HEIF_BRANDS = {"mif1", "msf1", "mif2"}
_AVIF_BRANDS = {"avif", "avis"}

# How to turn each format we refuse into one we read: (format, command with {src} and {dst}).
_CONVERTERS = {
    "HEIC": "heif-convert {src} {dst}",
    "HEIF": "heif-convert {src} {dst}",
    "AVIF": "avifdec {src} {dst}",
    "SVG": "rsvg-convert -o {dst} {src}",
    "JPEG XL": "djxl {src} {dst}",
}


def _ftyp_brands(data: bytes) -> list[str]:
    """The brands of an ISO media file (HEIF, AVIF, MP4, MOV), major brand first; [] for anything else."""
    if len(data) < 12 or data[4:8] != b"ftyp":
        return []
    size = min(struct.unpack(">I", data[:4])[0], len(data), 4096)
    brands = [data[8:12]] + [data[i : i + 4] for i in range(16, size - 3, 4)]
    return [b.decode("latin-1").lower() for b in brands]


def _sniff_unsupported(data: bytes) -> str | None:
    """Name a picture format Pillow would not (or should not) be asked to open."""
    brands = _ftyp_brands(data)
    if brands:
        for brand in brands:
            if brand in _AVIF_BRANDS:
                return "AVIF"
            if brand in _HEIC_BRANDS:
                return "HEIC"
            if brand.strip() == "jxl":
                return "JPEG XL"
        if any(b in _HEIF_BRANDS for b in brands):
            return "HEIF"
        return None
    if data.startswith(b"\xff\x0a") or data.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "JPEG XL"
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<") and b"<svg" in head:
        return "SVG"
    return None


def _sniff_supported(data: bytes) -> str | None:
    """The supported format a file's first bytes claim, so a damaged one is called damaged."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


# The public names, for core.pictures.
sniff_supported = _sniff_supported
sniff_unsupported = _sniff_unsupported


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    if b"\x00" in sample:
        return False
    try:
        # Incremental, so a character cut at the end of the sample does not count against it.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _article(word: str) -> str:
    # Formats are read out letter by letter (an SVG, a PNG) except those said as words (a HEIC).
    if word.split()[0] in ("HEIC", "HEIF", "FITS"):
        return "a"
    return "an" if word[:1] in "AEFHILMNORSX" else "a"


def _unsupported(name: str, fmt: str, description: str | None = None) -> UnsupportedImageFormatError:
    src = shlex.quote(name)
    stem = os.path.splitext(name)[0] or name
    dst = shlex.quote(f"{stem}.png" if fmt in ("SVG", "AVIF", "JPEG XL") else f"{stem}.jpg")
    if dst == src:
        dst = shlex.quote(f"{stem}-converted.png")
    command = _CONVERTERS.get(fmt, "magick {src} {dst}").format(src=src, dst=dst)
    what = f"{_article(fmt)} {fmt} picture"
    if description and description.upper() != fmt:
        what += f" ({clean(description, keep_newlines=False)})"
    return UnsupportedImageFormatError(
        f"{name} is {what}, which vlchat cannot read",
        f"Convert it to JPEG or PNG first (for example: `{command}`)",
    )


def _not_an_image(data: bytes, name: str) -> ImageError:
    claimed = _sniff_supported(data)
    if claimed:
        return _damaged(name, claimed)
    hint = f"Name a {_SUPPORTED_LIST} file"
    if data.startswith(b"%PDF-"):
        stem = shlex.quote(os.path.splitext(name)[0] or "page")
        return NotAnImageError(
            f"{name} is a PDF document, not a picture",
            f"Turn its pages into pictures first (for example: `pdftoppm -png -r 150 {shlex.quote(name)} {stem}`)",
        )
    if _ftyp_brands(data):
        return NotAnImageError(
            f"{name} is a video, not a picture",
            f"Save a still frame from it as PNG, or {hint[0].lower()}{hint[1:]}",
        )
    if _looks_like_text(data):
        return NotAnImageError(f"{name} is a text file, not a picture", hint)
    return NotAnImageError(f"{name} is not a picture vlchat recognises", hint)


def _damaged(name: str, fmt: str | None) -> ImageTruncatedError:
    what = f"{_article(fmt)} {fmt} picture" if fmt else "a picture"
    return ImageTruncatedError(
        f"{name} is {what} whose data is cut short or corrupt",
        "Copy or download it again, or open it and save it again in an image editor",
    )


def _megapixels(pixels: int) -> str:
    if pixels >= 1_000_000:
        return f"{pixels / 1_000_000:.0f} megapixels"
    return f"{pixels} pixels"


def _too_large(
    name: str, size: tuple[int, int] | None, pixels: int | None, max_pixels: int | None
) -> ImageTooLargeError:
    if size:
        what = f"{size[0]}x{size[1]} pixels ({_megapixels(size[0] * size[1])})"
    elif pixels:
        what = _megapixels(pixels)
    else:
        what = "too many pixels"
    limit = f"more than the {_megapixels(max_pixels)} vlchat allows" if max_pixels else "more than fits in memory"
    stem = shlex.quote((os.path.splitext(name)[0] or name) + "-small.jpg")
    return ImageTooLargeError(
        f"{name} is {what}, {limit}; decoding it could exhaust memory",
        f"Shrink it first (for example: `magick {shlex.quote(name)} -resize 8000x8000 {stem}`)",
    )
