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

Wan presets (`WanTransformer3DModel`, family `wan`): the Wan team's own configs
(Wan-Video/Wan2.1 and Wan2.2 `wan/configs/wan_t2v_1_3B.py`, `wan_t2v_14B.py`, `wan_ti2v_5B.py`,
`wan_t2v_A14B.py`; mirrored in ml-explore/mlx-examples `video/Wan2.{1,2}/wan/configs/`) give
dim / ffn_dim / freq_dim / num_heads / num_layers / patch (1, 2, 2) / qk_norm / cross_attn_norm /
eps 1e-6, text_len 512 and vae_stride; diffusers' `scripts/convert_wan_to_diffusers.py` maps them
onto `WanTransformer3DModel` (attention_head_dim = dim / num_heads = 128, text_dim 4096,
rope_max_seq_len 1024: the class defaults, which are the 14B config):
- Wan2.1-T2V-1.3B: dim 1536 = 12 heads x 128, 30 layers, ffn 8960; 16 latent channels.
- Wan2.1-T2V-14B: dim 5120 = 40 x 128, 40 layers, ffn 13824; 16 latent channels.
- Wan2.2-TI2V-5B: dim 3072 = 24 x 128, 30 layers, ffn 14336; 48 latent channels; its
  model_index.json sets `expand_timesteps: true` (one timestep per video token: per-token AdaLN).
- Wan2.2-T2V-A14B: two 14B-shaped experts (`transformer` high noise, `transformer_2` low noise,
  boundary_ratio 0.875), both resident on every GPU.
Text encoder: google/umt5-xxl's encoder (`UMT5EncoderModel`: d_model 4096, d_ff 10240, 24 layers,
64 heads x 64, gated GELU, vocabulary 256384, 32 relative-position buckets per layer).
VAE: Wan 2.1 (and A14B, `vae_stride (4, 8, 8)`) is `AutoencoderKLWan`'s defaults (base_dim 96,
z_dim 16, 8x spatial / 4x temporal); Wan 2.2 TI2V-5B's is the convert script's
`vae22_diffusers_config` (base_dim 160, decoder_base_dim 256, z_dim 48, in/out 12 channels,
patch_size 2, is_residual, scale_factor_spatial 16, scale_factor_temporal 4; `vae_stride (4, 16, 16)`).

Parameter counts are exact: each part is built from its config on the meta device
(no memory, no weights) and its parameters counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

WAN_TEXT_LEN = 512  # WanPipeline's max_sequence_length (unlearn.models.wan.WAN_TEXT_LEN; no torch import here)

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
_WAN_TRANSFORMER = {  # WanTransformer3DModel; per size: heads, layers, ffn_dim, in/out channels
    "_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "attention_head_dim": 128, "text_dim": 4096,
    "freq_dim": 256, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
    "added_kv_proj_dim": None, "rope_max_seq_len": 1024, "pos_embed_seq_len": None,
}
_UMT5_XXL = {
    "d_ff": 10240, "d_kv": 64, "d_model": 4096, "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu",
    "is_gated_act": True, "num_heads": 64, "num_layers": 24, "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32, "vocab_size": 256384, "layer_norm_epsilon": 1e-6,
    "tie_word_embeddings": False, "_class_name": "UMT5EncoderModel",
}
_WAN21_VAE = {
    "_class_name": "AutoencoderKLWan", "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
    "attn_scales": [], "temperal_downsample": [False, True, True], "scale_factor_spatial": 8, "scale_factor_temporal": 4,
}
_WAN22_VAE = {
    **_WAN21_VAE, "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "in_channels": 12, "out_channels": 12,
    "patch_size": 2, "is_residual": True, "scale_factor_spatial": 16,
}


def _wan(heads: int, layers: int, ffn: int, channels: int = 16) -> dict:
    return {**_WAN_TRANSFORMER, "num_attention_heads": heads, "num_layers": layers, "ffn_dim": ffn,
            "in_channels": channels, "out_channels": channels}


