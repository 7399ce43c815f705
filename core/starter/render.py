"""Procedural, captioned images: the starter model's whole world.

A scene is one to three copies of a coloured shape, or one coloured character, on a background. It is
drawn with strong jitter (canvas size 32-224 px, scale, rotation, position, shade, background,
anti-aliasing on or off, blur, JPEG) so that what the model learns transfers to images drawn by other
renderers, and described by a caption from varied templates ("a photo of a small red circle on a
striped background", "two green stars", "the letter k"). Everything is a pure function of a seed and
an index, so a run of the pretraining script is repeatable and evaluation images (another seed) are
never training images.

Shapes are drawn as a mask at up to 4x the canvas size and box-filtered down (anti-aliasing), then
coloured over the background; pixels, not vectors, are what reaches the model.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# Hue in degrees (ranges may wrap past 360), saturation and value in [0, 1]: what a person would call
# that colour name, kept apart from its neighbours (red/orange/brown/pink, blue/purple, grey/white).
COLOURS: dict[str, dict[str, tuple[float, float]]] = {
    "red": {"h": (352, 368), "s": (0.75, 1.0), "v": (0.7, 1.0)},
    "green": {"h": (90, 150), "s": (0.6, 1.0), "v": (0.45, 1.0)},
    "blue": {"h": (205, 245), "s": (0.7, 1.0), "v": (0.6, 1.0)},
    "yellow": {"h": (50, 62), "s": (0.75, 1.0), "v": (0.9, 1.0)},
    "orange": {"h": (22, 40), "s": (0.85, 1.0), "v": (0.9, 1.0)},
    "purple": {"h": (268, 305), "s": (0.5, 1.0), "v": (0.4, 0.8)},
    "pink": {"h": (320, 355), "s": (0.22, 0.6), "v": (0.92, 1.0)},
    "brown": {"h": (12, 32), "s": (0.6, 0.9), "v": (0.3, 0.58)},
    "black": {"h": (0, 360), "s": (0.0, 0.2), "v": (0.0, 0.12)},
    "white": {"h": (0, 360), "s": (0.0, 0.06), "v": (0.94, 1.0)},
    "grey": {"h": (0, 360), "s": (0.0, 0.06), "v": (0.42, 0.62)},
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "hexagon", "ring")
PLURALS = {"cross": "crosses"}
SIZES = {"small": (0.22, 0.3), "medium": (0.32, 0.45), "large": (0.5, 0.72)}
SIZE_WORDS = {"small": ("small", "tiny", "little"), "medium": ("",), "large": ("large", "big")}
POSITIONS = {  # centre of a single object, as fractions of the canvas
    "left": ((0.22, 0.34), (0.3, 0.7)),
    "right": ((0.66, 0.78), (0.3, 0.7)),
    "top": ((0.3, 0.7), (0.22, 0.34)),
    "bottom": ((0.3, 0.7), (0.66, 0.78)),
    "center": ((0.42, 0.58), (0.42, 0.58)),
}
POSITION_WORDS = {
    "left": ("on the left",), "right": ("on the right",), "top": ("at the top",),
    "bottom": ("at the bottom",), "center": ("in the center", "in the middle"),
}
BACKGROUNDS = ("plain", "gradient", "noise", "stripes")
BACKGROUND_WORDS = {
    "plain": ("on a plain background",), "gradient": ("on a gradient background",),
    "noise": ("on a noisy background",), "stripes": ("on a striped background", "on stripes"),
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
DIGITS = tuple("0123456789")
LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Fonts that matplotlib ships (a pinned dependency), so every machine draws the same glyphs.
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf")

# Colour x shape pairs never drawn during pretraining: zero-shot on them measures whether colour and
# shape were learnt as separate concepts. About 10% of the 88 pairs, no colour twice.
HELD_OUT_PAIRS = frozenset({
    ("red", "hexagon"), ("green", "heart"), ("blue", "star"), ("yellow", "cross"), ("orange", "ring"),
    ("purple", "square"), ("pink", "triangle"), ("brown", "circle"), ("grey", "star"),
})

SINGULAR_TEMPLATES = (
    "{}", "a {}", "a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a drawing of a {}.",
    "a rendering of a {}.", "a {} shape", "this is a {}.", "there is a {}.",
)
PLURAL_TEMPLATES = ("{}", "a photo of {}.", "a picture of {}.", "an image of {}.", "a drawing of {}.", "there are {}.")


@lru_cache(maxsize=1)
def openai_templates() -> tuple[str, ...]:
    """The 80 prompt templates zero-shot classification ensembles; captions use them too, so the
    ensemble sees phrasings it was trained on."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


