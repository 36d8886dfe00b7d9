"""What the defence benchmarks share (benchmarks/defence_gate.py, benchmarks/defence_bank.py): the attack benchmark on
the eraser alone next to one defended method, with defence_gate's settings, its targets met or missed, one results
file."""

from __future__ import annotations

import sys


def attack_and_write(args, defended: str | None, figures, settings, timings: dict | None = None) -> int:
    """Runs the attack benchmark (`benchmarks.defence_gate` ATTACK_CFG + OVERRIDES + args.overrides) on args.eraser
    alone and on `defended` (an extra `methods` entry in YAML flow style; None: the eraser alone); --plan prints the
    cells to do; then args.results_file: the runner's figures + `figures` + each target met or missed, settings +
    `settings`, timings + `timings`; figures and settings may be functions, called after the run (what the runner
    wrote, e.g. a gate it trained). Returns the exit code (2 with one line on bad input)."""
    from benchmarks.defence_gate import ATTACK_CFG, OVERRIDES, verdicts
    from eval.attacks.runner import plan_attacks, run_attacks
    from pipelines.cli.commands.attack import results_figures
    from pipelines.config.attack import load_attack_config, load_harness_eval_config
    from pipelines.runtime.results_file import write_results
    from unlearn.config import ConfigError

    methods = f"methods=[{{name: eraser, eraser: {args.eraser}}}" + (f", {defended}]" if defended else "]")
    try:
        cfg = load_attack_config(ATTACK_CFG, [*OVERRIDES, methods, *args.overrides])
        eval_cfg = load_harness_eval_config(cfg)
        plan = plan_attacks(cfg, eval_cfg, args.output)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.plan:
        for c in plan.cells:
            print(f"{c.method:>12} {c.name:<16} {len(c.todo)}/{len(c.rows)} to do")
        return 0
    summary = run_attacks(cfg, eval_cfg, args.output, plan=plan)
    rows = len(plan.cells[0].rows)
    figures = {**results_figures(summary), **(figures() if callable(figures) else figures), "targets": verdicts(summary)}
    settings = {"attack": {k: v for k, v in cfg.to_dict().items() if k not in ("config_dir", "mlflow")},
                "rows": rows, **(settings() if callable(settings) else settings),
                "note": f"{rows} attacked rows per cell (issue 25 asks >= 128): a small-sample check"}
    write_results(args.results_file, figures, settings=settings,
                  timings={"wall_seconds": summary.get("wall_seconds"), **(timings or {})})
    print(figures["targets"])
    return 0
