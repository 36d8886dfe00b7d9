"""Multi-fidelity search (`search.screening`): screen every trial at a reduced video size, re-run the best k
at the configured size, rank only the re-runs.

    search.screening: {frames: 13, height: 256, width: 384, top_k: 4}

    run_search(cfg, out)                                   (pipelines.search.tune)
      1. screening: run_search(screen_config(cfg), out/screening)   every trial at 13x256x384: training rows
         (model.num_frames/height/width) and eval videos (generation.*) alike; its own Tune experiment,
         MLflow parent run `<name>-screen`, report and base videos; no method baselines (they are judged once,
         at full size, in stage 2)
      2. full size:  run_search(cfg, out, points=top_points(...))   the k best screened
         samples, by the screened score and tie-breaks, evaluated as fixed points (random searcher with
         `points_to_evaluate`, FIFO: nothing pruned; ASHA is refused with screening); the SearchResult, report and best
         eraser come from these trials only (out/trials), never from a screened one.

Why: at real size a step's cost grows with tokens (frames x height x width) and attention with their
square; 13x256x384 is ~11x fewer video tokens than 49x480x720, so screening 16 trials costs about what one
and a half full trials do. What it costs: a screened ranking that disagrees with the full-size one drops a
trial that would have won (benchmarks/multi_fidelity.py measures that agreement on the toy world).
Resumable like any search: each stage restores its own Tune experiment; the re-run points are read back
from the screening's trial folders, so a rerun picks the same k.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipelines.runtime.console import progress
from unlearn.config import ConfigError

SCREEN_DIR = "screening"  # <out>/screening/: the screened stage, a search folder of its own
SCREEN_SUFFIX = "-screen"  # the screened stage's search.name (Tune experiment, MLflow parent run)
RECORD = "screening.json"  # <out>/screening.json: the screened ranking and the points re-run


def size(frames: int, height: int, width: int) -> str:
    return f"{frames}x{height}x{width}"


def fidelity_label(cfg, objective=None) -> str:
    """What a trial trains and is judged at, for its MLflow run (tag t2vu.fidelity):
    'train 13x256x384, eval 13x256x384'."""
    m = cfg.model
    label = f"train {size(m.num_frames, m.height, m.width)}"
    if objective is not None:  # pipelines.search.objective.ObjectivePayload
        g = objective.eval_config.generation
        label += f", eval {size(g.num_frames, g.height, g.width)}"
    return label


def screen_config(cfg, out: str | Path | None = None):
    """The screened stage's config: the reduced size for training rows and eval videos, its own name, no
    screening of its own and no method baselines; with `out` (the search's folder), the full stage's MLflow
    store (else the default, <out>/screening/mlflow.db, would hide the screened runs from the search's).
    Raises ConfigError (one line) on a size that does not reduce the configured one."""
    s, m = cfg.search, cfg.model
    sc = s.screening
    if s.algorithm == "asha":  # its full-size re-runs would make proxy evals nothing reads
        raise ConfigError("search.screening with search.algorithm asha: ASHA already screens (it stops trials at its "
                          "proxy evals); use optuna or random with screening, or asha without it")
    full, red = (m.num_frames, m.height, m.width), (sc.frames, sc.height, sc.width)
    if any(r > f for r, f in zip(red, full)):
        raise ConfigError(f"search.screening {size(*red)} exceeds the trained size model {size(*full)} "
                          f"(num_frames x height x width): screening must not enlarge any of them")
    if red == full:
        raise ConfigError(f"search.screening {size(*red)} equals the trained size: screening would cost more than "
                          f"no screening; lower frames/height/width (e.g. 13x256x384 of 49x480x720) or remove it")
    gen = {"generation.num_frames": sc.frames, "generation.height": sc.height, "generation.width": sc.width}
    store = ({"mlflow.tracking_uri": cfg.mlflow.resolve_uri(out), "mlflow.experiment": cfg.mlflow.experiment
              or f"t2vu/{s.name}"} if out is not None and cfg.mlflow.enabled else {})  # one store, one experiment
    return cfg.with_overrides({**store,
        "model.num_frames": sc.frames, "model.height": sc.height, "model.width": sc.width,
        "search.objective.eval_overrides": {**s.objective.eval_overrides, **gen},
        "search.objective.baselines": [], "search.screening": None,
        "search.name": s.name[: 100 - len(SCREEN_SUFFIX)] + SCREEN_SUFFIX,
    }, source="search.screening")


def rerun_config(cfg, k: int):
    """The full-size stage as the cost model sees it: k trials, FIFO, no proxy evals (the search itself keeps
    `cfg` and passes the k points to run_search, so the folder's pinned config stays the one given)."""
    return cfg.with_overrides({"search.num_samples": k, "search.algorithm": "random", "search.screening": None},
                              source="search.screening")


def screened_ranking(cfg, screened) -> list:
    """Completed screened trials, best first (the score, then the tie-breaks: the search's own order)."""
    from eval.metrics import is_number

    s = cfg.search
    score = s.objective.scalarize.name
    done = [t for t in screened.trials if t.status == "completed" and is_number(t.metrics.get(score))
            and not math.isnan(float(t.metrics[score]))]
    return sorted(done, key=lambda t: s.objective.scalarize.ranking_key(t.metrics))


def top_points(cfg, screened) -> list[dict]:
    """The sampled parameters of the best `top_k` screened trials (dotted keys, as Tune's param space)."""
    ranked = screened_ranking(cfg, screened)[: cfg.search.screening.top_k]
    return [dict(t.params) for t in ranked]


def run_screened(cfg, out: Path, run_search, **kw):
    """Both stages (see the module doc). `run_search` is pipelines.search.tune.run_search, passed in (this
    module is imported by it)."""
    from unlearn.fsutil import atomic_write_json

    sc, m = cfg.search.screening, cfg.model
    scfg = screen_config(cfg, out)  # a size that does not reduce fails here, before Ray starts
    full_size = size(m.num_frames, m.height, m.width)
    progress(f"Multi-fidelity search {cfg.search.name}: screening {cfg.search.num_samples} trials at "
         f"{size(sc.frames, sc.height, sc.width)} (search.screening), then the best {sc.top_k} at {full_size}")
    screened = run_search(scfg, Path(out) / SCREEN_DIR, **kw)
    ranked = screened_ranking(cfg, screened)
    points = top_points(cfg, screened)
    if not points:
        raise RuntimeError(f"search.screening: no screened trial completed (see {Path(out) / SCREEN_DIR}); nothing to "
                           f"re-run at full size")
    score = cfg.search.objective.scalarize.name
    record = {"screening": sc.model_dump(), "full_size": full_size, "screen_dir": str(Path(out) / SCREEN_DIR),
              "screened": [{"trial_id": t.trial_id, "params": t.params, score: t.metrics.get(score)} for t in ranked],
              "rerun_points": points}
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out) / RECORD, record)
    _link_parent_runs(screened, cfg)
    progress(f"Screening done: re-running {[t.trial_id for t in ranked[: len(points)]]} at {full_size}")
    result = run_search(cfg, out, points=points, **kw)
    result.extras["screening"] = record
    return result


def _link_parent_runs(screened, cfg) -> None:
    """Tag the screened stage's MLflow parent run as such (its trials are the search's small-size runs);
    through the search's one tracker (a no-op when MLflow was off: `screened.tracking` is then None)."""
    from pipelines.tracking.tracker import Tracker

    sc, tracker = cfg.search.screening, Tracker(screened.tracking)
    stage = f"screening {size(sc.frames, sc.height, sc.width)} of {cfg.search.name}"
    tracker.set_tags(tracker.parent, {"t2vu.stage": stage})


def parent_params(s) -> dict[str, str]:
    """MLflow parent-run params of a search's screening ('off' when none)."""
    sc = s.screening
    if sc is None:  # no screening, or the screened stage itself (its parent run is tagged t2vu.stage instead)
        return {}
    return {"search.screening": json.dumps(sc.model_dump()),
            "search.screening.size": size(sc.frames, sc.height, sc.width), "search.screening.top_k": str(sc.top_k)}


def screened_cost(req, arch, **kw) -> dict | None:
    """The modelled cost of the screened search (pipelines.plan.search_cost for each stage), or None without
    search.screening: {gpu_hours, wall_hours, screening: cost, rerun: cost}."""
    from pipelines.plan.memory_check import make_request
    from pipelines.plan.search_cost import search_cost

    cfg = req.pipeline
    if cfg is None or cfg.search is None or cfg.search.screening is None:
        return None

    def cost(c):
        r = make_request(c.method(), c, config_dir=req.config_dir, mode="tune", world_size=req.world_size)
        return search_cost(r, arch, **kw)

    screen, rerun = cost(screen_config(cfg)), cost(rerun_config(cfg, cfg.search.screening.top_k))
    if screen.get("gpu_hours") is None or rerun.get("gpu_hours") is None:
        return {"gpu_hours": None, "not_modelled": screen.get("not_modelled") or rerun.get("not_modelled")}
    sc, m = cfg.search.screening, cfg.model
    return {"gpu_hours": round(screen["gpu_hours"] + rerun["gpu_hours"], 2),
            "screened_size": size(sc.frames, sc.height, sc.width), "full_size": size(m.num_frames, m.height, m.width),
            "wall_hours": round(screen["wall_hours"] + rerun["wall_hours"], 2),
            "screening": screen, "rerun": rerun}


def render_screened_cost(c: dict | None, full: dict, cfg) -> str:
    """One line for `t2vu plan --mode tune`, under the full-fidelity cost."""
    if c is None:
        return ""
    if c.get("gpu_hours") is None:
        return f"Screened search cost: not modelled ({c['not_modelled']})"
    sc, m = cfg.search.screening, cfg.model
    ratio = f" ({c['gpu_hours'] / full['gpu_hours']:.0%} of the full one)" if full.get("gpu_hours") else ""
    return (f"Screened search cost (modelled, search.screening): {c['gpu_hours']:.1f} GPU-hours{ratio}, "
            f"{c['wall_hours']:.1f} h wall = {cfg.search.num_samples} trials at {size(sc.frames, sc.height, sc.width)} "
            f"({c['screening']['gpu_hours']:.1f} GPU-h) + the best {sc.top_k} at "
            f"{size(m.num_frames, m.height, m.width)} ({c['rerun']['gpu_hours']:.1f} GPU-h)")
