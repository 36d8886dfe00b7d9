"""Eval actors on a Ray cluster with fewer GPUs than the config asks for (issue 22): capped with one line, and
every wait on Ray ends by `runtime.ray_timeout_s` with one line naming what never came.

The shared test Ray (tests/conftest.py `ray_session`) has ONE logical GPU and no device behind it: the actors
ask for it like real GPU actors (`runtime.use_gpu: true`) and generate on the CPU (`model.device: cpu`).
Before the fix `runtime.num_actors: 2` with one GPU each waited for ever on this cluster.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import pytest
import yaml

from eval.config import EvalConfig
from eval.ray_waits import RayWaitTimeout, actors_that_fit, wait_any

pytestmark = pytest.mark.timeout(300)  # before the fix: these waits never ended

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "prompts"


def eval_data(out_runtime: dict) -> dict:
    """2 rows (1 target, 1 preserve) of the tiny model, 2 sampler steps, base videos only (no eraser)."""
    return {
        "model": {"path": "builtin:tiny", "dtype": "float32", "device": "cpu"},
        "prompts": {"path": str(EXAMPLES / "nudity_example.csv"), "limit": 1},
        "preserve": {"path": str(EXAMPLES / "preserve_example.csv"), "limit": 1},
        "generation": {"num_inference_steps": 2, "num_frames": 9, "height": 32, "width": 32, "scheduler": "ddim",
                       "vae_tiling": False, "vae_slicing": False},
        "classifier": {"name": "nudenet", "nudenet": {"frames": 1, "threshold": 0.5}},
        "output": {"grid_rows": 2, "gif_height": 32, "grid_height": 32},
        "runtime": {"scorer": "thread", "progress": False, "use_gpu": True, **out_runtime},
    }


@pytest.mark.timeout(300)  # before the fix: a hang
def test_eval_asking_more_gpus_than_the_cluster_has_runs_capped(ray_session, tmp_path):
    from eval.runner import run_eval

    assert ray_session.cluster_resources().get("GPU") == 1
    cfg = EvalConfig.model_validate(eval_data({"num_actors": 2, "ray_timeout_s": 240}))
    console = io.StringIO()
    s = run_eval(cfg, tmp_path / "capped", progress_file=console)
    assert s["rows_evaluated"] == 2 and len(s["workers"]) == 1
    lines = [ln for ln in console.getvalue().splitlines() if "runtime.num_actors" in ln]
    assert lines == ["runtime.num_actors=2 asks for 2 GPUs but the Ray cluster has 1; running 1 eval actor "
                     "(GPU 1, CPU 1 each)"]


def test_a_gpu_that_never_comes_ends_the_eval_in_one_line(ray_session, tmp_path, capsys):
    """Another job holds the one GPU: the eval actor is never placed; `t2vu eval` ends at the deadline, exit 2."""
    from pipelines.cli.entry import main

    @ray_session.remote(num_gpus=1, num_cpus=0)
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()
    ray_session.get(holder.ready.remote(), timeout=60)
    try:
        config = tmp_path / "eval.yaml"
        config.write_text(yaml.safe_dump(eval_data({"num_actors": 1, "ray_timeout_s": 3})))
        t0 = time.perf_counter()
        rc = main(["eval", "-c", str(config), "-o", str(tmp_path / "out")])
        waited = time.perf_counter() - t0
    finally:
        ray_session.kill(holder)
    err = capsys.readouterr().err
    error_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(error_lines) == 1 and "Traceback" not in err, err
    line = error_lines[0]
    assert "1 of 1 eval actors never got their Ray resources (GPU 1, CPU 1 each) within 3 s" in line, line
    assert re.search(r"\(runtime.ray_timeout_s\): the Ray cluster has GPU 1, CPU \d+ in all and GPU 0, CPU \d+ free "
                     r"now \(other jobs or trials hold the rest\)", line), line
    assert waited < 60


def test_no_room_for_one_actor_is_refused_before_any_actor_starts(ray_session, tmp_path):
    from eval.runner import run_eval
    from unlearn.config import ConfigError

    fit, totals, grows = actors_that_fit({"CPU": 1000.0, "GPU": 1.0})
    assert fit == 0 and totals["GPU"] == 1 and grows is False  # a local Ray: no autoscaler to grow it
    cfg = EvalConfig.model_validate(eval_data({"num_actors": 2, "cpus_per_actor": 1000}))
    with pytest.raises(ConfigError, match=r"runtime.num_actors=2 asks for 1000 CPUs but the Ray cluster has \d+ "
                                          r"per eval actor: no eval actor can start; set runtime.use_gpu"):
        run_eval(cfg, tmp_path / "none")


def test_a_row_that_never_finishes_ends_at_the_deadline(ray_session):
    """The rows' wait (eval.backends.RayBackend.run) goes through the same helper: a task that does not finish."""

    @ray_session.remote(num_cpus=0)
    def stuck():
        time.sleep(120)

    ref = stuck.remote()
    t0 = time.perf_counter()
    try:
        with pytest.raises(RayWaitTimeout, match="no row finished"):
            wait_any([ref], 1.0, lambda: "no row finished")
    finally:
        ray_session.cancel(ref, force=True)
    assert time.perf_counter() - t0 < 30


