"""Sequence parallelism (unlearn.sequence_parallel, Ulysses) over 2 gloo ranks: the step is the single-process one.

Two real processes (torch.multiprocessing spawn, gloo on 127.0.0.1, no Ray) share ONE batch; each keeps half of
the video tokens of every row from the first block to the last. Both run the fused step (reference forward with
the mask's capture, erased forward with the eraser energy records, backward) on tiny CogVideoX (joint attention,
3 blocks, checkpointed), tiny Wan (self-attention all-to-all, local cross-attention), tiny two-expert Wan
(checkpointed; backbone also sharded with FSDP2 over the same ranks) and tiny Wan with per-token timesteps (Wan 2.2
TI2V's time embedding, cut per shard; gathered after the last block), then sum the eraser gradients over the two
ranks (what `scale_gradients` + the engine's mean does). The parent runs the same step in one process: every loss
term on every rank and every eraser gradient within 1e-5 (fp32). Odd token counts (45 per row: 23 + 22) check the
uneven split; one case adds the adversarial inner step (its embedding gradient is summed over the ranks). Then the
config, `t2vu plan`, real sizes on meta, and a 2-worker Ray run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.test_sharded_backbone import build, free_port, make_model

WORLD = 2
TOL = 1e-5
# (model, gradient checkpointing, (frames, height, width), adversarial inner steps)
CASES = [("cogvideox", True, (9, 24, 40), 0), ("wan", False, (9, 32, 32), 1), ("wan-a14b", True, (9, 48, 80), 0),
         ("wan-ti2v", True, (9, 48, 80), 0)]  # per-token timesteps (as Wan 2.2 TI2V): gathered after the last block
SHARDED = "wan-a14b"  # also with its backbone sharded over the same 2 ranks (unlearn.sharding): what the plan suggests


def model_for(kind: str, root: Path) -> Path:
    """Tiny CogVideoX with 3 blocks: the text stream written by block 1's attention (the all-gather of the
    ranks' heads) reaches the loss only through block 2's video queries."""
    from unlearn.models.tiny import make_tiny_model

    return make_tiny_model(root / f"{kind}-3", seed=0, num_layers=3) if kind == "cogvideox" else make_model(kind, root)


def objective_for(kind: str, path: Path, checkpointing: bool, adv_steps: int):
    spec, erasers, objective = build(kind, path, checkpointing)
    spec.expand_timesteps = kind == "wan-ti2v"  # the tiny Wan run as TI2V: one timestep per video token
    if adv_steps:
        from unlearn.config import LossConfig
        from unlearn.step import ErasureObjective

        objective.detach()
        loss = LossConfig(eta=3.0, w_preserve=0.5, w_localize=1.0, localize_reduction="mean", adv_steps=adv_steps)
        objective = ErasureObjective(spec, erasers, loss)
    return spec, objective


def one_batch(spec, kind: str, shape):
    """2 concept rows (2 anchors each) + 2 preserved rows; two-expert Wan: rows on both sides of the boundary."""
    from unlearn.masks import selector
    from unlearn.step import StepBatch

    g = torch.Generator().manual_seed(3)
    ls = spec.latent_shape(*shape)
    r = lambda *s: torch.randn(s, generator=g)  # noqa: E731
    t_c, t_p = (torch.tensor([900, 300]), torch.tensor([700, 100])) if kind == "cogvideox" else (
        torch.tensor([950.0, 400.0]), torch.tensor([900.0, 300.0]))
    return StepBatch(x_c=r(2, *ls), t_c=t_c, emb_c=r(2, spec.text_len, 32), emb_ref=r(2, 2, spec.text_len, 32),
                     sel=selector([[1], [1, 2]], spec.text_len), x_p=r(2, *ls), t_p=t_p,
                     emb_p=r(2, spec.text_len, 32))


def run_step(objective, batch) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    objective.erasers.zero_grad(set_to_none=True)
    losses = objective(batch)
    losses["loss"].backward()
    return ({k: float(v.detach()) for k, v in losses.items()},
            {n: p.grad.detach().clone() for n, p in objective.erasers.named_parameters()})


def rank_main(rank: int, paths: dict, port: int, out: str) -> None:
    import torch.distributed as dist

    from unlearn.sequence_parallel import enable_sequence_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for kind, ckpt, shape, adv in CASES:
            spec, objective = objective_for(kind, Path(paths[kind]), ckpt, adv)
            sp = enable_sequence_parallel(objective)
            if kind == SHARDED:
                from unlearn.sharding import shard_backbone

                shard_backbone(spec, objective.erasers)
            losses, grads = run_step(objective, one_batch(spec, kind, shape))
            for g in grads.values():  # each rank's part of every eraser gradient: the true one is the sum
                dist.all_reduce(g)
            captured = sorted({tuple(p.shape) for p in objective.capture.probs()})  # each rank: its tokens only
            torch.save({"losses": losses, "grads": grads, "tokens": (sp.tokens.start, sp.tokens.stop),
                        "captured": captured},
                       os.path.join(out, f"{kind}-rank{rank}.pt"))
            sp.remove()
            objective.detach()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes, 3 models: ~30 s of CPU, 95-220 s wall on the loaded shared 2-core box
def test_sequence_parallel_step_equals_single_process(tmp_path_factory, tmp_path):
    import torch.multiprocessing as mp

    models = tmp_path_factory.mktemp("sp-models")
    paths = {kind: str(model_for(kind, models)) for kind, *_ in CASES}
    mp.start_processes(rank_main, args=(paths, free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="spawn")
    for kind, _, shape, adv in CASES:
        got = [torch.load(tmp_path / f"{kind}-rank{r}.pt") for r in range(WORLD)]
        spec, objective = objective_for(kind, Path(paths[kind]), False, adv)  # one process, no checkpointing
        batch = one_batch(spec, kind, shape)
        losses, grads = run_step(objective, batch)
        objective.detach()
        nv = spec.token_layout(batch.x_c.shape[1:]).video_len
        assert [g["tokens"] for g in got] == [(0, (nv + 1) // 2), ((nv + 1) // 2, nv)], (kind, nv)  # a real split
        shards = [[(2, stop - start, spec.text_len)] for start, stop in (g["tokens"] for g in got)]
        assert [g["captured"] for g in got] == shards, kind  # [rows, this rank's tokens, Nt] per layer
        assert losses["l_localize"] > 0 and 0 < losses["mask_fraction"] < 1, losses  # the mask term is live
        for r in range(WORLD):
            assert set(got[r]["losses"]) == set(losses), kind
            for k, v in losses.items():
                assert abs(got[r]["losses"][k] - v) <= TOL * max(1.0, abs(v)), (kind, r, k, got[r]["losses"][k], v)
        assert sorted(got[0]["grads"]) == sorted(grads)
        for n, ref in grads.items():
            assert float(ref.abs().max()) > 0, (kind, n)  # a gradient that is really there
            for r in range(WORLD):
                assert torch.allclose(got[r]["grads"][n], ref, atol=TOL, rtol=TOL), (kind, r, n)


def test_split_sizes_and_the_heads_rule(tmp_path):
    """Token shards follow torch.tensor_split; a degree that does not divide the heads is refused in one line
    (tiny CogVideoX has 2 heads; 3 ranks of torch's `fake` process group: no communication)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from unlearn.sequence_parallel import enable_sequence_parallel, split_sizes

    for n, p in [(45, 2), (17550, 4), (7, 3), (8, 8)]:
        sizes = split_sizes(n, p)
        assert sizes == [t.numel() for t in torch.arange(n).tensor_split(p)] and sum(sizes) == n
    spec, objective = objective_for("cogvideox", make_model("cogvideox", tmp_path), False, 0)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=3)
    try:
        with pytest.raises(ValueError, match=r"sequence_parallel=3 must divide the model's 2 attention heads"):
            enable_sequence_parallel(objective)
    finally:
        dist.destroy_process_group()
        objective.detach()
    assert all(type(b.attn1.processor).__name__ != "UlyssesCogVideoXProcessor" for b in spec.blocks())


