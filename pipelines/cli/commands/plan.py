"""`t2vu plan --config C [--gpu-memory GB] [--world-size N] [--mode M] [--set key=value ...]`.

Predicts per-GPU memory of the training a config describes, before any model loads (the
architecture comes from the model directory's configs or `model.architecture`); for a search
(`--mode tune`) also its modelled cost in GPU-hours and wall time (`pipelines.plan.search_cost`). Prints a
table and, as the last line, one JSON object. Exit 3 when it will not fit (the error names
the dominant term and the setting that fixes it), 2 on a config error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipelines.cli.commands.common import add_set


def register(sub) -> None:
    p = sub.add_parser("plan", help="will it fit? predict per-GPU memory of a training config before launching it",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", "-c", required=True, help="a method, run (train --distributed) or search config YAML")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                   help="GPU memory in GB (2^30 bytes); default: the visible GPU's, else none")
    p.add_argument("--world-size", type=int, default=None, metavar="N",
                   help="GPU workers (default: distributed.num_workers when the config declares it, else 1)")
    p.add_argument("--mode", choices=("train", "distributed", "tune"), default=None,
                   help="plan `t2vu train` (one process), `train --distributed`, or `tune`/`run` trials "
                        "(default: tune for a search config, distributed when the config declares distributed)")
    p.add_argument("--mfu", type=float, default=None, metavar="F",
                   help="tune mode: the utilisation the search cost assumes, of --gpu-tflops (default 0.4)")
    p.add_argument("--gpu-tflops", type=float, default=None, metavar="T",
                   help="tune mode: the GPU's bf16 dense peak in TFLOP/s for the search cost (default 989, H100)")
    p.add_argument("--results-file", default=None, metavar="PATH",
                   help="tune mode: also write the search's modelled cost as a results file (benchmarks/results/<name>.json) "
                        "for the docs' tables")
    add_set(p, help="override a config value, e.g. --set train.batch_size=2")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipelines.plan.fixes import find_fix, refusal
    from pipelines.plan.memory_check import EXIT_WONT_FIT, load_plan_config, make_request, plan_request, render
    from unlearn.config import ConfigError

    if args.world_size is not None and args.world_size < 1:
        raise ConfigError(f"--world-size {args.world_size}: must be >= 1")
    if args.gpu_memory is not None and not 0 < args.gpu_memory < float("inf"):
        raise ConfigError(f"--gpu-memory {args.gpu_memory}: must be a positive number of GB, e.g. --gpu-memory 80")
    method, pipeline = load_plan_config(args.config, args.overrides)
    req = make_request(method, pipeline, config_dir=Path(args.config).parent, mode=args.mode,
                       world_size=args.world_size, gpu_memory_gb=args.gpu_memory)
    plan, arch = plan_request(req)
    print(render(plan, req, arch, args.config))
    summary = plan.summary()
    if req.mode == "tune" and pipeline is not None and pipeline.search is not None:
        from pipelines.plan.search_cost import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS, render_cost, search_cost

        cost = search_cost(req, arch, mfu=DEFAULT_MFU if args.mfu is None else args.mfu,
                           peak_tflops=DEFAULT_PEAK_TFLOPS if args.gpu_tflops is None else args.gpu_tflops)
        print(render_cost(cost))
        summary["search_cost"] = cost
        from pipelines.search.screening import render_screened_cost, screened_cost

        screened = screened_cost(req, arch, mfu=cost.get("assumptions", {}).get("mfu", DEFAULT_MFU),
                                 peak_tflops=cost.get("assumptions", {}).get("gpu_peak_tflops", DEFAULT_PEAK_TFLOPS))
        if screened is not None:  # search.screening: the two-stage search's cost next to the full one
            print(render_screened_cost(screened, cost, pipeline))
            summary["screened_search_cost"] = screened
    rc = 0
    if plan.fits is False:
        fix = find_fix(req, plan)
        summary["fix"] = fix
        print(f"error: {refusal(plan, fix)}", file=sys.stderr)
        rc = EXIT_WONT_FIT
    if args.results_file and "search_cost" in summary:  # the docs render modelled costs from these files
        from pipelines.runtime.results_file import write_results

        write_results(args.results_file, {k: summary[k] for k in ("search_cost", "screened_search_cost") if k in summary},
                      argv=getattr(args, "argv", None), settings={"config": str(args.config), "overrides": list(args.overrides)})
    sys.stdout.flush()
    print(json.dumps(summary))
    return rc
