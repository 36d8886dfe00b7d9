"""Evaluation stage: generate videos from prompt CSVs, score frames, compute erasure/preservation metrics."""

import unlearn.env as _env

_env.apply_offline_env()
