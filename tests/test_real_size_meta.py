"""The GPU path at the REAL CogVideoX-2B and -5B sizes, on a non-CPU device (`meta`), on a CPU machine.

Full width and depth (2B: 30 blocks x 30 heads x 64, no RoPE; 5B: 42 x 48 x 64, 3D RoPE; both
T5 width 4096, 226 text tokens, 16 latent channels, 2x2 patches) from the public presets in
`unlearn/models/architectures.py` (= diffusers' `CogVideoXTransformer3DModel` defaults + the
per-size values of diffusers' `scripts/convert_cogvideox_to_diffusers.py`), bf16 weights,
gradient checkpointing on, at 49x480x720 (latents 13x16x60x90: 17,550 video tokens).
A meta model allocates nothing and computes nothing, but every op checks devices: any CPU
tensor that meets it raises, as it would on a GPU. So each path here runs end to end on
the device a GPU run would use, and `test_*_is_caught` puts a CPU tensor back where the old
code had one (or where a bug would put one) and checks the run raises.

What meta cannot do, and what is done instead (none of it changes what is checked):
- `torch.autocast` rejects device_type "meta": the fused step runs with bf16 weights and
  `autocast: none` (on a GPU, real configs add `autocast: bf16`, which changes dtypes only);
- `.item()` of a meta tensor: the pipeline test samples without dynamic CFG and with
  `HostStepDDIM`, a `CogVideoXDDIMScheduler` whose `step` reads its alphas with the CPU copy
  of the timestep (a GPU reads the device value implicitly); the transformer still gets the
  device timesteps;
- values: only devices, shapes, dtypes, hooks run and gradients exist can be asserted.
The proxy evaluation of a Tune trial (`pipelines.search.objective.evaluate_objective`) goes through
`run_eval`, which loads its own pipeline from the model directory: it does not reuse the
training transformer, so there is no in-process proxy path to run here yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
from transformers import T5Config, T5EncoderModel

from eval.config import GenerationConfig
from unlearn.config import LossConfig
from unlearn.eraser import EraserSet, attach, load_eraser, save_eraser
from unlearn.masks import selector
from unlearn.models.architectures import PRESETS, init_kwargs
from unlearn.models.cogvideox import CogVideoXSpec
from unlearn.models.tiny import SCHEDULER_KW, TINY_WORDS
from unlearn.models.tokenizer import build_t5_tokenizer
from unlearn.step import ErasureObjective, StepBatch
from unlearn.xt_sources import TrajectorySource

FRAMES, HEIGHT, WIDTH = 49, 480, 720
LATENT = (13, 16, 60, 90)
VIDEO_TOKENS = 13 * 30 * 45
EXPECTED = {  # (blocks, heads, RoPE, transformer parameters) of the public checkpoints
    "cogvideox-2b": (30, 30, False, 1_693_783_872),
    "cogvideox-5b": (42, 48, True, 5_570_283_072),
}
META = torch.device("meta")
DEVICE_ERROR = "meta|device"  # "Tensor on device meta is not on the expected device cpu!" / "same device"


@dataclass
class Real:
    name: str
    spec: CogVideoXSpec
    layers: int
    rope: bool


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def real(request) -> Real:
    """The real-size transformer on meta in bf16 with gradient checkpointing, shared by a size's tests."""
    name = request.param
    with META:
        tr = CogVideoXTransformer3DModel(**init_kwargs(CogVideoXTransformer3DModel, PRESETS[name]["transformer"]))
    torch.nn.Module.to(tr, torch.bfloat16)  # what from_pretrained(dtype=bf16) gives (no fp32-kept modules)
    tr.requires_grad_(False).eval()
    tr.enable_gradient_checkpointing()
    layers, heads, rope, n_params = EXPECTED[name]
    cfg = tr.config
    assert (cfg.num_layers, cfg.num_attention_heads, cfg.attention_head_dim) == (layers, heads, 64)
    assert (cfg.text_embed_dim, cfg.max_text_seq_length, cfg.in_channels, cfg.patch_size) == (4096, 226, 16, 2)
    assert (cfg.sample_height, cfg.sample_width, cfg.sample_frames) == (60, 90, 49)
    assert cfg.use_rotary_positional_embeddings is rope and cfg.use_learned_positional_embeddings is False
    assert sum(p.numel() for p in tr.parameters()) == n_params
    spec = CogVideoXSpec(tr, CogVideoXDDIMScheduler(**SCHEDULER_KW), vae_spatial=8, vae_temporal=4)
    assert spec.latent_shape(FRAMES, HEIGHT, WIDTH) == LATENT
    assert spec.token_layout(LATENT).video_len == VIDEO_TOKENS
    return Real(name, spec, layers, rope)


