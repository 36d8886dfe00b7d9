"""The GPU smoke script's code path, run on the CPU with the tiny preset (the GPU run itself is manual)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_smoke_script_runs_on_cpu_tiny():
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_PORT": "29533"}
    r = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", "--preset", "tiny", "--device", "cpu",
                        "--steps", "2", "--mask-layers", "1"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["finite"] and out["zero_stage"] == 2 and len(out["losses"]) == 3
    assert out["video_tokens"] == 48 and out["step_s"] > 0
    # the FLOP model at real geometry: 17,550 video tokens of CogVideoX-2B at 49x480x720
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_smoke import COGVIDEOX_2B, model_flops

    assert 1e15 < model_flops(COGVIDEOX_2B, 17550, 3, 2) < 3e15
