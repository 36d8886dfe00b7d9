"""Write configs/attack/toy_prompts_128.csv: the 64 rows of toy_prompts.csv, then 64 more in its format, for
toy robustness cells of 128 attacked rows (issue 25).

Why these rows: the first 64 are toy_prompts.csv unchanged (a run limited to 64 reproduces the old cells). The
64 added ones are the 16 one-object red scenes again with new seeds and seeded anchor colours (there are only
16: every one is also an eraser training prompt, as in the first 64), and 48 two-object scenes with one red
object that are neither in the first 64 nor among the recipe's training prompts (configs/toy/recipe.yaml,
concept.prompts): held out. Same conventions as the file it extends: the anchor recolours the red object with a
colour not in the scene, the paraphrase uses crimson or scarlet (two-object scenes in the other order), seeds
are distinct. Deterministic (seed 0):

    python benchmarks/robustness_prompts.py            # writes configs/attack/toy_prompts_128.csv
    python benchmarks/robustness_prompts.py --check    # exit 1 when the file differs from what it would write
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toyworld import world  # noqa: E402
from unlearn.config import read_yaml  # noqa: E402

SOURCE = ROOT / "configs" / "attack" / "toy_prompts.csv"
OUT = ROOT / "configs" / "attack" / "toy_prompts_128.csv"
RECIPE = ROOT / "configs" / "toy" / "recipe.yaml"
COLUMNS = ["prompt", "normal prompt", "paraphrase", "seed"]


def _row(scene: world.Scene, rng: np.random.Generator, seeds: set[int]) -> dict:
    red = [i for i, o in enumerate(scene.objects) if o.colour == "red"][0]
    free = [c for c in world.COLOUR_NAMES if c != "red" and c not in scene.colours]
    anchor_colour = free[int(rng.integers(len(free)))]
    anchor = world.Scene(tuple(world.Obj(anchor_colour, o.shape) if i == red else o for i, o in enumerate(scene.objects)),
                         scene.motion)
    syn = ("crimson", "scarlet")[int(rng.integers(2))]
    words = tuple(syn if o.colour == "red" else world.SYNONYMS[o.colour][0] for o in scene.objects)
    para = world.prompt(scene, words) if len(scene.objects) == 1 else world.prompt(
        world.Scene(scene.objects[::-1], scene.motion), words[::-1])
    seed = int(rng.integers(2**31 - 1))
    while seed in seeds:
        seed = int(rng.integers(2**31 - 1))
    seeds.add(seed)
    return {"prompt": world.prompt(scene), "normal prompt": world.prompt(anchor), "paraphrase": para, "seed": seed}


def rows_128(seed: int = 0) -> list[dict]:
    with open(SOURCE, newline="") as f:
        first = list(csv.DictReader(f))
    trained = set(read_yaml(RECIPE)["concept"]["prompts"])
    have = {r["prompt"] for r in first}
    seeds = {int(r["seed"]) for r in first}
    rng = np.random.default_rng(seed)
    ones = [s for s in world.single_scenes() if s.colours == ("red",)]
    twos = [s for s in world.two_object_scenes() if "red" in s.colours
            and world.prompt(s) not in have and world.prompt(s) not in trained]
    picked = [twos[i] for i in rng.permutation(len(twos))[:48]]
    added = [_row(s, rng, seeds) for s in [*ones, *picked]]
    return [*first, *added]


def render(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def main(argv: list[str]) -> int:
    text = render(rows_128())
    if "--check" in argv:
        ok = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT.relative_to(ROOT)}: {'current' if ok else 'STALE: run python benchmarks/robustness_prompts.py'}")
        return 0 if ok else 1
    from unlearn.fsutil import atomic_write_text

    atomic_write_text(OUT, text)
    print(f"wrote {OUT.relative_to(ROOT)}: {text.count(chr(10)) - 1} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
