"""Video generation for evaluation: one real pipeline of the model's family (e.g. `CogVideoXPipeline`),
erasers toggled on it; the family-specific parts (loader, samplers, call arguments) are the model spec's.

Baseline and erased videos of a row come from the SAME pipeline object (the eraser hooks
are switched off with `handle.disabled()` for the baseline; no second model copy) and the
SAME seed: each video gets a fresh `torch.Generator().manual_seed(row.seed)` (a CPU
generator, so a seed gives the same initial noise on any device).

Also here: writing mp4 (imageio-ffmpeg's bundled ffmpeg) and small GIF previews, both
atomically (temporary file + rename: a killed run never leaves half a file under the
final name).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np

from unlearn.fsutil import atomic_path


def pick_device(device: str | None, use_gpu: bool | None = None) -> str:
    import torch

    if device:
        return device
    if use_gpu is False:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_eval_pipeline(model_path: str | Path, dtype: str = "bfloat16", device: str = "cpu", gen=None,
                       transformer=None, text_encoder: bool = True):
    """The real pipeline of the directory's model family (`spec.load_pipeline`, e.g.
    `CogVideoXPipeline.from_pretrained`), moved to `device`, with the configured scheduler
    and VAE memory savers.

    transformer: reuse this (already loaded) backbone instead of loading one — a training worker's
    proxy eval; the other parts are loaded in its dtype so the pipeline's tensors agree with it.
    """
    from unlearn.models.families import family_of_model_dir, spec_class

    spec = spec_class(family_of_model_dir(model_path))
    if transformer is not None:
        dtype = str(next(transformer.parameters()).dtype).removeprefix("torch.")
    pipe = spec.load_pipeline(model_path, dtype=dtype, transformer=transformer, text_encoder=text_encoder)
    pipe.t2vu_spec = spec  # generate_video asks it for the family's own call arguments
    if gen is not None:
        scheduler = spec.eval_scheduler(gen.scheduler, pipe.scheduler.config)
        if scheduler is not None:
            pipe.scheduler = scheduler
        tiling = gen.vae_tiling
        if tiling == "auto":
            tiling = str(device).startswith("cuda") and gen.height * gen.width >= 256 * 256
        if tiling:
            pipe.vae.enable_tiling()
        if gen.vae_slicing:
            pipe.vae.enable_slicing()
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_video(pipe, prompt: str, seed: int, gen, guidance_scale: float | None = None,
                   text: dict | None = None) -> np.ndarray:
    """One video [F, H, W, 3] float32 RGB for `prompt` with `seed` (settings `gen`).

    guidance_scale: this row's guidance (a CSV guidance column), else `gen.guidance_scale`.
    text: what replaces the text side of the call (an eval method's `text_kwargs`): `negative_prompt`
    (instead of `gen.negative_prompt`), `prompt_embeds` (instead of the prompt: the pipeline then skips
    encoding it), `negative_prompt_embeds`.
    Values are in [0, 1] unless the pipeline broke (NaN/inf are returned as they are, for
    eval.quality to see before uint8 conversion hides them).
    """
    import torch

    from unlearn.models.families import family_of_transformer, spec_class

    spec = getattr(pipe, "t2vu_spec", None) or spec_class(family_of_transformer(pipe.transformer))
    generator = torch.Generator().manual_seed(int(seed))
    call = {"prompt": prompt, "negative_prompt": gen.negative_prompt, **(text or {})}
    if call.get("prompt_embeds") is not None:
        call.pop("prompt")
    if call.get("negative_prompt_embeds") is not None:
        call.pop("negative_prompt", None)
    with torch.inference_mode():
        out = pipe(
            **call,
            num_inference_steps=gen.num_inference_steps,
            guidance_scale=gen.guidance_scale if guidance_scale is None else float(guidance_scale),
            num_frames=gen.num_frames,
            height=gen.height,
            width=gen.width,
            generator=generator,
            output_type="np",
            **spec.pipeline_kwargs(pipe, gen),
        )
    frames = np.asarray(out.frames[0], dtype=np.float32)
    want = (gen.num_frames, gen.height, gen.width, 3)
    if frames.shape != want:
        hint = " (VAE tiling is on: try generation.vae_tiling: false)" if getattr(pipe.vae, "use_tiling", False) else ""
        raise RuntimeError(f"the pipeline returned frames of shape {frames.shape}, expected {want}{hint}")
    return frames


def prompt_token_counts(model_path: str | Path, prompts: list[str], gen, tokenizer=None) -> tuple[list[int], int]:
    """(tokens per prompt, the limit) with the pipeline's own tokenizer, before any model loads
    (`tokenizer`: a loaded pipeline's, so a caller that has one does not read it from disk again).

    The count is what the pipeline's tokenizer makes of the prompt with its special tokens
    (T5: the words plus </s>); the pipeline pads or cuts to the limit: generation's
    max_sequence_length, else the family's text length (CogVideoX: the transformer's
    max_text_seq_length, 226). A count above the limit means the words past it are dropped,
    silently (the library's warning is silenced with its logging).
    """
    from unlearn.models.families import family_of_model_dir, spec_class

    spec = spec_class(family_of_model_dir(model_path))
    limit = int(gen.max_sequence_length or spec.text_len_of(model_path))
    from unlearn.data import token_counts

    tokenizer = tokenizer if tokenizer is not None else spec.load_tokenizer(model_path)
    return token_counts(tokenizer, prompts), limit


def generate_pair(pipe, handle, prompt: str, seed: int, gen) -> tuple[np.ndarray, np.ndarray | None]:
    """(base, erased) videos of one row with identical seeds; erased is None without an eraser."""
    ctx = handle.disabled() if handle is not None else nullcontext()
    with ctx:
        base = generate_video(pipe, prompt, seed, gen)
    erased = generate_video(pipe, prompt, seed, gen) if handle is not None else None
    return base, erased


# --- frames <-> files ------------------------------------------------------------------------------

def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float RGB in [0, 1] -> uint8 RGB (round to nearest; exact inverse of /255)."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return np.clip(np.rint(frames.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """H.264 mp4 through imageio-ffmpeg's bundled ffmpeg, written atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    with atomic_path(path) as tmp:
        u8 = to_uint8(frames)
        ph, pw = u8.shape[1] % 2, u8.shape[2] % 2
        if ph or pw:  # yuv420p needs even sizes: replicate the last row/column
            u8 = np.pad(u8, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
        # macro_block_size=1: keep the exact size (no silent resize to multiples of 16).
        with imageio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                macro_block_size=1, ffmpeg_log_level="error", pixelformat="yuv420p") as w:
            for f in u8:
                w.append_data(f)
    return path


def read_video(path: str | Path) -> np.ndarray:
    """uint8 [F, H, W, 3] frames of an mp4 or GIF."""
    import imageio.v3 as iio

    arr = np.asarray(iio.imread(str(path), index=None))
    if arr.ndim == 3:  # single frame
        arr = arr[None]
    return arr[..., :3]


def resize_frames(frames_u8: np.ndarray, height: int) -> list:
    """PIL images of height `height` (aspect kept; nearest-neighbour when enlarging tiny frames)."""
    from PIL import Image

    out = []
    h, w = frames_u8.shape[1:3]
    width = max(1, round(w * height / h))
    resample = Image.NEAREST if height >= h else Image.BILINEAR
    for f in frames_u8:
        out.append(Image.fromarray(f).resize((width, height), resample))
    return out


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 8, height: int = 128) -> Path:
    """Small looping GIF preview, written atomically."""
    path = Path(path)
    imgs = resize_frames(to_uint8(frames), height)
    return save_gif_images(imgs, path, fps)


def save_gif_images(imgs: list, path: Path, fps: int = 8) -> Path:
    from PIL import Image

    # Fast octree palettes: ~30x faster than PIL's default GIF quantisation, same look for previews.
    imgs = [im if im.mode == "P" else im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE) for im in imgs]
    with atomic_path(path) as tmp:
        imgs[0].save(str(tmp), format="GIF", save_all=True, append_images=imgs[1:],
                     duration=max(20, round(1000 / fps)), loop=0, optimize=False)
    return path