PRESETS.update({
    "wan2.1-t2v-1.3b": {"transformer": _wan(12, 30, 8960), "text_encoder": dict(_UMT5_XXL), "vae": dict(_WAN21_VAE)},
    "wan2.1-t2v-14b": {"transformer": _wan(40, 40, 13824), "text_encoder": dict(_UMT5_XXL), "vae": dict(_WAN21_VAE)},
    "wan2.2-ti2v-5b": {"transformer": _wan(24, 30, 14336, 48), "text_encoder": dict(_UMT5_XXL),
                       "vae": dict(_WAN22_VAE), "model_index": {"expand_timesteps": True}},
    "wan2.2-t2v-a14b": {"transformer": _wan(40, 40, 13824), "text_encoder": dict(_UMT5_XXL), "vae": dict(_WAN21_VAE),
                        "model_index": {"boundary_ratio": 0.875, "transformer_2": ["diffusers", "WanTransformer3DModel"]}},
})
PARTS = ("transformer", "text_encoder", "vae")
# Meta-device counts of the presets (tests check them against `_count`): planning a preset then
# needs no diffusers import (~8 s here).
PRESET_PARAMETERS: dict[str, tuple[int, int, int]] = {
    "cogvideox-2b": (1_693_783_872, 4_762_310_656, 215_583_907),
    "cogvideox-5b": (5_570_283_072, 4_762_310_656, 215_583_907),
    "wan2.1-t2v-1.3b": (1_418_996_800, 5_680_910_336, 126_892_531),
    "wan2.1-t2v-14b": (14_288_491_584, 5_680_910_336, 126_892_531),
    "wan2.2-ti2v-5b": (4_999_787_712, 5_680_910_336, 704_688_668),
    "wan2.2-t2v-a14b": (14_288_491_584, 5_680_910_336, 126_892_531),  # per expert; two are resident
}


