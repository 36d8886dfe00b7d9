"""Procedural toy videos, their prompts, and the benchmark's prompt sets.

A scene is one moving object ("a red square moving left") or two static objects
("a red square and a blue pillar"). Everything is deterministic: the layout is fixed
and a scene renders to exactly one video, so a tiny model can learn the whole world
on one CPU core in minutes and a detector can read it back exactly.

Design choices, each from a measured failure of an earlier probe
(`../shared/notes/toy-world-probe.md`, `toy-vae-probe.md`):
- Fixed layout. With random positions a 4-layer transformer learned colour but not shape
  or motion in a 9-minute budget; with a fixed layout it learned all three.
- Coarse shapes on the VAE's grid. The tiny VAE compresses 4x in space (latent 8x8 for a
  32x32 frame): 2-px features (thin ring, thin cross) came back as blobs and shape
  accuracy was 23%. Objects here are 16x16 px made of 4x4-px cells, placed on the 4-px
  grid, so every edge falls on a latent-cell boundary; shapes differ from each other in
  at least half of their 4x4 cells. In the trained VAE's scaled latents a shape change
  costs an MSE of 0.22-0.26, close to a motion change (0.30) and 5x more than the
  ring-vs-square change of a first version (0.04-0.06), which the transformer learned
  too slowly (a colour change is 1.2-2.5).
- Stop-motion aligned with the VAE's time compression. CogVideoX's VAE maps 9 frames to
  3 latent frames: frame 0 alone, frames 1-4, frames 5-8. Continuous motion smears
  inside a group; here the object stays still inside each group and jumps 4 px
  (one latent cell) between groups, 8 px over the clip - easy to decode, easy to read.
- Two-object scenes are static, first object top-left, second bottom-right (the objects
  touch only at a corner, so colours do not bleed into each other after the VAE).
  Neither probe model bound word order to position, so scoring is order-invariant.
- Colours are saturated primaries/secondaries on a dark grey background, so a pixel's
  hue alone names its colour.

Pixel conventions: `render` returns frames [F, H, W, 3] float32 in [0, 1] (what
`CogVideoXPipeline(..., output_type="np")` returns per video); `to_model_input` gives the
VAE's [C, F, H, W] in [-1, 1].
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- geometry
NUM_FRAMES = 9
HEIGHT = WIDTH = 32
CELL = 4  # px; the VAE's spatial compression factor
OBJ = 16  # object size in px (4x4 cells)
BACKGROUND = 0.08  # plain dark grey, in [0, 1]
STEP = 4  # px per latent-frame group of motion

# 4x4 cell masks, upscaled to 16x16 px. Any two shapes differ in at least 8 of the 16
# cells (a whole half of the box). A first version had square/cross/ring/bar, where ring and
# cross differ from the square in only 4 cells: in the VAE's latent space that difference was
# ~25x smaller than a colour change, the transformer learned it last, and non-red rings came
# out as squares (63% shape accuracy on non-target prompts after 15 CPU-minutes).
# Confusions of a half-trained model look like the square (the union of all shapes).
_SHAPE_CELLS = {
    "square": ["####", "####", "####", "####"],
    "bar": ["....", "####", "####", "...."],  # horizontal, 16x8
    "pillar": [".##.", ".##.", ".##.", ".##."],  # vertical, 8x16
    "triangle": ["....", "#...", "##..", "###."],  # right triangle (staircase), lower left
}
SHAPES: tuple[str, ...] = tuple(_SHAPE_CELLS)

# ----------------------------------------------------------------------------- colours
# Prototype RGB of each colour (max channel 1, so hue = rgb / max(rgb) compares directly).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "purple": (0.8, 0.0, 1.0),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
# Words for each colour; the first is the plain word. All of them appear in base training.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald"),
    "blue": ("blue", "azure"),
    "yellow": ("yellow", "golden"),
    "purple": ("purple", "violet"),
}
WORD_TO_COLOUR: dict[str, str] = {w: c for c, words in SYNONYMS.items() for w in words}

# ----------------------------------------------------------------------------- motion
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down")
STATIC = "static"  # two-object scenes; also what the detector reports for no motion
_DIRECTION = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (dy, dx)
_CENTRE = ((HEIGHT - OBJ) // 2, (WIDTH - OBJ) // 2)  # top-left corner of a centred object
# Latent-frame group of each pixel frame (frame 0 | frames 1-4 | frames 5-8).
_GROUP = tuple(0 if f == 0 else (f - 1) // 4 + 1 for f in range(NUM_FRAMES))
# Two-object layout: top-left corners of the first and second object.
TWO_OBJECT_SLOTS = ((0, 0), (HEIGHT - OBJ, WIDTH - OBJ))

PROMPT_WORDS = ("a", "and", "moving")


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str


@dataclass(frozen=True)
class Scene:
    """One object with a motion, or two static objects (motion == STATIC)."""

    objects: tuple[Obj, ...]
    motion: str = STATIC

    def __post_init__(self) -> None:
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a scene has 1 or 2 objects, got {len(self.objects)}")
        for o in self.objects:
            if o.colour not in COLOURS:
                raise ValueError(f"unknown colour {o.colour!r}; known: {COLOUR_NAMES}")
            if o.shape not in _SHAPE_CELLS:
                raise ValueError(f"unknown shape {o.shape!r}; known: {SHAPES}")
        if len(self.objects) == 1 and self.motion not in MOTIONS:
            raise ValueError(f"a one-object scene moves one of {MOTIONS}, got {self.motion!r}")
        if len(self.objects) == 2:
            if self.motion != STATIC:
                raise ValueError("two-object scenes are static")
            if self.objects[0].colour == self.objects[1].colour:
                raise ValueError("the two objects of a scene have different colours")

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(o.colour for o in self.objects)


def shape_mask(shape: str) -> np.ndarray:
    """The 16x16 boolean mask of a shape."""
    cells = np.array([[ch == "#" for ch in row] for row in _SHAPE_CELLS[shape]])
    return np.kron(cells, np.ones((OBJ // 4, OBJ // 4), dtype=bool)).astype(bool)


def positions(scene: Scene) -> list[list[tuple[int, int]]]:
    """Top-left corner (y, x) of every object in every frame: [frame][object]."""
    if len(scene.objects) == 2:
        return [list(TWO_OBJECT_SLOTS) for _ in range(NUM_FRAMES)]
    dy, dx = _DIRECTION[scene.motion]
    out = []
    for f in range(NUM_FRAMES):
        k = _GROUP[f] - 1  # -1, 0, +1: trajectory centred on the frame
        out.append([(_CENTRE[0] + k * STEP * dy, _CENTRE[1] + k * STEP * dx)])
    return out


def render(scene: Scene, jitter: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Frames [F, H, W, 3] float32 in [0, 1]. `jitter` (dy, dx) shifts everything (VAE training)."""
    video = np.full((NUM_FRAMES, HEIGHT, WIDTH, 3), BACKGROUND, dtype=np.float32)
    for f, corners in enumerate(positions(scene)):
        for obj, (y, x) in zip(scene.objects, corners):
            y, x = y + jitter[0], x + jitter[1]
            m = shape_mask(obj.shape)
            # clip to the frame (only jittered renders can leave it)
            y0, x0 = max(y, 0), max(x, 0)
            y1, x1 = min(y + OBJ, HEIGHT), min(x + OBJ, WIDTH)
            sub = m[y0 - y : y1 - y, x0 - x : x1 - x]
            video[f, y0:y1, x0:x1][sub] = COLOURS[obj.colour]
    return video