@lru_cache(maxsize=None)
def font_path(name: str) -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name)


@lru_cache(maxsize=256)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_path(name), size)


@dataclass(frozen=True)
class Style:
    """How a scene is drawn, beyond what its caption says. Downstream tasks vary it."""

    outline: bool = False  # draw the shape's outline only
    texture: bool = False  # fill with a pattern of the colour instead of a flat colour
    shading: bool = False  # light the object from one side
    min_canvas: int = 32
    max_canvas: int = 224


@dataclass
class Scene:
    kind: str  # "shape" or "char"
    colour: str
    thing: str  # a shape name, or one character
    count: int = 1
    size: str = "medium"
    position: str | None = None  # only for one object
    background: str = "plain"
    font: str = FONTS[0]
    style: Style = field(default_factory=Style)


# ------------------------------------------------------------------------------------------ colour


def canvas_size(rng: np.random.Generator, style: Style) -> int:
    """Mostly around the model's input size (supersampling stands in for large images scaled down),
    sometimes small (blocky once scaled up) or large."""
    low, high = style.min_canvas, style.max_canvas
    if rng.random() < 0.85:
        high = min(high, max(low, 96))
    return int(rng.integers(low, high + 1))


def sample_colour(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    ranges = COLOURS[name]
    h = rng.uniform(*ranges["h"]) % 360
    s, v = rng.uniform(*ranges["s"]), rng.uniform(*ranges["v"])
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h / 360, s, v))


def _background_colour(rng: np.random.Generator, object_value: float) -> np.ndarray:
    """A low-saturation colour whose brightness stands apart from the object's, so the object's own
    colour is the saturated thing in the picture."""
    for _ in range(20):
        v = rng.uniform(0.05, 1.0)
        if abs(v - object_value) >= 0.3:
            break
    s = rng.uniform(0.0, 0.18)
    return np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), s, v), dtype=np.float32) * 255


def _value(rgb: tuple[int, int, int]) -> float:
    return max(rgb) / 255


# -------------------------------------------------------------------------------------- background


