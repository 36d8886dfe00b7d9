"""Fused training step vs the seed's naive step, and the memory of true-attention mask capture.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_step.py [--steps 6] [--skip-capture]

Each variant runs in its own subprocess (so peak RSS is its own), on the same
mid-size CPU CogVideoX-shaped model and the same batches:
  fused : one transformer; erasers toggled; 2 forwards per step (batched no-grad
          [concept|anchors|preserved], then erased [concept|preserved]); cached
          text embeddings; attention capture from the SDPA kernel's log-sum-exp.
  naive : the seed's shape — a second transformer copy as the "original" model,
          one forward per quantity, prompts re-encoded by T5 every step, the
          mask from the full joint softmax matrix.
Step time is the median over the timed steps of the step's CPU seconds (process_time; one thread,
so it is the step's cost however busy a shared machine is) and, for reference, its wall seconds.
Peak memory = peak RSS minus the RSS after imports (the interpreter+torch
baseline both variants share). The text encoder is sized ~2.7x the
transformer, the ratio of T5-XXL (4.7B) to CogVideoX-2B (1.7B).
Capture memory: one layer at CogVideoX-2B geometry (30 heads x 64, 226 text +
17,550 video tokens), measured the same way, vs the full matrix's size (peak RSS is
reset before the capture, after the layer's own attention; the old-vs-new capture ratio
is `benchmarks/attention_capture.py`).
The last line is one JSON object; the figures also go to benchmarks/results/train_step.json
(`pipelines/runtime/results_file.py`), which docs/benchmarks.md renders.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start a new peak: Linux resets VmHWM (the peak RSS) to the current RSS on '5' > clear_refs."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def hwm_mb() -> float:
    """Peak RSS since the last `reset_peak` (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


MID = dict(heads=8, head_dim=64, layers=8, text_len=32, latent=(3, 4, 8, 8), t5_dmodel=768, t5_layers=12, t5_ff=3072)


def build_t5():
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(1)
    return T5EncoderModel(T5Config(vocab_size=256, d_model=MID["t5_dmodel"], d_kv=64, d_ff=MID["t5_ff"],
                                   num_layers=MID["t5_layers"], num_heads=12, dropout_rate=0.0)).eval()


def build(seed=0):
    import torch
    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from unlearn.models.tiny import SCHEDULER_KW

    torch.manual_seed(seed)
    tr = CogVideoXTransformer3DModel(
        num_attention_heads=MID["heads"], attention_head_dim=MID["head_dim"], in_channels=4, out_channels=4,
        time_embed_dim=256, text_embed_dim=MID["t5_dmodel"], num_layers=MID["layers"], sample_width=16,
        sample_height=16, sample_frames=9, patch_size=2, max_text_seq_length=MID["text_len"],
        use_rotary_positional_embeddings=True,
    ).eval()
    with torch.no_grad():
        for m in tr.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=m.in_features**-0.5)
    return tr, CogVideoXDDIMScheduler(**SCHEDULER_KW)


def batches(n_steps, b=2, k=2, p=2, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_steps):
        ids = torch.randint(3, 256, (b + b * k + p, MID["text_len"]), generator=g)
        out.append(dict(
            ids=ids, x_c=torch.randn((b, *MID["latent"]), generator=g), t_c=torch.randint(0, 1000, (b,), generator=g),
            x_p=torch.randn((p, *MID["latent"]), generator=g), t_p=torch.randint(0, 1000, (p,), generator=g),
            sel=torch.zeros(b, MID["text_len"]).index_fill_(1, torch.tensor([1, 2]), 1.0), b=b, k=k, p=p,
        ))
    return out


def write_cache(steps: int, path: str) -> dict:
    """The driver's job in the real flow: encode every prompt once, store, drop the encoder."""
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    t5 = build_t5()
    with torch.no_grad():
        embs = {str(i): t5(d["ids"])[0].contiguous() for i, d in enumerate(batches(steps + 1))}
    save_file(embs, path)
    return {"t5_params": sum(q.numel() for q in t5.parameters())}


