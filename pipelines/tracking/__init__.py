"""MLflow: which runs a search opens and how they end (`tracker`), the one writer (`mlflow_utils`), and what eval, attack and live training log through them."""
