"""Toy world: determinism, grammar, prompt sets, and the detector's exactness on clean renders."""

from __future__ import annotations

import numpy as np
import pytest

from unlearn.toy import detector, world


def test_render_is_deterministic_and_in_range():
    scene = world.Scene((world.Obj("red", "ring"),), "left")
    a, b = world.render(scene), world.render(scene)
    assert a.shape == (world.NUM_FRAMES, world.HEIGHT, world.WIDTH, 3)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    x = world.to_model_input(a)
    assert x.shape == (3, world.NUM_FRAMES, world.HEIGHT, world.WIDTH)
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_layout_is_on_the_latent_grid_and_stop_motion():
    for scene in world.single_scenes()[:8] + world.two_object_scenes()[:4]:
        pos = world.positions(scene)
        for corners in pos:
            for y, x in corners:
                assert y % world.CELL == 0 and x % world.CELL == 0
                assert 0 <= y <= world.HEIGHT - world.OBJ and 0 <= x <= world.WIDTH - world.OBJ
        # still inside each latent-frame group (frame 0 | 1-4 | 5-8)
        assert pos[1] == pos[2] == pos[3] == pos[4] and pos[5] == pos[6] == pos[7] == pos[8]
    left = world.positions(world.Scene((world.Obj("red", "square"),), "left"))
    assert left[0][0][1] - left[8][0][1] == 2 * world.STEP


def test_shapes_are_coarse_and_distinct():
    masks = {s: world.shape_mask(s) for s in world.SHAPES}
    for s, m in masks.items():
        cells = m.reshape(4, 4, 4, 4).any((1, 3))
        assert np.array_equal(np.kron(cells, np.ones((4, 4), bool)), m), f"{s} is not made of 4x4 cells"
    for a in world.SHAPES:
        for b in world.SHAPES:
            if a < b:
                inter = (masks[a] & masks[b]).sum()
                union = (masks[a] | masks[b]).sum()
                assert inter / union <= 0.75


def test_prompt_roundtrip_and_synonyms():
    for scene in world.all_scenes():
        assert world.parse_prompt(world.prompt(scene)) == scene
    scene = world.parse_prompt("a crimson bar moving up")
    assert scene.colours == ("red",) and scene.objects[0].shape == "bar" and scene.motion == "up"
    two = world.parse_prompt("A violet ring and a golden cross.")
    assert two.colours == ("purple", "yellow") and two.motion == world.STATIC
    rng = np.random.default_rng(0)
    words = {world.training_prompt(world.Scene((world.Obj("red", "square"),), "up"), rng).split()[1] for _ in range(50)}
    assert words == {"red", "crimson", "scarlet"}
    for bad in ["a red circle moving left", "a red square moving sideways", "a pink square moving up", "hello"]:
        with pytest.raises(ValueError):
            world.parse_prompt(bad)
    with pytest.raises(ValueError):
        world.prompt(scene, ("azure",))  # not a word for red


def test_detector_expected_from_prompt():
    e = detector.expected("a scarlet cross moving right")
    assert e == {"colours": ("red",), "shapes": ("cross",), "motion": "right", "n_objects": 1, "colour_words": ("scarlet",)}
    e2 = detector.expected("a blue bar and a crimson square")
    assert e2["colours"] == ("blue", "red") and e2["shapes"] == ("bar", "square")
    assert e2["motion"] == world.STATIC and e2["colour_words"] == ("blue", "crimson")


def test_vocabulary_and_concept_words():
    vocab = world.vocabulary()
    assert {"red", "crimson", "scarlet", "square", "moving", "and", "left"} <= set(vocab)
    assert world.target_words("red") == ("red",)
    assert world.synonym_words("red") == ("crimson", "scarlet")
    assert world.anchor_words("red") == ("green", "blue", "yellow", "purple")
    with pytest.raises(ValueError):
        world.target_words("pink")


def test_eval_rows_deterministic_sized_and_labelled():
    for name in world.EVAL_SETS:
        rows = world.eval_rows(name)
        assert len(rows) == world.FULL_SET_SIZE
        assert rows == world.eval_rows(name)
        assert rows != world.eval_rows(name, seed=1)
        assert len({r["seed"] for r in rows}) == len(rows)
        assert set(rows[0]) == {"prompt", "seed", "concept", "concept_type", "set"}
        for r in rows:
            assert r["set"] == r["concept_type"] == name
            exp = detector.expected(r["prompt"])
            names_red = "red" in exp["colours"]
            assert names_red == (name in ("target", "synonym", "two_target"))
            if name == "target":
                assert exp["colour_words"] == ("red",)
            if name == "synonym":
                assert exp["colour_words"][0] in ("crimson", "scarlet")
            if name.startswith("two"):
                assert exp["n_objects"] == 2
            assert r["concept"] == ("red" if names_red else "+".join(exp["colours"]))
    small = world.eval_rows("target", 8)
    assert len(small) == 8 and len({r["prompt"] for r in small}) == 8  # no repeats below the set size
    assert world.eval_rows("target", 8) == world.eval_rows("target", 8)
    # the unseen-synonym set never contains the word the eraser trains on
    assert all(" red " not in r["prompt"] for r in world.eval_rows("synonym"))
    with pytest.raises(ValueError):
        world.eval_rows("nope")


def test_write_csv(tmp_path):
    import csv

    rows = world.eval_rows("two_target", 4)
    world.write_csv(rows, tmp_path / "p.csv")
    back = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert list(back[0]) == ["prompt", "seed", "concept", "concept_type"]
    assert [b["prompt"] for b in back] == [r["prompt"] for r in rows]


def test_detector_exact_on_every_clean_render():
    scenes = world.all_scenes()
    assert len(scenes) == 80 + 320
    for scene in scenes:
        det = detector.detect(world.render(scene))
        assert detector.agrees(det, scene) == {"colour": True, "shape": True, "motion": True}, (scene, det)
        assert set(det.colours) == set(scene.colours)
        if len(scene.objects) == 1:
            assert det.shape_iou == pytest.approx(1.0)


@pytest.mark.parametrize("jitter", [(1, 0), (0, -2), (-1, 1)])
def test_detector_robust_to_small_offsets(jitter):
    for scene in world.single_scenes():
        det = detector.detect(world.render(scene, jitter))
        assert all(detector.agrees(det, scene).values()), (scene, jitter, det)


def test_detector_on_degraded_frames():
    scene = world.Scene((world.Obj("red", "cross"),), "down")
    clean = world.render(scene)
    # dim, blurred-edge, noisy: colour and motion survive
    rng = np.random.default_rng(0)
    noisy = np.clip(0.8 * clean + rng.normal(0, 0.03, clean.shape), 0, 1).astype(np.float32)
    det = detector.detect(noisy)
    assert det.colour == "red" and det.motion == "down" and det.shape == "cross"
    # an empty video has no colour, an invalid shape and no motion
    empty = np.full_like(clean, world.BACKGROUND)
    det = detector.detect(empty)
    assert det.colours == () and det.colour == detector.NONE
    assert det.shape == detector.INVALID and det.motion == detector.NONE
    # orange (between red and yellow) is neither
    orange = clean.copy()
    orange[world.object_mask(clean)] = (1.0, 0.5, 0.0)
    assert detector.detect(orange).colours == ()
    with pytest.raises(ValueError):
        detector.detect(clean[..., :2])
