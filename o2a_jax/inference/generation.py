"""One generation job from files: load the models (on a mesh if asked), read the text
conditioning, preprocess the reference and poses, sample. What `o2a animate` and `o2a transfer`
run; the command line maps its options onto the plain values here and writes the result.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from o2a_jax.inference import load, sharded
from o2a_jax.inference.animate import generate_video
from o2a_jax.inference.chunks import MAIN_CHUNK
from o2a_jax.inference.prepare import Poses, prepare
from o2a_jax.model.config import defaults_for
from o2a_jax.sampling.guidance import Guidance


@dataclasses.dataclass(frozen=True)
class ModelFiles:
  """The denoiser and VAE to load, their dtypes, and how to shard them."""

  checkpoint: str  # native checkpoint folder, or official safetensors folder/file
  vae: str  # Wan2.1 VAE: diffusers folder or .safetensors
  dtype: str = "bfloat16"
  vae_dtype: str = "bfloat16"
  attn_impl: str | None = None  # None: the checkpoint config's
  mesh: tuple[int, ...] | None = None  # (data, fsdp, context, tensor) sizes; None: one device
  context_parallel: str = "allgather"  # "allgather" | "ulysses", with a mesh


@dataclasses.dataclass(frozen=True)
class TextSource:
  """Where the text conditioning comes from (see `load.text_embeddings`, first source given)."""

  text_encoder: str | None = None
  tokenizer: str | None = None
  text_dtype: str = "bfloat16"
  text_cache: str | None = None
  prompt: str = ""
  negative_prompt: str = ""
  text_embeds: str | None = None
  negative_text_embeds: str | None = None
  empty_text_embeds: str | None = None  # "zeros": all-zero text (puppet models, tests)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Sampler settings; `image_guidance` None takes the model preset's."""

  steps: int = 30
  shift: float = 7.0
  image_guidance: float | None = None
  pose_guidance: float = 1.5
  pose_scale: float = 1.0
  seed: int = 42
  reproduce_official: bool = False  # the official chunk plan and stitching (>= 81 frames)

  def __post_init__(self):
    if self.steps < 1:
      raise ValueError(f"--steps must be >= 1, got {self.steps}")
    if self.shift <= 0:
      raise ValueError(f"--shift must be positive, got {self.shift}")


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Preprocessing options of `prepare.prepare`; `max_short` None takes the model preset's
  (unless `size` is given)."""

  mode: str = "ref"
  retarget: bool = False
  anchor: int | None = 0  # None: picked (the official pick_good_source_frame rule)
  size: tuple[int, int] | None = None
  max_short: int | None = None
  face_change: bool = True
  head_change: bool = False
  without_face: bool = False
  drawing: str = "official"  # `pose.render`'s DRAWINGS: as the model was trained


@dataclasses.dataclass
class Models:
  model: object  # Denoiser
  vae: object  # WanVAE
  mesh: object | None  # jax.sharding.Mesh, current while the context is entered


@contextlib.contextmanager
def loaded_models(files: ModelFiles, *, progress: bool = True):
  """Loads the denoiser and VAE; with `files.mesh` the mesh stays current inside the context."""
  import jax
  import jax.numpy as jnp
  from tqdm import tqdm

  from kernels.attention import context_parallel
  from o2a_jax import sharding
  from o2a_jax.convert import load_vae

  with contextlib.ExitStack() as stack:
    impl, mesh = files.attn_impl, None
    if files.mesh is not None:
      mesh = sharding.make_mesh(files.mesh)
      impl = context_parallel.register_context_parallel(impl or "xla", files.context_parallel)
      stack.enter_context(jax.set_mesh(mesh))
    with tqdm(desc="loading denoiser", unit="tensor", disable=not progress) as bar:
      model = load.load_denoiser(
        files.checkpoint,
        dtype=files.dtype,
        attn_impl=impl,
        progress=lambda n: bar.update(n - bar.n),
      )
    vae = load_vae(files.vae, dtype=jnp.dtype(files.vae_dtype))
    load.check_finite(vae, f"--vae {files.vae!r}")
    if mesh is not None:
      sharded.replicate(vae, mesh)
    yield Models(model, vae, mesh)


def generate(
  files: ModelFiles,
  image: np.ndarray,
  ref: Poses,
  driving: Poses,
  *,
  preprocess: Preprocess = Preprocess(),
  sampling: Sampling = Sampling(),
  text: TextSource = TextSource(),
  progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """The reference `image` (uint8 H, W, 3) with pose `ref`, animated along `driving`.

  Returns (video, drawn poses), both uint8 (F, H, W, 3) at the inference size.
  """
  if sampling.reproduce_official and len(driving) < MAIN_CHUNK:
    raise ValueError(
      f"--reproduce-official needs at least {MAIN_CHUNK} driving frames (the official chunk plan "
      f"crashes below), got {len(driving)}"
    )
  with loaded_models(files, progress=progress) as m:
    cfg = m.model.cfg
    defaults = defaults_for(cfg)  # the preset's, by the checkpoint's width
    image_guidance = sampling.image_guidance
    guidance = Guidance(
      defaults.image_guidance if image_guidance is None else image_guidance,
      sampling.pose_guidance,
    )
    max_short = preprocess.max_short
    if max_short is None and preprocess.size is None:
      max_short = defaults.max_short
    inputs = prepare(
      image, ref, driving, **{**dataclasses.asdict(preprocess), "max_short": max_short},
      progress=progress,
    )  # fmt: skip
    embeds, negative = load.text_embeddings(
      cfg.text_dim, need_negative=guidance.passes > 1, **dataclasses.asdict(text)
    )
    if m.mesh is not None:
      hh, ww = inputs.image.shape[:2]
      sharded.check_sampling_mesh(
        m.mesh,
        passes=guidance.passes,
        num_heads=cfg.num_heads,
        tokens_per_frame=cfg.tokens_per_frame(hh, ww),
      )
    video = generate_video(
      m.model,
      m.vae,
      inputs,
      embeds,
      negative,
      steps=sampling.steps,
      shift=sampling.shift,
      image_guidance=guidance.image,
      pose_guidance=guidance.pose,
      pose_scale=sampling.pose_scale,
      seed=sampling.seed,
      reproduce_official=sampling.reproduce_official,
      progress=progress,
    )
  return video, inputs.poses
