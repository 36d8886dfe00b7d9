"""`t2vu plan`'s sequence-parallel terms vs the measured per-rank peak of a real SP 2 training step, on this CPU.

Run (minutes):  nice -n 5 .venv/bin/python benchmarks/sp_memory_check.py [--only NAME] [--results-file PATH]

For each size (Wan transformers whose activations dominate the step: that is what splitting the sequence changes;
random weights, fp32, built by benchmarks/memory_plan_check.py's `build_model_dir`), 2 gloo ranks form ONE
sequence-parallel group (`distributed.sequence_parallel: 2`, world 2, ZeRO-2, backbone whole): both hold the whole
2+2 batch and each keeps half of every video's tokens (Ulysses all-to-all around attn1; the attention capture,
the mask and the eraser energy records on the shard). The worker's path, the measurement (VmHWM of the second
step above a warm-up baseline) and the prediction (`plan_memory`, mode distributed, world 2, device cpu, no
coefficient fitted) are benchmarks/sharded_memory_check.py's; this file only names the sizes. Writes
benchmarks/results/sp_memory_calibration.json (pipelines/runtime/results_file); exit 1 when a size is outside
the tolerance (default 15%).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sharded_memory_check import main  # noqa: E402

# Wan: heads x 128, layers, ffn, geometry, rows (global = each rank's: one group), checkpointing, per-token timesteps
# (Wan 2.2 TI2V: the tokens are gathered after the last block, not after the output projection), eraser site
SIZES = [
    dict(name="sp-attn2", family="wan", heads=4, layers=4, ffn=2048, frames=9, height=256, width=448, batch=2,
         preserve=2, ckpt=False, expand=False, sp=2, shard=False),
    dict(name="sp-deep-ckpt", family="wan", heads=4, layers=8, ffn=2048, frames=13, height=256, width=384, batch=2,
         preserve=2, ckpt=True, expand=False, sp=2, shard=False),
    dict(name="sp-ti2v-attn1", family="wan-attn1", heads=4, layers=4, ffn=2048, frames=9, height=256, width=384,
         batch=2, preserve=2, ckpt=False, expand=True, sp=2, shard=False),
    # narrow, deep and checkpointed, 4 concept rows: the attention capture's results (per shard) are the largest term
    dict(name="sp-capture-ckpt", family="wan", heads=2, layers=16, ffn=512, frames=9, height=256, width=448, batch=4,
         preserve=2, ckpt=True, expand=False, sp=2, shard=False),
]

if __name__ == "__main__":
    sys.exit(main(SIZES, "sp_memory_calibration.json", __doc__, settings={"shard_backbone": False, "sequence_parallel": 2},
                  figures={"family": "wan"}))
