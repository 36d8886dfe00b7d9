"""`t2vu plan`'s prediction vs the measured peak of one real fused training step, on this CPU.

Run (heavy; minutes):  flock /tmp/t2vu-heavy.lock .venv/bin/python benchmarks/memory_plan_check.py [--family wan] [--only NAME]

For each size (CogVideoX or, with --family wan, Wan transformers of several widths, depths and
frame counts, random weights, fp32), a model directory in the real diffusers layout is written
(tiny.py-style: the transformer at that size, a tiny T5/UMT5 and VAE: training loads only the
transformer; Wan: 512 text tokens as WanPipeline pads, `expand_timesteps` in model_index.json
for the Wan 2.2 TI2V-style size, `wan-attn1` for the self-attention eraser site), and a
fresh subprocess runs the real path: `TrainingSession` (device cpu) -> AdamW -> two
trainer step (`session.batch`, `ErasureObjective`, backward, clip, step) in steady state: the
AdamW moments are allocated and the grads of a "previous step" are alive (a zero-grad AdamW step
before it, which moves no weight).

Measured peak = VmHWM during the step minus VmRSS after a warm-up step on the built-in tiny
model in the same process (interpreter, torch, diffusers, tokenizer, text encoder, kernels). VmHWM is reset (/proc/self/clear_refs = 5) just before
the step, so loading spikes (safetensors pages) do not count. glibc is told to mmap every allocation >= 64 KB (MALLOC_MMAP_THRESHOLD_), so a
freed tensor leaves RSS at once and RSS follows live tensor bytes (no heap fragmentation).

Predicted = `plan_memory` for the same config planned for device cpu (no CUDA context),
fp32 activations. CPU vs CUDA: both run SDPA as a flash kernel here (torch's CPU flash
attention; CUDA's flash / mem-efficient), which saves q, k, v, out and the logsumexp and
no probabilities, so the saved-activation terms are the same formulas; what differs on a GPU is
the dtype (bf16: 2 bytes, which the plan takes from model.dtype/train.autocast), the CUDA
context (a fixed 1 GB term) and the caching allocator's fragmentation (the 5% headroom).
No coefficient is fitted to the sizes below: the terms are counted from the code (the per-block
saved tensors were enumerated with autograd saved-tensor hooks), so the table tests the formulas.
One number is measured, first, by a probe: the peak of a bare no-grad forward is 12 U where the
code accounts for 11 (the plan's NO_GRAD_FORWARD_U). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name, heads x 64, layers, frames x height x width, concept/preserve rows, checkpointing, RoPE
SIZES = [
    dict(name="2b-width", heads=30, layers=4, frames=9, height=160, width=240, batch=1, preserve=1, ckpt=False, rope=False),
    dict(name="mid-17f", heads=16, layers=8, frames=17, height=240, width=320, batch=1, preserve=1, ckpt=False, rope=True),
    dict(name="deep-ckpt", heads=8, layers=32, frames=25, height=240, width=352, batch=2, preserve=2, ckpt=True, rope=False),
    dict(name="wide-ckpt", heads=16, layers=12, frames=25, height=240, width=352, batch=2, preserve=2, ckpt=True, rope=True),
    dict(name="rows-25f", heads=8, layers=16, frames=25, height=320, width=480, batch=2, preserve=2, ckpt=False, rope=False),
    dict(name="big-25f", heads=4, layers=40, frames=25, height=320, width=480, batch=4, preserve=4, ckpt=False, rope=True),
]
# Wan sizes: heads x 128, layers, ffn_dim, geometry (VAE 4x / 8x, patches 1x2x2), rows, checkpointing,
# per-token timesteps (Wan 2.2 TI2V), eraser site (family wan = after attn2, wan-attn1 = after attn1)
WAN_SIZES = [
    dict(name="wan-1.3b-width", family="wan", heads=12, layers=2, ffn=8960, frames=9, height=256, width=448, batch=1,
         preserve=1, ckpt=False, expand=False),
    dict(name="wan-deep-ckpt", family="wan", heads=4, layers=16, ffn=2048, frames=9, height=256, width=448, batch=2,
         preserve=2, ckpt=True, expand=False),
    dict(name="wan-ti2v-attn1", family="wan-attn1", heads=6, layers=6, ffn=3584, frames=13, height=256, width=384,
         batch=2, preserve=2, ckpt=False, expand=True),
    dict(name="wan-mid-ckpt", family="wan-attn1", heads=8, layers=4, ffn=4096, frames=9, height=256, width=384,
         batch=2, preserve=2, ckpt=True, expand=True),
    dict(name="wan-big", family="wan", heads=2, layers=40, ffn=1024, frames=9, height=256, width=448, batch=6,
         preserve=6, ckpt=False, expand=False),
]
TEXT_LEN, TEXT_DIM, RANK, CHUNK = 226, 64, 32, 1024
WAN_TEXT_LEN = 512
# Every allocation >= 64 KB is its own mmap (freed at once), so RSS follows live tensor bytes.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "2"}


def method_config(size: dict, model_dir: str, cache_dir: str):
    from unlearn.config import EraserTrainingConfig

    return EraserTrainingConfig.model_validate({
        "model": {"family": size.get("family", "cogvideox"), "path": model_dir, "dtype": "float32",
                  "num_frames": size["frames"], "height": size["height"], "width": size["width"]},
        "eraser": {"rank": RANK},
        "concept": {"target": "naked", "prompts": ["a naked body", "a naked person on a beach"], "reference": "empty",
                    "preserve": ["a person", "a face", "clothing"]},
        "loss": {"w_localize": 1.0, "attn_chunk": CHUNK},
        "train": {"steps": 2, "batch_size": size["batch"], "preserve_batch_size": size["preserve"], "xt_source": "noise",
                  "gradient_checkpointing": size["ckpt"], "device": "cpu", "cache_dir": cache_dir},
    })


def build_wan_dir(size: dict, path: Path) -> Path:
    """A Wan directory at `size` (random weights), laid out like Wan-AI/Wan2.1-T2V-1.3B-Diffusers."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from unlearn.models.tiny import TINY_WORDS
    from unlearn.models.tiny_wan import SCHEDULER_KW
    from unlearn.models.tokenizer import build_t5_tokenizer

    torch.manual_seed(0)
    tok = build_t5_tokenizer(TINY_WORDS)
    tok.model_max_length = WAN_TEXT_LEN
    umt5 = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=TEXT_DIM, d_kv=16, d_ff=128, num_layers=1, num_heads=4,
                                       relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0,
                                       eos_token_id=1)).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=size["heads"], attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=256, ffn_dim=size["ffn"], num_layers=size["layers"], cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    )
    with torch.no_grad():
        for m in transformer.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=m.in_features**-0.5)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    pipe = WanPipeline(tokenizer=tok, text_encoder=umt5, vae=vae, transformer=transformer,
                       scheduler=UniPCMultistepScheduler(**SCHEDULER_KW), expand_timesteps=size["expand"])
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def build_model_dir(size: dict, path: Path) -> Path:
    """A CogVideoX directory at `size` (random weights), laid out like THUDM/CogVideoX-2b."""
    if size.get("family", "cogvideox").startswith("wan"):
        return build_wan_dir(size, path)
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from unlearn.models.tiny import SCHEDULER_KW, TINY_WORDS
    from unlearn.models.tokenizer import build_t5_tokenizer

    torch.manual_seed(0)
    tok = build_t5_tokenizer(TINY_WORDS)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=TEXT_DIM, d_kv=16, d_ff=128, num_layers=1, num_heads=4,
                                 relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1)).eval()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=size["heads"], attention_head_dim=64, num_layers=size["layers"], text_embed_dim=TEXT_DIM,
        max_text_seq_length=TEXT_LEN, sample_frames=size["frames"], sample_height=size["height"] // 8,
        sample_width=size["width"] // 8, use_rotary_positional_embeddings=size["rope"],
    )
    with torch.no_grad():  # O(1) activations, as in unlearn/models/tiny.py
        for m in transformer.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=m.in_features**-0.5)
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=16, layers_per_block=1, norm_num_groups=4)
    pipe = CogVideoXPipeline(tokenizer=tok, text_encoder=t5, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler(**SCHEDULER_KW))
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def _kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(size: dict, model_dir: str, cache_dir: str) -> dict:
    """Runs in a fresh subprocess: baseline, resident before the step, peak of the step (bytes)."""
    import torch
    from unlearn.session import TrainingSession
    from unlearn.step import check_finite
    from unlearn.loop import make_optimizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

    def step(i: int) -> float:
        t0 = time.time()
        losses = session.objective(session.batch(i))
        check_finite(losses, i + 1)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(session.trainable_parameters(), 1.0)
        opt.step()
        return time.time() - t0

    # Warm-up on the built-in tiny model: every import, tokenizer, text encoder, thread pool and kernel the
    # real session will touch, so the baseline holds them and the difference is the run's own memory.
    tiny = {**size, "frames": 9, "height": 32, "width": 32, "batch": 1, "preserve": 1}
    cfg = method_config(tiny, "builtin:tiny-wan" if size.get("family", "").startswith("wan") else "builtin:tiny", cache_dir)
    session = TrainingSession(cfg, device="cpu")
    opt = make_optimizer(cfg.train, session.trainable_parameters())
    step(0)
    session.objective.detach()
    del session, opt
    gc.collect()
    baseline = _kb("VmRSS")
    cfg = method_config(size, model_dir, cache_dir)
    session = TrainingSession(cfg, device="cpu")
    opt = make_optimizer(cfg.train, session.trainable_parameters())

    # Steady state before the measured step: grads of a previous step alive (zero_grad comes after the
    # forward) and the AdamW moments allocated. A zero-grad AdamW step allocates them and moves nothing.
    for p in session.trainable_parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p in session.spec.transformer.parameters():  # fault in weights a loader left file-mapped (RSS counts them)
        p.detach().sum()
    gc.collect()
    resident = _kb("VmRSS")
    phases = PhaseSampler(session.spec.transformer)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    with phases:
        seconds = step(0)
    return {"baseline": baseline, "resident": resident - baseline, "peak": _kb("VmHWM") - baseline, "step_s": seconds,
            "phases": {k: v - baseline for k, v in phases.peaks.items()}, "rss_file": _kb("RssFile")}


