"""The steps a training config asks for after its eraser is published, for the Ray paths (`t2vu train
--distributed`'s driver and every Tune trial): the `bank:` rounds (unlearn.bank_training, with the project's
soft-prompt attack) and then the `gate:` probe (unlearn.gate_training), both on the published eraser, both resumable.
Single-process `t2vu train` takes the same two steps on its own session (unlearn.trainer).

Where they run: on this process when the run trains on the CPU; with `distributed.use_gpu` in a Ray task holding one
GPU (the worker group's GPUs are free again once fit() returned), so a driver or trial actor without a GPU never
loads the backbone. They run in one process, not data-parallel: their cost is one training session's (the bank's
attacks and `rounds x steps_per_round` steps; the gate's trajectories), on one GPU.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.config.pipeline import PipelineConfig
from unlearn.bank_config import banked
from unlearn.gate_config import gated


def needs_post_training(cfg: PipelineConfig) -> bool:
    return banked(cfg) or gated(cfg)


def post_training(cfg: PipelineConfig, out: str | Path, config_dir=None) -> dict:
    """{bank, gate}: the records of the steps taken on out/eraser (each absent when the config has none)."""
    if not needs_post_training(cfg):
        return {}
    method = cfg.method()
    if cfg.distributed.use_gpu:
        from pipelines.runtime.ray_session import on_one_gpu

        return on_one_gpu(_post_training, method, str(out), config_dir)
    return _post_training(method, str(out), config_dir)


def _post_training(method, out: str, config_dir) -> dict:
    from pipelines.train.bank import soft_prompt_attack
    from unlearn.trainer import after_training

    return after_training(method, out, soft_prompt_attack, config_dir=config_dir)