@dataclass(frozen=True)
class Architecture:
    """What the memory plan needs to know about a model, read from configs only."""

    source: str  # "directory <path>" or "preset <name>"
    transformer: dict = field(hash=False)
    text_encoder: dict = field(hash=False)
    vae: dict = field(hash=False)
    known_parameters: tuple[int, int, int] | None = None  # the preset's counts (one transformer)
    model_index: dict = field(default_factory=dict, hash=False)  # model_index.json (Wan: expand_timesteps, transformer_2)
    text_tokens: int | None = None  # Wan: the tokenizer's padded length (WanPipeline: 512)

    @property
    def family(self) -> str:
        """The block accounting the memory plan uses: `wan` or `cogvideox` (from the transformer class)."""
        return "wan" if self.transformer.get("_class_name") == "WanTransformer3DModel" else "cogvideox"

    @property
    def experts(self) -> int:
        """Transformers resident at once: 2 for Wan 2.2 A14B (`transformer` + `transformer_2`), else 1."""
        second = self.model_index.get("transformer_2")
        return 2 if isinstance(second, list) and any(second) else 1

    @property
    def expand_timesteps(self) -> bool:
        """Wan 2.2 TI2V: one timestep per video token, so the AdaLN modulation is [rows, Nv, 6, D]."""
        return bool(self.model_index.get("expand_timesteps"))

    @property
    def ffn_dim(self) -> int:
        return int(self.transformer["ffn_dim"]) if self.family == "wan" else 4 * self.hidden

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
        if self.family == "wan":
            return int(self.text_tokens or WAN_TEXT_LEN)
        return int(self.transformer["max_text_seq_length"])

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.get("in_channels", 16))

    @property
    def patch(self) -> int:
        p = self.transformer.get("patch_size", 2)
        return int(p[-1] if isinstance(p, (list, tuple)) else p)

    @property
    def patch_t(self) -> int | None:
        p = self.transformer.get("patch_size")
        pt = p[0] if isinstance(p, (list, tuple)) else self.transformer.get("patch_size_t")
        return None if pt is None else int(pt)

    # --- VAE (the rules of unlearn.models.cogvideox.vae_factors / unlearn.models.wan.vae_factors) ---
    @property
    def vae_spatial(self) -> int:
        if self.family == "wan":
            return int(self.vae.get("scale_factor_spatial") or 8)
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def vae_temporal(self) -> int:
        if self.family == "wan":
            return int(self.vae.get("scale_factor_temporal") or 4)
        return int(self.vae.get("temporal_compression_ratio", 4))

    @property
    def vae_channels(self) -> int:
        """Channels of the VAE decoder's full-resolution feature maps (the eval's decode estimate)."""
        if self.family == "wan":
            return int(self.vae.get("decoder_base_dim") or self.vae.get("base_dim", 96))
        return int(self.vae["block_out_channels"][0])

    def token_counts(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
        """(video tokens Nv, latent elements per video) for a training/eval geometry."""
        frames = (num_frames - 1) // self.vae_temporal + 1
        h, w = height // self.vae_spatial, width // self.vae_spatial
        tf = frames if self.patch_t is None else -(-frames // self.patch_t)
        return tf * (h // self.patch) * (w // self.patch), frames * self.latent_channels * h * w

    def positional_buffer_elems(self) -> int:
        """Elements of the sincos positional-embedding buffer a transformer without RoPE registers."""
        t = self.transformer
        if self.family == "wan":  # RoPE only (its cos/sin tables are [rope_max_seq_len, head_dim]: negligible)
            return 0
        if t.get("use_rotary_positional_embeddings") or t.get("use_learned_positional_embeddings"):
            return 0
        frames = (int(t.get("sample_frames", 49)) - 1) // int(t.get("temporal_compression_ratio", 4)) + 1
        patches = frames * (int(t.get("sample_height", 60)) // self.patch) * (int(t.get("sample_width", 90)) // self.patch)
        return (self.text_len + patches) * self.hidden

    def parameter_counts(self) -> dict[str, int]:
        """Exact parameter counts of the three parts (built on the meta device); `transformer` is one
        expert's (the plan multiplies by `experts`)."""
        if self.known_parameters is not None:
            return dict(zip(PARTS, self.known_parameters))
        return self.meta_parameter_counts()

    def meta_parameter_counts(self) -> dict[str, int]:
        blob = json.dumps([self.family, self.transformer, self.text_encoder, self.vae], sort_keys=True)
        return dict(zip(PARTS, _count(blob)))


def init_kwargs(cls, cfg: dict) -> dict:
    """The entries of a preset's `cfg` that `cls.__init__` takes, lists as tuples except where the class wants lists
    (how the plan, the real-size `meta` tests and the sharding tests build a model from PRESETS)."""
    import inspect

    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    lists = cls.__name__ == "AutoencoderKLWan"  # it concatenates its list arguments; the others take tuples
    return {k: (tuple(v) if isinstance(v, list) and not lists else v) for k, v in cfg.items() if k in names}


@lru_cache(maxsize=16)
def _count(blob: str) -> tuple[int, int, int]:
    import diffusers
    import torch
    import transformers

    family, tcfg, ecfg, vcfg = json.loads(blob)
    names = {"wan": ("WanTransformer3DModel", "UMT5", "AutoencoderKLWan"),
             "cogvideox": ("CogVideoXTransformer3DModel", "T5", "AutoencoderKLCogVideoX")}[family]
    tcls, vcls = getattr(diffusers, names[0]), getattr(diffusers, names[2])
    ecls, ccls = getattr(transformers, f"{names[1]}EncoderModel"), getattr(transformers, f"{names[1]}Config")
    with torch.device("meta"):
        parts = (
            tcls(**init_kwargs(tcls, tcfg)),
            ecls(ccls(**{k: v for k, v in ecfg.items() if not k.startswith("_")})),
            vcls(**init_kwargs(vcls, vcfg)),
        )
    return tuple(sum(p.numel() for p in m.parameters()) for m in parts)


def _read(path: Path, part: str) -> dict | None:
    from unlearn.models.spec import read_model_json

    f = path / part / "config.json"
    return read_model_json(f) if f.is_file() else None


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
        layers = filled["transformer"].get("num_layers")
        if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
            raise ValueError(f"model.path {path}: transformer/config.json num_layers is {layers!r}; a transformer "
                             "needs at least one block: the config is damaged or was edited (use the model's own)")
        from unlearn.models.spec import read_model_json

        index = read_model_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
        tokens = None
        if filled["transformer"].get("_class_name") == "WanTransformer3DModel":
            from unlearn.models.wan import text_max_length

            tokens = text_max_length(path)
        return Architecture(f"directory {path}", **filled, model_index=index, text_tokens=tokens)
    if preset is not None:
        return Architecture(f"preset {preset}", **PRESETS[preset], known_parameters=PRESET_PARAMETERS[preset])
    raise ValueError(
        f"model.path {model_path!r} is not a model directory (no transformer/config.json) and model.architecture "
        f"is not set: point model.path at a downloaded diffusers directory, or set model.architecture to one of "
        f"{', '.join(PRESETS)} (e.g. --set model.architecture=cogvideox-2b)"
    )
