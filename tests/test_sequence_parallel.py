"""Sequence parallelism (unlearn.sequence_parallel, Ulysses) over 2 gloo ranks: the step is the single-process one.

Two real processes (torch.multiprocessing spawn, gloo on 127.0.0.1, no Ray) share ONE batch; each keeps half of
the video tokens of every row from the first block to the last. Both run the fused step (reference forward with
the mask's capture, erased forward with the eraser energy records, backward) on tiny CogVideoX (joint attention,
checkpointed), tiny Wan (self-attention all-to-all, local cross-attention) and tiny two-expert Wan (checkpointed),
then sum the eraser gradients over the two ranks (what `scale_gradients` + the engine's mean does). The parent
runs the same step in one process: every loss term on every rank and every eraser gradient within 1e-5 (fp32).
Odd token counts (45 per row: 23 + 22) check the uneven split; one case adds the adversarial inner step (its
embedding gradient is summed over the ranks).
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
CASES = [("cogvideox", True, (9, 24, 40), 0), ("wan", False, (9, 32, 32), 1), ("wan-a14b", True, (9, 48, 80), 0)]


def model_for(kind: str, root: Path) -> Path:
    """Tiny CogVideoX with 3 blocks: the text stream written by block 1's attention (the all-gather of the
    ranks' heads) reaches the loss only through block 2's video queries."""
    from unlearn.models.tiny import make_tiny_model

    return make_tiny_model(root / f"{kind}-3", seed=0, num_layers=3) if kind == "cogvideox" else make_model(kind, root)


def objective_for(kind: str, path: Path, checkpointing: bool, adv_steps: int):
    spec, erasers, objective = build(kind, path, checkpointing)
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
            losses, grads = run_step(objective, one_batch(spec, kind, shape))
            for g in grads.values():  # each rank's part of every eraser gradient: the true one is the sum
                dist.all_reduce(g)
            torch.save({"losses": losses, "grads": grads, "tokens": (sp.tokens.start, sp.tokens.stop)},
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
