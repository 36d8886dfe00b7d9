"""Everything one training process needs, built from a `EraserTrainingConfig`.

config -> model spec (the family's, from the registry; transformer + scheduler only)
-> prompt data -> cached text embeddings -> erasers + objective -> x_t source -> `batch(step)`.
Used unchanged by the single-process trainer and by each Ray Train worker (which
passes its rank, world size and assigned device).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from unlearn import base_fingerprint
from unlearn.config import EraserTrainingConfig, config_digest
from unlearn.data import PromptOnlyData
from unlearn.devices import resolve_device
from unlearn.embedding_cache import EmbeddingCache
from unlearn.eraser import EraserSet
from unlearn.masks import selector
from unlearn.models.families import check_family, spec_class
from unlearn.models.registry import cache_root, resolve_model_path
from unlearn.models.spec import check_backbone
from unlearn.step import ErasureObjective, StepBatch
from unlearn.trajectory_cache import TrajectoryCache, pool_fingerprint
from unlearn.xt_sources import NoiseSource, TrajectorySource, shard_prompts


def default_cache_dir(cfg: EraserTrainingConfig) -> Path:
    return Path(cfg.train.cache_dir) if cfg.train.cache_dir else cache_root() / "embeddings"


def model_dir_of(cfg: EraserTrainingConfig) -> Path:
    """The resolved model directory, checked to hold a model of `model.family`."""
    model_dir = resolve_model_path(cfg.model.path)
    spec_class(cfg.model.family).check_model_dir(model_dir)
    check_family(model_dir, cfg.model.family)
    return model_dir


def load_data(cfg: EraserTrainingConfig, model_dir: Path, text_len: int, config_dir=None) -> PromptOnlyData:
    tok = spec_class(cfg.model.family).load_tokenizer(model_dir)
    return PromptOnlyData(cfg.concept, tok, text_len, base_dir=config_dir)


def open_cache(cfg: EraserTrainingConfig, model_dir: Path, text_len: int) -> EmbeddingCache:
    return EmbeddingCache(default_cache_dir(cfg), model_dir, text_len, cfg.model.dtype, family=cfg.model.family)


def prepare_embeddings(cfg: EraserTrainingConfig, config_dir=None) -> EmbeddingCache:
    """Driver-side: make sure every prompt the run needs is in the cache (loads the text encoder only if needed)."""
    model_dir = model_dir_of(cfg)
    text_len = spec_class(cfg.model.family).text_len_of(model_dir)
    data = load_data(cfg, model_dir, text_len, config_dir)
    cache = open_cache(cfg, model_dir, text_len)
    cache.fill(data.all_prompts())
    return cache


def step_seed(seed: int, step: int, rank: int) -> int:
    h = hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 62) - 1)


class TrainingSession:
    """`device`: None = `train.device` resolved here (auto -> cuda if available); a launcher passes its own.

    Under Ray Train with `xt_source: trajectory`, each rank samples trajectories for, and trains on,
    its round-robin shard of the concept and preserve prompts (`shard_prompts`): the pool is sampled
    once per trial in total, not once per rank.
    """

    def __init__(self, cfg: EraserTrainingConfig, config_dir=None, device: str | torch.device | None = None,
                 rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.device = resolve_device(cfg.train.device) if device is None else torch.device(device)
        self.model_dir = model_dir_of(cfg)
        self.spec = spec_class(cfg.model.family).from_pretrained(self.model_dir, cfg.model.dtype)
        # no blocks or NaN weights: name the model now, not an empty optimizer or train.lr later
        check_backbone(self.spec.transformer, self.spec.blocks(), cfg.model.path)
        self.spec.transformer.to(self.device)
        if cfg.train.gradient_checkpointing:
            self.spec.transformer.enable_gradient_checkpointing()
        self.data = load_data(cfg, self.model_dir, self.spec.text_len, config_dir)
        self.cache = open_cache(cfg, self.model_dir, self.spec.text_len)
        self.cache.fill(self.data.all_prompts())  # no-op when the driver pre-filled it
        self.emb = self.cache.get_dict(self.data.all_prompts())
        self.latent_shape = self.spec.latent_shape(cfg.model.num_frames, cfg.model.height, cfg.model.width)
        torch.manual_seed(cfg.train.seed)  # identical eraser init on every rank and every rerun
        self.eraser_set = EraserSet.for_spec(
            self.spec, cfg.eraser.rank, cfg.eraser.blocks, target_concept=cfg.concept.target,
            base_model=cfg.model.path, config_digest=config_digest(cfg),
            base_fingerprint=base_fingerprint.of_module(self.spec.transformer, source="training"),
        ).to(self.device)
        self.objective = ErasureObjective(self.spec, self.eraser_set, cfg.loss, cfg.train.autocast)
        if cfg.train.xt_source == "noise":
            self.source = NoiseSource(self.spec, self.latent_shape)
        else:
            tr = cfg.train.trajectory
            if world_size > 1:
                self.data = self.data.shard(rank, world_size, shard_prompts)
            prompts = [it.prompt for it in self.data.items] + self.data.preserve
            self.source = TrajectorySource(
                self.spec, self.latent_shape, self.emb, prompts, tr.num_inference_steps, tr.guidance_scale,
                tr.pool_size, seed=cfg.train.seed, handle=self.objective.handle, cache=self._trajectory_cache(),
            )

    def _trajectory_cache(self) -> TrajectoryCache | None:
        """The on-disk pools for this model and sampler setting (none on meta: nothing to store)."""
        if self.device.type == "meta":
            return None
        tr, param = self.cfg.train.trajectory, next(self.spec.transformer.parameters())
        key = pool_fingerprint(self.spec, self.cfg.model.family, self.latent_shape, tr.num_inference_steps,
                               tr.guidance_scale, tr.pool_size, self.cfg.train.seed, param.dtype, self.device.type,
                               self.emb[""])
        return TrajectoryCache(default_cache_dir(self.cfg) / "trajectories", key)

    def batch(self, step: int) -> StepBatch:
        tc = self.cfg.train
        gen = torch.Generator().manual_seed(step_seed(tc.seed, step, self.rank))
        items, pres = self.data.sample(gen, tc.batch_size, tc.preserve_batch_size)
        x_c, t_c = self.source.draw([it.prompt for it in items], gen)
        emb_c = torch.stack([self.emb[it.prompt] for it in items])
        emb_ref = torch.stack([torch.stack([self.emb[r] for r in it.references]) for it in items])
        sel = selector([list(it.positions) for it in items], self.spec.text_len)
        if pres:
            x_p, t_p = self.source.draw(pres, gen)
            emb_p = torch.stack([self.emb[q] for q in pres])
        else:
            x_p = x_c.new_zeros((0, *x_c.shape[1:]))
            t_p = t_c.new_zeros((0,))
            emb_p = emb_c.new_zeros((0, *emb_c.shape[1:]))
        return StepBatch(x_c, t_c, emb_c, emb_ref, sel, x_p, t_p, emb_p).to(self.device)

    def trainable_parameters(self):
        return [p for p in self.eraser_set.parameters() if p.requires_grad]
