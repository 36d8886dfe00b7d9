"""Eraser training under Ray Train + DeepSpeed: the driver, the per-worker loop, and its checkpoints."""
