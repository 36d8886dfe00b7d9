"""Bank-then-erase as a training-config key (`bank:`, unlearn/bank_config.py, unlearn/bank_training.py): `t2vu train`
trains the eraser, then the rounds (the real soft-prompt attack at a few steps on the tiny model), into one eraser
file loadable in two lines; a run killed in a round resumes at that round (finished rounds are neither attacked
nor trained again); the Ray paths (the distributed driver, every Tune trial: pipelines.train.post_training) bank
their published eraser into the same file; bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
# 2 rounds of 1 step, 1 pair x 2 restarts of 2 attack steps: ~5 s of attacks on the tiny model
BANK = ("{rounds: 2, steps_per_round: 1, pairs: 1, attack_steps: 2, restarts: 2, attack_pool: 1, attack_batch: 2, "
        "trajectory_steps: 2, preserve_steps: 1, preserve_max_concept: 1.0e9, batch: 2, preserve_batch: 1}")
ARGS = ["--set", "train.steps=2", "--set", f"bank={BANK}"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2VU_CACHE", str(tmp_path / "t2vu"))


def test_t2vu_train_with_a_bank_records_its_rounds_in_an_eraser_loadable_in_two_lines(tiny_model_dir, tmp_path, cache,
                                                                                      capsys):
    from tests.family_cases import loaded_eraser_forward

    from pipelines.cli.entry import main
    from unlearn.bank_config import BankConfig
    from unlearn.eraser import read_eraser

    out = tmp_path / "run"
    args = ["train", "-c", TINY, "-o", str(out), *ARGS]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["bank"]["rounds"], summary["bank"]["bank_rows"], summary["bank"]["preserve_rows"]) == (2, 4, 2)
    assert summary["bank"]["final"]["l_bank"] > 0
    rec = read_eraser(out / "eraser").meta.extra["bank"]
    assert BankConfig(**rec["settings"]) == BankConfig(rounds=2, steps_per_round=1, pairs=1, attack_steps=2,
                                                       restarts=2, attack_pool=1, attack_batch=2, trajectory_steps=2,
                                                       preserve_steps=1, preserve_max_concept=1e9, batch=2,
                                                       preserve_batch=1)
    assert [r["round"] for r in rec["rounds"]] == [0, 1] and [r["bank_rows"] for r in rec["rounds"]] == [2, 4]
    assert [p["warm"] for r in rec["rounds"] for p in r["pairs"]] == [False, True]  # round 1 warm-started
    assert rec["final_losses"] == json.loads((out / "summary.json").read_text())["bank"]["final"]
    curve = [json.loads(line) for line in (out / "bank" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [1, 2] and all(r["l_bank"] > 0 for r in curve)  # one row a round
    assert not (out / "bank" / "checkpoint").exists() and not (out / "checkpoint").exists()
    assert (out / "eraser" / "eraser.safetensors").read_bytes() == (out / "bank" / "eraser" / "eraser.safetensors").read_bytes()

    handle, erased, base = loaded_eraser_forward(tiny_model_dir, out / "eraser")  # the two-line load
    assert len(handle.eraser_set.meta.extra["bank"]["rounds"]) == 2
    assert not torch.allclose(erased, base)
    handle.remove()
    before = (out / "eraser" / "eraser.safetensors").stat().st_mtime_ns
    assert main(args) == 0 and (out / "eraser" / "eraser.safetensors").stat().st_mtime_ns == before  # nothing redone

    # The Ray paths: the driver / a trial publishes the plain eraser, then post_training banks it on a session
    # loaded from that file; the same rounds on the same weights give the same file as single-process t2vu train.
    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.train.post_training import post_training
    from unlearn.trainer import train

    cfg = load_pipeline_config(TINY, [a for a in ARGS if a != "--set"])
    ray_out = tmp_path / "ray"
    train(cfg.model_copy(update={"bank": None}).method(), ray_out, progress=False)  # what fit() + export leave
    done = post_training(cfg, ray_out, ROOT / "configs")
    assert untimed(done["bank"]) == untimed(json.loads((out / "summary.json").read_text())["bank"])
    assert untimed(read_eraser(ray_out / "eraser").meta.extra["bank"]) == untimed(rec)
    for k, v in read_eraser(out / "eraser").state_dict().items():
        torch.testing.assert_close(read_eraser(ray_out / "eraser").state_dict()[k], v, msg=lambda m: f"{k}: {m}")
    before = (ray_out / "eraser" / "eraser.safetensors").read_bytes()
    assert post_training(cfg, ray_out, ROOT / "configs")["bank"]["rounds"] == 2  # a rerun: the finished bank, kept
    assert (ray_out / "eraser" / "eraser.safetensors").read_bytes() == before


def test_a_run_killed_in_a_round_resumes_at_that_round(tmp_path, cache):
    """Killed in round 1's attack: round 0's checkpoint stands; the rerun attacks and trains round 1 only, keeps round
    0's record as it was, and ends with the weights of an uninterrupted run."""
    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.train.bank import soft_prompt_attack
    from unlearn.eraser import read_eraser
    from unlearn.trainer import train

    cfg = load_pipeline_config(TINY, ["train.steps=2", f"bank={BANK}"]).method()
    calls: list[bool] = []

    def attack(kill: bool):
        def factory(session, bank_cfg):
            real = soft_prompt_attack(session, bank_cfg)

            def run(concept, anchor, warm):
                calls.append(warm is not None)
                if kill and warm is not None:  # round 1 (warm-started): the process dies here
                    raise KeyboardInterrupt
                return real(concept, anchor, warm)
            return run
        return factory

    whole = train(cfg, tmp_path / "whole", progress=False, bank_attack=attack(False))
    assert calls == [False, True] and whole["bank"]["rounds"] == 2
    calls.clear()
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False, bank_attack=attack(True))
    ckpt = out / "bank" / "checkpoint"
    assert calls == [False, True] and not (out / "summary.json").exists()
    assert json.loads((ckpt / "state.json").read_text())["step"] == 1  # round 0 finished and checkpointed
    round0 = read_eraser(ckpt / "eraser").meta.extra["bank"]["rounds"]
    assert [r["round"] for r in round0] == [0]
    assert (ckpt / "bank.pt").is_file()  # the bank's rows, listed in the manifest with the rest
    # t2vu plan's host term for the bank (pipelines.plan.memory_check.bank_latents) counts exactly the x_t latents
    # a finished round keeps, fp32 (here: round 0's 2 restarts x (4 x 2 + 2) states + 1 preservation row x 2)
    from pipelines.plan.memory_check import bank_latents

    rows = torch.load(ckpt / "bank.pt", weights_only=True)["rows"]
    states = [s for kind in ("attacked", "preserve") for s in rows[kind]["states"]]
    assert {s.dtype for s in states} == {torch.float32}
    one_round = cfg.model_copy(update={"bank": cfg.bank.model_copy(update={"rounds": 1})})
    assert sum(len(s) for s in states) == bank_latents(one_round) == 22 and bank_latents(cfg) == 44

    calls.clear()
    summary = train(cfg, out, progress=False, bank_attack=attack(False))
    assert calls == [True]  # round 1's attack only: round 0 was not attacked again
    rec = read_eraser(out / "eraser").meta.extra["bank"]
    assert rec["rounds"][0] == round0[0]  # its record (times, losses) as the killed run wrote it
    assert [r["round"] for r in rec["rounds"]] == [0, 1] and [r["bank_rows"] for r in rec["rounds"]] == [2, 4]
    assert summary["bank"]["rounds"] == 2 and not ckpt.exists()
    resumed = read_eraser(out / "eraser").state_dict()
    for k, v in read_eraser(tmp_path / "whole" / "eraser").state_dict().items():
        torch.testing.assert_close(resumed[k], v)  # the same eraser as the run that was never killed


