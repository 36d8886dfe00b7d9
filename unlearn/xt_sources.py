"""Where the noisy latents x_t come from in prompt-only training.

- `noise` (the seed's recipe): x_start ~ N(0, I) noised to a uniform t. Cheap, but
  x_t is then plain Gaussian noise at every t.
- `trajectory` (ESD/Receler): the frozen model (erasers off) samples each prompt
  from pure noise with CFG; a step draws a random (trajectory, sampler step). The
  pool is sampled once (pool_size trajectories per prompt): costs
  prompts x pool_size x steps x 2 forwards up front, nothing per step after.
"""

from __future__ import annotations

import torch


class NoiseSource:
    name = "noise"

    def __init__(self, spec, latent_shape):
        self.spec = spec
        self.latent_shape = tuple(latent_shape)

    def draw(self, prompts: list[str], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(prompts)
        x0 = torch.randn((n, *self.latent_shape), generator=gen)
        noise = torch.randn((n, *self.latent_shape), generator=gen)
        t = torch.randint(0, self.spec.num_train_timesteps, (n,), generator=gen)
        return self.spec.add_noise(x0, noise, t), t


class TrajectorySource:
    name = "trajectory"

    def __init__(self, spec, latent_shape, embeddings: dict[str, torch.Tensor], prompts: list[str],
                 num_steps: int, guidance: float, pool_size: int, seed: int = 0, handle=None):
        self.latent_shape = tuple(latent_shape)
        self.pool: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        gen = torch.Generator().manual_seed(seed)
        uncond = embeddings[""].unsqueeze(0)
        import contextlib

        ctx = handle.disabled() if handle is not None else contextlib.nullcontext()
        with ctx:  # the *frozen* model's trajectories
            for p in dict.fromkeys(prompts):
                emb = embeddings[p].unsqueeze(0).expand(pool_size, -1, -1)
                states, times = spec.sample_trajectory(emb, uncond, self.latent_shape, num_steps, guidance, gen)
                self.pool[p] = (states, times)

    def draw(self, prompts: list[str], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ts = [], []
        for p in prompts:
            states, times = self.pool[p]
            k = int(torch.randint(states.shape[0], (1,), generator=gen))
            j = int(torch.randint(states.shape[1], (1,), generator=gen))
            xs.append(states[k, j])
            ts.append(times[k])
        return torch.stack(xs), torch.stack(ts).long()
