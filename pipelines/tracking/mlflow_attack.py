"""MLflow tracking of an attack benchmark (`t2vu attack`), through `pipelines.tracking.tracker.Tracker`:
one parent run per benchmark output folder (reused when the run resumes), one child per method x attack
(`t2vu.trial_id` = "<method>/<attack>"; the preserve rows are the child "<method>/preserve"), with metrics
`asr`, `asr_se`, `n`, `flagged`, `asr_above_floor`, `floor` (preservation entries for preserve / anchors
children), `late_frame_rate`, `late_only_rate` and the per-frame curve `frame_rate` / `frame_score` (step = frame
index; eval.temporal), the cell's results.csv and summary.json; the parent gets `asr/<method>/<attack>`,
`asr_above_floor/<method>/<attack>`, `floor/<method>` and the benchmark's summary.json."""

from __future__ import annotations

from pathlib import Path

from eval.temporal import curve_steps
from pipelines.tracking import mlflow_utils as mu
from pipelines.tracking.tracker import PARENT_ID_FILE, Tracker
from unlearn.config import ConfigError


class MlflowAttackObserver:
    """cfg: the attack config's `mlflow` section (pipelines.config.pipeline.MlflowConfig)."""

    def __init__(self, cfg, output_dir: str | Path, name: str):
        self.cfg, self.name = cfg, name
        self.uri = cfg.resolve_uri(output_dir)
        mu.check_reachable(self.uri)  # a read-only SQLite file or a silent server: one line, in seconds
        self.tracker = Tracker(None)

    def started(self, out: Path) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.tracker = Tracker.start(self.uri, self.cfg.experiment or "t2vu/attack", self.name, out,
                                         tags={"t2vu.kind": "attack"})
        except MlflowException as exc:
            raise ConfigError(f"mlflow ({self.uri}): {' '.join(str(exc).split())}") from None

    def cell(self, method: str, attack: str, stats: dict, cell_dir: Path) -> None:
        t = self.tracker
        with t.child_run(f"{method}/{attack}", params={"method": method, "attack": attack},
                         tags={"t2vu.kind": "attack-cell"}) as child:
            t.log_metrics(child, {k: v for k, v in stats.items() if isinstance(v, (int, float))})
            mu.log_batch(t.client, child, curve_steps(stats, ""))  # the per-frame curve: step = frame index
            if self.cfg.log_artifacts:
                t.log_files(child, [cell_dir / "results.csv", cell_dir / "summary.json"])

    def finished(self, summary: dict, out: Path) -> None:
        metrics = {f"asr/{m}/{a}": v for m, row in summary["asr"].items() for a, v in row.items()}
        metrics.update({f"asr_above_floor/{m}/{a}": v for m, row in (summary.get("asr_above_floor") or {}).items()
                        for a, v in row.items()})
        metrics.update({f"floor/{m}": v for m, v in (summary.get("floor") or {}).items()})
        metrics.update({f"{k}/{m}/{c}": t[k] for m, row in (summary.get("temporal") or {}).items()
                        for c, t in row.items() for k in ("late_frame_rate", "late_only_rate")})
        metrics.update({f"preservation/{m}/{k}": v for m, row in summary["preservation"].items() for k, v in row.items()})
        names = ("summary.json", "report.md", "report.html", "asr.png") if self.cfg.log_artifacts else ()
        self.tracker.finish(metrics=metrics, files=[out / n for n in names])
        summary["mlflow"] = {"tracking_uri": self.uri, "experiment_id": self.tracker.ids.experiment_id,
                             "parent_run_id": self.tracker.parent}

    def failed(self) -> None:
        self.tracker.finish("FAILED")


def write_attack_report(out: Path, log_to_mlflow: bool = True) -> list[Path]:
    """`t2vu report DIR` on an attack folder: report.md and asr.png again from its summary.json, logged to the
    benchmark's MLflow parent run when it has one."""
    import json

    from eval.attacks.report import write_report
    from pipelines.config.pipeline import MlflowConfig

    try:
        summary = json.loads((out / "summary.json").read_text())
        pinned = json.loads((out / "attack_config.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{out} has no finished attack benchmark (summary.json); rerun `t2vu attack` into it") from None
    write_report(summary, out)
    files = [out / "report.md", out / "report.html", out / "asr.png"]
    id_file = out / PARENT_ID_FILE  # (a folder from before mlflow.json was written has only this)
    if log_to_mlflow and id_file.is_file():
        c = mu.client(MlflowConfig.model_validate(pinned["attack"]["mlflow"]).resolve_uri(out))
        for f in files:
            mu.log_file(c, id_file.read_text().strip(), f)
    return files