def test_a_shard_mask_is_its_slice_of_the_whole_mask():
    """`localization_mask` on one shard's tokens (frames cut by the split: 45 tokens of 9-token frames, 23 + 22),
    with the per-frame range made the group's, is exactly that slice of the whole mask and soft map; the plan's
    capture results under sequence parallelism are one shard's: [B, ceil(Nv / P), Nt] fp32 per layer."""
    from dataclasses import replace

    from pipelines.plan.memory_plan import plan_memory
    from tests.test_memory_plan import _wan_inputs
    from unlearn.masks import localization_mask, selector

    g = torch.Generator().manual_seed(0)
    probs, sel, grid = torch.rand(2, 45, 6, generator=g), selector([[1], [2, 3]], 6), (5, 3, 3)
    whole, soft = localization_mask([probs, probs.roll(1, 1)], sel, grid, 0.4)
    shards, seen = [slice(0, 23), slice(23, 45)], []
    for s in shards:  # each shard's own per-frame range: +inf / -inf where it holds none of a frame
        localization_mask([probs[:, s], probs.roll(1, 1)[:, s]], sel, grid, 0.4, s,
                          lambda lo, hi: seen.append((lo, hi)) or (lo, hi))
    assert seen[0][0][:, 3:].isinf().all() and not seen[0][0][:, 2].isinf().any()  # frame 2 spans both shards
    lo, hi = torch.minimum(seen[0][0], seen[1][0]), torch.maximum(seen[0][1], seen[1][1])  # what the group reduces
    for s in shards:
        m, sf = localization_mask([probs[:, s], probs.roll(1, 1)[:, s]], sel, grid, 0.4, s, lambda a, b: (lo, hi))
        assert torch.equal(m, whole[:, s]) and torch.equal(sf, soft[:, s]) and 0 < m.mean() < 1

    x = _wan_inputs(capture_layers=3, concept_rows=2, video_tokens=45)
    one, two = (plan_memory(replace(x, sequence_parallel=p, world_size=p)) for p in (1, 2))
    cap = [next(t for t in p.terms if t.name == "attention-capture results") for p in (one, two)]
    assert cap[0].bytes == 4.0 * 2 * 45 * 12 * 3 and cap[1].bytes == 4.0 * 2 * 23 * 12 * 3
    assert "this rank's 23 of 45 video tokens" in cap[1].note


