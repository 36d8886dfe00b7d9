"""Wan 2.1 / 2.2 (diffusers `WanPipeline`) behind the model-spec seam.

Everything Wan-specific lives here: loading a diffusers directory, UMT5 prompt
encoding (as `WanPipeline._get_t5_prompt_embeds`: cleaned prompt, attention mask,
padding positions zeroed, 512 tokens on the real models), latent shapes
[C, F, H, W] (the VAE's `scale_factor_temporal` / `scale_factor_spatial`: 4x / 8x on
Wan 2.1, 4x / 16x on Wan 2.2 TI2V-5B; patches (1, 2, 2)), and flow matching:
x_t = (1 - s) x0 + s eps with the scheduler's shifted sigmas s, timestep = s * 1000,
the model predicts the velocity eps - x0, and the family's own sampler is the
directory's flow scheduler (UniPC or flow-match Euler) for trajectory x_t.

Eraser site: each block's cross-attention `attn2` output (video queries -> text; Receler's
placement), before its residual add. `WanSelfAttnSpec` hooks the self-attention `attn1`
output instead (before its AdaLN gate); the mask comes from `attn2` either way.

Wan 2.1 T2V 1.3B / 14B and 2.2 TI2V-5B (one transformer), and Wan 2.2 T2V-A14B: two experts
(`transformer` for high noise, `transformer_2` for low noise, switched at `boundary_ratio`)
run as one routed denoiser, `unlearn.models.wan_experts.WanExperts`, with one eraser set per
expert in one eraser file. Image-conditioned models (I2V: an image branch in `attn2`) are
refused with a message.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unlearn.models.spec import DTYPES, TokenLayout, load_parts, read_model_json
from unlearn.models.wan_experts import WanExperts, experts_of_pipeline, is_experts

LAYOUT_DIRS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
WAN_TEXT_LEN = 512  # WanPipeline's max_sequence_length (and the I2V processor's hard-coded text length)
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler")


def _json(path: Path) -> dict:
    return read_model_json(path)  # a damaged file: one line naming it


def check_model_dir(path: str | Path, need: tuple[str, ...] = LAYOUT_DIRS) -> Path:
    """Fail early, naming what is missing or unsupported, if `path` is not a text-to-video Wan directory."""
    from unlearn.config import ConfigError

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Model directory {path} {'is a file, not a folder' if path.exists() else 'does not exist'}. Point "
            "model.path at a local diffusers-format Wan directory (e.g. a download of "
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers) or use builtin:tiny-wan."
        )
    missing = [d for d in ("model_index.json", *need) if not (path / d).exists()]
    if missing:
        raise FileNotFoundError(
            f"Model directory {path} lacks {missing}; expected the diffusers layout "
            f"model_index.json + {', '.join(LAYOUT_DIRS)}/"
        )
    index = _json(path / "model_index.json")
    if has_two_experts(path):
        if index.get("boundary_ratio") is None:
            raise ConfigError(f"{path / 'model_index.json'}: transformer_2 is set but boundary_ratio is not; a "
                              "two-expert Wan 2.2 needs it (Wan2.2-T2V-A14B: 0.875)")
        if "transformer" in need and not (path / "transformer_2" / "config.json").is_file():
            raise FileNotFoundError(f"Model directory {path} names transformer_2 in model_index.json but lacks "
                                    "transformer_2/config.json (a Wan 2.2 A14B download has both experts)")
    for tcfg in (path / "transformer" / "config.json", path / "transformer_2" / "config.json"):
        if not tcfg.is_file():
            continue
        cfg = _json(tcfg)
        if cfg.get("image_dim") is not None or cfg.get("added_kv_proj_dim") is not None:
            raise ConfigError(
                f"{tcfg}: an image-to-video Wan (image_dim / added_kv_proj_dim set) is not supported; "
                "use a text-to-video Wan (T2V or TI2V) model"
            )
    scfg = path / "scheduler" / "scheduler_config.json"
    if "scheduler" in need and scfg.is_file() and _json(scfg).get("_class_name") not in FLOW_SCHEDULERS:
        raise ConfigError(f"{scfg}: Wan needs a flow-matching scheduler ({', '.join(FLOW_SCHEDULERS)})")
    return path


def has_two_experts(path: str | Path) -> bool:
    """Whether model_index.json names a second transformer (Wan 2.2 A14B)."""
    second = _json(Path(path) / "model_index.json").get("transformer_2")
    return isinstance(second, list) and any(second)


def load_components(path: str | Path, dtype: str = "float32", components=("transformer", "scheduler")) -> dict:
    """Load only the named parts (trainers never load the ~11 GB UMT5-XXL when the embedding cache is warm)."""
    import diffusers
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    path = check_model_dir(path, tuple(components))

    def scheduler(sub, dt):  # the directory names its flow scheduler (FlowMatchEuler or UniPC)
        from unlearn.config import ConfigError

        name = _json(Path(sub) / "scheduler_config.json").get("_class_name")
        cls = getattr(diffusers, name, None) if isinstance(name, str) else None
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):  # a class, not any attribute
            raise ConfigError(f"{Path(sub) / 'scheduler_config.json'}: _class_name {name!r} is not a diffusers "
                              "scheduler class")
        return cls.from_pretrained(sub)

    loaders = {
        "transformer": lambda sub, dt: WanTransformer3DModel.from_pretrained(sub, dtype=dt),
        "transformer_2": lambda sub, dt: WanTransformer3DModel.from_pretrained(sub, dtype=dt),
        "vae": lambda sub, dt: AutoencoderKLWan.from_pretrained(sub, dtype=dt),
        "text_encoder": lambda sub, dt: UMT5EncoderModel.from_pretrained(sub, dtype=dt),
        "tokenizer": lambda sub, dt: AutoTokenizer.from_pretrained(sub),
        "scheduler": scheduler,
    }
    return load_parts(path, dtype, components, loaders, "Wan")


def load_pipeline(path: str | Path, dtype: str = "float32", transformer: nn.Module | None = None,
                  text_encoder: bool = True):
    """The real `WanPipeline.from_pretrained(path)` (used by evaluation); `transformer` reuses a loaded one."""
    from diffusers import WanPipeline

    from unlearn.models.tokenizer import check_tokenizer

    if transformer is None:
        extra = {}
    elif is_experts(transformer):  # a two-expert training denoiser: the pipeline gets both experts back
        extra = {"transformer": transformer.high, "transformer_2": transformer.low}
    else:
        extra = {"transformer": transformer}
    if not text_encoder:  # the caller passes cached prompt embeddings (eval.workers): UMT5 is never read
        extra["text_encoder"] = None
    pipe = WanPipeline.from_pretrained(str(check_model_dir(path)), dtype=DTYPES[dtype], **extra)
    check_tokenizer(pipe.tokenizer)
    return pipe


def vae_factors(path: str | Path) -> tuple[int, int]:
    """(spatial, temporal) compression read from vae/config.json (AutoencoderKLWan's defaults 8 / 4)."""
    cfg = _json(Path(path) / "vae" / "config.json")
    return int(cfg.get("scale_factor_spatial") or 8), int(cfg.get("scale_factor_temporal") or 4)


def _text_len(model_max_length) -> int:
    """WanPipeline pads to 512; a tokenizer that declares a shorter limit (the tiny models) wins."""
    try:
        n = int(model_max_length)
    except (TypeError, ValueError):
        return WAN_TEXT_LEN
    return n if 0 < n < WAN_TEXT_LEN else WAN_TEXT_LEN


def text_max_length(path: str | Path) -> int:
    cfg = Path(path) / "tokenizer" / "tokenizer_config.json"
    return _text_len(_json(cfg).get("model_max_length") if cfg.is_file() else None)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], max_length: int) -> torch.Tensor:
    """UMT5 embeddings exactly as `WanPipeline._get_t5_prompt_embeds` computes them (padding zeroed)."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    enc = tokenizer(
        [prompt_clean(p) for p in prompts], padding="max_length", max_length=max_length, truncation=True,
        add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
    )
    device = text_encoder.device
    emb = text_encoder(enc.input_ids.to(device), enc.attention_mask.to(device)).last_hidden_state
    lens = enc.attention_mask.gt(0).sum(dim=1).tolist()
    return torch.stack([torch.cat([u[:n], u.new_zeros(max_length - n, u.shape[1])]) for u, n in zip(emb, lens)])


def eval_scheduler(name: str, scheduler_config):
    """Evaluation uses the directory's own flow scheduler ("model"); CogVideoX's ddim / dpm do not apply."""
    if name == "model":
        return None
    from unlearn.config import ConfigError

    raise ConfigError(
        f"generation.scheduler {name!r} is a CogVideoX sampler; a Wan model samples with its own flow "
        "scheduler: set generation.scheduler: model"
    )


def pipeline_kwargs(pipe, gen) -> dict:
    """Wan-only arguments of `WanPipeline.__call__` for generation settings `gen`."""
    return {"max_sequence_length": gen.max_sequence_length or _text_len(pipe.tokenizer.model_max_length)}


def flow_shift(scheduler_config) -> float:
    """The sigma shift of a flow scheduler (flow-match Euler: `shift`; UniPC: `flow_shift`)."""
    cfg = dict(scheduler_config)
    if cfg.get("_class_name") == "UniPCMultistepScheduler" or "flow_shift" in cfg and "shift" not in cfg:
        return float(cfg.get("flow_shift") or 1.0)
    return float(cfg.get("shift") or 1.0)


class WanSpec:
    """A loaded Wan transformer + flow scheduler, with the VAE geometry it was paired with."""

    family = "wan"
    pipeline_class_name = "WanPipeline"
    prediction_type = "flow"
    eval_schedulers = ("model",)  # the directory's own flow scheduler (UniPC or flow-match Euler)
    eraser_site = "attn2"  # which attention of each block the eraser follows (WanSelfAttnSpec: attn1)

    check_model_dir = staticmethod(check_model_dir)
    text_len_of = staticmethod(text_max_length)
    encode_prompts = staticmethod(encode_prompts)
    load_pipeline = staticmethod(load_pipeline)
    eval_scheduler = staticmethod(eval_scheduler)
    pipeline_kwargs = staticmethod(pipeline_kwargs)
    denoiser_of = staticmethod(experts_of_pipeline)

    @staticmethod
    def eraser_shape_of(path: str | Path) -> tuple[int, int]:
        """(eraser sites, hidden size) from transformer/config.json: one site per block (per expert)."""
        cfg = _json(Path(path) / "transformer" / "config.json")
        experts = 2 if has_two_experts(path) else 1
        return experts * int(cfg["num_layers"]), int(cfg["num_attention_heads"] * cfg["attention_head_dim"])

    @staticmethod
    def load_tokenizer(path: str | Path):
        return load_components(path, "float32", ("tokenizer",))["tokenizer"]

    @staticmethod
    def load_text_encoder(path: str | Path, dtype: str = "float32") -> nn.Module:
        return load_components(path, dtype, ("text_encoder",))["text_encoder"]

    @staticmethod
    def matches(transformer: nn.Module) -> bool:
        return type(transformer).__name__ == "WanTransformer3DModel" or is_experts(transformer)

    @classmethod
    def eraser_modules(cls, transformer: nn.Module) -> list[nn.Module]:
        return [getattr(blk, cls.eraser_site) for blk in transformer.blocks]

    @staticmethod
    def video_of(output) -> torch.Tensor:
        return output  # WanAttention returns the video tokens alone

    @staticmethod
    def with_video(output, video: torch.Tensor):
        return video

    @staticmethod
    def hidden_size_of(transformer: nn.Module) -> int:
        cfg = transformer.config
        return int(cfg.num_attention_heads * cfg.attention_head_dim)

    @staticmethod
    def capture_modules(transformer: nn.Module) -> list[nn.Module]:
        return [blk.attn2 for blk in transformer.blocks]  # the text-video probabilities live in attn2

    @staticmethod
    def capture_processor(chunk: int = 1024, full_matrix: bool = False):
        from unlearn.models.wan_attention import CapturingWanAttnProcessor

        return CapturingWanAttnProcessor(chunk, full_matrix)

    def __init__(self, transformer: nn.Module, scheduler, vae_spatial: int = 8, vae_temporal: int = 4,
                 text_len: int = WAN_TEXT_LEN, expand_timesteps: bool = False):
        if getattr(transformer.config, "image_dim", None) is not None or transformer.config.added_kv_proj_dim:
            raise ValueError("an image-to-video Wan transformer is not supported; use a text-to-video Wan")
        self.transformer = transformer
        self.scheduler = scheduler
        self.vae_spatial, self.vae_temporal = vae_spatial, vae_temporal
        self.text_len = int(text_len)
        self.expand_timesteps = bool(expand_timesteps)  # Wan 2.2 TI2V: one timestep per video token
        self.shift = flow_shift(scheduler.config)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "float32") -> "WanSpec":
        two = has_two_experts(path)
        parts = load_components(path, dtype, ("transformer", "scheduler") + (("transformer_2",) if two else ()))
        spatial, temporal = vae_factors(path)
        index = _json(Path(path) / "model_index.json")
        transformer = parts["transformer"]
        if two:  # WanPipeline's switch: transformer for t >= boundary_ratio * num_train_timesteps
            boundary = float(index["boundary_ratio"]) * parts["scheduler"].config.num_train_timesteps
            transformer = WanExperts(transformer, parts["transformer_2"], boundary)
        return cls(transformer, parts["scheduler"], spatial, temporal, text_max_length(path),
                   bool(index.get("expand_timesteps")))

    @classmethod
    def from_pipeline(cls, pipe) -> "WanSpec":
        """The spec of an already loaded pipeline (shares its transformer: no second copy)."""
        return cls(experts_of_pipeline(pipe), pipe.scheduler, int(pipe.vae_scale_factor_spatial),
                   int(pipe.vae_scale_factor_temporal), _text_len(pipe.tokenizer.model_max_length),
                   bool(pipe.config.get("expand_timesteps")))

    # --- structure -------------------------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        return list(self.transformer.blocks)

    def hidden_size(self) -> int:
        return self.hidden_size_of(self.transformer)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F, H, W) of one latent video, as `WanPipeline.prepare_latents` computes it."""
        from unlearn.config import ConfigError

        _, ph, pw = self.transformer.config.patch_size
        if (num_frames - 1) % self.vae_temporal:
            raise ConfigError(
                f"model.num_frames={num_frames} must be 1 + a multiple of the VAE's temporal factor "
                f"{self.vae_temporal} (e.g. 5, 81)"
            )
        if height % (self.vae_spatial * ph) or width % (self.vae_spatial * pw):
            raise ConfigError(
                f"model.height/width {height}x{width} must be multiples of {self.vae_spatial * ph} "
                "(VAE factor x patch size)"
            )
        c = int(self.transformer.config.in_channels)
        return c, (num_frames - 1) // self.vae_temporal + 1, height // self.vae_spatial, width // self.vae_spatial

    def token_layout(self, latent_shape: tuple[int, ...]) -> TokenLayout:
        _, f, h, w = latent_shape
        pt, ph, pw = self.transformer.config.patch_size
        return TokenLayout(self.text_len, (f // pt, h // ph, w // pw))

    # --- flow matching ---------------------------------------------------------------------
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """The flow prediction eps - x0 for a batch: x_t [B,C,F,H,W], t [B] (= sigma * 1000), text_emb [B,L,D]."""
        if text_emb.shape[1] != self.text_len:
            raise ValueError(
                f"text embeddings have {text_emb.shape[1]} tokens but this Wan model takes {self.text_len}; "
                "encode prompts padded to that length"
            )
        dtype = self.transformer.dtype
        timestep = t
        if self.expand_timesteps:  # as WanPipeline does for Wan 2.2 TI2V: [B, video tokens]
            timestep = t[:, None].expand(-1, self.token_layout(x_t.shape[1:]).video_len)
        return self.transformer(
            hidden_states=x_t.to(dtype), timestep=timestep, encoder_hidden_states=text_emb.to(dtype),
            return_dict=False,
        )[0]

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() / self.num_train_timesteps

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Training timesteps of the noise x_t source: u ~ U(0,1), sigma = shift*u / (1 + (shift-1)*u), t = 1000*sigma.

        The same shift the sampler applies to its sigmas (Wan: 3.0 at 480p, 5.0 at 720p), so the
        training noise levels follow the ones generation visits. Float32, CPU.
        """
        u = torch.rand((n,), generator=generator)
        s = self.shift * u / (1 + (self.shift - 1) * u)
        return s * self.num_train_timesteps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.sigma(t).to(x0.device).view((-1,) + (1,) * (x0.dim() - 1))
        return ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)

    @torch.no_grad()
    def sample_trajectory(
        self, text_emb: torch.Tensor, uncond_emb: torch.Tensor, latent_shape, num_steps: int,
        guidance: float, generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The directory's flow scheduler with CFG from pure noise; returns states [S,B,...] and timesteps [S].

        States are the inputs x_t the model sees at each step (the frozen model's own
        trajectory, the ESD/Receler source of x_t); timesteps are float (sigma * 1000).
        The initial noise comes from the CPU `generator` in float32 as in `WanPipeline`. The schedule (timesteps,
        sigmas: a few dozen scalars) stays on the CPU, as in the CogVideoX spec: reading a timestep back (`float(t)`)
        from the model's device would sync a GPU every step, and on `meta` (the real-size tests) cannot be done.
        """
        device = next(self.transformer.parameters()).device
        sched = type(self.scheduler).from_config(self.scheduler.config)
        sched.set_timesteps(num_steps)
        sched.set_begin_index(0)
        b = text_emb.shape[0]
        text_emb, uncond_emb = text_emb.to(device), uncond_emb.to(device)
        emb = torch.cat([uncond_emb.expand(b, -1, -1), text_emb])
        x = torch.randn((b, *latent_shape), generator=generator, dtype=torch.float32).to(device)
        states, times = [], []
        for t in sched.timesteps:
            states.append(x.clone())
            times.append(float(t))
            v = self.velocity(torch.cat([x, x]), t.float().expand(2 * b).to(device), emb).float()
            v_u, v_c = v.chunk(2)
            x = sched.step(v_u + guidance * (v_c - v_u), t, x, return_dict=False)[0]
        return torch.stack(states), torch.tensor(times, dtype=torch.float32, device=device)


class WanSelfAttnSpec(WanSpec):
    """Wan with the eraser after each block's self-attention `attn1` (family `wan-attn1`; mask still from attn2)."""

    family = "wan-attn1"
    eraser_site = "attn1"
