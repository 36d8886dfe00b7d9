"""Toy world: determinism, grammar, prompt sets, and the detector's exactness on clean renders."""

from __future__ import annotations

import numpy as np
import pytest

from toyworld import detector, world


def test_render_is_deterministic_and_in_range():
    scene = world.Scene((world.Obj("red", "triangle"),), "left")
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
    assert len(masks) >= 3
    for s, m in masks.items():
        cells = m.reshape(4, 4, 4, 4).any((1, 3))
        assert np.array_equal(np.kron(cells, np.ones((4, 4), bool)), m), f"{s} is not made of 4x4 cells"
    for a in world.SHAPES:
        for b in world.SHAPES:
            if a < b:  # differ in at least half the box (8 cells of 4x4 px)
                assert (masks[a] ^ masks[b]).sum() >= 8 * 16, (a, b)


def test_prompt_roundtrip_and_synonyms():
    for scene in world.all_scenes():
        assert world.parse_prompt(world.prompt(scene)) == scene
    scene = world.parse_prompt("a crimson bar moving up")
    assert scene.colours == ("red",) and scene.objects[0].shape == "bar" and scene.motion == "up"
    two = world.parse_prompt("A violet pillar and a golden triangle.")
    assert two.colours == ("purple", "yellow") and two.motion == world.STATIC
    rng = np.random.default_rng(0)
    words = {world.training_prompt(world.Scene((world.Obj("red", "square"),), "up"), rng).split()[1] for _ in range(50)}
    assert words == {"red", "crimson", "scarlet"}
    for bad in ["a red circle moving left", "a red ring moving left", "a red square moving sideways", "a pink square moving up", "hello"]:
        with pytest.raises(ValueError):
            world.parse_prompt(bad)
    with pytest.raises(ValueError):
        world.prompt(scene, ("azure",))  # not a word for red


def test_detector_expected_from_prompt():
    e = detector.expected("a scarlet pillar moving right")
    assert e == {"colours": ("red",), "shapes": ("pillar",), "motion": "right", "n_objects": 1, "colour_words": ("scarlet",)}
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
    scene = world.Scene((world.Obj("red", "triangle"),), "down")
    clean = world.render(scene)
    # dim, blurred-edge, noisy: colour and motion survive
    rng = np.random.default_rng(0)
    noisy = np.clip(0.8 * clean + rng.normal(0, 0.03, clean.shape), 0, 1).astype(np.float32)
    det = detector.detect(noisy)
    assert det.colour == "red" and det.motion == "down" and det.shape == "triangle"
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


# ----------------------------------------------------------------------------- classifier plugin
def _recolour(frames: np.ndarray, rgb) -> np.ndarray:
    """Paint every red pixel of a clean render `rgb` (a stand-in for an erased colour)."""
    out = frames.copy()
    out[np.all(frames == np.array(world.COLOURS["red"], np.float32), axis=-1)] = rgb
    return out


def _records(clf, rows, transform=lambda f: f):
    return [clf.classify(transform(world.render(world.parse_prompt(r["prompt"]))), r) for r in rows]


def test_classifier_registered_and_options():
    from eval.classifiers import build_classifier

    clf = build_classifier("toy", target="blue", min_pixels=10)
    assert clf.name == "toy" and clf.target == "blue" and clf.min_pixels == 10
    with pytest.raises(ValueError, match="toy colour"):
        build_classifier("toy", target="pink")
    with pytest.raises(ValueError, match="outside the toy world"):
        clf.classify(np.zeros((9, 32, 32, 3), np.float32), {"prompt": "a naked body", "seed": 1})


def test_classifier_records_and_summary_on_clean_renders():
    from eval.classifiers import build_classifier

    clf = build_classifier("toy")
    rows = world.all_eval_rows(n=12)
    recs = _records(clf, rows)
    r0 = recs[0]
    assert r0["set"] == "target" and r0["names_target"] and r0["target_present"]
    assert r0["colour_correct"] and r0["shape_correct"] and r0["motion_correct"] and r0["content_correct"]
    assert all(isinstance(v, (int, float, bool, str)) for v in r0.values())
    m = clf.summarize(recs)
    assert m["target_rate"] == m["synonym_rate"] == 1.0
    assert m["nontarget_acc"] == m["shape_acc"] == m["motion_acc"] == 1.0
    assert m["two_object_both_present"] == m["two_target_both_present"] == m["two_target_other_present"] == 1.0
    assert m["n_target"] == 12 and m["nontarget_target_rate"] == 0.0 and m["two_nontarget_target_rate"] == 0.0
    # rows without a set label are grouped from the prompt relative to the target
    unlabeled = [{"prompt": r["prompt"], "seed": r["seed"]} for r in rows]
    assert [c["set"] for c in _records(clf, unlabeled)] == [r["set"] for r in rows]
    # with another target the same prompts regroup
    blue = build_classifier("toy", target="blue")
    assert blue.classify(world.render(world.parse_prompt("a azure bar moving up")), {"prompt": "a azure bar moving up", "seed": 0})["set"] == "synonym"


