"""Loading pictures: every supported format and colour mode to RGB, and one clear error for everything else."""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image, JpegImagePlugin

from vlchat.core.conversation import ImageRef
from vlchat.core.images import (
    MAX_PIXELS,
    ImageError,
    ImageIsFolderError,
    ImageNotFoundError,
    ImageTooLargeError,
    ImageTruncatedError,
    ImageUnreadableError,
    LoadedImage,
    NotAnImageError,
    UnsupportedImageFormatError,
    inspect_image,
    load_image,
    load_preview,
    open_ref,
    preview_image,
    sha256_file,
    to_rgb,
)

pytestmark = pytest.mark.timeout(60)

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


# -- helpers ----------------------------------------------------------------------------------
def close_to(actual, expected, tolerance=0):
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def pixels(image: Image.Image) -> list:
    return [image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)]


def two_colour(width=40, height=20) -> Image.Image:
    """Left half red, right half blue: big flat areas survive lossy formats."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def noise(width=256, height=256) -> Image.Image:
    # Incompressible data, so cutting the file in half really cuts the pixel data.
    return Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height; its pixel data is nowhere near that."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(data)
    return path


def assert_good_error(err: ImageError, name: str) -> None:
    text = str(err)
    assert isinstance(err, ImageError)
    assert err.exit_code == 2
    assert "\n" not in text and "\r" not in text
    assert name in text
    assert "\x1b" not in text


# -- every supported format -------------------------------------------------------------------
SUPPORTED = [
    ("JPEG", "jpg", {"quality": 95}, 40),
    ("PNG", "png", {}, 0),
    ("WEBP", "webp", {"lossless": True}, 0),
    ("GIF", "gif", {}, 0),
    ("BMP", "bmp", {}, 0),
    ("TIFF", "tiff", {}, 0),
]


@pytest.mark.parametrize("fmt, ext, options, tolerance", SUPPORTED, ids=[s[0] for s in SUPPORTED])
def test_each_supported_format_loads_as_rgb(tmp_path, fmt, ext, options, tolerance):
    path = tmp_path / f"picture.{ext}"
    two_colour(40, 20).save(path, fmt, **options)

    loaded = load_image(path)

    assert isinstance(loaded, LoadedImage)
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (40, 20)
    assert close_to(loaded.image.getpixel((5, 10)), RED, tolerance)
    assert close_to(loaded.image.getpixel((35, 10)), BLUE, tolerance)
    assert loaded.ref == ImageRef(
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        path=str(path.resolve()),
        format=fmt,
        width=40,
        height=20,
    )


def test_relative_path_is_stored_absolute(tmp_path, monkeypatch):
    two_colour().save(tmp_path / "rel.png")
    monkeypatch.chdir(tmp_path)
    loaded = load_image("rel.png")
    assert Path(loaded.ref.path).is_absolute()
    assert loaded.ref.path == str(tmp_path / "rel.png")


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "bytes.bin"
    path.write_bytes(os.urandom(3 << 20))  # spans several read chunks
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_gif_gives_its_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    first = Image.new("RGB", (10, 10), RED)
    second = Image.new("RGB", (10, 10), BLUE)
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(path).n_frames == 2

    loaded = load_image(path)

    assert loaded.image.getpixel((5, 5)) == RED
    assert loaded.ref.format == "GIF"


def test_exif_orientation_6_is_applied(tmp_path):
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise to stand upright.
    source = Image.new("RGB", (40, 20), BLUE)
    source.paste(RED, (0, 0, 20, 10))  # top-left quarter
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    source.save(path, "JPEG", quality=95, exif=exif)

    loaded = load_image(path)

    assert loaded.image.size == (20, 40)
    assert (loaded.ref.width, loaded.ref.height) == (20, 40)
    # The top-left quarter ends up top-right after a clockwise turn.
    assert close_to(loaded.image.getpixel((15, 5)), RED, 40)
    assert close_to(loaded.image.getpixel((5, 5)), BLUE, 40)
    assert close_to(loaded.image.getpixel((15, 30)), BLUE, 40)


# -- colour modes -----------------------------------------------------------------------------
def test_palette_with_transparency_goes_over_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    image.putdata([0, 1])
    path = tmp_path / "palette.png"
    image.save(path, transparency=1)

    loaded = load_image(path)

    assert loaded.image.getpixel((0, 0)) == RED
    assert loaded.image.getpixel((1, 0)) == WHITE


def test_gif_transparency_goes_over_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 0] + [0, 0, 0] * 254)
    image.putdata([0, 1])
    path = tmp_path / "transparent.gif"
    image.save(path, transparency=1)

    loaded = load_image(path)

    assert loaded.image.getpixel((0, 0)) == RED
    assert loaded.image.getpixel((1, 0)) == WHITE  # black underneath, but transparent


def test_rgba_composites_over_white(tmp_path):
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 255), (0, 0, 0, 0), (0, 0, 0, 128)])
    path = tmp_path / "alpha.png"
    image.save(path)

    loaded = load_image(path)

    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((0, 0)) == RED
    assert loaded.image.getpixel((1, 0)) == WHITE
    assert close_to(loaded.image.getpixel((2, 0)), (127, 127, 127), 1)


def test_la_composites_over_white(tmp_path):
    image = Image.new("LA", (2, 1))
    image.putdata([(10, 255), (10, 0)])
    path = tmp_path / "la.png"
    image.save(path)

    loaded = load_image(path)

    assert loaded.image.getpixel((0, 0)) == (10, 10, 10)
    assert loaded.image.getpixel((1, 0)) == WHITE


def test_cmyk_converts_to_rgb(tmp_path):
    image = Image.new("CMYK", (3, 1))
    image.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)])
    path = tmp_path / "cmyk.tiff"
    image.save(path)

    loaded = load_image(path)

    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((0, 0)) == WHITE
    assert loaded.image.getpixel((1, 0)) == (0, 255, 255)
    assert loaded.image.getpixel((2, 0)) == (0, 0, 0)


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    loaded = load_image(path)
    assert loaded.image.mode == "RGB"
    assert close_to(loaded.image.getpixel((8, 8)), RED, 30)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path, fmt):
    image = Image.new("I;16", (4, 1))
    for x, value in enumerate([0, 32768, 65535, 256 * 77]):
        image.putpixel((x, 0), value)
    path = tmp_path / f"deep.{fmt.lower()}"
    image.save(path, fmt)
    assert Image.open(path).mode.startswith("I")  # really a deep picture on disk

    loaded = load_image(path)

    assert loaded.image.mode == "RGB"
    assert [loaded.image.getpixel((x, 0)) for x in range(4)] == [
        (0, 0, 0),
        (128, 128, 128),
        (255, 255, 255),
        (77, 77, 77),
    ]


def test_greyscale_l_becomes_rgb(tmp_path):
    image = Image.new("L", (2, 1))
    image.putdata([0, 200])
    path = tmp_path / "grey.png"
    image.save(path)

    loaded = load_image(path)

    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((0, 0)) == (0, 0, 0)
    assert loaded.image.getpixel((1, 0)) == (200, 200, 200)


def test_one_bit_becomes_rgb(tmp_path):
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    path = tmp_path / "mono.bmp"
    image.save(path)

    loaded = load_image(path)

    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((0, 0)) == (0, 0, 0)
    assert loaded.image.getpixel((1, 0)) == WHITE


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_to_rgb_scales_deep_modes(mode):
    image = Image.new("I;16", (3, 1))
    image.putdata([0, 32768, 65535])
    image = image if mode == "I;16" else image.convert("I")
    if mode == "I;16B":
        image = Image.frombytes("I;16B", (3, 1), struct.pack(">3H", 0, 32768, 65535))
    assert image.mode == mode

    rgb = to_rgb(image)

    assert rgb.mode == "RGB"
    assert pixels(rgb) == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_to_rgb_float_in_unit_range():
    image = Image.new("F", (2, 1))
    image.putdata([0.0, 1.0])
    assert pixels(to_rgb(image)) == [(0, 0, 0), WHITE]


def test_to_rgb_keeps_rgb_and_converts_palette():
    rgb = Image.new("RGB", (2, 2), RED)
    assert to_rgb(rgb) is rgb
    palette = rgb.convert("P")
    assert to_rgb(palette).mode == "RGB"
    assert to_rgb(palette).getpixel((0, 0)) == RED


# -- decompression bombs ----------------------------------------------------------------------
def test_bomb_over_pillows_own_limit_is_refused(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLargeError) as info:
            load_image(path)
    assert_good_error(info.value, "bomb.png")


def test_bomb_over_our_limit_is_refused_before_decoding(tmp_path):
    # 144 MP: over MAX_PIXELS but under Pillow's hard limit, so only our check stops it. Its
    # pixel data is garbage: reaching the decoder would give ImageTruncatedError instead.
    assert 12_000 * 12_000 > MAX_PIXELS
    path = png_header_only(tmp_path / "big.png", 12_000, 12_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        with pytest.raises(ImageTooLargeError) as info:
            load_image(path)
    assert_good_error(info.value, "big.png")
    assert "12000x12000" in str(info.value)


def test_real_one_bit_bomb_is_refused(tmp_path):
    path = tmp_path / "flat.png"
    Image.new("1", (12_000, 12_000)).save(path, optimize=True)
    assert path.stat().st_size < 200_000  # cheap on disk, 432 MB once RGB
    with pytest.raises(ImageTooLargeError):
        load_image(path)


def test_max_pixels_argument(tmp_path):
    path = tmp_path / "small.png"
    two_colour(20, 20).save(path)
    with pytest.raises(ImageTooLargeError) as info:
        load_image(path, max_pixels=399)
    assert_good_error(info.value, "small.png")
    assert load_image(path, max_pixels=400).image.size == (20, 20)


def test_pillow_bomb_warning_is_silenced_when_within_our_limit(tmp_path, monkeypatch):
    path = tmp_path / "warned.png"
    two_colour(20, 20).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 pixels: Pillow warns, but we allow
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(path)
    assert loaded.image.size == (20, 20)


def test_pillow_bomb_error_becomes_too_large(tmp_path, monkeypatch):
    path = tmp_path / "refused.png"
    two_colour(20, 20).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 > 2 x 100: Pillow raises
    with pytest.raises(ImageTooLargeError) as info:
        load_image(path)
    assert_good_error(info.value, "refused.png")


# -- errors -----------------------------------------------------------------------------------
def make_missing(tmp_path):
    return tmp_path / "nowhere.png"


def make_folder(tmp_path):
    folder = tmp_path / "a folder.png"
    folder.mkdir()
    return folder


def make_text(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("These are notes, not a picture.\nSecond line.\n")
    return path


def make_empty(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    return path


def make_pdf(tmp_path):
    path = tmp_path / "paper.pdf"
    path.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    return path


def make_video(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64)
    return path


def make_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    noise().save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    noise().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_png_signature_only(tmp_path):
    path = tmp_path / "stub.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    return path


def make_heic(tmp_path):
    path = tmp_path / "photo.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + os.urandom(256))
    return path


def make_avif(tmp_path):
    path = tmp_path / "photo.avif"
    path.write_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + os.urandom(256))
    return path


def make_svg(tmp_path):
    path = tmp_path / "drawing.svg"
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        '<rect width="10" height="10" fill="red"/></svg>\n'
    )
    return path


def make_ppm(tmp_path):
    path = tmp_path / "old.ppm"
    two_colour().save(path)
    return path


ERROR_CASES = {
    "missing": (make_missing, ImageNotFoundError),
    "folder": (make_folder, ImageIsFolderError),
    "text": (make_text, NotAnImageError),
    "empty": (make_empty, NotAnImageError),
    "pdf": (make_pdf, NotAnImageError),
    "video": (make_video, NotAnImageError),
    "truncated_jpeg": (make_truncated_jpeg, ImageTruncatedError),
    "truncated_png": (make_truncated_png, ImageTruncatedError),
    "png_signature_only": (make_png_signature_only, ImageTruncatedError),
    "heic": (make_heic, UnsupportedImageFormatError),
    "avif": (make_avif, UnsupportedImageFormatError),
    "svg": (make_svg, UnsupportedImageFormatError),
    "ppm": (make_ppm, UnsupportedImageFormatError),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_is_the_right_kind_and_one_good_line(tmp_path, case):
    make, kind = ERROR_CASES[case]
    path = make(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(kind) as info:
            load_image(path)
    assert type(info.value) is kind
    assert_good_error(info.value, path.name)


def test_error_classes_are_distinct_input_errors():
    from vlchat.core.errors import InputError

    kinds = {
        ImageNotFoundError,
        ImageIsFolderError,
        ImageUnreadableError,
        NotAnImageError,
        ImageTruncatedError,
        UnsupportedImageFormatError,
        ImageTooLargeError,
    }
    assert len(kinds) == 7
    for kind in kinds:
        assert issubclass(kind, ImageError) and issubclass(kind, InputError)
        assert kind.exit_code == 2
        for other in kinds - {kind}:
            assert not issubclass(kind, other)


def test_heic_message_names_the_format_and_a_fix(tmp_path):
    with pytest.raises(UnsupportedImageFormatError) as info:
        load_image(make_heic(tmp_path))
    text = str(info.value)
    assert "is a HEIC picture" in text
    assert "heif-convert" in text and "JPEG or PNG" in text


def test_avif_message_names_the_format(tmp_path):
    with pytest.raises(UnsupportedImageFormatError) as info:
        load_image(make_avif(tmp_path))
    assert "AVIF" in str(info.value)


def test_svg_message_names_the_format(tmp_path):
    with pytest.raises(UnsupportedImageFormatError) as info:
        load_image(make_svg(tmp_path))
    assert "SVG" in str(info.value)
    assert "rsvg-convert" in str(info.value)


def test_other_pillow_format_is_named(tmp_path):
    with pytest.raises(UnsupportedImageFormatError) as info:
        load_image(make_ppm(tmp_path))
    assert "PPM" in str(info.value)


def test_text_pdf_and_video_say_what_they_are(tmp_path):
    for make, word in ((make_text, "text file"), (make_pdf, "PDF"), (make_video, "video"), (make_empty, "empty")):
        with pytest.raises(NotAnImageError) as info:
            load_image(make(tmp_path))
        assert word in str(info.value)


def test_truncated_message_says_damaged(tmp_path):
    with pytest.raises(ImageTruncatedError) as info:
        load_image(make_truncated_jpeg(tmp_path))
    assert "cut short" in str(info.value)
    assert "JPEG" in str(info.value)


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.png"
    two_colour().save(path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            # Running as root (or with CAP_DAC_OVERRIDE): permissions do not stop reading, so
            # make opening this one file fail the way it would for anyone else.
            real_open = builtins.open

            def refusing_open(file, *args, **kwargs):
                if os.fspath(file) == os.fspath(path):
                    raise PermissionError(13, "Permission denied", os.fspath(file))
                return real_open(file, *args, **kwargs)

            monkeypatch.setattr(builtins, "open", refusing_open)
        with pytest.raises(ImageUnreadableError) as info:
            load_image(path)
    finally:
        path.chmod(0o644)
    assert_good_error(info.value, "secret.png")
    assert "permission denied" in str(info.value)


def test_not_a_regular_file(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageUnreadableError) as info:
        load_image(fifo)  # must not block reading the pipe
    assert_good_error(info.value, "pipe.png")


def test_missing_relative_path_hint_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageNotFoundError) as info:
        load_image("gone.png")
    assert "gone.png" in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_control_characters_never_reach_the_message(tmp_path):
    with pytest.raises(ImageNotFoundError) as info:
        load_image(tmp_path / "bad\x1b[31mname.png")
    text = str(info.value)
    assert "\x1b" not in text
    assert "bad[31mname.png" in text


def test_control_characters_in_an_existing_file_name(tmp_path):
    path = tmp_path / "evil\x1b]0;title\x07\nname.png"
    path.write_text("not a picture")
    with pytest.raises(NotAnImageError) as info:
        load_image(path)
    text = str(info.value)
    assert "\x1b" not in text and "\x07" not in text and "\n" not in text
    assert "evil]0;title name.png" in text


def test_core_does_not_import_heavy_libraries():
    code = (
        "import sys, vlchat.core.images; "
        "bad = [m for m in ('torch', 'transformers', 'textual') if m in sys.modules]; "
        "sys.exit(', '.join(bad) or 0)"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout


# -- open_ref ---------------------------------------------------------------------------------
def test_open_ref_reads_the_original(tmp_path):
    path = tmp_path / "orig.png"
    two_colour().save(path)
    ref = load_image(path).ref
    image = open_ref(ref)
    assert image.mode == "RGB" and image.size == (40, 20)
    assert image.getpixel((5, 5)) == RED


def test_open_ref_finds_by_hash_after_the_original_is_deleted(tmp_path):
    path = tmp_path / "orig.png"
    two_colour().save(path)
    ref = load_image(path).ref
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(path, store / f"{ref.sha256}.png")
    path.unlink()

    image = open_ref(ref, [store])

    assert image.size == (40, 20)
    assert image.getpixel((35, 5)) == BLUE


def test_open_ref_finds_by_hash_with_any_extension(tmp_path):
    path = tmp_path / "orig.gif"
    two_colour().save(path)
    ref = load_image(path).ref
    store = tmp_path / "store"
    store.mkdir()
    shutil.move(path, store / f"{ref.sha256}.bin")
    assert open_ref(ref, [tmp_path / "nothing-here", store]).getpixel((5, 5)) == RED


def test_open_ref_skips_a_stored_copy_that_does_not_match(tmp_path):
    path = tmp_path / "orig.png"
    two_colour().save(path)
    ref = load_image(path).ref
    store = tmp_path / "store"
    store.mkdir()
    Image.new("RGB", (40, 20), (0, 255, 0)).save(store / f"{ref.sha256}.png")

    assert open_ref(ref, [store]).getpixel((5, 5)) == RED  # falls through to the original


def test_open_ref_refuses_a_changed_file(tmp_path):
    path = tmp_path / "orig.png"
    two_colour().save(path)
    ref = load_image(path).ref
    Image.new("RGB", (40, 20), (0, 255, 0)).save(path)

    with pytest.raises(ImageNotFoundError) as info:
        open_ref(ref, [tmp_path])
    assert_good_error(info.value, "orig.png")
    assert "changed" in str(info.value)


def test_open_ref_missing_everywhere(tmp_path):
    path = tmp_path / "orig.png"
    two_colour().save(path)
    ref = load_image(path).ref
    path.unlink()

    with pytest.raises(ImageNotFoundError) as info:
        open_ref(ref, [tmp_path])
    assert_good_error(info.value, "orig.png")
    assert "missing" in str(info.value)


def test_open_ref_never_globs_with_a_bad_hash(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    ref = ImageRef(sha256="../secret", path=str(tmp_path / "gone.png"), format="PNG", width=1, height=1)
    with pytest.raises(ImageNotFoundError):
        open_ref(ref, [tmp_path / "store"])


# -- previews ---------------------------------------------------------------------------------
def test_preview_image_keeps_aspect_and_never_upscales():
    image = Image.new("RGB", (400, 200), RED)
    small = preview_image(image, 100, 100)
    assert small.size == (100, 50)
    assert small.getpixel((50, 25)) == RED
    assert preview_image(image, 1000, 1000).size == (400, 200)
    assert preview_image(image, 1000, 1000) is not image
    assert preview_image(Image.new("RGB", (1000, 2)), 100, 100).size == (100, 1)
    assert preview_image(image, 300, 40).size == (80, 40)


def test_load_preview_of_a_large_jpeg_is_small(tmp_path, monkeypatch):
    path = tmp_path / "huge.jpg"
    two_colour(6000, 4000).save(path, quality=85)
    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafts.append(size)
        return real_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)

    preview = load_preview(path, 200)

    assert preview.mode == "RGB"
    assert max(preview.size) <= 200
    assert preview.size == (200, 133)
    assert close_to(preview.getpixel((20, 60)), RED, 30)
    assert close_to(preview.getpixel((180, 60)), BLUE, 30)
    assert drafts, "the JPEG should be decoded in draft mode"


def test_load_preview_applies_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    two_colour(600, 300).save(path, exif=exif)
    assert load_preview(path, 100).size == (50, 100)


def test_load_preview_reports_errors_like_load_image(tmp_path):
    with pytest.raises(UnsupportedImageFormatError):
        load_preview(make_heic(tmp_path), 100)
    with pytest.raises(ImageNotFoundError):
        load_preview(tmp_path / "gone.jpg", 100)


# -- the app's start: the same checks without a full decode --------------------------------------------
@pytest.mark.parametrize("fmt, ext, options, tolerance", SUPPORTED, ids=[s[0] for s in SUPPORTED])
def test_inspect_gives_the_same_reference_as_a_full_load(tmp_path, fmt, ext, options, tolerance):
    path = tmp_path / f"picture.{ext}"
    two_colour(40, 20).save(path, fmt, **options)
    assert inspect_image(path) == load_image(path).ref


def test_inspect_stands_the_size_upright_from_exif(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (40, 20), BLUE).save(path, "JPEG", exif=exif)
    ref = inspect_image(path)
    assert (ref.width, ref.height) == (20, 40) and ref == load_image(path).ref


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_inspect_refuses_what_load_refuses_with_the_same_line(tmp_path, case):
    make, kind = ERROR_CASES[case]
    path = make(tmp_path)
    with pytest.raises(kind) as loaded:
        load_image(path)
    with pytest.raises(kind) as inspected:
        inspect_image(path)
    assert str(inspected.value) == str(loaded.value)


def test_inspect_refuses_a_bomb_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(path)
    with pytest.raises(ImageTooLargeError):
        inspect_image(path, max_pixels=10_000_000)
