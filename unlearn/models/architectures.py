"""Model architectures without weights: the public CogVideoX presets and model directories' configs.

`t2vu plan` sizes a run before any weight is downloaded, so it needs the hyperparameters
that decide memory: the transformer's width, depth, heads, patching and text length, the
text encoder's size and the VAE's compression. They come from the model directory's
`transformer/`, `text_encoder/` and `vae/` `config.json` when `model.path` is a directory,
else from a preset named by `model.architecture`.

Presets are the configs diffusers ships for THUDM/CogVideoX-2b and -5b: the transformer is
`CogVideoXTransformer3DModel`'s defaults (head dim 64, 16 latent channels, 2x2 patches, 226
text tokens, T5 width 4096, time embedding 512, sample 49x60x90) with, per
`scripts/convert_cogvideox_to_diffusers.py`, 2B = 30 layers x 30 heads, no RoPE, and
5B = 42 layers x 48 heads, 3D RoPE; both use google/t5-v1_1-xxl (24 layers, d_model 4096,
d_ff 10240, 64 heads x 64, gated GELU; 4.76B parameters) and the `AutoencoderKLCogVideoX`
defaults (8x spatial, 4x temporal compression) with VAE scaling 1.15258426 (2B) / 0.7 (5B).

Parameter counts are exact: each part is built from its config on the meta device
(no memory, no weights) and its parameters counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

_COGVIDEOX_TRANSFORMER = {
    "_class_name": "CogVideoXTransformer3DModel",
    "activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 64, "dropout": 0.0,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 16, "max_text_seq_length": 226,
    "norm_elementwise_affine": True, "norm_eps": 1e-5, "out_channels": 16, "patch_size": 2, "patch_size_t": None,
    "sample_frames": 49, "sample_height": 60, "sample_width": 90, "spatial_interpolation_scale": 1.875,
    "temporal_compression_ratio": 4, "temporal_interpolation_scale": 1.0, "text_embed_dim": 4096,
    "time_embed_dim": 512, "timestep_activation_fn": "silu", "use_learned_positional_embeddings": False,
}
_T5_V1_1_XXL = {
    "d_ff": 10240, "d_kv": 64, "d_model": 4096, "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu",
    "is_gated_act": True, "num_heads": 64, "num_layers": 24, "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32, "vocab_size": 32128, "layer_norm_epsilon": 1e-6,
}
_COGVIDEOX_VAE = {
    "block_out_channels": [128, 256, 256, 512], "latent_channels": 16, "layers_per_block": 3,
    "norm_num_groups": 32, "temporal_compression_ratio": 4, "sample_height": 480, "sample_width": 720,
    "in_channels": 3, "out_channels": 3,
}

PRESETS: dict[str, dict[str, dict]] = {
    "cogvideox-2b": {
        "transformer": {**_COGVIDEOX_TRANSFORMER, "num_attention_heads": 30, "num_layers": 30,
                        "use_rotary_positional_embeddings": False},
        "text_encoder": dict(_T5_V1_1_XXL),
        "vae": {**_COGVIDEOX_VAE, "scaling_factor": 1.15258426},
    },
    "cogvideox-5b": {
        "transformer": {**_COGVIDEOX_TRANSFORMER, "num_attention_heads": 48, "num_layers": 42,
                        "use_rotary_positional_embeddings": True},
        "text_encoder": dict(_T5_V1_1_XXL),
        "vae": {**_COGVIDEOX_VAE, "scaling_factor": 0.7},
    },
}
PARTS = ("transformer", "text_encoder", "vae")
# Meta-device counts of the presets (tests check them against `_count`): planning a preset then
# needs no diffusers import (~8 s here).
PRESET_PARAMETERS: dict[str, tuple[int, int, int]] = {
    "cogvideox-2b": (1_693_783_872, 4_762_310_656, 215_583_907),
    "cogvideox-5b": (5_570_283_072, 4_762_310_656, 215_583_907),
}


@dataclass(frozen=True)
class Architecture:
    """What the memory plan needs to know about a model, read from configs only."""

    source: str  # "directory <path>" or "preset <name>"
    transformer: dict = field(hash=False)
    text_encoder: dict = field(hash=False)
    vae: dict = field(hash=False)
    known_parameters: tuple[int, int, int] | None = None  # the preset's counts

    # --- transformer --------------------------------------------------------------------------
    @property
    def heads(self) -> int:
        return int(self.transformer["num_attention_heads"])

    @property
    def head_dim(self) -> int:
        return int(self.transformer["attention_head_dim"])

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def layers(self) -> int:
        return int(self.transformer["num_layers"])

    @property
    def text_len(self) -> int:
        return int(self.transformer["max_text_seq_length"])

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.get("in_channels", 16))

    @property
    def patch(self) -> int:
        return int(self.transformer.get("patch_size", 2))

    @property
    def patch_t(self) -> int | None:
        pt = self.transformer.get("patch_size_t")
        return None if pt is None else int(pt)

    # --- VAE (same rule as unlearn.models.cogvideox.vae_factors) -------------------------------
    @property
    def vae_spatial(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def vae_temporal(self) -> int:
        return int(self.vae.get("temporal_compression_ratio", 4))

    def token_counts(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
        """(video tokens Nv, latent elements per video) for a training/eval geometry."""
        frames = (num_frames - 1) // self.vae_temporal + 1
        h, w = height // self.vae_spatial, width // self.vae_spatial
        tf = frames if self.patch_t is None else -(-frames // self.patch_t)
        return tf * (h // self.patch) * (w // self.patch), frames * self.latent_channels * h * w

    def positional_buffer_elems(self) -> int:
        """Elements of the sincos positional-embedding buffer a transformer without RoPE registers."""
        t = self.transformer
        if t.get("use_rotary_positional_embeddings") or t.get("use_learned_positional_embeddings"):
            return 0
        frames = (int(t.get("sample_frames", 49)) - 1) // int(t.get("temporal_compression_ratio", 4)) + 1
        patches = frames * (int(t.get("sample_height", 60)) // self.patch) * (int(t.get("sample_width", 90)) // self.patch)
        return (self.text_len + patches) * self.hidden

    def parameter_counts(self) -> dict[str, int]:
        """Exact parameter counts of the three parts (built on the meta device)."""
        if self.known_parameters is not None:
            return dict(zip(PARTS, self.known_parameters))
        return self.meta_parameter_counts()

    def meta_parameter_counts(self) -> dict[str, int]:
        return dict(zip(PARTS, _count(json.dumps([self.transformer, self.text_encoder, self.vae], sort_keys=True))))


def _init_kwargs(cls, cfg: dict) -> dict:
    import inspect

    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}


@lru_cache(maxsize=16)
def _count(blob: str) -> tuple[int, int, int]:
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    tcfg, ecfg, vcfg = json.loads(blob)
    with torch.device("meta"):
        parts = (
            CogVideoXTransformer3DModel(**_init_kwargs(CogVideoXTransformer3DModel, tcfg)),
            T5EncoderModel(T5Config(**{k: v for k, v in ecfg.items() if not k.startswith("_")})),
            AutoencoderKLCogVideoX(**_init_kwargs(AutoencoderKLCogVideoX, vcfg)),
        )
    return tuple(sum(p.numel() for p in m.parameters()) for m in parts)


def _read(path: Path, part: str) -> dict | None:
    f = path / part / "config.json"
    return json.loads(f.read_text()) if f.is_file() else None


def resolve_architecture(model_path: str, preset: str | None) -> Architecture:
    """The architecture of `model.path` (a directory's configs win), else of preset `model.architecture`.

    Raises ValueError naming the fix when neither is available.
    """
    from unlearn.models.registry import resolve_model_path

    if preset is not None and preset not in PRESETS:
        raise ValueError(f"model.architecture {preset!r} is not a known preset; use one of {', '.join(PRESETS)}")
    try:
        path = resolve_model_path(model_path)
    except (FileNotFoundError, ValueError):
        path = None
    if path is not None and path.is_dir() and (path / "transformer" / "config.json").is_file():
        parts = {p: _read(path, p) for p in PARTS}
        missing = [p for p, v in parts.items() if v is None]
        if missing and preset is None:
            raise ValueError(f"model.path {path} lacks {', '.join(f'{m}/config.json' for m in missing)}; "
                             f"add them or set model.architecture ({', '.join(PRESETS)}) to fill them in")
        filled = {p: v if v is not None else PRESETS[preset][p] for p, v in parts.items()}
        return Architecture(f"directory {path}", **filled)
    if preset is not None:
        return Architecture(f"preset {preset}", **PRESETS[preset], known_parameters=PRESET_PARAMETERS[preset])
    raise ValueError(
        f"model.path {model_path!r} is not a model directory (no transformer/config.json) and model.architecture "
        f"is not set: point model.path at a downloaded diffusers directory, or set model.architecture to one of "
        f"{', '.join(PRESETS)} (e.g. --set model.architecture=cogvideox-2b)"
    )
