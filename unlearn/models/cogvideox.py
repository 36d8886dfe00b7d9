"""CogVideoX (diffusers) behind the model-spec seam.

Everything CogVideoX-specific lives here: loading a diffusers directory,
T5 prompt encoding (padded to 226 tokens for the real models), latent shapes
(4x temporal / 8x spatial VAE compression, 2x2 patches), the v-prediction
forward call with 3D RoPE, the DDIM sampler used for trajectory x_t, and the
joint-attention layout (text tokens first, then video tokens frame-major).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unlearn.models.spec import DTYPES, TokenLayout, load_parts, read_model_json

LAYOUT_DIRS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def check_model_dir(path: str | Path, need: tuple[str, ...] = LAYOUT_DIRS) -> Path:
    """Fail early, naming what is missing, if `path` is not a diffusers CogVideoX directory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Model directory {path} {'is a file, not a folder' if path.exists() else 'does not exist'}. Point model.path at a local diffusers-format "
            "CogVideoX directory (e.g. a download of THUDM/CogVideoX-2b) or use builtin:tiny / builtin:toy."
        )
    missing = [d for d in ("model_index.json", *need) if not (path / d).exists()]
    if missing:
        raise FileNotFoundError(
            f"Model directory {path} lacks {missing}; expected the diffusers layout "
            f"model_index.json + {', '.join(LAYOUT_DIRS)}/"
        )
    return path


def load_components(path: str | Path, dtype: str = "float32", components=("transformer", "scheduler")) -> dict:
    """Load only the named parts (trainers never load the ~9 GB T5-XXL when the embedding cache is warm)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import T5EncoderModel, T5Tokenizer

    loaders = {
        "transformer": lambda sub, dt: CogVideoXTransformer3DModel.from_pretrained(sub, dtype=dt),
        "vae": lambda sub, dt: AutoencoderKLCogVideoX.from_pretrained(sub, dtype=dt),
        "text_encoder": lambda sub, dt: T5EncoderModel.from_pretrained(sub, dtype=dt),
        "tokenizer": lambda sub, dt: T5Tokenizer.from_pretrained(sub),
        "scheduler": lambda sub, dt: CogVideoXDDIMScheduler.from_pretrained(sub),
    }
    return load_parts(check_model_dir(path, tuple(components)), dtype, components, loaders, "CogVideoX")


def load_pipeline(path: str | Path, dtype: str = "float32", transformer: nn.Module | None = None,
                  text_encoder: bool = True):
    """The real `CogVideoXPipeline.from_pretrained(path)` (used by evaluation).

    transformer: an already loaded transformer to use instead of loading one (a training run's
    proxy evaluation shares its backbone: no second copy of the model on the GPU).
    """
    from diffusers import CogVideoXPipeline

    from unlearn.models.tokenizer import check_tokenizer

    extra = {"transformer": transformer} if transformer is not None else {}
    if not text_encoder:  # the caller passes cached prompt embeddings (eval.workers): T5 is never read
        extra["text_encoder"] = None
    pipe = CogVideoXPipeline.from_pretrained(str(check_model_dir(path)), dtype=DTYPES[dtype], **extra)
    check_tokenizer(pipe.tokenizer)
    return pipe


def vae_factors(path: str | Path) -> tuple[int, int]:
    """(spatial, temporal) compression read from vae/config.json, without loading the VAE."""
    cfg = read_model_json(Path(path) / "vae" / "config.json")
    spatial = 2 ** (len(cfg["block_out_channels"]) - 1)
    return spatial, int(cfg.get("temporal_compression_ratio", 4))


def text_max_length(path: str | Path) -> int:
    cfg = read_model_json(Path(path) / "transformer" / "config.json")
    return int(cfg["max_text_seq_length"])


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], max_length: int) -> torch.Tensor:
    """T5 embeddings exactly as `CogVideoXPipeline._get_t5_prompt_embeds` computes them."""
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def eval_scheduler(name: str, scheduler_config):
    """The sampler evaluation uses: "model" keeps the directory's own (None), "ddim" / "dpm" replace it."""
    if name == "model":
        return None
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    if name not in ("ddim", "dpm"):
        raise ValueError(f"generation.scheduler {name!r} is not a CogVideoX sampler; use model, ddim or dpm")
    return (CogVideoXDPMScheduler if name == "dpm" else CogVideoXDDIMScheduler).from_config(scheduler_config)


def pipeline_kwargs(pipe, gen) -> dict:
    """CogVideoX-only arguments of a `CogVideoXPipeline.__call__` for generation settings `gen`."""
    return {
        "use_dynamic_cfg": gen.use_dynamic_cfg,
        "max_sequence_length": gen.max_sequence_length or int(pipe.transformer.config.max_text_seq_length),
    }


