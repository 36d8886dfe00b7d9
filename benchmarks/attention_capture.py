"""The true-attention capture, old vs new, at one real CogVideoX-2B layer on this CPU (issue 22).

Run:  .venv/bin/python benchmarks/attention_capture.py [--fraction 1.0] [--chunk 2048]

One child process (OMP_NUM_THREADS=1 for every phase, so the ratio is fair; malloc returns
every block >= 64 KB at once, so RSS follows live tensors), one layer at the geometry of
`benchmarks/train_step.py` (30 heads x 64, 226 text + 17,550 video keys; `--fraction` of the
video queries, the same for both), seeded fp32 q, k, v, no autocast. Phases, each timed in CPU
seconds (one thread: its cost however busy the shared machine is; wall seconds are kept too) with
its own peak RSS (VmHWM reset before it, minus the RSS before it):
  sdpa      : F.scaled_dot_product_attention(q, k, v): the layer's attention, run with or without a capture;
  sdpa+lse  : `unlearn.attention.attention_with_lse`: the same kernel (the op F.sdpa dispatches to,
              recorded from the profiler; outputs compared bit for bit), keeping its log-sum-exp;
  old       : the capture as it was (`old_text_column_probs` below, kept here only): per query chunk,
              every score against all Nt + Nv keys for the log-sum-exp, then the text columns;
  new       : `unlearn.attention.text_column_probs` from the kernel's lse: the Nt text columns only.
The capture's cost is old vs new: in the new code the lse-keeping kernel call *replaces* the layer's
SDPA call (same op), so it adds nothing to the step; both attention timings are reported, and the
totals (attention + capture) old vs new too. Wan's cross-attention capture (keys = the 512 text
tokens; Wan 2.1 1.3B at 81x480x832: 12 heads x 128, 32,760 video queries) is measured the same way:
old = lse pass + text pass over the same keys, new = one softmax pass.
The probabilities are compared old vs new, and both against a full explicit fp32 softmax on the
first 64 video queries. Writes benchmarks/results/attention_capture.json (the results-file format of
`pipelines/runtime/results_file.py`); the last line is its figures and settings as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.train_step import CAPTURE_GEOMETRY, capture_inputs, hwm_mb, reset_peak, rss_mb  # noqa: E402

# Wan 2.1 T2V 1.3B (configs/wan/wan2.1-t2v-1.3b-nudity.yaml): 81x480x832 -> 21x60x104 latents, 1x2x2 patches
WAN_CROSS_GEOMETRY = dict(heads=12, head_dim=128, text=512, video=21 * 30 * 52)
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
OUT = ROOT / "benchmarks" / "results" / "attention_capture.json"
TARGET = 10.0


def old_text_column_probs(q_video, k_all, text_len: int, scale: float, chunk: int = 1024):
    """The capture before issue 22 (unlearn/attention.py at 2e060cf), verbatim: kept here as the baseline only."""
    import torch

    b, h, nv, _ = q_video.shape
    n_all = k_all.shape[2]
    out = torch.empty(b, nv, text_len, dtype=torch.float32, device=q_video.device)
    k_text = k_all[:, :, :text_len].float()
    for qs in range(0, nv, chunk):
        q = q_video[:, :, qs : qs + chunk].float() * scale
        lse = None
        for ks in range(0, n_all, chunk):
            s = torch.matmul(q, k_all[:, :, ks : ks + chunk].float().transpose(-1, -2))
            part = torch.logsumexp(s, dim=-1)
            lse = part if lse is None else torch.logaddexp(lse, part)
            del s
        p_text = torch.exp(torch.matmul(q, k_text.transpose(-1, -2)) - lse.unsqueeze(-1))
        out[:, qs : qs + chunk] = p_text.mean(dim=1)
    return out


WALL: dict[str, float] = {}


def phase(fn, name: str):
    """(result, CPU seconds, peak bytes above the RSS before it); wall seconds into WALL[name].

    One thread per phase: its CPU time is its cost, whatever else shares the machine (wall time is kept too)."""
    gc.collect()
    reset_peak()
    before = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    r = fn()
    dt, WALL[name] = time.process_time() - c0, time.perf_counter() - t0
    return r, dt, int((hwm_mb() - before) * 1024 * 1024)


def sdpa_kernel_ops() -> list[str]:
    """The aten attention ops F.scaled_dot_product_attention runs here, and those `attention_with_lse` runs."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from unlearn.attention import attention_with_lse

    q = torch.randn(1, 2, 40, 64)
    k = torch.randn(1, 2, 50, 64)
    out = {}
    for name, fn in (("sdpa", lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k)),
                     ("with_lse", lambda: attention_with_lse(q, k, k))):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        out[name] = sorted({e.key for e in prof.key_averages() if "_scaled_dot_product" in e.key})
    return out


