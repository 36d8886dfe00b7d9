"""Bank-then-erase (unlearn/adversarial_bank.py, unlearn/bank_training.py, pipelines/train/bank.py) on the tiny
model, with the real soft-prompt attack at a few steps: the bank grows every round, a round warm-starts from the
previous round's best delta, the training loss reads the bank rows, and the settings round-trip through the config
and the eraser file. The `bank:` key of `t2vu train` (resume, refusals): tests/test_bank_train.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _session():
    from pipelines.config.pipeline import load_pipeline_config
    from unlearn.session import TrainingSession

    session = TrainingSession(load_pipeline_config(ROOT / "configs" / "tiny.yaml").method())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a zero-initialised eraser is the base model: the attack would have nothing to undo
        for prm in session.trainable_parameters():
            prm.copy_(torch.randn(prm.shape, generator=gen) * 0.05)
    return session


def _cfg(**kw):
    from unlearn.adversarial_bank import BankConfig

    return BankConfig(**{"rounds": 2, "steps_per_round": 1, "pairs": 1, "attack_steps": 2,
                         "restarts": 2, "attack_pool": 1, "attack_batch": 2, "trajectory_steps": 2,
                         "preserve_steps": 1, "preserve_max_concept": 1e9, "preserve_shrink": 1, "batch": 2, "preserve_batch": 1, **kw})


def test_bank_grows_warm_starts_trains_on_its_rows_and_is_recorded(tmp_path):
    from pipelines.train.bank import soft_prompt_attack
    from unlearn.adversarial_bank import AdversarialBank, BankConfig, BankObjective
    from unlearn.bank_training import train_with_bank
    from unlearn.eraser import read_eraser

    session, cfg = _session(), _cfg()
    real = soft_prompt_attack(session, cfg)
    calls = []

    def attack(concept, anchor, warm):  # the real attack, its inputs and outputs kept for the checks below
        out = real(concept, anchor, warm)
        calls.append((concept, anchor, warm, *out))
        return out

    record = train_with_bank(session, cfg, attack, tmp_path / "bank", log=lambda *_: None)
    rounds = record["rounds"]
    assert [r["bank_rows"] for r in rounds] == [2, 4]  # 1 pair x 2 restarts a round, rows kept across rounds
    assert [r["preserve_rows"] for r in rounds] == [1, 2]
    (c0, a0, warm0, emb0, info0), (c1, a1, warm1, _, _) = calls
    assert (c0, a0) == (c1, a1) and warm0 is None
    best = min(range(2), key=lambda r: info0["loss_last"][r])  # round 1 starts where round 0's best restart ended
    torch.testing.assert_close(warm1, emb0[best] - session.emb[a0].float())
    assert float(warm1.norm()) > 0
    assert record["final_losses"]["l_bank"] > 0 and "l_adv_preserve" in record["final_losses"]

    meta = read_eraser(tmp_path / "bank" / "eraser").meta.extra["bank"]
    assert BankConfig(**meta["settings"]) == cfg  # the file says how it was made
    assert [r["bank_rows"] for r in meta["rounds"]] == [2, 4]

    # the loss reads the bank rows: the same draw with another bank embedding gives another l_bank, with a gradient
    bank = AdversarialBank()
    x, t = session.source.draw([c0], torch.Generator().manual_seed(0))
    bank.attacked.add(emb0[0].float(), c0, a0, x, t, 0)
    obj = BankObjective(session.objective, bank, cfg.model_copy(update={"batch": 1, "preserve_batch": 0}), session)
    batch = session.batch(0)
    first = obj(batch)
    params = session.trainable_parameters()
    assert torch.cat([g.flatten() for g in torch.autograd.grad(first["l_bank"], params)]).norm() > 0
    obj.gen.manual_seed(cfg.seed)
    bank.attacked.emb[0] = session.emb[a0].float()  # the unperturbed anchor instead of the attack
    second = obj(batch)
    assert float(second["l_bank"].detach()) != pytest.approx(float(first["l_bank"].detach()), rel=1e-6)
    assert float(second["l_unlearn"].detach()) == pytest.approx(float(first["l_unlearn"].detach()), rel=1e-6)  # the recipe's terms stay
    session.objective.detach()


def test_bank_file_is_a_training_config_section_and_bad_input_is_one_line(tmp_path):
    import json

    import yaml

    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.train.bank import bank_section
    from unlearn.bank_config import BankConfig
    from unlearn.config import ConfigError

    section = bank_section(ROOT / "configs" / "banks" / "toy.yaml")
    recipe = ROOT / "configs" / "toy" / "recipe.yaml"
    cfg = load_pipeline_config(recipe, [f"bank={json.dumps(section)}"])
    assert cfg.method().bank == BankConfig(**section) and cfg.bank.rounds == 3 and cfg.bank.pairs == 8
    assert load_pipeline_config(recipe).bank is None  # no key: no bank (the recipe as it was)
    for bad, where in (({"rounds": 0}, "bank.rounds"), ({"rnds": 3}, "bank.rnds"),
                       ({"recipe": "x.yaml"}, "bank.recipe")):  # the recipe is the config the section is in
        with pytest.raises(ConfigError, match=where) as err:
            load_pipeline_config(recipe, [f"bank={json.dumps({**section, **bad})}"])
        assert "\n" not in str(err.value)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"gate": {}}))
    with pytest.raises(ConfigError, match="no `bank:` section"):
        bank_section(tmp_path / "b.yaml")
