"""Puppet-world evaluation pieces shared by `o2a demo` and `benchmarks/puppet_eval.py`.

Dims: F pixel frames, H/W height/width, T latent frames, h/w latent height/width.

- Metrics: `o2a_jax.metrics.pixels` (`psnr`, `ssim` on uint8 videos against the exact ground
  truth).
- `load_puppet_models`: the shipped puppet denoiser (`assets/puppet_model`) and the puppet VAE
  (`assets/puppet_vae`). The denoiser only works in the latent space it was trained in, so the
  model folder records the sha256 of the VAE weights (`vae_sha256.txt`) and loading checks it.
- `puppet_inputs`: a held-out puppet clip of the generator with its aligned and misaligned
  reference, prepared as model inputs exactly like `o2a animate` (`inference.prepare`).
- `animate`: chunks of `chunk` frames advancing by chunk - 5 with TokenReplace context (the
  `o2a animate` loop with a shorter chunk, so a clip of a few dozen frames takes two chunks).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np  # JAX is imported inside the functions: `o2a demo --help` stays light

REPO = pathlib.Path(__file__).resolve().parents[2]  # o2a_jax/puppet/evaluate.py -> the repository
MODEL_DIR = REPO / "assets" / "puppet_model"
VAE_DIR = REPO / "assets" / "puppet_vae"  # the VAE whose latent space the denoiser learned
VAE_HASH_FILE = "vae_sha256.txt"  # in the model folder: sha256 of the VAE weights it was trained on
TEXT_LEN = 7  # the `puppet` config's empty-prompt embedding: zeros of (7, text_dim)
# The toy's sampler settings (the demo's and the evaluation's defaults). Guidance off (1 / 1): the
# official 2.5 / 1.5 oversaturate this small model; 3 Euler steps: this blurry model scores higher
# in PSNR and SSIM with fewer, larger steps than with 20. assets/puppet_model/README.md has the
# comparisons that chose these.
STEPS = 3
SHIFT = 7.0
IMAGE_GUIDANCE = 1.0
POSE_GUIDANCE = 1.0


# --- models --------------------------------------------------------------------------------------


def load_puppet_models(model_dir=MODEL_DIR, vae_dir=VAE_DIR):
  """(denoiser, VAE) float32 from the shipped folders (or the given ones); the VAE carries its
  own latent statistics (config.json), as in training."""
  import jax.numpy as jnp

  from o2a_jax.convert import load_official, load_vae
  from o2a_jax.convert.vae import read_latent_stats

  for what, p in (("puppet model", model_dir), ("puppet VAE", vae_dir)):
    if not pathlib.Path(p).is_dir():
      raise FileNotFoundError(
        f"{what} folder {str(p)!r} not found; it ships in the repository under assets/ "
        "(assets/puppet_model/README.md has the commands that rebuild it)"
      )
  check_vae_hash(model_dir, vae_dir)
  model = load_official(model_dir, dtype=jnp.float32, **head_layout(model_dir))
  read_latent_stats(vae_dir)  # a clear error when the VAE lacks its statistics
  return model, load_vae(vae_dir, dtype=jnp.float32)


HEADS_FILE = "heads.json"  # in the model folder: {"num_heads", "head_dim"} (shapes cannot say)
# In the model folder: how its pose inputs were drawn in training (`config.data.pose_drawing`, one
# of `pose.render`'s DRAWINGS); sampling must draw them the same way.
POSE_DRAWING_FILE = "pose_drawing.txt"


def pose_drawing(model_dir) -> str:
  """The pose drawing a model folder records (`POSE_DRAWING_FILE`); "official" where it has none
  (official checkpoints, and the toys trained before the file existed, all drew that way)."""
  from o2a_jax.pose import check_drawing

  path = pathlib.Path(model_dir) / POSE_DRAWING_FILE
  if not path.is_file():
    return "official"
  return check_drawing(path.read_text().strip(), str(path))


def head_layout(model_dir) -> dict:
  """The attention head layout a model folder records (`HEADS_FILE`), else {} (the default that
  `load_official` infers from the shapes, the shipped toy's)."""
  import json

  path = pathlib.Path(model_dir) / HEADS_FILE
  if not path.is_file():
    return {}
  d = json.loads(path.read_text())
  return {"num_heads": int(d["num_heads"]), "head_dim": int(d["head_dim"])}


def vae_sha256(vae_dir) -> str:
  import hashlib

  from o2a_jax.convert.vae import WEIGHTS_NAME

  return hashlib.sha256((pathlib.Path(vae_dir) / WEIGHTS_NAME).read_bytes()).hexdigest()


def check_vae_hash(model_dir, vae_dir) -> None:
  """Raises ValueError unless `vae_dir` holds the VAE weights `model_dir` was trained with."""
  path = pathlib.Path(model_dir) / VAE_HASH_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: the model folder must name its VAE's sha256")
  want, got = path.read_text().split()[0], vae_sha256(vae_dir)
  if want != got:
    raise ValueError(
      f"the VAE in {str(vae_dir)!r} (sha256 {got[:12]}...) is not the one the denoiser in "
      f"{str(model_dir)!r} was trained with ({want[:12]}...); retrain the denoiser "
      "(assets/puppet_model/README.md) or pass the matching --vae"
    )


def empty_text(model) -> np.ndarray:
  """The empty prompt's embedding the toy was trained with: zeros (TEXT_LEN, text_dim)."""
  return np.zeros((TEXT_LEN, model.cfg.text_dim), np.float32)


# --- inputs --------------------------------------------------------------------------------------


@dataclasses.dataclass
class PuppetCase:
  """A held-out clip: ground truth uint8 (F,H,W,3), keypoints (F,133,3), the misaligned
  reference image and keypoints, and the generator's description."""

  frames: np.ndarray
  kp133: np.ndarray
  ref_frame: np.ndarray
  ref_kp133: np.ndarray
  meta: dict


def heldout_case(
  index: int, *, frames: int, size: int = 64, seed: int = 0, reference_background: str = "same"
) -> PuppetCase:
  """Held-out clip `index` of the world (seed, size), rendered on the fly (no files needed).

  Held-out puppets are drawn from their own random stream: neither the VAE nor the denoiser saw
  them (`o2a_jax.puppet.world`). `reference_background`: the misaligned reference in front
  of the clip's scene ("same") or of an independent background ("new", worlds before that option).
  """
  from o2a_jax.puppet.world import WorldConfig, make_video

  cfg = WorldConfig(seed=seed, videos=1, images=0, heldout=16, height=size, width=size,
                    frames=frames, reference_background=reference_background)  # fmt: skip
  clip = make_video(cfg, index, heldout=True)
  ref = clip.meta.pop("ref")
  return PuppetCase(clip.frames, clip.kp133, ref.frames[0], ref.kp133[0], clip.meta)


def prepare_case(case: PuppetCase, *, aligned: bool, drawing: str, progress: bool = False):
  """(Prepared inputs, reference image, reference pose dict, driving pose dicts) of a case.

  Aligned: the reference is the clip's first frame; misaligned: the other-framing still. The
  driving poses are the clip's exact keypoints ('ref' mode, no retargeting), as `o2a animate`
  prepares them, drawn with `drawing` (the model folder's `pose_drawing`).
  """
  from o2a_jax.inference.prepare import Poses, driving_dicts, prepare, ref_dict

  n, h, w = case.frames.shape[:3]
  image = case.frames[0] if aligned else case.ref_frame
  ref_kp = case.kp133[0] if aligned else case.ref_kp133
  ref = Poses(kp133=np.asarray(ref_kp, np.float32)[None], width=w, height=h)
  drv = Poses(kp133=np.asarray(case.kp133, np.float32), width=w, height=h)
  inputs = prepare(image, ref, drv, mode="ref", size=(h, w), drawing=drawing, progress=progress)
  return inputs, image, ref_dict(ref, w, h), driving_dicts(drv, w, h)


def translate_baseline(image, ref_pose: dict, driving: list[dict], frames: int) -> np.ndarray:
  """The pose-guided translation of the reference (`pose.translate_reference`, official pose-guided
  reference translation) onto each driving frame, as a video (F,H,W,3): the reference moved and
  scaled, nothing animated."""
  from o2a_jax.pose import translate_reference

  return np.stack([translate_reference(image, ref_pose, d)[0] for d in driving[:frames]])


def vae_round_trip(vae, frames: np.ndarray) -> np.ndarray:
  """decode(encode(frames)) of a uint8 (F,H,W,3) clip as uint8: the ceiling of anything the
  denoiser produces in this VAE's latent space."""
  from o2a_jax.inference.prepare import to_model_range
  from o2a_jax.io.video import to_uint8
  from o2a_jax.puppet.vae_train import reconstruct

  return to_uint8(reconstruct(vae, to_model_range(frames[None]))[0])


# --- sampling ------------------------------------------------------------------------------------


def animate(
  model,
  vae,
  inputs,
  *,
  chunk: int = 17,
  steps: int = STEPS,
  shift: float = SHIFT,
  image_guidance: float = IMAGE_GUIDANCE,
  pose_guidance: float = POSE_GUIDANCE,
  pose_scale: float = 1.0,
  drop_reference: bool = False,
  seed: int = 42,
  progress: bool = True,
) -> np.ndarray:
  """Animates `inputs` (a `Prepared`); uint8 (F,H,W,3).

  `drop_reference`: the reference-extractor ablation: the reference and its mask are replaced by
  the black image the model sees when the reference is dropped in training (ref CFG off).
  """
  from o2a_jax.inference.animate import generate_video
  from o2a_jax.inference.chunks import fixed_chunks

  if drop_reference:
    inputs = dataclasses.replace(
      inputs, image=np.zeros_like(inputs.image), mask=np.zeros_like(inputs.mask)
    )
  text = empty_text(model)
  return generate_video(
    model,
    vae,
    inputs,
    text,
    text,
    steps=steps,
    shift=shift,
    image_guidance=image_guidance,
    pose_guidance=pose_guidance,
    pose_scale=pose_scale,
    seed=seed,
    chunks=fixed_chunks(len(inputs.poses), chunk),
    progress=progress,
  )