def child(fraction: float, chunk: int) -> dict:
    import torch
    import torch.nn.functional as F

    from unlearn.attention import attention_with_lse, text_column_probs

    torch.set_num_threads(1)
    g = CAPTURE_GEOMETRY
    h, d, nt, nv = g["heads"], g["head_dim"], g["text"], g["video"]
    nq = max(1, round(nv * fraction))
    scale = d**-0.5
    res = {"kernel_ops": sdpa_kernel_ops()}
    q, k, v = capture_inputs(g, video_queries=nq)
    with torch.no_grad():
        sd, t_sdpa, p_sdpa = phase(lambda: F.scaled_dot_product_attention(q, k, v), "sdpa")
        (fo, lse), t_fused, p_fused = phase(lambda: attention_with_lse(q, k, v), "sdpa+lse")
        res["attention_outputs_bit_identical"] = bool(torch.equal(sd, fo))
        del sd, fo
        old, t_old, p_old = phase(lambda: old_text_column_probs(q, k, nt, scale, chunk), "old")
        new, t_new, p_new = phase(lambda: text_column_probs(q, k[:, :, :nt], scale, lse, chunk), "new")
        m = min(64, nq)  # the explicit full softmax, fp32, on the first m video queries
        ref = torch.softmax(torch.matmul(q[:, :, :m] * scale, k.transpose(-1, -2)), dim=-1)[..., :nt].mean(1)
    res.update(
        video_queries=nq, attention_sdpa_s=t_sdpa, attention_with_lse_s=t_fused, attention_sdpa_peak_bytes=p_sdpa,
        attention_with_lse_peak_bytes=p_fused, old_s=t_old, new_s=t_new, old_peak_bytes=p_old, new_peak_bytes=p_new,
        max_prob=float(old.max()), max_abs_diff=float((new - old).abs().max()),
        max_abs_diff_new_vs_explicit=float((new[:, :m] - ref).abs().max()),
        max_abs_diff_old_vs_explicit=float((old[:, :m] - ref).abs().max()),
    )
    del q, k, v, old, new, lse, ref

    w = WAN_CROSS_GEOMETRY
    wq = max(1, round(w["video"] * fraction))
    q, k, _ = capture_inputs(w, video_queries=wq)
    kt = k[:, :, : w["text"]].clone()
    del k, _
    ws = w["head_dim"] ** -0.5
    with torch.no_grad():
        wold, tw_old, pw_old = phase(lambda: old_text_column_probs(q, kt, w["text"], ws, chunk), "wan old")
        wnew, tw_new, pw_new = phase(lambda: text_column_probs(q, kt, ws, None, chunk), "wan new")
        wref = torch.softmax(torch.matmul(q[:, :, :64] * ws, kt.transpose(-1, -2)), dim=-1).mean(1)
    res["wan_cross"] = dict(
        geometry=w, video_queries=wq, old_s=tw_old, new_s=tw_new, time_ratio=tw_old / tw_new, old_peak_bytes=pw_old,
        new_peak_bytes=pw_new, max_abs_diff=float((wnew - wold).abs().max()),
        max_abs_diff_new_vs_explicit=float((wnew[:, :64] - wref).abs().max()),
    )
    res["wall_s"] = dict(WALL)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fraction", type=float, default=1.0, help="share of the video queries (both paths alike)")
    ap.add_argument("--chunk", type=int, default=2048, help="loss.attn_chunk (the shipped 2B/5B configs: 2048)")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.fraction, a.chunk)))
        return
    from pipelines.runtime.results_file import write_results

    r = subprocess.run([sys.executable, __file__, "--child", "--fraction", str(a.fraction), "--chunk", str(a.chunk)],
                       env={**os.environ, **ENV}, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    c = json.loads(r.stdout.strip().splitlines()[-1])
    old_total, new_total = c["attention_sdpa_s"] + c["old_s"], c["attention_with_lse_s"] + c["new_s"]
    ratio = c["old_s"] / c["new_s"]
    met = ratio >= TARGET and c["new_peak_bytes"] <= c["old_peak_bytes"]
    wan = c["wan_cross"]
    figures = {
        "old_s": round(c["old_s"], 3), "new_s": round(c["new_s"], 3), "time_ratio": round(ratio, 1),
        "old_peak_bytes": c["old_peak_bytes"], "new_peak_bytes": c["new_peak_bytes"],
        "memory_ratio": round(c["old_peak_bytes"] / max(c["new_peak_bytes"], 1), 2),
        "max_abs_diff": c["max_abs_diff"], "max_prob": c["max_prob"],
        "max_abs_diff_new_vs_explicit": c["max_abs_diff_new_vs_explicit"],
        "max_abs_diff_old_vs_explicit": c["max_abs_diff_old_vs_explicit"],
        "target": f">= {TARGET:g}x less capture time at unchanged or lower memory", "target_met": met,
        "attention_sdpa_s": round(c["attention_sdpa_s"], 3),
        "attention_with_lse_s": round(c["attention_with_lse_s"], 3),
        "attention_sdpa_peak_bytes": c["attention_sdpa_peak_bytes"],
        "attention_with_lse_peak_bytes": c["attention_with_lse_peak_bytes"],
        "attention_outputs_bit_identical": c["attention_outputs_bit_identical"], "kernel_ops": c["kernel_ops"],
        "layer_total_old_s": round(old_total, 3), "layer_total_new_s": round(new_total, 3),
        "layer_total_ratio": round(old_total / new_total, 2),
        "wan_cross_old_s": round(wan["old_s"], 3), "wan_cross_new_s": round(wan["new_s"], 3),
        "wan_cross_time_ratio": round(wan["time_ratio"], 2), "wan_cross_old_peak_bytes": wan["old_peak_bytes"],
        "wan_cross_new_peak_bytes": wan["new_peak_bytes"], "wan_cross_max_abs_diff": wan["max_abs_diff"],
        "wan_cross_max_abs_diff_new_vs_explicit": wan["max_abs_diff_new_vs_explicit"],
    }
    settings = {
        "geometry": {**CAPTURE_GEOMETRY, "video_queries": c["video_queries"], "fraction": a.fraction, "rows": 1},
        "wan_cross_geometry": {**WAN_CROSS_GEOMETRY, "video_queries": wan["video_queries"], "fraction": a.fraction},
        "chunk": a.chunk, "dtype": "float32", "autocast": False, "threads_per_phase": 1,
        "time": "CPU seconds of the phase (process_time, one thread: its cost however busy the shared machine is)",
        "peak": "VmHWM above the RSS before the phase (malloc returns blocks >= 64 KB at once)",
        "capture_cost": "old_s/new_s are the capture's own time: the new capture's lse is that of the SDPA kernel the "
                        "layer runs anyway (kernel_ops: F.sdpa dispatches to the same op; outputs bit-identical)",
    }
    argv = ["python", "benchmarks/attention_capture.py", *sys.argv[1:]]
    write_results(a.out, figures, argv=argv, settings=settings, timings={"wall_s": c["wall_s"]})
    print(f"capture CPU time : old {c['old_s']:.2f} s  new {c['new_s']:.3f} s  ratio {ratio:.1f}x "
          f"(target >= {TARGET:g}x at unchanged or lower memory: {'met' if met else 'missed'})", file=sys.stderr)
    print(f"capture peak     : old {c['old_peak_bytes'] / 2**20:.0f} MiB  new {c['new_peak_bytes'] / 2**20:.0f} MiB  "
          f"ratio {figures['memory_ratio']}x", file=sys.stderr)
    print(f"layer total      : old {old_total:.1f} s  new {new_total:.1f} s (attention + capture, CPU)",
          file=sys.stderr)
    print(f"wan cross        : old {wan['old_s']:.2f} s  new {wan['new_s']:.2f} s  ratio {wan['time_ratio']:.1f}x; "
          f"peak {wan['old_peak_bytes'] / 2**20:.0f} -> {wan['new_peak_bytes'] / 2**20:.0f} MiB", file=sys.stderr)
    print(json.dumps({"figures": figures, "settings": settings}))


if __name__ == "__main__":
    main()