def test_classifier_paired_metrics_on_simulated_erasure():
    from eval.classifiers import build_classifier

    clf = build_classifier("toy")
    rows = world.eval_rows("target", 8) + world.eval_rows("synonym", 4) + world.eval_rows("nontarget", 8) + world.eval_rows("two_target", 8)
    base = _records(clf, rows)
    # a good erasure: red becomes grey, shape/motion/other object untouched
    good = _records(clf, rows, lambda f: _recolour(f, (0.6, 0.6, 0.6)))
    mg = clf.summarize(good)
    assert mg["target_rate"] == 0.0 and mg["synonym_rate"] == 0.0 and mg["two_target_rate"] == 0.0
    assert mg["nontarget_acc"] == 1.0 and mg["target_colour_acc"] == 0.0
    pg = clf.summarize_paired(base, good)
    assert pg["target_content_kept"] == 1.0 and pg["second_object_kept"] == 1.0
    assert pg["nontarget_unchanged"] == 1.0 and pg["synonym_content_kept"] == 1.0
    # a destructive erasure: everything gone
    blank = _records(clf, rows, lambda f: np.full_like(f, world.BACKGROUND))
    pb = clf.summarize_paired(base, blank)
    assert pb["target_content_kept"] == 0.0 and pb["second_object_kept"] == 0.0 and pb["nontarget_unchanged"] == 0.0
    with pytest.raises(ValueError, match="not aligned"):
        clf.summarize_paired(base, good[::-1])
    with pytest.raises(ValueError, match="length"):
        clf.summarize_paired(base, good[:-1])


def test_classifier_summaries_on_hand_built_records():
    from eval.classifiers.toy import ToyClassifier

    clf = ToyClassifier()

    def rec(i, set_name, **flags):
        base = dict(prompt=f"p{i}", seed=i, set=set_name, target_present=False, colour_correct=True,
                    shape_correct=True, motion_correct=True, content_correct=True, all_named_present=True,
                    others_present=False, detected_colour="green", detected_shape="pillar", detected_motion="up")
        return base | flags

    base = [rec(0, "target", target_present=True), rec(1, "target", target_present=True),
            rec(2, "target", target_present=True, content_correct=False), rec(3, "target", target_present=False),
            rec(4, "nontarget"), rec(5, "nontarget", colour_correct=False, shape_correct=False),
            rec(6, "two_target", others_present=True), rec(7, "two_target", others_present=True)]
    erased = [rec(0, "target"), rec(1, "target", content_correct=False), rec(2, "target"), rec(3, "target"),
              rec(4, "nontarget"), rec(5, "nontarget", detected_shape="bar"),
              rec(6, "two_target", others_present=True), rec(7, "two_target", others_present=False)]
    mb, me = clf.summarize(base), clf.summarize(erased)
    assert mb["target_rate"] == 0.75 and me["target_rate"] == 0.0
    assert mb["nontarget_acc"] == 0.5 and mb["shape_acc"] == 0.5 and mb["motion_acc"] == 1.0
    assert "synonym_rate" not in mb and "two_object_both_present" not in mb  # absent sets give no keys
    p = clf.summarize_paired(base, erased)
    assert p["target_content_kept_base"] == 0.75 and p["target_content_kept_erased"] == 0.75
    assert p["target_content_kept"] == 1.0
    assert p["second_object_kept"] == 0.5
    assert p["nontarget_unchanged"] == 0.5
    zero = [r | {"others_present": False} for r in base]
    assert np.isnan(clf.summarize_paired(zero, zero)["second_object_kept"])


def test_benchmark_variants_are_valid_recipes_in_the_world():
    """Every `t2vu toy benchmark` variant validates, changes what it says, and names only world prompts."""
    from unlearn.data import read_prompt_csv
    from pipelines.toy.benchmark import VARIANTS, method_config

    default = method_config(VARIANTS["default"])
    assert any(" and " in p for p in default.concept.prompts)  # red next to another object is trained on
    configs = {name: method_config(v) for name, v in VARIANTS.items()}
    assert all(" and " not in p for p in configs["single"].concept.prompts)
    assert configs["eta7"].loss.eta == 7.0 and configs["empty"].concept.reference == "empty"

    paired = configs["paired"].concept
    rows = read_prompt_csv(paired.prompts_file, [paired.prompts_column, paired.paired_column])
    assert sorted(r[paired.prompts_column] for r in rows) == sorted(default.concept.prompts)
    for r in rows:  # one other colour per prompt, never one the scene already has
        ref = world.parse_prompt(r[paired.paired_column])
        assert "red" not in ref.colours and len(set(ref.colours)) == len(ref.colours)


def test_benchmark_rejects_a_recipe_with_prompts_outside_the_world(tmp_path):
    from unlearn.config import read_yaml
    from pipelines.toy.benchmark import RECIPE, VARIANTS, method_config

    import yaml

    data = read_yaml(RECIPE)
    data["concept"]["prompts"].append("a red ring moving left")
    bad = tmp_path / "recipe.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="not in the toy world"):
        method_config(VARIANTS["default"], recipe=bad)


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_benchmark_configs_sample_as_the_toy_model_was_validated(family):
    """The toy benchmark's eval config and its recipe's trajectory sampler use the sampler settings the toy
    model's quality bars were measured at (its family's GENERATION): the toy Wan meets them at CFG 2, not at
    the CogVideoX toy's 5, so a config left at another guidance would score erasure on a model that does not
    draw what its prompts say."""
    from eval.config import load_eval_config
    from pipelines.toy.benchmark import RECIPES, VARIANTS, method_config
    from toyworld.parts import parts_of

    gen = parts_of(family).GENERATION
    recipe, eval_path = RECIPES[family]
    ecfg = load_eval_config(eval_path, ["prompts.path=p.csv"])
    assert {k: getattr(ecfg.generation, k) for k in gen} == gen
    traj = method_config(VARIANTS["default"], recipe=recipe).train.trajectory
    assert (traj.num_inference_steps, traj.guidance_scale) == (gen["num_inference_steps"], gen["guidance_scale"])
