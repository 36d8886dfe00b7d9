"""Where the noisy latents x_t come from in prompt-only training.

- `noise` (the seed's recipe): x_start ~ N(0, I) noised to a timestep the family's spec
  samples. Cheap, but x_t is then plain Gaussian noise at every t.
- `trajectory` (ESD/Receler): the frozen model (erasers off) samples each prompt
  from pure noise with CFG using the family's own sampler; a step draws a random
  (trajectory, sampler step). The pool is sampled once (pool_size trajectories per
  prompt): costs prompts x pool_size x steps x 2 forwards up front, nothing per step.

Both draw their randomness from CPU generators (a seed gives the same x_t on any
device); `draw` returns CPU tensors (or the model's device when that is `meta`),
and the session moves the batch to the training device.

The trajectory pool is stored in the model dtype on the host (bf16 halves it: at
49x480x720 one state is 1.1M latent values, so 20 prompts x pool 8 x 20 steps is
7 GB in bf16, 14 GB in fp32). Each prompt's trajectories come from a seed derived from
(seed, prompt), so a pool does not depend on which process sampled it: under Ray Train
each rank samples only the prompts of its data shard (`shard_prompts`) and trains on
that shard, so the work and the host memory are split over ranks instead of repeated. The pools
are cached on disk (`unlearn.trajectory_cache`, next to the text embeddings): the trials of a
search and later runs with the same model and sampler settings read them instead of sampling again.

With the backbone sharded over the ranks (`distributed.shard_backbone`, unlearn.sharding) every forward is
a collective (each unit is all-gathered before it runs), so the ranks sample in lockstep: each samples its
own prompts' missing pools, and a rank with fewer misses than the most any rank has runs that many
throwaway trajectories of one row (same sampler steps, so the same forwards in the same order) until all
are done. Cost, against each rank sampling with its own whole backbone: per forward, every unit's weights
received once, (N-1)/N of the backbone's bytes per rank (Wan 2.2 A14B bf16, 4 ranks: 21 GB of one expert
per sampler step, estimated ~0.1 s over NVLink against ~15 PFLOP, tens of seconds, of forward at 81x480x832
with 2 x 8 rows), and the idle ranks' one-row trajectories (round-robin prompts: at
most one per rank). No rank ever holds the backbone whole. Filling the cache before the ranks start
instead would need the whole backbone in one process -- what sharding avoids -- and would sample every
prompt there, N times the wall time; a warm cache costs neither (no forward at all).
"""

from __future__ import annotations

import contextlib
import hashlib

import torch


def prompt_seed(seed: int, prompt: str) -> int:
    h = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 62) - 1)


def shard_prompts(prompts: list[str], rank: int, world: int) -> list[str]:
    """This rank's share (round-robin); with fewer prompts than ranks each rank still gets one."""
    uniq = list(dict.fromkeys(prompts))
    if world <= 1 or not uniq:
        return uniq
    mine = uniq[rank::world]
    return mine or [uniq[rank % len(uniq)]]


def host_device(device: torch.device) -> torch.device:
    # meta tensors cannot be copied to the host: a meta run keeps its (empty) pool on meta.
    return device if device.type == "meta" else torch.device("cpu")


def lockstep_rounds(mine: int, group) -> int:
    """The most trajectories any rank of `group` samples (each one is the same forwards on every rank);
    `mine` when the backbone is not sharded (group None)."""
    if group is None:
        return mine
    import torch.distributed as dist

    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    n = torch.tensor([mine], dtype=torch.int64, device=on)
    dist.all_reduce(n, op=dist.ReduceOp.MAX, group=group)
    return int(n)


class NoiseSource:
    name = "noise"

    def __init__(self, spec, latent_shape):
        self.spec = spec
        self.latent_shape = tuple(latent_shape)

    def draw(self, prompts: list[str], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(prompts)
        x0 = torch.randn((n, *self.latent_shape), generator=gen)
        noise = torch.randn((n, *self.latent_shape), generator=gen)
        t = self.spec.sample_timesteps(n, gen)
        return self.spec.add_noise(x0, noise, t), t


class TrajectorySource:
    name = "trajectory"

    def __init__(self, spec, latent_shape, embeddings: dict[str, torch.Tensor], prompts: list[str],
                 num_steps: int, guidance: float, pool_size: int, seed: int = 0, handle=None, cache=None):
        self.latent_shape = tuple(latent_shape)
        self.pool: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sampled = 0  # prompts sampled here, not read from `cache` (unlearn.trajectory_cache; tests count it)
        param = next(spec.transformer.parameters())
        device, dtype = param.device, param.dtype
        host = host_device(device)
        uncond = embeddings[""].unsqueeze(0).to(device)
        missing = []
        for p in dict.fromkeys(prompts):
            hit = cache.get(p, embeddings[p]) if cache is not None else None
            if hit is None:
                missing.append(p)
            else:
                self.pool[p] = (hit[0].to(host, dtype), hit[1].to(host))
        from unlearn.sharding import backbone_group

        rounds = lockstep_rounds(len(missing), backbone_group(spec.transformer))
        ctx = handle.disabled() if handle is not None else contextlib.nullcontext()
        with ctx:  # the *frozen* model's trajectories
            for p in missing:
                gen = torch.Generator().manual_seed(prompt_seed(seed, p))
                emb = embeddings[p].to(device).unsqueeze(0).expand(pool_size, -1, -1)
                states, times = spec.sample_trajectory(emb, uncond, self.latent_shape, num_steps, guidance, gen)
                self.pool[p] = (states.to(host, dtype), times.to(host))
                self.sampled += 1
                if cache is not None:
                    cache.put(p, embeddings[p], *self.pool[p])
            for _ in range(rounds - len(missing)):  # the sharded backbone's collectives: see the module doc
                spec.sample_trajectory(uncond, uncond, self.latent_shape, num_steps, guidance,
                                       torch.Generator().manual_seed(seed))
        self.lockstep_fill = rounds - len(missing)  # throwaway trajectories run here (tests read it)

    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s, _ in self.pool.values())

    def draw(self, prompts: list[str], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ts = [], []
        for p in prompts:
            states, times = self.pool[p]
            k = int(torch.randint(states.shape[0], (1,), generator=gen))
            j = int(torch.randint(states.shape[1], (1,), generator=gen))
            xs.append(states[k, j])
            ts.append(times[k])
        return torch.stack(xs), torch.stack(ts)  # the sampler's own timesteps (int DDPM steps, float flow sigma*1000)
