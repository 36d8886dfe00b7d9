"""`t2vu attack --config configs/attack/toy.yaml --output DIR [--set key=value ...]`.

Every method of the config (none, negprompt, safree, eraser) under every attack (clean, paraphrase, ringabell,
ringabell-text, softprompt and softprompt-subspace at each budget, inversion) on the same prompts, seeds and detector, plus each method's
preservation on the preserve prompts (`eval.attacks.runner`). Rerunning into the same DIR does no finished
work; DIR refuses another config. The last stdout line is one JSON object: asr[method][attack], asr_se, n,
asr_above_floor[method][attack], floor[method] (the method on the benign prompts alone), preservation[method]
and the base model's (preservation_base), temporal[method][cell] (the per-frame concept curve and the late-frame
rates, eval.temporal).
"""

from __future__ import annotations

import json

from pipelines.cli.commands.common import add_common, output_dir


def register(sub) -> None:
    methods, attacks = accepted()
    p = sub.add_parser("attack", help="attack every method of the config with every attack; ASR and preservation "
                                      "per method",
                       description=f"Attack every method of the config ({', '.join(methods)}) with every attack "
                                   f"({', '.join(attacks)}) on the same prompts and seeds; attack success rate and "
                                   "preservation per method. The last stdout line is one JSON object.")
    add_common(p, command="attack")
    p.add_argument("--results-file", default=None, metavar="PATH",
                   help="also write the figures (ASR raw and above the floor, floor, preservation with the base "
                   "model's) with this command line, git sha, date and machine to PATH "
                   "(benchmarks/results/robustness_toy.json: benchmarks/robustness.md's table is rendered from it)")
    p.set_defaults(func=run)


def accepted() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The method names and attacks an attack config accepts, read from its schema (what the help lists is
    what the config validates: a method or attack added there shows up here)."""
    from typing import get_args

    from pipelines.config.attack import AttackConfig, AttackMethodConfig

    def literal(annotation) -> tuple[str, ...]:  # Literal[...] or list[Literal[...]]
        args = get_args(annotation)
        return args if all(isinstance(a, str) for a in args) else literal(args[0])

    return (literal(AttackMethodConfig.model_fields["name"].annotation),
            literal(AttackConfig.model_fields["attacks"].annotation))


def run(args) -> int:
    from eval.attacks.runner import plan_attacks, run_attacks
    from pipelines.config.attack import load_attack_config, load_harness_eval_config
    from pipelines.runtime.console import progress_stream
    from pipelines.tracking.mlflow_attack import MlflowAttackObserver
    from pipelines.runtime.run_folder import check_tracking_store, pin_config

    if args.results_file and not str(args.results_file).endswith(".json"):  # refused before an hour of attacks
        from unlearn.config import ConfigError

        raise ConfigError(f"--results-file {args.results_file}: must end in .json (benchmarks/results/<name>.json)")
    cfg = load_attack_config(args.config, args.overrides)
    eval_cfg = load_harness_eval_config(cfg)
    out = output_dir(args, "attack")
    plan = plan_attacks(cfg, eval_cfg, out)  # every file/field error before the output folder exists
    if cfg.mlflow.enabled:
        check_tracking_store(cfg.mlflow.resolve_uri(out), out)
    # made before the folder: a read-only SQLite store or a silent server is one line, with nothing written
    observer = MlflowAttackObserver(cfg.mlflow, out, out.name) if cfg.mlflow.enabled else None
    out.mkdir(parents=True, exist_ok=True)
    pin_config(out / "attack_config.json", {"attack": cfg.to_dict(), "eval": eval_cfg.to_dict()}, out)
    summary = run_attacks(cfg, eval_cfg, out, observer=observer, progress_file=progress_stream(), plan=plan)
    if args.results_file:
        from pipelines.runtime.results_file import write_results

        settings = {"attack": {k: v for k, v in cfg.to_dict().items() if k not in ("config_dir", "mlflow")},
                    "rows": len(plan.cells[0].rows) if plan.cells else 0, "model": str(eval_cfg.model.path)}
        write_results(args.results_file, results_figures(summary), argv=getattr(args, "argv", None),
                      settings=settings, timings={"wall_seconds": summary.get("wall_seconds")})
    keys = ("asr", "asr_se", "n", "asr_above_floor", "floor", "preservation", "reference", "preservation_base",
            "attack_strength", "temporal", "videos_made", "wall_seconds", "degenerate_videos", "truncated_prompts",
            "output", "mlflow")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))
    return 0


def results_figures(summary: dict) -> dict:
    """What a results file keeps of an attack summary: the figures, not the paths or method internals."""
    keys = ("attacks", "asr", "asr_se", "n", "asr_above_floor", "floor", "preservation", "reference",
            "preservation_base", "attack_strength", "temporal", "degenerate_videos", "truncated_prompts")
    return {k: summary[k] for k in keys if k in summary}