class EraserCalls:
    """Counts eraser forwards (each attached eraser runs once per transformer forward, and once more in
    a checkpointed backward's recompute); counting is how 'the hooks ran' is seen on meta."""

    def __init__(self, eraser_set: EraserSet):
        self.n = 0
        self._hooks = [e.register_forward_hook(self._count) for e in eraser_set.erasers.values()]

    def _count(self, *_):
        self.n += 1

    def take(self) -> int:
        n, self.n = self.n, 0
        return n

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def embeddings(prompts: list[str]) -> dict[str, torch.Tensor]:
    """Cached T5 embeddings as the embedding cache hands them out: fp32 on the CPU."""
    gen = torch.Generator().manual_seed(0)
    return {p: torch.randn(226, 4096, generator=gen) for p in prompts}


PROMPTS = ["a naked body", "a naked person on a beach", "a person", "a face"]


def step_batch(b: int = 2, p: int = 2) -> StepBatch:
    """A fused-step batch built on the CPU the way TrainingSession.batch builds it (then moved)."""
    gen = torch.Generator().manual_seed(1)
    emb = embeddings(["", *PROMPTS])
    return StepBatch(
        x_c=torch.randn((b, *LATENT), generator=gen), t_c=torch.randint(0, 1000, (b,), generator=gen),
        emb_c=torch.stack([emb[PROMPTS[i % 2]] for i in range(b)]), emb_ref=torch.stack([emb[""]] * b).unsqueeze(1),
        sel=selector([[1] for _ in range(b)], 226), x_p=torch.randn((p, *LATENT), generator=gen),
        t_p=torch.randint(0, 1000, (p,), generator=gen), emb_p=torch.stack([emb[PROMPTS[2 + i % 2]] for i in range(p)]),
    )