def test_a_training_worker_group_larger_than_the_cluster_is_refused(ray_session, tmp_path):
    """The same kind of wait in pipelines/: Ray Train retries a worker group that cannot start for ever (`t2vu train
    --distributed` and every search trial); 2 one-GPU workers on this 1-GPU Ray end in one line instead."""
    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.train.driver import run_distributed
    from unlearn.config import ConfigError

    cfg = load_pipeline_config(REPO / "configs" / "tiny.yaml", [
        "distributed.num_workers=2", "distributed.backend=gloo", "train.steps=2",
        "distributed.use_gpu=true", f"train.cache_dir={tmp_path / 'emb'}"])
    with pytest.raises(ConfigError, match=r"distributed.num_workers=2 asks for 2 GPUs but the Ray cluster has 1 "
                                          r"\(GPU 1, CPU 1 per worker\): Ray Train would wait for them for ever"):
        run_distributed(cfg, tmp_path / "train")


@pytest.mark.slow
def test_a_worker_group_whose_resources_others_hold_ends_in_one_line_at_its_deadline(ray_session, tmp_path):
    """The cluster could hold the worker group, but something else holds its CPUs (another job, a trial, a group
    left behind): Ray Train retried such a group every 60 s for ever, silently (a CI run hung 40 min on it). With
    distributed.start_timeout_s it ends in one line naming what is free; the refusal above is for groups that can
    never fit, this is for those that could but do not get their resources in time."""
    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.runtime.ray_session import start_retries
    from pipelines.train.driver import run_distributed

    assert os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] == "10"  # tests/conftest.py: one 10 s attempt
    assert (start_retries(10), start_retries(25), start_retries(None)) == (0, 2, -1)
    total = ray_session.cluster_resources()["CPU"]

    @ray_session.remote(num_cpus=total - 1)
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()
    ray_session.get(holder.ready.remote(), timeout=60)
    cfg = load_pipeline_config(REPO / "configs" / "tiny.yaml", [
        "distributed.num_workers=2", "distributed.backend=gloo", "train.steps=2", "distributed.start_timeout_s=10",
        f"train.cache_dir={tmp_path / 'emb'}"])
    t0 = time.perf_counter()
    try:
        with pytest.raises(RayWaitTimeout) as err:
            run_distributed(cfg, tmp_path / "train")
    finally:
        ray_session.kill(holder)
    assert time.perf_counter() - t0 < 120
    assert str(err.value) == (
        f"the Ray Train worker group (2 x CPU 1) did not get its Ray resources within 10 s "
        f"(distributed.start_timeout_s): the Ray cluster has CPU {total:g} in all and CPU 1 free now (other jobs, "
        "trials or leftovers hold the rest); free them, or raise distributed.start_timeout_s (null: wait for ever)")


def test_a_gpu_task_started_inside_a_trials_placement_group_runs(ray_session):
    """A Tune trial's placement group holds only its driver's CPU, and Tune captures the trial's child tasks into it:
    a plain `ray.remote(num_gpus=1)` task started there (the trial's bank rounds, gate probe, objective attack) cannot
    fit in it and fails the trial. `on_one_gpu` schedules outside the group and gets the cluster's GPU."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from pipelines.runtime.ray_session import on_one_gpu

    pg = placement_group([{"CPU": 1}])  # what tune.PlacementGroupFactory([{"CPU": 1}]) reserves for a trial
    ray_session.get(pg.ready(), timeout=60)

    @ray_session.remote(num_cpus=1)
    def trial(helper: bool):
        import ray

        if helper:
            return on_one_gpu(ray.get_gpu_ids)
        try:  # the old call: captured into the CPU-only group, where it cannot fit
            ray.get(ray.remote(num_gpus=1)(ray.get_gpu_ids).remote(), timeout=30)
        except ValueError as exc:
            return str(exc)
        return "placed"

    in_trial = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
    try:
        old = ray_session.get(trial.options(scheduling_strategy=in_trial).remote(False), timeout=120)
        assert "cannot fit into any bundles for the placement group" in old, old
        assert len(ray_session.get(trial.options(scheduling_strategy=in_trial).remote(True), timeout=120)) == 1
    finally:
        remove_placement_group(pg)