def object_mask(frames: np.ndarray) -> np.ndarray:
    """[F, H, W] bool: pixels of a clean render that are not background."""
    return np.abs(frames - BACKGROUND).max(-1) > 1e-6


def to_model_input(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] in [0, 1] -> [3, F, H, W] in [-1, 1] (one VAE input sample)."""
    return np.ascontiguousarray(frames.transpose(3, 0, 1, 2) * 2.0 - 1.0, dtype=np.float32)


# ----------------------------------------------------------------------------- scenes / prompts
def single_scenes() -> list[Scene]:
    """All 80 one-object scenes (5 colours x 4 shapes x 4 motions)."""
    return [
        Scene((Obj(c, s),), m) for c in COLOUR_NAMES for s in SHAPES for m in MOTIONS
    ]


def two_object_scenes() -> list[Scene]:
    """All 320 two-object scenes (ordered pairs of distinct colours x 4 x 4 shapes)."""
    return [
        Scene((Obj(c1, s1), Obj(c2, s2)))
        for c1, c2 in itertools.permutations(COLOUR_NAMES, 2)
        for s1 in SHAPES
        for s2 in SHAPES
    ]


def all_scenes() -> list[Scene]:
    return single_scenes() + two_object_scenes()


def prompt(scene: Scene, words: tuple[str, ...] | None = None) -> str:
    """The prompt of a scene; `words` overrides the colour word of each object (synonyms)."""
    words = words or tuple(SYNONYMS[o.colour][0] for o in scene.objects)
    for w, o in zip(words, scene.objects):
        if WORD_TO_COLOUR.get(w) != o.colour:
            raise ValueError(f"{w!r} is not a word for {o.colour!r}")
    if len(scene.objects) == 1:
        return f"a {words[0]} {scene.objects[0].shape} moving {scene.motion}"
    (a, b), (w1, w2) = scene.objects, words
    return f"a {w1} {a.shape} and a {w2} {b.shape}"


def training_prompt(scene: Scene, rng: np.random.Generator, plain_prob: float = 0.5) -> str:
    """A prompt for base training: the plain colour word with `plain_prob`, else a synonym."""
    words = []
    for o in scene.objects:
        syn = SYNONYMS[o.colour]
        if len(syn) == 1 or rng.random() < plain_prob:
            words.append(syn[0])
        else:
            words.append(syn[1 + int(rng.integers(len(syn) - 1))])
    return prompt(scene, tuple(words))


def parse_prompt(text: str) -> Scene:
    """Inverse of `prompt` (synonyms accepted). Raises ValueError on text outside the grammar."""
    toks = text.strip().lower().rstrip(".").split()

    def obj(colour_word: str, shape: str) -> Obj:
        if colour_word not in WORD_TO_COLOUR:
            raise ValueError(f"unknown colour word {colour_word!r} in {text!r}")
        if shape not in _SHAPE_CELLS:
            raise ValueError(f"unknown shape {shape!r} in {text!r}")
        return Obj(WORD_TO_COLOUR[colour_word], shape)

    if len(toks) == 5 and toks[0] == "a" and toks[3] == "moving":
        if toks[4] not in MOTIONS:
            raise ValueError(f"unknown motion {toks[4]!r} in {text!r}")
        return Scene((obj(toks[1], toks[2]),), toks[4])
    if len(toks) == 7 and toks[0] == "a" and toks[3] == "and" and toks[4] == "a":
        return Scene((obj(toks[1], toks[2]), obj(toks[5], toks[6])))
    raise ValueError(
        f"{text!r} is not a toy-world prompt: expected 'a <colour> <shape> moving <dir>' "
        "or 'a <colour> <shape> and a <colour> <shape>'"
    )


def vocabulary() -> list[str]:
    """Every word a toy prompt can contain (for `build_t5_tokenizer`)."""
    words = set(PROMPT_WORDS) | set(WORD_TO_COLOUR) | set(SHAPES) | set(MOTIONS)
    return sorted(words)


# ----------------------------------------------------------------------------- concept words
def target_words(target: str = "red") -> tuple[str, ...]:
    """The word the eraser trains on (the plain colour word)."""
    _check_colour(target)
    return (SYNONYMS[target][0],)


def synonym_words(target: str = "red") -> tuple[str, ...]:
    """Words for the target the eraser never trains on (known to the base model)."""
    _check_colour(target)
    return SYNONYMS[target][1:]


def anchor_words(target: str = "red") -> tuple[str, ...]:
    """Plain words of the other colours: the anchored reference swaps the target for each."""
    _check_colour(target)
    return tuple(SYNONYMS[c][0] for c in COLOUR_NAMES if c != target)


def _check_colour(c: str) -> None:
    if c not in COLOURS:
        raise ValueError(f"unknown colour {c!r}; known: {COLOUR_NAMES}")


# ----------------------------------------------------------------------------- eval prompt sets
EVAL_SETS: tuple[str, ...] = ("target", "synonym", "nontarget", "two_target", "two_nontarget")
FULL_SET_SIZE = 128


def _set_items(set_name: str, target: str) -> list[tuple[Scene, tuple[str, ...]]]:
    """Every distinct (scene, colour words) of a set, in a fixed order."""
    others = [c for c in COLOUR_NAMES if c != target]
    shape_motion = [(s, m) for s in SHAPES for m in MOTIONS]
    if set_name == "target":
        return [(Scene((Obj(target, s),), m), target_words(target)) for s, m in shape_motion]
    if set_name == "synonym":
        return [
            (Scene((Obj(target, s),), m), (w,)) for w in synonym_words(target) for s, m in shape_motion
        ]
    if set_name == "nontarget":  # every word (plain and synonyms) of every other colour
        return [(Scene((Obj(c, s),), m), (w,)) for c in others for w in SYNONYMS[c] for s, m in shape_motion]
    pairs = [(s1, s2) for s1 in SHAPES for s2 in SHAPES]
    if set_name == "two_target":  # the target first or second, plain words
        items = []
        for c in others:
            for s1, s2 in pairs:
                for scene in (Scene((Obj(target, s1), Obj(c, s2))), Scene((Obj(c, s1), Obj(target, s2)))):
                    items.append((scene, tuple(SYNONYMS[o.colour][0] for o in scene.objects)))
        return items
    if set_name == "two_nontarget":
        return [
            (Scene((Obj(c1, s1), Obj(c2, s2))), (SYNONYMS[c1][0], SYNONYMS[c2][0]))
            for c1, c2 in itertools.permutations(others, 2)
            for s1, s2 in pairs
        ]
    raise ValueError(f"unknown eval set {set_name!r}; known: {EVAL_SETS}")


def eval_rows(set_name: str, n: int = FULL_SET_SIZE, seed: int = 0, target: str = "red") -> list[dict]:
    """`n` deterministic prompt/seed rows of one benchmark set.

    Rows are `{prompt, seed, concept, concept_type, set}`; `concept_type` == `set` == the
    set name, `concept` is the target colour for sets that name it and the named
    colour(s) ("green", "blue+yellow") otherwise. Items are drawn without replacement
    from the set's distinct prompts in a seeded order (a small `n` still spreads over
    shapes, motions and colours); when `n` exceeds them they repeat with new seeds.
    Generation seeds are distinct within a set.
    """
    _check_colour(target)
    if n < 0:
        raise ValueError("n must be >= 0")
    items = _set_items(set_name, target)
    rng = np.random.default_rng([seed, zlib.crc32(f"{set_name}/{target}".encode())])
    order: list[int] = []
    while len(order) < n:
        order.extend(rng.permutation(len(items)).tolist())
    seeds = rng.choice(2**31 - 1, size=n, replace=False) if n else []
    rows = []
    for i, gen_seed in zip(order[:n], seeds):
        scene, words = items[i]
        names_target = target in scene.colours
        concept = target if names_target else "+".join(scene.colours)
        rows.append(
            {
                "prompt": prompt(scene, words),
                "seed": int(gen_seed),
                "concept": concept,
                "concept_type": set_name,
                "set": set_name,
            }
        )
    return rows


def all_eval_rows(n: int = FULL_SET_SIZE, seed: int = 0, target: str = "red") -> list[dict]:
    """`eval_rows` of every set, concatenated in `EVAL_SETS` order."""
    return [r for s in EVAL_SETS for r in eval_rows(s, n, seed, target)]


def write_csv(rows: list[dict], path, with_set: bool = False) -> None:
    """Write rows in the prompt-CSV schema `prompt, seed, concept, concept_type` (+ `set`),
    atomically (an interrupted write never leaves a truncated CSV that a rerun would trust)."""
    from unlearn.csvsafe import csv_text
    from unlearn.fsutil import atomic_write_text

    cols = ["prompt", "seed", "concept", "concept_type"] + (["set"] if with_set else [])
    atomic_write_text(path, csv_text(cols, rows))  # escaped like every CSV the project writes
