"""Typed configuration of the orchestration layer: the pipeline, distributed, search and attack sections, and the generated reference."""
