"""Evaluation stage: generate videos from prompt CSVs, score frames, compute erasure/preservation metrics."""