def draw_background(rng: np.random.Generator, kind: str, size: int, object_value: float) -> np.ndarray:
    """An HxWx3 float array in [0, 255]."""
    c1 = _background_colour(rng, object_value)
    if kind == "plain":
        return np.broadcast_to(c1, (size, size, 3)).copy()
    if kind == "gradient":
        c2 = _background_colour(rng, object_value)
        angle = rng.uniform(0, 2 * math.pi)
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
        t = (x * math.cos(angle) + y * math.sin(angle))
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        return c1 * (1 - t[..., None]) + c2 * t[..., None]
    if kind == "noise":
        sigma = rng.uniform(12, 40)
        cells = int(rng.choice([size, max(2, size // 4), max(2, size // 8)]))  # fine grain to blotches
        noise = rng.normal(0, sigma, (cells, cells, 1)).astype(np.float32)
        if cells != size:
            noise = np.asarray(Image.fromarray(noise[..., 0]).resize((size, size), Image.Resampling.BILINEAR))[..., None]
        return np.clip(c1 + noise, 0, 255)
    if kind == "stripes":
        c2 = _background_colour(rng, object_value)
        period = rng.uniform(size / 14, size / 4)
        angle = rng.uniform(0, math.pi)
        y, x = np.mgrid[0:size, 0:size]
        phase = (x * math.cos(angle) + y * math.sin(angle)) / period
        on = (np.floor(phase) % 2 == 0)[..., None]
        return np.where(on, c1, c2)
    raise ValueError(f"unknown background {kind!r}")


# ------------------------------------------------------------------------------------------ shapes


def _regular(n: int, phase: float = -math.pi / 2) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def shape_outline(rng: np.random.Generator, shape: str) -> list[np.ndarray]:
    """Polygons in unit coordinates (about [-1, 1]); for a ring, the outer and the inner circle."""
    if shape == "circle":
        return [_regular(72)]
    if shape == "ring":
        inner = rng.uniform(0.5, 0.68)
        return [_regular(72), inner * _regular(72)]
    if shape == "square":
        return [_regular(4, math.pi / 4) * 1.0]
    if shape == "triangle":
        return [_regular(3) * 1.05 + np.array([0, 0.2])]
    if shape == "hexagon":
        return [_regular(6)]
    if shape == "star":
        inner = rng.uniform(0.38, 0.5)
        points = _regular(10)
        points[1::2] *= inner
        return [points]
    if shape == "cross":
        w = rng.uniform(0.28, 0.4)
        return [np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
                          (-1, w), (-1, -w), (-w, -w)])]
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 80, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        points = np.stack([x, y], axis=1) / 17
        return [points + np.array([0, 0.1])]
    raise ValueError(f"unknown shape {shape!r}")


# Beyond these angles a shape repeats itself (or, for the heart, stops looking like one).
_ROTATION = {"circle": 0, "ring": 0, "heart": 25, "triangle": 180, "square": 45, "hexagon": 30, "star": 36, "cross": 45}


def _angle(rng: np.random.Generator, shape: str) -> float:
    """Mostly upright, as people draw shapes (a square stands on a side, a triangle points up), tilted
    a little; one shape in six at any angle, so that a diamond is still a square."""
    limit = _ROTATION[shape]
    if rng.random() < 1 / 6:
        return math.radians(rng.uniform(-limit, limit))
    return math.radians(float(np.clip(rng.normal(0, 8), -limit, limit)))


def _transform(points: np.ndarray, center: tuple[float, float], radius: float, angle: float, aspect: float) -> list[tuple[float, float]]:
    scaled = points * np.array([aspect, 1 / aspect])
    c, s = math.cos(angle), math.sin(angle)
    rotated = scaled @ np.array([[c, s], [-s, c]])
    return [tuple(p) for p in rotated * radius + np.array(center)]


def _draw_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, scene: Scene, center, radius: float) -> None:
    polygons = shape_outline(rng, scene.thing)
    angle = _angle(rng, scene.thing)
    aspect = rng.uniform(0.9, 1.1)
    outer = _transform(polygons[0], center, radius, angle, aspect)
    if scene.style.outline:
        width = max(1, int(radius * rng.uniform(0.1, 0.2)))
        for polygon in polygons:
            points = _transform(polygon, center, radius, angle, aspect)
            draw.line(points + points[:1], fill=255, width=width, joint="curve")
        return
    draw.polygon(outer, fill=255)
    for hole in polygons[1:]:
        draw.polygon(_transform(hole, center, radius, angle, aspect), fill=0)


def _draw_char(mask: Image.Image, rng: np.random.Generator, scene: Scene, center, radius: float) -> None:
    font = _font(scene.font, max(6, int(radius * 2.2)))
    glyph = Image.new("L", (int(radius * 3) + 4,) * 2, 0)
    draw = ImageDraw.Draw(glyph)
    box = draw.textbbox((0, 0), scene.thing, font=font)
    offset = ((glyph.width - (box[2] + box[0])) / 2, (glyph.height - (box[3] + box[1])) / 2)
    if scene.style.outline:
        draw.text(offset, scene.thing, font=font, fill=0, stroke_width=max(1, int(radius * 0.08)), stroke_fill=255)
    else:
        draw.text(offset, scene.thing, font=font, fill=255)
    glyph = glyph.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BILINEAR)
    mask.paste(255, (int(center[0] - glyph.width / 2), int(center[1] - glyph.height / 2)), glyph)


