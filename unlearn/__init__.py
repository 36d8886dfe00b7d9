"""T2V concept unlearning: eraser adapters and their training for text-to-video diffusion models."""

__version__ = "0.1.0"