# 14 s in a run with the Ray tests on the loaded box (most of it t2vu plan's imports)
def test_config_refusals_and_the_plan_names_sequence_parallelism_before_frames(capsys):
    """distributed.sequence_parallel: refused (one line) where it does not divide the workers, with ZeRO-3 and with
    rank-0 proxy evals; `t2vu plan` counts it (activations over Nv / P tokens of the group's rows) and, for Wan 2.2
    A14B 81x480x832 sharded over 4 x 80 GB, names it before cutting frames: one group of 4 at the shipped 4+4 rows
    fits (each rank holds its quarter of the attention capture)."""
    import json

    from pipelines.cli.entry import main
    from pipelines.config.pipeline import load_pipeline_config
    from tests.test_distributed import ROOT
    from unlearn.config import ConfigError

    for sets, msg in ((["distributed.sequence_parallel=3"], r"sequence_parallel=3 must divide distributed.num_workers=2"),
                      (["distributed.sequence_parallel=2", "distributed.zero_stage=3"], r"needs distributed.zero_stage: 2")):
        with pytest.raises(ConfigError, match=msg):
            load_pipeline_config(ROOT / "configs" / "tiny.yaml", sets)
    with pytest.raises(ConfigError, match=r"proxy evals run on rank 0 alone"):
        load_pipeline_config(ROOT / "configs" / "search" / "tiny.yaml",
                             ["distributed.sequence_parallel=2", "search.algorithm=asha"])

    # a group shares one batch share: 2+2 rows on 4 workers in groups of 2 is 1+1 per group (DeepSpeed still counts
    # every worker); without the groups the same batch is refused, naming them
    from pipelines.config.distributed import check_distributed, deepspeed_config
    from tests.test_distributed import tiny_pipeline_cfg

    cfg = tiny_pipeline_cfg(ROOT / "unused", num_workers=4, sequence_parallel=2)
    check_distributed(cfg)
    ds = deepspeed_config(cfg)
    assert ds["train_micro_batch_size_per_gpu"] == 1 and ds["train_batch_size"] == 4
    cfg = cfg.with_overrides({"train.batch_size": 3})
    with pytest.raises(ConfigError, match=r"train.batch_size=3 is the global batch and must be divisible by the "
                                          r"sequence-parallel groups \(distributed.num_workers / distributed"):
        check_distributed(cfg)

    a14b = str(ROOT / "configs" / "wan" / "wan2.2-t2v-a14b-nudity.yaml")
    args = ["plan", "-c", a14b, "--gpu-memory", "80", "--world-size", "4", "--mode", "distributed",
            "--set", "distributed.shard_backbone=true"]
    plans = {}
    for sp, rows in ((1, 4), (2, 2), (4, 4)):
        rc = main(args + ["--set", f"distributed.sequence_parallel={sp}", "--set", f"train.batch_size={rows}",
                          "--set", f"train.preserve_batch_size={rows}"])
        plans[sp] = (rc, json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    (rc1, one), (rc2, two), (rc4, four) = plans[1], plans[2], plans[4]
    act = "forward 2 saved activations"
    # the mildest fix keeps the shipped batch: one group of 4 (the idle expert's row then spans a quarter of the tokens)
    assert rc1 == 3 and one["fix"]["setting"] == "--set distributed.sequence_parallel=4", one["fix"]
    assert [c for c in one["fix"]["costs"] if "tokens split over 4 GPUs" in c] == one["fix"]["costs"]
    # 2 groups of 2 at 2+2 rows: each GPU holds 1+1 rows (+ the idle expert's) at half the tokens: about half
    assert rc2 == 0 and two["fits"] and two["terms"][act] == pytest.approx(one["terms"][act] / 2, rel=0.02)
    assert two["terms"]["all-to-all buffers"] > 0 and two["terms"]["gathered video tokens"] < 0.1
    # one group of 4 at the same 4+4 rows: 4x the rows per GPU at 1/4 of the tokens, the capture results included
    # (as many bytes as without SP; kept whole on every rank they were 4x that, 10 GB: 79.8 GB per GPU, no fit)
    cap = "attention-capture results"
    assert four["terms"][cap] == pytest.approx(one["terms"][cap], rel=0.01) and 2 < four["terms"][cap] < 3
    assert rc4 == 0 and four["fits"] and four["peak_gb_per_gpu"] < 0.95 * 80


@pytest.fixture(scope="module")
def sp_runs(ray_session, tmp_path_factory):
    """The three Ray Train + DeepSpeed ZeRO-2 runs of the tiny CogVideoX the slow tests below share: 1 worker on the
    2+2 batch, 2 workers with distributed.sequence_parallel 2 (one group: the whole batch, half of every video's
    tokens each), and the same with rank 1 SIGKILLed after step 3 (checkpoints every 2 of 4 steps)."""
    from pipelines.train.driver import run_distributed
    from tests.fault_hooks import kill_worker_once
    from tests.test_distributed import tiny_pipeline_cfg
    from unlearn.loop import StepHook

    tmp = tmp_path_factory.mktemp("sp-runs")
    runs = {}
    split = {"num_workers": 2, "sequence_parallel": 2}
    for name, kw in (("one", {"num_workers": 1}), ("split", split), ("killed", split)):
        cfg = tiny_pipeline_cfg(tmp, steps=4, **kw)
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoint_every": 2})})
        hook = None
        if name == "killed":
            hook = StepHook(kill_worker_once, {"at_rank": 1, "at_step": 3, "marker": str(tmp / "killed.txt")})
        runs[name] = (run_distributed(cfg, tmp / name, step_hook=hook), tmp / name)
    runs["marker"] = tmp / "killed.txt"
    return runs


def _losses(out):
    import json

    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_two_workers_sharing_one_batch_train_the_one_worker_eraser(sp_runs):
    """`t2vu train --distributed` through Ray Train + DeepSpeed ZeRO-2: 2 workers with distributed.sequence_parallel 2
    log the same losses and write the same eraser as 1 worker training on the 2+2 batch alone. (AdamW hardly sees a
    gradient's scale: the eraser gradients themselves are checked by the step-level test above; this one checks the
    groups, batch shares and the engine.)"""
    from unlearn.eraser import read_eraser

    (one, a), (split, b) = sp_runs["one"], sp_runs["split"]
    assert split["sequence_parallel"] == 2 and one["sequence_parallel"] == 1
    assert one["global_steps"] == split["global_steps"] == 4
    assert _losses(a) == pytest.approx(_losses(b), rel=1e-5, abs=1e-6)
    ea, eb = read_eraser(a / "eraser").state_dict(), read_eraser(b / "eraser").state_dict()
    assert ea.keys() == eb.keys() and any(v.abs().max() > 0 for k, v in ea.items() if ".up." in k)
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")


@pytest.mark.slow
def test_a_killed_sequence_parallel_run_resumes_bit_identically(sp_runs):
    """Rank 1 of the sequence-parallel group SIGKILLed after step 3: the restarted group (new process groups, the
    sequence split installed again) resumes from the step-2 checkpoint and ends with the uninterrupted run's eraser
    and curve, bit for bit."""
    from unlearn.eraser import read_eraser

    (whole, a), (killed, b) = sp_runs["split"], sp_runs["killed"]
    assert sp_runs["marker"].exists(), "the fault was never injected"
    assert killed["attempts"] == [0, 2] and killed["resumed_from"] == 2, killed
    assert killed["global_steps"] == whole["global_steps"] == 4 and killed["sequence_parallel"] == 2
    assert _losses(a) == _losses(b)  # exact
    ea, eb = read_eraser(a / "eraser").state_dict(), read_eraser(b / "eraser").state_dict()
    assert ea.keys() == eb.keys()
    for k in ea:
        assert torch.equal(ea[k], eb[k]), (k, (ea[k] - eb[k]).abs().max())

def _meta_transformer(cls, preset: str, layers: int = 1):
    from unlearn.models.architectures import PRESETS, init_kwargs

    with torch.device("meta"):
        return cls(**{**init_kwargs(cls, PRESETS[preset]["transformer"]), "num_layers": layers}).requires_grad_(False)


# ~1 s in a run with the other real-size tests (~30 s alone on the loaded box: the diffusers import)
def test_real_sizes_on_meta_over_four_ranks():
    """The installed path at real shapes, on meta (nothing allocated) as rank 1 of torch's `fake` 4-rank group (the
    real all-to-all / all-gather calls, no data): Wan 2.2 A14B at 81x480x832 (40 heads: 8190 of the 32,760 video
    tokens per rank) and CogVideoX-5B at 49x480x720 (48 heads, text joint: 4388 of 17,550) return whole
    predictions; CogVideoX-2B's 30 heads are refused at 4 ranks (one line)."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from unlearn.sequence_parallel import enable_sequence_parallel

    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=4)
    try:
        seen = {}
        for family, cls, preset, x, extra in (
                ("wan", WanTransformer3DModel, "wan2.2-t2v-a14b", (1, 16, 21, 60, 104), {}),
                ("cogvideox", CogVideoXTransformer3DModel, "cogvideox-5b", (1, 13, 16, 60, 90),
                 {"encoder_hidden_states": torch.empty(1, 226, 4096, device="meta")})):
            tr = _meta_transformer(cls, preset)
            sp = enable_sequence_parallel(SimpleNamespace(spec=SimpleNamespace(family=family, transformer=tr)))
            kw = {"encoder_hidden_states": torch.empty(1, 512, 4096, device="meta")} if family == "wan" else extra
            with torch.no_grad():
                out = tr(hidden_states=torch.empty(x, device="meta"), timestep=torch.tensor([500], device="meta"),
                         return_dict=False, **kw)[0]
            assert out.shape == x, (family, out.shape)
            seen[family] = (sum(sp.sizes), sp.sizes[1])
        assert seen == {"wan": (32760, 8190), "cogvideox": (17550, 4388)}, seen
        tr = _meta_transformer(CogVideoXTransformer3DModel, "cogvideox-2b")
        with pytest.raises(ValueError, match=r"sequence_parallel=4 must divide the model's 30 attention heads"):
            enable_sequence_parallel(SimpleNamespace(spec=SimpleNamespace(family="cogvideox", transformer=tr)))
    finally:
        dist.destroy_process_group()
