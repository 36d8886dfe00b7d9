"""`t2vu run`: the whole pipeline (embeddings -> search -> select -> final eval -> report) in one MLflow parent run."""
