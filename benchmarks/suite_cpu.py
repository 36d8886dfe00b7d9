"""Where the test suite's CPU goes, per test and per module (issue 24: the full tier is CPU-bound on 2 cores).

    python benchmarks/suite_cpu.py [PYTEST ARGS...]     e.g. -m slow, or tests/test_tune.py
    python benchmarks/suite_cpu.py --report FILE        the table again from an earlier run's JSON lines

Runs pytest SERIALLY (one process: xdist would mix two tests' CPU) through scripts/test.sh's environment, with a
plugin that records, for every test, its wall time and the machine's busy CPU seconds over it (/proc/stat: the
test's own process, its `t2vu` subprocesses, Ray's workers and actors, all together; a module-scoped fixture is
counted on the first test that uses it). The box should be otherwise idle. It prints the modules and tests by CPU-s
and their share of the total: what to cut first (a developer's tool; no results file).
Measured 2026-12-07 on the 2-core VM (`-m slow`, 63 tests): 2210 CPU-s in 25.1 min serial; by module
test_distributed 226, test_tune 186, test_search_reproducible 185, test_search_parent_status 166, test_ray_signals
162, test_sequence_parallel 153, test_search_screening 151, test_sharded_wiring 148, test_gpu_smoke_script 139.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class CpuPlugin:
    """pytest plugin: one JSON line per test {id, wall, cpu} into `path`."""

    def __init__(self, path: str):
        self.path, self.started = path, {}

    @staticmethod
    def busy() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    def pytest_runtest_protocol(self, item, nextitem):
        self.started[item.nodeid] = (time.time(), self.busy())

    def pytest_runtest_logfinish(self, nodeid, location):
        t0, c0 = self.started.pop(nodeid)
        with open(self.path, "a") as f:
            f.write(json.dumps({"id": nodeid, "wall": round(time.time() - t0, 2), "cpu": round(self.busy() - c0, 2)}) + "\n")


def report(path: str, top: int = 25) -> str:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    total = sum(r["cpu"] for r in rows) or 1.0
    by_module = collections.Counter()
    for r in rows:
        by_module[r["id"].split("::")[0]] += r["cpu"]
    lines = [f"{len(rows)} tests, {total:.0f} CPU-s, {sum(r['wall'] for r in rows) / 60:.1f} min serial wall", "",
             f"{'CPU-s':>7} {'share':>6}  module"]
    lines += [f"{c:7.1f} {c / total:6.1%}  {m}" for m, c in by_module.most_common(top)]
    lines += ["", f"{'CPU-s':>7} {'wall s':>7}  test"]
    lines += [f"{r['cpu']:7.1f} {r['wall']:7.1f}  {r['id']}" for r in sorted(rows, key=lambda r: -r["cpu"])[:top]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--report"]:
        print(report(argv[1]))
        return 0
    out = tempfile.NamedTemporaryFile(prefix="suite_cpu_", suffix=".jsonl", delete=False).name
    plugin_dir = tempfile.mkdtemp(prefix="suite_cpu_plugin_")
    Path(plugin_dir, "suite_cpu_plugin.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom suite_cpu import CpuPlugin\n\n"
        "def pytest_configure(config):\n    config.pluginmanager.register(CpuPlugin(%r), 'suite_cpu')\n"
        % (str(ROOT / "benchmarks"), out))
    env = {**os.environ, "T2VU_TEST_WORKERS": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (plugin_dir, os.environ.get("PYTHONPATH")) if p)}
    rc = subprocess.run(["bash", str(ROOT / "scripts" / "test.sh"), "-p", "suite_cpu_plugin", *argv], env=env).returncode
    print(report(out))
    print(f"\n(per-test lines: {out}; again: python benchmarks/suite_cpu.py --report {out})")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
