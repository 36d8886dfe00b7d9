"""The parts of `benchmarks/gpu_smoke.py` that are not a `t2vu` command.

    python benchmarks/smoke_stages.py build --preset cogvideox-2b --out DIR --device cuda
    python benchmarks/smoke_stages.py distributed --config C --output DIR --peaks DIR [--set k=v ...]

`build` writes a model directory in the real diffusers layout with random weights (nothing
can be downloaded): `cogvideox-2b` = the public CogVideoX-2B transformer config
(`unlearn.models.architectures.PRESETS`, 1.69B parameters, bf16), the public CogVideoX VAE
config, the project's offline T5 tokenizer (as `unlearn/models/tiny.py`), and a SHALLOW T5
encoder with T5-XXL's width (d_model 4096, d_ff 10240, 64 heads) so text embeddings have the
real shape [226, 4096]: T5-XXL itself is 4.76B parameters (24 layers) and would only make
the build and the embedding cache slower. `tiny` = `unlearn.models.tiny.make_tiny_model`.

`wan2.1-t2v-1.3b` = the public Wan2.1-T2V-1.3B transformer and VAE configs in bf16 with a 1-layer UMT5 of
UMT5-XXL's width (text embeddings [512, 4096]); `tiny-wan` = `unlearn.models.tiny_wan.make_tiny_wan`.

`distributed` is `t2vu train --distributed` (the same `load_pipeline_config` +
`run_distributed` calls `pipelines/cli/commands/train.py` makes) plus a step hook,
`record_peak`, that writes each rank's `torch.cuda.max_memory_allocated` after every step
(the worker summary only comes from rank 0 and has no memory figure).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMOKE_WORDS = (
    "a an the and of in on with at to is naked nude body person people man woman figure face clothing clothed "
    "dressed background red dress jacket standing sitting walking running slowly turning room sunlit slow camera "
    "pan beach sunset waves bed soft light from window classical painting style dog park sunny day city street "
    "night cars passing by"
).split()
T5_LAYERS = 1  # shallow on purpose (see the module docstring)


def build(preset: str, out: Path, device: str, seed: int = 0) -> Path:
    from unlearn.models.tiny import make_tiny_model
    from unlearn.models.tiny_wan import make_tiny_wan

    if preset == "tiny":
        return make_tiny_model(out, seed=seed)
    if preset == "tiny-wan":
        return make_tiny_wan(out, seed=seed)
    return build_real_shape(preset, out, device, seed)


def init_kwargs(cls, cfg: dict, lists_as_tuples: bool = True) -> dict:
    """The entries of `cfg` that `cls.__init__` takes (CogVideoX's classes want tuples, Wan's lists)."""
    import inspect

    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: tuple(v) if lists_as_tuples and isinstance(v, list) else v for k, v in cfg.items() if k in names}


def _family_parts(preset: str):
    """(transformer, VAE, text-encoder config, text encoder, pipeline, scheduler, text length, lists as tuples)."""
    import diffusers
    import transformers

    if preset.startswith("wan"):
        from unlearn.models.tiny_wan import SCHEDULER_KW as WAN_SCHEDULER

        return (diffusers.WanTransformer3DModel, diffusers.AutoencoderKLWan, transformers.UMT5Config,
                transformers.UMT5EncoderModel, diffusers.WanPipeline,
                diffusers.UniPCMultistepScheduler(**WAN_SCHEDULER), 512, False)
    from unlearn.models.tiny import SCHEDULER_KW

    return (diffusers.CogVideoXTransformer3DModel, diffusers.AutoencoderKLCogVideoX, transformers.T5Config,
            transformers.T5EncoderModel, diffusers.CogVideoXPipeline,
            diffusers.CogVideoXDDIMScheduler(**SCHEDULER_KW), None, True)


def build_real_shape(preset: str, out: Path, device: str, seed: int) -> Path:
    """A public size (`unlearn.models.architectures.PRESETS`) with random weights in bf16: the real transformer and
    VAE configs, a shallow text encoder of the real width (T5-XXL / UMT5-XXL: 4096), the offline tokenizer."""
    import torch

    from unlearn.fsutil import atomic_replace_dir
    from unlearn.models.architectures import PRESETS
    from unlearn.models.tokenizer import build_t5_tokenizer

    if (out / "model_index.json").exists():
        return out
    arch = PRESETS[preset]
    tcls, vcls, te_config, te_cls, pipe_cls, scheduler, text_len, tuples = _family_parts(preset)
    torch.manual_seed(seed)
    tokenizer = build_t5_tokenizer(SMOKE_WORDS)
    if text_len:
        tokenizer.model_max_length = text_len  # Wan reads its text length from the tokenizer (512)
    te_cfg = {k: v for k, v in arch["text_encoder"].items() if not k.startswith("_")}
    te_cfg.update(num_layers=T5_LAYERS, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    # Random init on the target device (seconds on a GPU, ~a minute for 1.7B on a CPU), saved in bf16.
    with torch.device(device):
        transformer = tcls(**init_kwargs(tcls, arch["transformer"], tuples))
        vae = vcls(**init_kwargs(vcls, arch["vae"], tuples))
        text_encoder = te_cls(te_config(**te_cfg))
    pipe = pipe_cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.to(dtype=torch.bfloat16)
    pipe.to("cpu")  # bf16 on the device first (half the copy), then saved from the host
    return atomic_replace_dir(out, lambda d: pipe.save_pretrained(str(d), safe_serialization=True))


def record_peak(step: int, rank: int, *, out_dir: str) -> None:
    """Step hook (`step_hook` of run_distributed): this rank's peak allocated GPU memory so far."""
    import torch

    if not torch.cuda.is_available():
        peak = None
    else:
        import ray.train.torch

        peak = torch.cuda.max_memory_allocated(ray.train.torch.get_device()) / 2**30
    from unlearn.fsutil import atomic_write_json

    atomic_write_json(Path(out_dir) / f"rank{rank}.json", {"rank": rank, "step": step, "peak_memory_gb": peak,
                                                            "pid": os.getpid()})


def distributed(config: str, output: str, peaks: str, overrides: list[str]) -> dict:
    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.train.driver import run_distributed

    cfg = load_pipeline_config(config, overrides)
    Path(peaks).mkdir(parents=True, exist_ok=True)
    from unlearn.loop import StepHook

    hook = StepHook(record_peak, {"out_dir": str(Path(peaks).resolve())})
    return run_distributed(cfg, output, config_dir=Path(config).parent, resume=False, step_hook=hook)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="stage", required=True)
    b = sub.add_parser("build")
    b.add_argument("--preset", choices=("cogvideox-2b", "cogvideox-5b", "tiny", "wan2.1-t2v-1.3b", "tiny-wan"),
                   required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--device", default="cpu")
    d = sub.add_parser("distributed")
    d.add_argument("--config", required=True)
    d.add_argument("--output", required=True)
    d.add_argument("--peaks", required=True)
    d.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args(argv)
    from pipelines.runtime.env import apply_offline_env

    apply_offline_env()
    if a.stage == "build":
        print(json.dumps({"model": str(build(a.preset, Path(a.out), a.device))}))
    else:
        summary = distributed(a.config, a.output, a.peaks, a.overrides)
        print(json.dumps({"output": a.output, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
