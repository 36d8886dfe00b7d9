"""The DeepSpeed engine of the one training loop (`unlearn.loop.Engine`): ZeRO-2/3 across Ray Train workers.

Only the eraser parameters go to `deepspeed.initialize`, with a client torch AdamW
(`unlearn.loop.make_optimizer`; DeepSpeed's CPU Adam JIT-compiles for ~50 s); gradient clipping
is DeepSpeed's (`gradient_clipping`, from train.grad_clip). Its checkpoint files (one ZeRO shard per
rank) go under the checkpoint's engine/ folder (`unlearn.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

from unlearn.checkpoint import ENGINE_DIR

TAG = "ds"


class DeepSpeedEngine:
    def __init__(self, objective, params, optimizer, ds_config: dict, world_size: int):
        import deepspeed

        self.world_size = world_size
        self.zero_stage = int(ds_config["zero_optimization"]["stage"])
        self.ds, _, _, _ = deepspeed.initialize(model=objective, model_parameters=params, optimizer=optimizer,
                                                config=ds_config)

    @property
    def global_steps(self) -> int:
        return int(self.ds.global_steps)

    def state(self) -> dict:
        return {"engine": "deepspeed", "world_size": self.world_size, "zero_stage": self.zero_stage}

    def forward(self, batch) -> dict:
        return self.ds(batch)

    def backward(self, loss) -> None:
        self.ds.backward(loss)

    def step(self) -> None:
        self.ds.step()

    def mean(self, vec):
        import torch.distributed as dist

        if self.world_size > 1:
            dist.all_reduce(vec)
            vec /= self.world_size
        return vec

    def save(self, folder: Path, step: int) -> None:
        # Every rank writes its own ZeRO shard (rank 0 also the module states).
        self.ds.save_checkpoint(str(folder), tag=TAG, client_state={"step": step})

    def load(self, folder: Path) -> None:
        """Weights + ZeRO optimizer shards; the caller verified the manifests first."""
        load_path, _ = self.ds.load_checkpoint(str(Path(folder) / ENGINE_DIR), tag=TAG, load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder}")

    def gathered(self, params):
        """All-gather ZeRO-3 partitions for reading (no-op for ZeRO-2). Collective: every rank enters."""
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)