def run_variant(kind: str, steps: int, cache_path: str = "") -> dict:
    import copy

    import torch

    torch.set_num_threads(1)
    from unlearn.config import LossConfig
    from unlearn.eraser import EraserSet
    from unlearn.models.cogvideox import CogVideoXSpec
    from unlearn.naive import NaiveObjective
    from unlearn.step import ErasureObjective, StepBatch

    base_rss = rss_mb()
    tr, sched = build()
    spec = CogVideoXSpec(tr, sched, vae_spatial=8)
    cfg = LossConfig(eta=3.0, w_localize=1.0, mask_threshold=0.1, attn_chunk=256)
    torch.manual_seed(1)
    es = EraserSet.for_spec(spec, rank=32)
    with torch.no_grad():
        for prm in es.parameters():
            prm.add_(torch.randn_like(prm) * 0.05)
    data = batches(steps + 1)

    if kind == "fused":
        from safetensors.torch import load_file

        obj = ErasureObjective(spec, es, cfg)
        cache = {int(i): e for i, e in load_file(cache_path).items()}  # the embedding cache: no T5 here
    else:
        t5 = build_t5()

        def encode(ids):
            with torch.no_grad():
                return t5(ids)[0]

        original = CogVideoXSpec(copy.deepcopy(tr), sched, vae_spatial=8)
        obj = NaiveObjective(spec, es, cfg, original_spec=original)
    opt = torch.optim.AdamW(es.parameters(), lr=1e-4)
    times, cpu_times, losses = [], [], []
    for i, d in enumerate(data):
        t0, c0 = time.perf_counter(), time.process_time()
        emb = cache[i] if kind == "fused" else encode(d["ids"])  # naive re-encodes every step
        b, k, p = d["b"], d["k"], d["p"]
        emb_c, emb_ref, emb_p = emb.split([b, b * k, p])
        batch = StepBatch(d["x_c"], d["t_c"], emb_c, emb_ref.view(b, k, *emb.shape[1:]), d["sel"], d["x_p"], d["t_p"], emb_p)
        out = obj(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if i > 0:  # first step is warm-up
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        losses.append(float(out["loss"].detach()))
    return {"kind": kind, "step_s": sorted(times)[len(times) // 2],
            "step_cpu_s": sorted(cpu_times)[len(cpu_times) // 2], "peak_extra_mb": peak_mb() - base_rss,
            "losses": losses, "transformer_params": sum(q.numel() for q in tr.parameters())}


# One CogVideoX-2B attention layer at 49 frames 480x720: 13x60x90 latents, 2x2 patches -> 13*30*45 video tokens
CAPTURE_GEOMETRY = dict(heads=30, head_dim=64, text=226, video=13 * 30 * 45)


def capture_inputs(geometry: dict = CAPTURE_GEOMETRY, video_queries: int | None = None, seed: int = 0):
    """Seeded fp32 q of the first `video_queries` video queries [1, H, nq, d] and k, v of all Nt + Nv keys
    (text first) [1, H, Nt + Nv, d], at `geometry` (heads, head_dim, text, video)."""
    import torch

    h, d, nt, nv = geometry["heads"], geometry["head_dim"], geometry["text"], geometry["video"]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn((1, h, nv if video_queries is None else video_queries, d), generator=g)
    k = torch.randn((1, h, nt + nv, d), generator=g)
    v = torch.randn((1, h, nt + nv, d), generator=g)
    return q, k, v


def run_capture() -> dict:
    """The capture's own time and memory at one 2B layer: the text columns on top of the lse of the SDPA kernel
    the block runs anyway (old vs new, and what the lse saves: `benchmarks/attention_capture.py`)."""
    import torch

    torch.set_num_threads(1)
    from unlearn.attention import attention_with_lse, text_column_probs

    h, d, nt, nv = (CAPTURE_GEOMETRY[key] for key in ("heads", "head_dim", "text", "video"))
    q, k, v = capture_inputs()
    with torch.no_grad():
        _, lse = attention_with_lse(q, k, v)  # the block's own attention; not the capture's cost
    reset_peak()
    base = rss_mb()
    t0 = time.perf_counter()
    probs = text_column_probs(q, k[:, :, :nt], d**-0.5, lse, chunk=1024)
    dt = time.perf_counter() - t0
    extra_gb = (hwm_mb() - base) / 1024
    full_gb = h * nv * (nt + nv) * 4 / 1024**3
    return {"capture_extra_gb": round(extra_gb, 3), "full_matrix_gb": round(full_gb, 2), "capture_s": round(dt, 1),
            "probs_shape": list(probs.shape), "video_tokens": nv}


def child(kind: str, steps: int, cache: str = "") -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", kind, "--steps", str(steps), "--cache", cache],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--child", choices=["fused", "naive", "capture", "cache"])
    ap.add_argument("--cache", default="")
    ap.add_argument("--skip-capture", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "train_step.json"),
                    help="results file ('' to write none)")
    a = ap.parse_args()
    if a.child:
        if a.child == "capture":
            print(json.dumps(run_capture()))
        elif a.child == "cache":
            print(json.dumps(write_cache(a.steps, a.cache)))
        else:
            print(json.dumps(run_variant(a.child, a.steps, a.cache)))
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "emb.safetensors")
        t5_info = child("cache", a.steps, cache)
        fused, naive = child("fused", a.steps, cache), child("naive", a.steps)
    diff = max(abs(x - y) for x, y in zip(fused["losses"], naive["losses"]))
    result = {
        "transformer_params": fused["transformer_params"], **t5_info,
        "fused_step_cpu_s": round(fused["step_cpu_s"], 4), "naive_step_cpu_s": round(naive["step_cpu_s"], 4),
        "step_time_ratio": round(naive["step_cpu_s"] / fused["step_cpu_s"], 3),
        "fused_peak_mb": round(fused["peak_extra_mb"], 1), "naive_peak_mb": round(naive["peak_extra_mb"], 1),
        "peak_memory_ratio": round(fused["peak_extra_mb"] / naive["peak_extra_mb"], 3),
        "loss_max_abs_diff": diff,
        "targets": "step_time_ratio >= 1.25, peak_memory_ratio <= 0.6",
        "targets_met": naive["step_cpu_s"] / fused["step_cpu_s"] >= 1.25
        and fused["peak_extra_mb"] / naive["peak_extra_mb"] <= 0.6,
    }
    print(json.dumps(result), file=sys.stderr)
    if not a.skip_capture:
        result.update(child("capture", 0))
    if a.out:
        from pipelines.runtime.results_file import write_results

        write_results(a.out, result, argv=["python", "benchmarks/train_step.py", *sys.argv[1:]],
                      settings={"config": MID, "steps_timed": a.steps, "threads": 1,
                                "time": "median CPU seconds per step (process_time, one thread)"},
                      timings={"fused_step_wall_s": round(fused["step_s"], 4),
                               "naive_step_wall_s": round(naive["step_s"], 4), "load_1min": os.getloadavg()[0]})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
