"""MLflow: the one writer (`mlflow_utils`) and what eval, attack and live training log through it."""
