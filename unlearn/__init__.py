"""T2V concept unlearning: eraser adapters and their training for text-to-video diffusion models."""

from unlearn.env import apply_offline_env

apply_offline_env()

__version__ = "0.1.0"