def _centres(rng: np.random.Generator, scene: Scene, radius: float) -> list[tuple[float, float]]:
    """Object centres in canvas fractions: within the scene's position, apart from each other."""
    if scene.position is not None:
        (x0, x1), (y0, y1) = POSITIONS[scene.position]
        return [(rng.uniform(x0, x1), rng.uniform(y0, y1))]
    lo, hi = radius + 0.02, 1 - radius - 0.02
    placed: list[tuple[float, float]] = []
    for _ in range(200):
        if len(placed) == scene.count:
            break
        candidate = (rng.uniform(lo, hi), rng.uniform(lo, hi))
        if all(math.dist(candidate, p) > 2.1 * radius for p in placed):
            placed.append(candidate)
    while len(placed) < scene.count:  # crowded: let them touch rather than loop forever
        placed.append((rng.uniform(lo, hi), rng.uniform(lo, hi)))
    return placed


def _styled_paint(rng: np.random.Generator, style: Style, colour: tuple[int, int, int], size: int) -> np.ndarray:
    """The object's fill for styled scenes: a pattern of the colour, light from one side, or both."""
    paint = np.broadcast_to(np.array(colour, dtype=np.float32), (size, size, 3))
    if style.texture:  # the colour as dots over a darker version of it
        y, x = np.mgrid[0:size, 0:size]
        period = rng.uniform(3, 7) * size / 64
        pattern = ((np.sin(x / period * math.pi) * np.sin(y / period * math.pi)) > 0)[..., None]
        paint = np.where(pattern, paint, paint * rng.uniform(0.3, 0.6))
    if style.shading:
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
        angle = rng.uniform(0, 2 * math.pi)
        light = 0.75 + 0.5 * ((x * math.cos(angle) + y * math.sin(angle)) % 1.0)[..., None]
        paint = paint * light
    return np.clip(paint, 0, 255).astype(np.uint8)


def draw_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """The scene as an RGB image of a random size (the model's preprocessing resizes it)."""
    size = canvas_size(rng, scene.style)
    # 1: hard, aliased edges as some renderers draw them; 2-4: smooth, as a large image scaled down.
    supersample = int(rng.choice([1, 2, 4])) if size <= 128 else 1
    colour = sample_colour(rng, scene.colour)
    background = draw_background(rng, scene.background, size, _value(colour))

    low, high = SIZES[scene.size]
    if scene.count > 1:  # several objects share the canvas
        low, high = low * 0.7, min(high, 0.45) * 0.7
    radius = rng.uniform(low, high) / 2  # as a fraction of the canvas
    big = size * supersample
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for cx, cy in _centres(rng, scene, radius):
        if scene.kind == "shape":
            _draw_shape(draw, rng, scene, (cx * big, cy * big), radius * big)
        else:
            _draw_char(mask, rng, scene, (cx * big, cy * big), radius * big)
    if supersample > 1:
        mask = mask.resize((size, size), Image.Resampling.BOX)

    backdrop = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    if not (scene.style.texture or scene.style.shading):  # the common case, composited in C
        image = Image.composite(Image.new("RGB", (size, size), colour), backdrop, mask)
    else:
        image = Image.composite(Image.fromarray(_styled_paint(rng, scene.style, colour, size), "RGB"), backdrop, mask)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.2) * size / 64))
    if rng.random() < 0.2:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(30, 90)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


# ----------------------------------------------------------------------------------------- captions


def plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


# What a caption can say about a scene. The object and how many there are are always said (a
# singular noun says "one"); the rest only when the caption mentions it.
ATTRIBUTES = ("thing", "count", "colour", "size", "position", "background")
_THINGS = SHAPES + DIGITS + LETTERS


def attributes(scene: Scene) -> np.ndarray:
    """The scene's attributes as integers, in ATTRIBUTES order (-1: no position)."""
    return np.array([
        _THINGS.index(scene.thing), scene.count, list(COLOURS).index(scene.colour), list(SIZES).index(scene.size),
        list(POSITIONS).index(scene.position) if scene.position else -1, BACKGROUNDS.index(scene.background),
    ])


@dataclass(frozen=True)
class Caption:
    text: str
    mentions: frozenset[str]  # the ATTRIBUTES the text states

    def mask(self) -> np.ndarray:
        return np.array([name in self.mentions for name in ATTRIBUTES])