def untimed(record):
    """A bank record without its wall times (`seconds` of each round and attack), which differ from run to run."""
    if isinstance(record, dict):
        return {k: untimed(v) for k, v in record.items() if k != "seconds"}
    return [untimed(v) for v in record] if isinstance(record, list) else record


def _cli(argv, capsys) -> tuple[int, str]:
    from pipelines.cli.entry import main

    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize("bank,where", [("{rounds: 0}", "bank.rounds"), ("{rnds: 3}", "bank.rnds"),
                                        ("{name: erase}", "bank.name"), ("{recipe: tiny.yaml}", "bank.recipe")])
def test_bad_bank_input_is_one_line(tmp_path, capsys, bank, where):
    out = tmp_path / "run"
    rc, err = _cli(["train", "-c", TINY, "-o", str(out), "--set", f"bank={bank}"], capsys)
    assert rc == 2 and where in err and "tiny.yaml" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_bank_keys_are_searchable_and_a_bank_key_without_the_section_is_one_line(tmp_path, capsys):
    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.search.space import apply_sample, check_space

    search = str(ROOT / "configs" / "search" / "tiny.yaml")
    cfg = load_pipeline_config(search, [f"bank={BANK}", "search.space={bank.rounds: {choice: [1, 3]}, "
                                        "bank.w_bank: {loguniform: [0.1, 10.0]}}"])
    check_space(cfg)
    assert apply_sample(cfg, {"bank.rounds": 3, "bank.w_bank": 0.5}).bank.rounds == 3
    rc, err = _cli(["tune", "-c", search, "-o", str(tmp_path / "s"),
                    "--set", "search.space={bank.rounds: {choice: [1, 2]}}"], capsys)  # tiny.yaml has no bank:
    assert rc == 2 and len(err.splitlines()) == 1 and "search.space.bank.rounds" in err and "bank" in err, err
    assert not (tmp_path / "s").exists()


def test_no_bank_keeps_every_digest_and_a_bank_changes_it():
    from pipelines.config.pipeline import load_pipeline_config
    from unlearn.config import config_digest

    plain = load_pipeline_config(TINY).method()
    assert plain.bank is None and "bank" not in plain.model_dump(exclude_none=True)
    assert config_digest(plain) == config_digest(plain.model_copy(update={"bank": None}))
    banked = load_pipeline_config(TINY, [f"bank={BANK}"]).method()
    assert config_digest(banked) != config_digest(plain)  # a bank checkpoint of other settings is not resumed
