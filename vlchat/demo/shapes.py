"""Synthetic pictures for the demo model: one, two or three shapes of one colour on a background.

The same generator makes the training data, the accuracy tests' fresh pictures and the bundled
samples, so what the demo model is asked about is exactly what it was taught.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (245, 225, 20),
    "orange": (250, 140, 0),
    "purple": (140, 40, 170),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
PLURALS = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    count: int

    def describe(self) -> str:
        if self.count == 1:
            return f"{article(self.colour).capitalize()} {self.colour} {self.shape} on {article(self.background)} {self.background} background."
        return (f"{NUMBER_WORDS[self.count].capitalize()} {self.colour} {PLURALS[self.shape]} "
                f"on {article(self.background)} {self.background} background.")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# The bundled weights were trained on targets that said "crosss" and "a orange". Retraining takes
# far longer than a fix should (two stages, thousands of steps on one CPU thread), so the demo's
# tokenizer maps between the two spellings instead: its normalizer turns each grammatical form
# into the one the weights know, its decoder turns it back. Both are part of tokenizer.json and
# of build_tokenizer(), so a retrained model (from the grammatical targets above) agrees with them.
WORDING: tuple[tuple[str, str], ...] = (
    ("crosses", "crosss"),
    ("An orange", "A orange"),
    (" an orange", " a orange"),
)


def random_scene(rng: random.Random) -> Scene:
    colour, background = rng.sample(sorted(COLOURS), 2)
    count = rng.choices((1, 2, 3), weights=(2, 1, 1))[0]
    return Scene(rng.choice(SHAPES), colour, background, count)


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        s = r * 0.8
        return [(cx + x * s, cy + y * s) for x, y in corners]
    if shape == "triangle":
        return [
            (cx + r * math.cos(turn + a), cy + r * math.sin(turn + a))
            for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)]
    if shape == "star":
        points = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.42
            a = -math.pi / 2 + i * math.pi / 5
            points.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return points
    if shape == "cross":
        w = r * 0.33
        outline = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        return [(cx + x, cy + y) for x, y in outline]
    raise ValueError(shape)


GRID = 4  # shapes sit in the cells of a 4x4 grid: one cell is one 16x16 patch of the demo model's 64x64 view


def draw_scene(scene: Scene, size: int = 256, rng: random.Random | None = None) -> Image.Image:
    """Draw ``scene`` on a ``size`` x ``size`` canvas; cells, sizes and offsets vary with ``rng``.

    Each shape fills most of one grid cell. A vision transformer this small learns shapes far more
    surely when a shape lies within one of its patches than when it straddles four.
    """
    return draw_scene_cells(scene, size, rng)[0]


def draw_scene_cells(
    scene: Scene, size: int = 256, rng: random.Random | None = None
) -> tuple[Image.Image, list[int]]:
    """``draw_scene``, also returning the grid cells (row-major) that hold a shape."""
    rng = rng or random.Random(0)
    scale = 4  # draw large and shrink: smooth edges like a real picture's
    canvas = size * scale
    cell = canvas / GRID
    image = Image.new("RGB", (canvas, canvas), _jitter(COLOURS[scene.background], rng, 12))
    draw = ImageDraw.Draw(image)
    fill = _jitter(COLOURS[scene.colour], rng, 12)
    cells = rng.sample(range(GRID * GRID), scene.count)
    for index in cells:
        r = rng.uniform(0.36, 0.45) * cell
        slack = 0.5 * cell - r
        cx = (index % GRID + 0.5) * cell + rng.uniform(-slack, slack) * 0.6
        cy = (index // GRID + 0.5) * cell + rng.uniform(-slack, slack) * 0.6
        if scene.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_polygon(scene.shape, cx, cy, r, 0.0), fill=fill)
    return image.resize((size, size), Image.LANCZOS), sorted(cells)


# -- questions and answers ----------------------------------------------------------------------
QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour": (
        "What colour is the shape?",
        "What color is the shape?",
        "What colour is it?",
        "What colour are the shapes?",
        "Which colour is the shape?",
    ),
    "shape": (
        "What shape is it?",
        "What shape is this?",
        "Which shape is in the picture?",
        "What shapes are these?",
        "What kind of shape is it?",
    ),
    "background": (
        "What colour is the background?",
        "What color is the background?",
        "Which colour is the background?",
    ),
    "count": (
        "How many shapes are there?",
        "How many shapes are in the picture?",
        "How many shapes can you see?",
    ),
    "describe": (
        "Describe the picture.",
        "Describe the picture in one sentence.",
        "What is in the picture?",
        "Describe this image.",
        "What do you see?",
    ),
}
QUESTION_TYPES: tuple[str, ...] = tuple(QUESTIONS)

OFF_TOPIC = (
    "Who are you?",
    "Hello!",
    "What is the capital of France?",
    "Tell me a joke.",
    "What can you do?",
)
OFF_TOPIC_ANSWER = (
    "I am the vlchat demo model. I can tell the colour, shape and number of shapes in a picture, "
    "and the colour of its background."
)
# What the model says when it is asked about a picture and none was given (`vlchat ask` with no
# picture, or the app before one is attached): taught, not guessed at.
NO_PICTURE_ANSWER = "I see no picture. Give me one with your question."
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "Answer briefly.",
    "You are the vlchat demo model.",
    "You describe pictures.",
)


def answer(scene: Scene, kind: str) -> str:
    many = scene.count > 1
    if kind == "colour":
        return f"The shapes are {scene.colour}." if many else f"The shape is {scene.colour}."
    if kind == "shape":
        return f"They are {PLURALS[scene.shape]}." if many else f"It is a {scene.shape}."
    if kind == "background":
        return f"The background is {scene.background}."
    if kind == "count":
        if many:
            return f"There are {NUMBER_WORDS[scene.count]} shapes."
        return "There is one shape."
    if kind == "describe":
        return scene.describe()
    raise ValueError(kind)