def objective_for(real: Real, rank: int = 8) -> ErasureObjective:
    torch.manual_seed(0)
    es = EraserSet.for_spec(real.spec, rank)
    mask_layers = sorted({0, real.layers // 2, real.layers - 1})  # 3 layers: all 42 cost ~9 s more on meta
    return ErasureObjective(real.spec, es, LossConfig(eta=7.0, w_localize=1.0, mask_layers=mask_layers, attn_chunk=2048))


# --- trajectory sampling ------------------------------------------------------------------------

def test_trajectory_sampling_runs_on_the_model_device(real):
    obj = objective_for(real)
    calls = EraserCalls(obj.erasers)
    try:
        emb = embeddings(["", PROMPTS[0], PROMPTS[2]])
        src = TrajectorySource(real.spec, LATENT, emb, [PROMPTS[0], PROMPTS[2]], num_steps=2, guidance=5.0,
                               pool_size=1, seed=0, handle=obj.handle)
        assert calls.take() == 0  # sampled with the erasers off: the frozen model's own trajectories
        for states, times in src.pool.values():
            assert states.shape == (2, 1, *LATENT) and states.dtype == torch.bfloat16 and states.device == META
            assert times.shape == (2,) and times.device == META
        x, t = src.draw([PROMPTS[0], PROMPTS[2]], torch.Generator().manual_seed(0))
        assert x.shape == (2, *LATENT) and x.device == META and t.device == META
    finally:
        calls.remove()
        obj.detach()


@pytest.mark.parametrize("where", ["noise", "timesteps"])
def test_trajectory_sampling_with_a_cpu_tensor_is_caught(real, monkeypatch, where):
    """The old `sample_trajectory` made its initial noise and its timesteps on the CPU."""
    velocity = CogVideoXSpec.velocity

    def old_velocity(self, x_t, t, text_emb):
        if where == "noise":
            x_t = torch.zeros(x_t.shape, dtype=x_t.dtype)
        else:
            t = torch.zeros(t.shape, dtype=t.dtype)
        return velocity(self, x_t, t, text_emb)

    monkeypatch.setattr(CogVideoXSpec, "velocity", old_velocity)
    emb = embeddings(["", PROMPTS[0]])
    with pytest.raises(RuntimeError, match=DEVICE_ERROR):
        TrajectorySource(real.spec, LATENT, emb, [PROMPTS[0]], num_steps=2, guidance=5.0, pool_size=1)


# --- the fused step: both forwards, attention capture, the backward ---------------------------------

def test_fused_step_forward_and_backward_with_attention_capture(real):
    obj = objective_for(real)
    calls = EraserCalls(obj.erasers)
    try:
        batch = step_batch().to(META)
        assert all(v.device == META for v in batch.__dict__.values())
        losses = obj(batch)
        assert calls.take() == real.layers  # forward 1 with erasers off (0) + forward 2 with them on (1 each)
        probs = obj.capture.probs()
        assert len(probs) == len(obj.capture.layers) == 3
        assert all(p.shape == (2, VIDEO_TOKENS, 226) and p.device == META for p in probs)
        assert {"l_unlearn", "l_preserve", "l_localize", "mask_fraction", "loss"} <= set(losses)
        assert all(v.shape == () and v.device == META for v in losses.values())
        assert obj.handle.outputs == {}  # the energy records were released once L_loc was built
        losses["loss"].backward()
        assert calls.take() == real.layers  # checkpointing recomputed every block (and its eraser) in backward
        for name, p in obj.erasers.named_parameters():
            assert p.grad is not None and p.grad.device == META and p.grad.dtype == torch.float32, name
        assert all(p.grad is None for p in real.spec.transformer.parameters())  # the backbone stays frozen
    finally:
        calls.remove()
        obj.detach()


@pytest.mark.parametrize("field", ["t_c", "sel"])
def test_fused_step_with_a_cpu_tensor_is_caught(real, field):
    """A StepBatch field left on the CPU: timesteps (first forward), the token selector (the mask, last)."""
    obj = objective_for(real)
    try:
        batch = step_batch().to(META)
        old = getattr(batch, field)
        setattr(batch, field, torch.zeros(old.shape, dtype=old.dtype))
        with pytest.raises(RuntimeError, match=DEVICE_ERROR):
            obj(batch)
    finally:
        obj.detach()


def test_rope_is_built_on_the_model_device(real):
    """5B: the 3D RoPE tables live on the model's device (diffusers' apply_rotary_emb would silently copy
    CPU tables to the GPU in every block of every forward, so a misplacement here costs time, not an error)."""
    emb = real.spec.rotary_emb(LATENT, META)
    if not real.rope:
        assert emb is None  # 2B: sinusoidal positions inside the model, nothing to place
        return
    cos, sin = emb
    assert cos.shape == sin.shape == (VIDEO_TOKENS, 64) and cos.device == sin.device == META


# --- eraser attach / disable ----------------------------------------------------------------------

def test_eraser_attach_disable_remove(real):
    torch.manual_seed(0)
    es = EraserSet.for_spec(real.spec, 8)
    handle = attach(real.spec.transformer, es)
    calls = EraserCalls(es)
    x, t = torch.zeros((1, *LATENT), device=META), torch.tensor([500], device=META)
    e = torch.zeros((1, 226, 4096), device=META)
    try:
        assert all(p.device == META and p.dtype == torch.float32 for p in es.parameters())
        with torch.no_grad():
            on = real.spec.velocity(x, t, e)
            assert calls.take() == real.layers
            with handle.disabled():
                off = real.spec.velocity(x, t, e)
            assert calls.take() == 0
            handle.remove()
            removed = real.spec.velocity(x, t, e)
            assert calls.take() == 0
        for v in (on, off, removed):
            assert v.shape == (1, *LATENT) and v.device == META and v.dtype == torch.bfloat16
    finally:
        calls.remove()
        handle.remove()


# --- one denoising step of the real pipeline ------------------------------------------------------

class HostStepDDIM(CogVideoXDDIMScheduler):
    """CogVideoX's DDIM, whose `step` looks its alphas up with the CPU copy of the timestep.

    The pipeline keeps timesteps on its device and the scheduler indexes `alphas_cumprod` with
    them, an implicit `.item()` a GPU does and meta cannot. The transformer still receives the
    device timesteps, so nothing about device placement is relaxed.
    """

    def set_timesteps(self, num_inference_steps, device=None):
        super().set_timesteps(num_inference_steps)
        self._host_timesteps, self._at = self.timesteps.clone(), 0
        self.timesteps = self.timesteps.to(device)

    def step(self, model_output, timestep, sample, *args, **kwargs):
        t = self._host_timesteps[self._at]
        self._at += 1
        return super().step(model_output, t, sample, *args, **kwargs)


@pytest.fixture(scope="module")
def pipeline(real):
    """A real CogVideoXPipeline around the shared meta transformer: the real VAE config (on meta;
    `output_type="latent"` skips decoding), a 1-block T5 with T5-XXL's width 4096 (T5-XXL itself is
    4.76B parameters: its depth changes nothing about devices), the project's offline tokenizer."""
    tok = build_t5_tokenizer(TINY_WORDS)
    te_cfg = {**PRESETS[real.name]["text_encoder"], "num_layers": 1, "vocab_size": len(tok)}
    with META:
        vae = AutoencoderKLCogVideoX(**init_kwargs(AutoencoderKLCogVideoX, PRESETS[real.name]["vae"]))
        te = T5EncoderModel(T5Config(**te_cfg))
    torch.nn.Module.to(vae, torch.bfloat16)
    te.to(torch.bfloat16)
    pipe = CogVideoXPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=real.spec.transformer,
                             scheduler=HostStepDDIM(**SCHEDULER_KW))
    pipe.set_progress_bar_config(disable=True)
    assert pipe._execution_device == META
    return pipe


def denoise_one_step(pipe, **kw):
    gen = GenerationConfig(num_inference_steps=1, use_dynamic_cfg=False, scheduler="ddim")
    return pipe(num_inference_steps=1, guidance_scale=6.0, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                generator=torch.Generator().manual_seed(0), output_type="latent",
                **CogVideoXSpec.pipeline_kwargs(pipe, gen), **kw).frames


def test_pipeline_denoising_step_with_an_eraser(real, pipeline, tmp_path):
    """The evaluation worker's path: a saved eraser loaded onto the pipeline (`load_eraser`), base and erased."""
    torch.manual_seed(0)
    saved = save_eraser(EraserSet.for_spec(real.spec, 4, base_model=real.name), tmp_path / "eraser")
    handle = load_eraser(pipeline, saved)
    calls = EraserCalls(handle.eraser_set)
    try:
        assert all(p.device == META and p.dtype == torch.bfloat16 for p in handle.eraser_set.parameters())
        erased = denoise_one_step(pipeline, prompt="a naked body", negative_prompt="")
        assert calls.take() == real.layers  # one CFG-batched transformer forward, every eraser in it
        with handle.disabled():
            base = denoise_one_step(pipeline, prompt="a naked body", negative_prompt="")
        assert calls.take() == 0
        for v in (erased, base):
            assert v.shape == (1, *LATENT) and v.device == META
    finally:
        calls.remove()
        handle.remove()


def test_pipeline_with_cpu_prompt_embeddings_is_caught(pipeline):
    """Embeddings encoded (or cached) on the CPU and handed to the pipeline unmoved."""
    emb = torch.zeros((1, 226, 4096), dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match=DEVICE_ERROR):
        denoise_one_step(pipeline, prompt_embeds=emb, negative_prompt_embeds=emb)
