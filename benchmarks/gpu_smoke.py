"""GPU smoke check: fused eraser training steps on a CogVideoX-2B-shaped transformer under DeepSpeed ZeRO-2.

    bash benchmarks/gpu_smoke.sh            # one GPU, < 5 minutes, prints one JSON line

Builds `CogVideoXTransformer3DModel` from CogVideoX-2B's public config with random
weights (no download), bf16, gradient checkpointing on, erasers rank 128 on all 30
blocks, then runs `--steps` fused steps (1 concept + 1 reference + 1 preserved row,
mask from `--mask-layers` layers) at 49 frames 480x720 (13x60x90 latents, 17,550
video + 226 text tokens). Prints step time, peak memory and MFU.

MFU counts model FLOPs only (no recompute): per row and block, 2*tokens*linear_params
+ 4*tokens^2*hidden for attention; the no-grad rows count 1x, the grad rows 3x
(forward + backward w.r.t. activations; the frozen backbone needs no weight grads,
so this over-counts slightly and MFU is an upper bound), over the dense bf16 peak
(`--peak-tflops`, default 989 for H100/H200 SXM).
`--preset tiny --device cpu` runs the identical code path on a CPU (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import time

COGVIDEOX_2B = dict(
    num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, flip_sin_to_cos=True,
    freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=30, dropout=0.0, attention_bias=True,
    sample_width=90, sample_height=60, sample_frames=49, patch_size=2, temporal_compression_ratio=4,
    max_text_seq_length=226, activation_fn="gelu-approximate", timestep_activation_fn="silu",
    norm_elementwise_affine=True, norm_eps=1e-5, spatial_interpolation_scale=1.875,
    temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=False,
)
TINY = dict(COGVIDEOX_2B, num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
            time_embed_dim=32, text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9,
            max_text_seq_length=16)
GEOMETRY = {"cogvideox-2b": dict(frames=49, height=480, width=720), "tiny": dict(frames=9, height=64, width=64)}


def model_flops(cfg: dict, video_tokens: int, rows_nograd: int, rows_grad: int) -> float:
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    n = video_tokens + cfg["max_text_seq_length"]
    # per block: qkv+out (4 d^2) + ff (2 * d * 4d) = 12 d^2 linear params
    per_row = cfg["num_layers"] * (2 * n * 12 * d * d + 4 * n * n * d)
    return per_row * (rows_nograd + 3 * rows_grad)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=list(GEOMETRY), default="cogvideox-2b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--mask-layers", type=int, nargs="*", default=[15])
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    a = ap.parse_args()

    import deepspeed
    import torch
    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    from unlearn.config import LossConfig
    from unlearn.eraser import EraserSet
    from unlearn.masks import selector
    from unlearn.models.cogvideox import CogVideoXSpec
    from unlearn.models.tiny import SCHEDULER_KW
    from unlearn.step import ErasureObjective, StepBatch

    cuda = a.device.startswith("cuda")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    dev = torch.device(a.device)
    cfg = COGVIDEOX_2B if a.preset == "cogvideox-2b" else TINY
    dtype = torch.bfloat16 if cuda else torch.float32
    t0 = time.time()
    with torch.device(dev):
        tr = CogVideoXTransformer3DModel(**cfg).to(dtype).eval()
    tr.enable_gradient_checkpointing()
    build_s = time.time() - t0
    spec = CogVideoXSpec(tr, CogVideoXDDIMScheduler(**SCHEDULER_KW), vae_spatial=8)
    g = GEOMETRY[a.preset]
    ls = spec.latent_shape(g["frames"], g["height"], g["width"])
    layout = spec.token_layout(ls)
    torch.manual_seed(0)
    es = EraserSet.for_spec(spec, rank=a.rank)
    obj = ErasureObjective(spec, es, LossConfig(eta=7.0, w_localize=1.0, mask_layers=a.mask_layers or None,
                                                attn_chunk=2048), autocast="bf16" if cuda else "none")
    params = [p for p in es.parameters()]
    ds_cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True,
              "steps_per_print": 10**9}
    engine, _, _, _ = deepspeed.initialize(model=obj, model_parameters=params,
                                           optimizer=torch.optim.AdamW(params, lr=1e-4), config=ds_cfg)
    nt, dtxt = spec.text_len, cfg["text_embed_dim"]

    def batch(i):
        gen = torch.Generator().manual_seed(i)
        r = lambda *s: torch.randn(s, generator=gen)  # noqa: E731
        return StepBatch(r(1, *ls), torch.randint(0, 1000, (1,), generator=gen), r(1, nt, dtxt), r(1, 1, nt, dtxt),
                         selector([[3, 4]], nt), r(1, *ls), torch.randint(0, 1000, (1,), generator=gen),
                         r(1, nt, dtxt)).to(dev)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(a.steps + 1):
        b = batch(i)
        if cuda:
            torch.cuda.synchronize()
        s = time.time()
        out = engine(b)
        engine.backward(out["loss"])
        engine.step()
        if cuda:
            torch.cuda.synchronize()
        if i:  # step 0 is warm-up
            times.append(time.time() - s)
        losses.append(float(out["loss"].detach()))
    step_s = sum(times) / len(times)
    flops = model_flops(cfg, layout.video_len, rows_nograd=3, rows_grad=2)
    result = {
        "preset": a.preset, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "video_tokens": layout.video_len, "text_tokens": nt, "transformer_params": sum(p.numel() for p in tr.parameters()),
        "eraser_params": es.num_parameters(), "zero_stage": 2, "build_s": round(build_s, 1),
        "step_s": round(step_s, 3), "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "model_tflops_per_step": round(flops / 1e12, 1),
        "mfu": round(flops / step_s / (a.peak_tflops * 1e12), 4) if cuda else None,
        "losses": [round(x, 5) for x in losses], "finite": all(x == x and abs(x) < float("inf") for x in losses),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