class PhaseSampler:
    """Max VmRSS per phase of the step (forward 1, forward 2, backward), sampled every 2 ms by a thread.

    Diagnostic only (a sampler can miss a short spike); the reported peak is VmHWM."""

    def __init__(self, transformer):
        self.transformer, self.phase, self.peaks, self.calls = transformer, "batch", {}, 0

    def _pre(self, *_):
        self.calls += 1
        self.phase = "forward 1" if self.calls == 1 else "forward 2"

    def _post(self, *_):
        if self.calls == 2:
            self.phase = "backward"

    def _run(self):
        while not self.stop:
            v = _kb("VmRSS")
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), v)
            time.sleep(0.002)

    def __enter__(self):
        import threading

        self.hooks = [self.transformer.register_forward_pre_hook(self._pre), self.transformer.register_forward_hook(self._post)]
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        for h in self.hooks:
            h.remove()


def no_grad_forward_u(rope: bool) -> float:
    """Peak of a bare no-grad transformer forward, in U = rows x tokens x hidden x 4 B (the plan's
    NO_GRAD_FORWARD_U; runs in a fresh subprocess)."""
    import torch
    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    from unlearn.models.cogvideox import CogVideoXSpec
    from unlearn.models.tiny import SCHEDULER_KW

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    rows, heads, frames, h, w = 6, 8, 7, 40, 60
    tr = CogVideoXTransformer3DModel(num_attention_heads=heads, attention_head_dim=64, num_layers=2, text_embed_dim=TEXT_DIM,
                                     max_text_seq_length=TEXT_LEN, sample_frames=4 * frames - 3, sample_height=h,
                                     sample_width=w, use_rotary_positional_embeddings=rope).eval().requires_grad_(False)
    spec = CogVideoXSpec(tr, CogVideoXDDIMScheduler(**SCHEDULER_KW))
    x, t, e = torch.randn(rows, frames, 16, h, w), torch.randint(0, 1000, (rows,)), torch.randn(rows, TEXT_LEN, TEXT_DIM)
    with torch.no_grad():
        spec.velocity(x[:1], t[:1], e[:1])  # warm-up (RoPE cache, kernels)
        gc.collect()
        base = _kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        spec.velocity(x, t, e)
    u = rows * (frames * (h // 2) * (w // 2) + TEXT_LEN) * heads * 64 * 4
    return (_kb("VmHWM") - base) / u


def predict(size: dict, model_dir: str, cache_dir: str):
    from pipelines.plan.memory_check import PlanRequest, plan_request

    plan, _ = plan_request(PlanRequest(method_config(size, model_dir, cache_dir), mode="train", device="cpu"))
    return plan


def run_size(size: dict, work: Path) -> dict:
    model_dir = build_model_dir(size, work / size["name"])
    cache = str(work / "embeddings")
    plan = predict(size, str(model_dir), cache)
    env = {**os.environ, **MALLOC_ENV}
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(size), str(model_dir), cache],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{size['name']}: measurement failed:\n{out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    resident = sum(t.bytes for t in plan.terms if t.phase == "all" and t.where == "gpu")
    return {"name": size["name"], "size": size, "predicted_gb": plan.peak_bytes / 2**30, "measured_gb": got["peak"] / 2**30,
            "ratio": plan.peak_bytes / got["peak"], "predicted_resident_gb": resident / 2**30,
            "measured_resident_gb": got["resident"] / 2**30, "peak_phase": plan.peak_phase, "step_s": got["step_s"],
            "measured_phases_gb": {k: v / 2**30 for k, v in got["phases"].items()},
            "predicted_phases_gb": {k: v / 2**30 for k, v in plan.phases.items()}, "terms_gb": plan.summary()["terms"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], help="size name(s) to run")
    ap.add_argument("--family", choices=("cogvideox", "wan"), default="cogvideox",
                    help="which sizes: the CogVideoX table (default) or the Wan table")
    ap.add_argument("--measure", nargs=3, metavar=("SIZE_JSON", "MODEL_DIR", "CACHE_DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--probe-forward", choices=("rope", "norope"), help=argparse.SUPPRESS)
    ap.add_argument("--tolerance", type=float, default=0.15)
    ap.add_argument("--results-file", help="also write the figures here (pipelines/runtime/results_file; the docs' "
                    "calibration tables render from benchmarks/results/memory_calibration_<family>.json)")
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure[0]), args.measure[1], args.measure[2])))
        return 0
    if args.probe_forward:
        print(json.dumps({"u": no_grad_forward_u(args.probe_forward == "rope")}))
        return 0
    from pipelines.plan.memory_plan import NO_GRAD_FORWARD_U

    probes = {}
    for kind in ("norope", "rope") if args.family == "cogvideox" else ():
        out = subprocess.run([sys.executable, __file__, "--probe-forward", kind], capture_output=True, text=True,
                             env={**os.environ, **MALLOC_ENV})
        probes[kind] = round(json.loads(out.stdout.strip().splitlines()[-1])["u"], 2) if not out.returncode else None
    if probes:
        print(f"no-grad forward peak (6 rows, 2 blocks): {probes} U; the plan uses {NO_GRAD_FORWARD_U} U", flush=True)
    table = SIZES if args.family == "cogvideox" else WAN_SIZES
    sizes = [s for s in table if not args.only or s["name"] in args.only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="t2vu-memplan-") as tmp:
        for size in sizes:
            r = run_size(size, Path(tmp))
            rows.append(r)
            s = r["size"]
            print(f"{r['name']:<11} D={s['heads'] * (128 if 'ffn' in s else 64):<5} L={s['layers']:<3} {s['frames']}x{s['height']}x{s['width']:<4} "
                  f"rows {s['batch']}+{s['preserve']} ckpt={'on ' if s['ckpt'] else 'off'} | predicted {r['predicted_gb']:6.2f} GB "
                  f"measured {r['measured_gb']:6.2f} GB ratio {r['ratio']:.3f} | resident {r['predicted_resident_gb']:.2f} "
                  f"vs {r['measured_resident_gb']:.2f} GB | peak in {r['peak_phase']}, step {r['step_s']:.0f} s", flush=True)
            print("    phases predicted " + ", ".join(f"{k} {v:.2f}" for k, v in r["predicted_phases_gb"].items())
                  + " | measured " + ", ".join(f"{k} {v:.2f}" for k, v in r["measured_phases_gb"].items()), flush=True)
            import shutil

            shutil.rmtree(Path(tmp) / size["name"], ignore_errors=True)
    ok = all(abs(r["ratio"] - 1) <= args.tolerance for r in rows)
    figures = {"within_tolerance": ok, "tolerance": args.tolerance, "no_grad_forward_u": probes, "family": args.family,
               "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "terms_gb"}
                        for r in rows]}
    if args.results_file:
        from pipelines.runtime.results_file import write_results

        write_results(args.results_file, figures, settings={"dtype": "float32", "torch_threads": 1,
                                                            "load_average_after": os.getloadavg()})
    print(json.dumps(figures))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
