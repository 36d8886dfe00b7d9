"""`t2vu submit --address http://HEAD:8265 [--follow] -- <t2vu command ...>` (Ray Jobs API).

Also: `t2vu submit --address A --status JOB_ID`, `--stop JOB_ID`, `--logs JOB_ID`.
"""

from __future__ import annotations

import argparse
import json
import os


def register(sub) -> None:
    p = sub.add_parser(
        "submit", help="submit a t2vu command to a Ray cluster (Ray Jobs API)",
        description="Submit any t2vu command to a Ray cluster. Example: "
                    "t2vu submit --address http://HEAD:8265 --follow -- tune --config configs/search/toy.yaml",
    )
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", os.environ.get("RAY_ADDRESS")),
                   help="Ray dashboard/Jobs address, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--auth-token-file", default=None, help="the cluster's auth token (Ray 2.60 token auth; default ~/.ray/auth_token)")
    p.add_argument("--follow", "-f", action="store_true", help="stream logs until the job ends; exit 1 unless it SUCCEEDED")
    p.add_argument("--job-id", default=None, help="submission id (default: generated)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra (non-secret) env var for the job; secret-looking names are refused")
    p.add_argument("--env-secret", action="append", default=[], metavar="NAME",
                   help="forward local variable NAME (e.g. MLFLOW_TRACKING_PASSWORD) to the job; it is readable "
                        "by anyone with dashboard access (a warning is printed)")
    p.add_argument("--timeout", type=float, default=None, help="with --follow: give up on the job after this many seconds")
    p.add_argument("--request-timeout", type=float, default=None, metavar="SECONDS",
                   help="deadline of each request to the Jobs API (connect, and each wait for an answer); "
                        "a server that does not answer in time ends the command with an error "
                        "(default: $T2VU_SUBMIT_TIMEOUT_S or 30)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--status", metavar="JOB_ID")
    g.add_argument("--stop", metavar="JOB_ID")
    g.add_argument("--logs", metavar="JOB_ID")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the t2vu command to run on the cluster")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipelines.runtime import submit as sj
    if not args.address:
        raise sj.SubmitError("--address is required (e.g. http://HEAD:8265) or set RAY_API_SERVER_ADDRESS")
    sj.check_address(args.address)  # ftp://, ray:// ...: one line before anything else
    t = sj.DEFAULT_TIMEOUT_S if args.request_timeout is None else args.request_timeout
    if args.status:
        print(json.dumps(sj.status(args.address, args.status, args.auth_token_file, timeout_s=t), indent=2))
        return 0
    if args.stop:
        print(json.dumps({"job_id": args.stop, "stopped": sj.stop(args.address, args.stop, args.auth_token_file,
                                                                  timeout_s=t)}))
        return 0
    if args.logs:
        print(sj.logs(args.address, args.logs, args.auth_token_file, timeout_s=t))
        return 0
    import sys

    from unlearn.config import ConfigError

    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        extra = {**sj.parse_env(args.env), **sj.secret_env(args.env_secret, warn=lambda m: print(m, file=sys.stderr))}
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    job_id = sj.submit(args.address, cmd, token_file=args.auth_token_file, extra_env=extra, job_id=args.job_id,
                       timeout_s=t)
    print(f"submitted job {job_id}  (status: t2vu submit --address {args.address} --status {job_id})", flush=True)
    if not args.follow:
        return 0
    final = sj.follow(args.address, job_id, token_file=args.auth_token_file, timeout_s=args.timeout,
                      request_timeout_s=t)
    print(f"\njob {job_id} {final}")
    return 0 if final == "SUCCEEDED" else 1