def describe(scene: Scene, rng: np.random.Generator) -> Caption:
    """A caption of the scene; attributes beyond colour and object are mentioned only sometimes,
    as people do."""
    said = {"thing", "count"}
    if scene.kind == "char":
        kind = "digit" if scene.thing in DIGITS else "letter"
        thing = f"{kind} {scene.thing.lower()}"
        colour = f"{scene.colour} " if rng.random() < 0.6 else ""
        options = [f"the {thing}", f"a {colour}{thing}", f"the {colour}{thing}"]
        if kind == "digit":
            options.append(f"the number {scene.thing}")
        text = options[int(rng.integers(len(options)))]
        if scene.colour in text.split():
            said.add("colour")
        template = str(rng.choice(("{}", "a photo of {}.", "an image of {}.", "a picture of {}.")))
        return Caption(template.format(text), frozenset(said))

    words = []
    if scene.count > 1:
        words.append(COUNT_WORDS[scene.count])
    if rng.random() < 0.5:
        size_word = str(rng.choice(SIZE_WORDS[scene.size]))
        if size_word:
            words.append(size_word)
            said.add("size")
    if rng.random() < 0.95:
        words.append(scene.colour)
        said.add("colour")
    words.append(plural(scene.thing) if scene.count > 1 else scene.thing)
    if scene.position is not None and rng.random() < 0.5:
        words.append(str(rng.choice(POSITION_WORDS[scene.position])))
        said.add("position")
    if rng.random() < 0.3:
        words.append(str(rng.choice(BACKGROUND_WORDS[scene.background])))
        said.add("background")
    text = " ".join(words)
    if scene.count > 1:
        return Caption(str(rng.choice(PLURAL_TEMPLATES)).format(text), frozenset(said))
    templates = SINGULAR_TEMPLATES if rng.random() < 0.5 else openai_templates()
    return Caption(templates[int(rng.integers(len(templates)))].format(text), frozenset(said))


# ------------------------------------------------------------------------------------------ scenes


def colour_shape_pairs(held_out: bool) -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in HELD_OUT_PAIRS) == held_out]


def sample_scene(rng: np.random.Generator, progress: float = 1.0, char_share: float = 0.15) -> Scene:
    """A pretraining scene: a colour x shape pair that is not held out, or a character.

    `progress` (0 to 1) is how far pretraining has come. Early scenes are easier (one object, larger,
    on a plain or gradient background), so that the image tower learns shapes before it has to find
    them small, in twos and threes, on noise and stripes; from halfway on, every kind of scene is as
    likely as it will ever be (uniform sizes and backgrounds, one scene in five with several objects).
    """
    hard = min(1.0, progress / 0.5)
    busy = rng.random() < 0.5 * hard
    background = str(rng.choice(["noise", "stripes"] if busy else ["plain", "gradient"]))
    colour_names = list(COLOURS)
    if rng.random() < char_share:
        chars = DIGITS + LETTERS
        return Scene("char", colour_names[int(rng.integers(len(colour_names)))], chars[int(rng.integers(len(chars)))],
                     size=str(rng.choice(["medium", "large"])), background=background,
                     font=FONTS[int(rng.integers(len(FONTS)))])
    pairs = colour_shape_pairs(held_out=False)
    colour, shape = pairs[int(rng.integers(len(pairs)))]
    count = int(rng.choice([2, 3])) if rng.random() < 0.2 * hard else 1
    if count > 1:
        size = str(rng.choice(["small", "medium"]))
    else:
        weights = np.array([hard, 1.0, 2.0 - hard])  # small, medium, large
        size = list(SIZES)[int(rng.choice(3, p=weights / weights.sum()))]
    position = str(rng.choice(list(POSITIONS))) if count == 1 and rng.random() < 0.4 else None
    return Scene("shape", colour, shape, count=count, size=size, position=position, background=background)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """Sample `index` of stream `seed`: the same picture in every process and on every machine."""
    return np.random.default_rng([seed, index])


def pretraining_sample(seed: int, index: int, progress: float = 1.0) -> tuple[Scene, Image.Image, Caption]:
    rng = scene_rng(seed, index)
    scene = sample_scene(rng, progress)
    return scene, draw_scene(scene, rng), describe(scene, rng)
