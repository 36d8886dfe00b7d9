"""The toy world: procedural coloured-shape videos on which erasure is measurable on a CPU.

It lives outside `unlearn/` because it is a test world, not the method: it may import
`unlearn` (to build a tiny CogVideoX with the method's model code), never `eval`/`pipelines`.

`world` renders videos and writes prompts (and the benchmark's prompt sets), `detector`
reads colour/shape/motion back from frames exactly, `build` trains a tiny CogVideoX
(real diffusers layout) on the world. The built model ships at `unlearn/assets/toy-model/`
(`builtin:toy`), so tests and demos never retrain it.
"""

from pathlib import Path

#: The committed, pre-built toy model (diffusers CogVideoX layout).
TOY_MODEL_DIR = Path(__file__).resolve().parent.parent / "unlearn" / "assets" / "toy-model"

__all__ = ["TOY_MODEL_DIR"]