class CogVideoXSpec:
    """A loaded CogVideoX transformer + scheduler, with the VAE geometry it was paired with.

    Class-level answers (no loaded spec needed) come first: files, the eraser site and
    the attention capture. The eraser sits on each block's joint attention `attn1`,
    whose output is `(video_tokens, text_tokens)`; the mask comes from the same module.
    """

    family = "cogvideox"
    pipeline_class_name = "CogVideoXPipeline"
    prediction_type = "v_prediction"
    eval_schedulers = ("model", "ddim", "dpm")

    check_model_dir = staticmethod(check_model_dir)
    text_len_of = staticmethod(text_max_length)
    encode_prompts = staticmethod(encode_prompts)
    load_pipeline = staticmethod(load_pipeline)
    eval_scheduler = staticmethod(eval_scheduler)
    pipeline_kwargs = staticmethod(pipeline_kwargs)

    @staticmethod
    def denoiser_of(pipe):
        return pipe.transformer

    @staticmethod
    def eraser_shape_of(path: str | Path) -> tuple[int, int]:
        """(eraser sites, hidden size) from transformer/config.json: an eraser's fit, checked before any load."""
        cfg = read_model_json(Path(path) / "transformer" / "config.json")
        return int(cfg["num_layers"]), int(cfg["num_attention_heads"] * cfg["attention_head_dim"])

    @staticmethod
    def load_tokenizer(path: str | Path):
        return load_components(path, "float32", ("tokenizer",))["tokenizer"]

    @staticmethod
    def load_text_encoder(path: str | Path, dtype: str = "float32") -> nn.Module:
        return load_components(path, dtype, ("text_encoder",))["text_encoder"]

    @staticmethod
    def matches(transformer: nn.Module) -> bool:
        return type(transformer).__name__ == "CogVideoXTransformer3DModel" or (
            hasattr(transformer, "transformer_blocks") and hasattr(getattr(transformer, "config", None), "max_text_seq_length")
        )

    @staticmethod
    def eraser_modules(transformer: nn.Module) -> list[nn.Module]:
        return [blk.attn1 for blk in transformer.transformer_blocks]

    @staticmethod
    def video_of(output) -> torch.Tensor:
        return output[0]  # attn1 returns (video, text)

    @staticmethod
    def with_video(output, video: torch.Tensor):
        return video, output[1]

    @staticmethod
    def hidden_size_of(transformer: nn.Module) -> int:
        cfg = transformer.config
        return int(cfg.num_attention_heads * cfg.attention_head_dim)

    capture_modules = eraser_modules  # joint attention: the text-video probabilities live in attn1 too

    @staticmethod
    def capture_processor(chunk: int = 1024, full_matrix: bool = False):
        from unlearn.models.cogvideox_attention import CapturingCogVideoXAttnProcessor

        return CapturingCogVideoXAttnProcessor(chunk, full_matrix)

    def __init__(self, transformer: nn.Module, scheduler, vae_spatial: int = 8, vae_temporal: int = 4):
        self.transformer = transformer
        self.scheduler = scheduler
        self.vae_spatial = vae_spatial
        self.vae_temporal = vae_temporal
        self.text_len = int(transformer.config.max_text_seq_length)
        self._rope_cache: dict = {}
        alphas = scheduler.alphas_cumprod
        self._sqrt_a = alphas.sqrt()
        self._sqrt_1ma = (1 - alphas).sqrt()

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "float32") -> "CogVideoXSpec":
        parts = load_components(path, dtype, ("transformer", "scheduler"))
        spatial, temporal = vae_factors(path)
        return cls(parts["transformer"], parts["scheduler"], spatial, temporal)

    @classmethod
    def from_pipeline(cls, pipe) -> "CogVideoXSpec":
        """The spec of an already loaded pipeline (shares its transformer: no second copy)."""
        return cls(pipe.transformer, pipe.scheduler, int(pipe.vae_scale_factor_spatial),
                   int(pipe.vae_scale_factor_temporal))

    # --- structure -------------------------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        return list(self.transformer.transformer_blocks)

    def hidden_size(self) -> int:
        return self.hidden_size_of(self.transformer)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(F, C, H, W) of one latent video, as the pipeline's prepare_latents computes it."""
        from unlearn.config import ConfigError  # a user setting (model.num_frames / height / width), not a bug

        if (num_frames - 1) % self.vae_temporal:
            raise ConfigError(
                f"model.num_frames={num_frames} must be 1 + a multiple of the VAE's temporal factor "
                f"{self.vae_temporal} (e.g. 9, 49)"
            )
        if height % (self.vae_spatial * 2) or width % (self.vae_spatial * 2):
            raise ConfigError(
                f"model.height/width {height}x{width} must be multiples of {self.vae_spatial * 2} "
                "(VAE factor x patch size)"
            )
        frames = (num_frames - 1) // self.vae_temporal + 1
        c = int(self.transformer.config.in_channels)
        return frames, c, height // self.vae_spatial, width // self.vae_spatial

    def token_layout(self, latent_shape: tuple[int, ...]) -> TokenLayout:
        f, _, h, w = latent_shape
        p = int(self.transformer.config.patch_size)
        pt = self.transformer.config.patch_size_t
        frames = f if pt is None else (f + pt - 1) // pt
        return TokenLayout(self.text_len, (frames, h // p, w // p))

    # --- forward ---------------------------------------------------------------------------
    def rotary_emb(self, latent_shape, device):
        if not self.transformer.config.use_rotary_positional_embeddings:
            return None
        key = (tuple(latent_shape), str(device))
        if key not in self._rope_cache:
            from diffusers.models.embeddings import get_3d_rotary_pos_embed
            from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

            cfg = self.transformer.config
            f, _, h, w = latent_shape
            p, pt = cfg.patch_size, cfg.patch_size_t
            gh, gw = h // p, w // p
            bw, bh = cfg.sample_width // p, cfg.sample_height // p
            if pt is None:
                crops = get_resize_crop_region_for_grid((gh, gw), bw, bh)
                emb = get_3d_rotary_pos_embed(
                    embed_dim=cfg.attention_head_dim, crops_coords=crops, grid_size=(gh, gw),
                    temporal_size=f, device=device,
                )
            else:
                emb = get_3d_rotary_pos_embed(
                    embed_dim=cfg.attention_head_dim, crops_coords=None, grid_size=(gh, gw),
                    temporal_size=(f + pt - 1) // pt, grid_type="slice", max_size=(bh, bw), device=device,
                )
            self._rope_cache[key] = emb
        return self._rope_cache[key]

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """v-prediction for a batch: x_t [B,F,C,H,W], t [B] (int), text_emb [B,L,D]."""
        if text_emb.shape[1] != self.text_len:
            raise ValueError(
                f"text embeddings have {text_emb.shape[1]} tokens but the transformer expects "
                f"max_text_seq_length={self.text_len}; encode prompts padded to that length"
            )
        dtype = next(self.transformer.parameters()).dtype
        out = self.transformer(
            hidden_states=x_t.to(dtype),
            encoder_hidden_states=text_emb.to(dtype),
            timestep=t,
            image_rotary_emb=self.rotary_emb(x_t.shape[1:], x_t.device),
            return_dict=False,
        )[0]
        return out

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Training timesteps of the noise x_t source: uniform over the DDPM steps (CPU, int64)."""
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x0.dim() - 1)
        a = self._sqrt_a.to(x0.device)[t].view(shape).to(x0.dtype)
        s = self._sqrt_1ma.to(x0.device)[t].view(shape).to(x0.dtype)
        return a * x0 + s * noise

    @torch.no_grad()
    def sample_trajectory(
        self, text_emb: torch.Tensor, uncond_emb: torch.Tensor, latent_shape, num_steps: int,
        guidance: float, generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM (eta 0) with CFG from pure noise; returns states [S,B,...] and their timesteps [S].

        States are the inputs x_t the model sees at each sampler step, i.e. the
        frozen model's own trajectory (the ESD/Receler source of x_t). Everything runs
        on the transformer's device; the initial noise comes from the CPU `generator`
        (the same seed gives the same trajectory on any device). States stay on that
        device: the caller decides where the pool lives.
        """
        from diffusers import CogVideoXDDIMScheduler

        device = next(self.transformer.parameters()).device
        sched = CogVideoXDDIMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(num_steps)
        b = text_emb.shape[0]
        text_emb, uncond_emb = text_emb.to(device), uncond_emb.to(device)
        x = (torch.randn((b, *latent_shape), generator=generator) * sched.init_noise_sigma).to(device)
        states, times = [], []
        for t in sched.timesteps:
            states.append(x.clone())
            times.append(int(t))
            tt = torch.full((2 * b,), int(t), dtype=torch.long, device=device)
            v = self.velocity(torch.cat([x, x]), tt, torch.cat([uncond_emb.expand(b, -1, -1), text_emb])).float()
            v_u, v_c = v.chunk(2)
            v = v_u + guidance * (v_c - v_u)
            x = sched.step(v, t, x, return_dict=False)[0]
        return torch.stack(states), torch.tensor(times, device=device)
