"""`t2vu config show CONFIG [--set k=v ...] [--json]` — the resolved config with each key's description."""

from __future__ import annotations

import sys

from pipelines.cli.commands.common import add_set


def register(sub) -> None:
    p = sub.add_parser(
        "config",
        help="print a config as the tools resolve it (defaults filled in, --set applied), each key with its description",
        description="Print a config as `t2vu train/tune/run/eval/attack` resolve it: every key with its value "
                    "(defaults filled in, --set applied) and its one-line description from the schema. "
                    "A bad config is one line naming the key, exit 2.",
    )
    p.add_argument("action", choices=["show"], help="show: print the resolved config")
    p.add_argument("config", help="a YAML config (pipeline, eval or attack)")
    add_set(p)
    p.add_argument("--kind", choices=["auto", "pipeline", "eval", "attack"], default="auto",
                   help="which schema reads it (default: from its top-level keys)")
    p.add_argument("--json", action="store_true", help="machine-readable: config, kind, resolved values, keys")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipelines.config.show import load, render_json, render_text

    kind, cfg = load(args.config, args.overrides, args.kind)
    render = render_json if args.json else render_text
    sys.stdout.write(render(args.config, kind, cfg, args.overrides))
    return 0
