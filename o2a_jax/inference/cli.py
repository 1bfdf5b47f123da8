"""`o2a animate`, `o2a transfer` and `o2a pose extract|render`.

```
o2a animate --ref IMG --driving VIDEO|POSES --checkpoint CKPT --vae VAE --out FILE [...]
o2a transfer --ref IMG --pose IMG|POSES --checkpoint CKPT --vae VAE --out FILE [...]
o2a pose extract INPUT --det-model ONNX --pose-model ONNX --out POSES.json|.npy
o2a pose render POSES --out FILE
```
Driving videos and pose images need the local ONNX pose models (`--det-model`, `--pose-model`,
see `o2a_jax.pose.estimate`); pose files (.json, official .npy) do not. Outputs: .mp4 (H.264),
.gif, .png (one frame) or a folder of PNG frames (a name without suffix).
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import time

import numpy as np

from o2a_jax.cli_types import dtype_name
from o2a_jax.inference.prepare import MODES
from o2a_jax.io.output_paths import check_output
from o2a_jax.model.config import defaults_for

EPILOG = __doc__.replace("```\n", "")  # the module docstring, without its Markdown fences


def _add_estimator_args(p):
  g = p.add_argument_group("pose estimation (local ONNX files; nothing is downloaded)")
  g.add_argument("--det-model", help="person detector .onnx (YOLOX of DWPose, or YOLOv10/v8)")
  g.add_argument("--pose-model", help="whole-body pose .onnx (DWPose SimCC, or ViTPose heat maps)")
  g.add_argument(
    "--det-kind",
    default="auto",
    choices=("auto", "yolox", "yolo"),
    help="detector family of --det-model (auto: from the ONNX file)",
  )
  g.add_argument(
    "--pose-kind",
    default="auto",
    choices=("auto", "simcc", "heatmap"),
    help="output head of --pose-model: DWPose SimCC or ViTPose heatmaps (auto: from the file)",
  )
  g.add_argument(
    "--person",
    type=int,
    default=None,
    help="with several people: the INDEX-th from the left (default: the largest)",
  )


def _add_range_args(p):
  g = p.add_argument_group("frames")
  g.add_argument("--start", type=int, default=0, help="first driving frame (default 0)")
  g.add_argument("--frames", type=int, default=None, help="number of frames (default: all)")
  g.add_argument("--stride", type=int, default=1, help="take every STRIDE-th frame (default 1)")


def _size(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"size {text!r} must be HxW, e.g. 384x640") from None
  return h, w


def _add_generation_args(p, *, mode_default: str):
  g = p.add_argument_group("model")
  g.add_argument(
    "--checkpoint",
    required=True,
    help="native checkpoint folder, or official safetensors folder/file",
  )
  g.add_argument("--vae", required=True, help="Wan2.1 VAE (diffusers folder or .safetensors)")
  g.add_argument(
    "--dtype",
    default="bfloat16",
    type=dtype_name,
    help="denoiser dtype: bf16|bfloat16 (default, as officially) or fp32|float32",
  )
  g.add_argument(
    "--vae-dtype", default="bfloat16", type=dtype_name, help="VAE dtype (default bf16)"
  )
  g.add_argument("--attn-impl", default=None, help="attention implementation (default: config)")
  g.add_argument(
    "--mesh",
    default=None,
    help="shard over devices: data,fsdp,context,tensor "
    "sizes, e.g. 1,1,4,2 (parameters over tensor/fsdp, tokens over context)",
  )
  g.add_argument(
    "--context-parallel",
    default="allgather",
    choices=("allgather", "ulysses"),
    help="how attention sees tokens split over the mesh's context axis (default allgather)",
  )
  t = p.add_argument_group("text (one of these is required)")
  t.add_argument("--text-encoder", help="UMT5 text_encoder/ folder (JAX encoder)")
  t.add_argument("--tokenizer", help="tokenizer/ folder (with --text-encoder)")
  t.add_argument("--text-cache", help="embedding cache folder for --text-encoder")
  t.add_argument(
    "--text-dtype", default="bfloat16", type=dtype_name, help="UMT5 dtype (default bf16)"
  )
  t.add_argument("--prompt", default="", help="prompt (default empty, as officially)")
  from o2a_jax.text.embed import DEFAULT_NEGATIVE_PROMPT

  t.add_argument(
    "--negative-prompt",
    default=DEFAULT_NEGATIVE_PROMPT,
    help="negative prompt with --text-encoder (default: the official one)",
  )
  t.add_argument("--text-embeds", help="prompt embeddings: .npz or `o2a text embed` .safetensors")
  t.add_argument("--negative-text-embeds", help="negative-prompt embeddings file")
  t.add_argument("--empty-text-embeds", choices=("zeros",), help="all-zero text (puppets/tests)")
  s = p.add_argument_group("sampling")
  s.add_argument("--steps", type=int, default=30, help="Euler steps (default 30)")
  s.add_argument("--shift", type=float, default=7.0, help="scheduler shift (default 7)")
  s.add_argument(
    "--image-guidance",
    type=float,
    default=None,
    help="reference guidance scale (default 2.5 for 1.3B, 2.0 for 14B)",
  )
  s.add_argument("--pose-guidance", type=float, default=1.5, help="pose guidance (default 1.5)")
  s.add_argument("--pose-scale", type=float, default=1.0, help="pose conditioning scale")
  s.add_argument("--seed", type=int, default=42, help="noise seed (default 42)")
  r = p.add_argument_group("preprocessing")
  r.add_argument(
    "--mode",
    choices=MODES,
    default=mode_default,
    help="ref: keep the reference layout; pose: translate it onto the driving pose "
    f"(default {mode_default})",
  )
  r.add_argument("--retarget", action="store_true", help="retarget the poses to the reference")
  r.add_argument(
    "--anchor",
    default="0",
    help="driving frame matched to the reference, or "
    "'auto' (the official pick_good_source_frame rule); default 0",
  )
  r.add_argument("--ref-pose", help="reference pose file instead of estimating it")
  r.add_argument("--size", type=_size, default=None, help="explicit HxW (multiples of 16)")
  r.add_argument(
    "--max-short",
    type=int,
    default=None,
    help="cap of the short side (default: the preset's, 384 for 1.3B-wide models, 576 for 14B)",
  )
  r.add_argument("--no-face-change", action="store_true", help="draw faces at full brightness")
  r.add_argument("--head-change", action="store_true", help="dim the head joints")
  r.add_argument("--without-face", action="store_true", help="do not draw face landmarks")
  o = p.add_argument_group("output")
  o.add_argument("--out", required=True, help=".mp4, .gif, .png or a folder name")
  o.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  o.add_argument("--side-by-side", action="store_true", help="write [pose | result]")
  o.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  _add_estimator_args(p)


def add_parser(sub) -> None:
  fmt = argparse.RawDescriptionHelpFormatter
  a = sub.add_parser(
    "animate",
    help="animate a reference image with a driving video or pose sequence",
    description="Animate one reference image along a driving video or pose file (any length: "
    "81-frame chunks with TokenReplace context).",
    epilog=EPILOG,
    formatter_class=fmt,
  )
  a.add_argument("--ref", required=True, help="reference image")
  a.add_argument("--driving", required=True, help="driving video/GIF/frame folder or pose file")
  _add_range_args(a)
  a.add_argument(
    "--fps",
    type=float,
    default=None,
    help="output fps (default: driving fps / stride, 16 for pose files)",
  )
  a.add_argument(
    "--reproduce-official",
    action="store_true",
    help="official chunk plan and stitching (needs >= 81 frames)",
  )
  _add_generation_args(a, mode_default="ref")
  a.set_defaults(func=run_animate)

  t = sub.add_parser(
    "transfer",
    help="image pose transfer: the reference in a target pose",
    description="Generate one image of the reference in the pose of a target image or pose file.",
    epilog=EPILOG,
    formatter_class=fmt,
  )
  t.add_argument("--ref", required=True, help="reference image")
  t.add_argument("--pose", required=True, help="target pose: an image or a pose file")
  t.add_argument("--pose-frame", type=int, default=0, help="frame of a pose file (default 0)")
  _add_generation_args(t, mode_default="pose")
  t.set_defaults(func=run_transfer)

  p = sub.add_parser("pose", help="extract and render poses", description="Pose tools.")
  ps = p.add_subparsers(dest="pose_command", metavar="{extract,render}", required=True)
  e = ps.add_parser(
    "extract",
    help="image/video -> pose file",
    description="Estimate COCO-WholeBody keypoints per frame with local ONNX models and write "
    "them as o2a-pose JSON (kind coco_wholebody, or dwpose with --kind dwpose) or as an official "
    ".npy pose file (DWPose-style dicts).",
  )
  e.add_argument("input", help="image, video, GIF or folder of frames")
  e.add_argument("--out", required=True, help=".json or .npy")
  e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  e.add_argument(
    "--kind",
    default="coco_wholebody",
    choices=("coco_wholebody", "dwpose"),
    help="JSON content: keypoints in pixels (default) or DWPose-style dicts",
  )
  _add_range_args(e)
  _add_estimator_args(e)
  e.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  e.set_defaults(func=run_extract)
  r = ps.add_parser(
    "render",
    help="pose file -> video/images",
    description="Draw poses as the official draw_pose_aligned (to inspect or edit them).",
  )
  r.add_argument("poses", help="pose file (.json or official .npy)")
  r.add_argument("--out", required=True, help=".mp4, .gif, .png (one frame) or folder")
  r.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  r.add_argument("--size", type=_size, default=None, help="HxW (default: the file's size)")
  r.add_argument("--fps", type=float, default=16.0, help="frame rate of the video (default 16)")
  r.add_argument(
    "--face-change", action="store_true", help="dim the face landmarks, as for driving poses"
  )
  r.add_argument("--head-change", action="store_true", help="dim the head joints")
  r.add_argument("--without-face", action="store_true", help="do not draw face landmarks")
  _add_range_args(r)
  r.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  r.set_defaults(func=run_render)


# --- helpers --------------------------------------------------------------------------------------


def _estimator(args, why: str):
  from o2a_jax.pose.estimate import PoseEstimator

  if not (args.det_model and args.pose_model):
    raise ValueError(f"{why} needs pose estimation: give --det-model and --pose-model (ONNX files)")
  return PoseEstimator(
    args.det_model,
    args.pose_model,
    det_kind=args.det_kind,
    pose_kind=args.pose_kind,
    person=args.person,
  )


def _is_pose_file(path) -> bool:
  from o2a_jax.inference.load import POSE_SUFFIXES

  return pathlib.Path(path).suffix.lower() in POSE_SUFFIXES


def _driving(args, ref_hw, *, progress: bool):
  """Driving poses (Poses) at the reference size, and the source fps."""
  from o2a_jax.inference.load import read_pose_file
  from o2a_jax.inference.prepare import Poses, frame_indices, resize_crop
  from o2a_jax.io.video import read_video

  if _is_pose_file(args.driving):
    poses = read_pose_file(args.driving)
    idx = frame_indices(len(poses), start=args.start, count=args.frames, stride=args.stride)
    return poses.select(idx), 16.0
  stop = None if args.frames is None else args.start + args.frames * args.stride
  frames, fps = read_video(args.driving, max_frames=stop)
  idx = frame_indices(len(frames), start=args.start, count=args.frames, stride=args.stride)
  h, w = ref_hw
  # As officially: driving frames are centre-cropped/resized to the reference size first.
  frames = np.stack([resize_crop(frames[i], h, w) for i in idx])
  est = _estimator(args, "a driving video")
  kp = est.estimate_video(frames, what=f"driving video {args.driving!r}", progress=progress)
  return Poses(kp133=kp, width=w, height=h), fps / args.stride


def _reference_pose(args, image):
  from o2a_jax.inference.load import read_pose_file
  from o2a_jax.inference.prepare import Poses

  if args.ref_pose:
    return read_pose_file(args.ref_pose)
  est = _estimator(args, "the reference image (or give --ref-pose)")
  kp = est.estimate(image, f"reference image {args.ref!r}")
  return Poses(kp133=kp[None], width=image.shape[1], height=image.shape[0])


def _check_sampling_args(args):
  if args.steps < 1:
    raise ValueError(f"--steps must be >= 1, got {args.steps}")
  if args.shift <= 0:
    raise ValueError(f"--shift must be positive, got {args.shift}")
  out = pathlib.Path(args.out)
  if out.suffix.lower() not in (".mp4", ".gif", ".png", ""):
    raise ValueError(f"--out {args.out!r}: use .mp4, .gif, .png or a folder name")
  check_output(out, overwrite=args.overwrite, folder=out.suffix == "")


def _anchor(text: str):
  if text == "auto":
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"--anchor must be a frame index or 'auto', got {text!r}") from None


def _prepare(args, image, ref, driving, *, max_short, progress):
  from o2a_jax.inference.prepare import prepare

  return prepare(
    image,
    ref,
    driving,
    mode=args.mode,
    retarget=args.retarget,
    anchor=_anchor(args.anchor),
    size=args.size,
    max_short=max_short,
    face_change=not args.no_face_change,
    head_change=args.head_change,
    without_face=args.without_face,
    progress=progress,
  )


def _load_models(args, *, progress: bool):
  """(model, vae, mesh context) honouring --mesh; the context stays entered while sampling."""
  import jax
  import jax.numpy as jnp
  from tqdm import tqdm

  from kernels.attention import context_parallel
  from o2a_jax import sharding
  from o2a_jax.convert import load_vae
  from o2a_jax.inference import load, sharded

  stack = contextlib.ExitStack()
  impl = args.attn_impl
  mesh = None
  if args.mesh:
    mesh = sharding.make_mesh(sharded.parse_mesh(args.mesh))
    impl = context_parallel.register_context_parallel(impl or "xla", args.context_parallel)
    stack.enter_context(jax.set_mesh(mesh))
  with tqdm(desc="loading denoiser", unit="tensor", disable=not progress) as bar:
    model = load.load_denoiser(
      args.checkpoint, dtype=args.dtype, attn_impl=impl, progress=lambda n: bar.update(n - bar.n)
    )
  vae = load_vae(args.vae, dtype=jnp.dtype(args.vae_dtype))
  load.check_finite(vae, f"--vae {args.vae!r}")
  if mesh is not None:
    sharded.replicate(vae, mesh)
  return model, vae, mesh, stack


def _defaults_from_model(args, model):
  """(guidance, max_short): the options, with the model preset's defaults for those not given."""
  from o2a_jax.sampling.guidance import Guidance

  defaults = defaults_for(model.cfg)  # the preset's, by the checkpoint's width
  image = defaults.image_guidance if args.image_guidance is None else args.image_guidance
  max_short = args.max_short
  if max_short is None and args.size is None:
    max_short = defaults.max_short
  return Guidance(image, args.pose_guidance), max_short


def _sample(args, model, vae, mesh, inputs, guidance, *, reproduce_official=False, progress=True):
  from o2a_jax.inference import load, sharded
  from o2a_jax.inference.animate import generate_video

  text, neg = load.text_embeddings(
    model.cfg.text_dim,
    need_negative=guidance.passes > 1,
    text_encoder=args.text_encoder,
    tokenizer=args.tokenizer,
    text_dtype=args.text_dtype,
    text_cache=args.text_cache,
    prompt=args.prompt,
    negative_prompt=args.negative_prompt,
    text_embeds=args.text_embeds,
    negative_text_embeds=args.negative_text_embeds,
    empty_text_embeds=args.empty_text_embeds,
  )
  if mesh is not None:
    hh, ww = inputs.image.shape[:2]
    sharded.check_sampling_mesh(
      mesh,
      passes=guidance.passes,
      num_heads=model.cfg.num_heads,
      tokens_per_frame=model.cfg.tokens_per_frame(hh, ww),
    )
  return generate_video(
    model,
    vae,
    inputs,
    text,
    neg,
    steps=args.steps,
    shift=args.shift,
    image_guidance=guidance.image,
    pose_guidance=guidance.pose,
    pose_scale=args.pose_scale,
    seed=args.seed,
    reproduce_official=reproduce_official,
    progress=progress,
  )


def _write(args, video, poses, fps):
  from o2a_jax.io.video import side_by_side, write_video

  if args.side_by_side:
    video = side_by_side(poses, video)
  path = write_video(args.out, video, fps)
  print(f"wrote {path} ({video.shape[0]} frames, {video.shape[1]}x{video.shape[2]})")


# --- commands -------------------------------------------------------------------------------------


def run_animate(args) -> int:
  from o2a_jax.io.video import read_image

  progress = not args.no_progress
  _check_sampling_args(args)
  t0 = time.perf_counter()
  image = read_image(args.ref)
  ref = _reference_pose(args, image)
  driving, fps = _driving(args, image.shape[:2], progress=progress)
  if args.reproduce_official and len(driving) < 81:
    raise ValueError(
      f"--reproduce-official needs at least 81 driving frames (the official chunk plan crashes "
      f"below), got {len(driving)}"
    )
  model, vae, mesh, stack = _load_models(args, progress=progress)
  with stack:
    guidance, max_short = _defaults_from_model(args, model)
    inputs = _prepare(args, image, ref, driving, max_short=max_short, progress=progress)
    video = _sample(
      args,
      model,
      vae,
      mesh,
      inputs,
      guidance,
      reproduce_official=args.reproduce_official,
      progress=progress,
    )
  _write(args, video, inputs.poses, args.fps or fps)
  print(f"done in {time.perf_counter() - t0:.1f} s")
  return 0


def run_transfer(args) -> int:
  from o2a_jax.inference.load import read_pose_file
  from o2a_jax.inference.prepare import Poses
  from o2a_jax.io.video import read_image

  progress = not args.no_progress
  _check_sampling_args(args)
  image = read_image(args.ref)
  ref = _reference_pose(args, image)
  if _is_pose_file(args.pose):
    poses = read_pose_file(args.pose)
    if not 0 <= args.pose_frame < len(poses):
      raise ValueError(
        f"--pose-frame {args.pose_frame} is outside the {len(poses)} frames of {args.pose!r}"
      )
    target = poses.select(slice(args.pose_frame, args.pose_frame + 1))
  else:
    target_image = read_image(args.pose)
    kp = _estimator(args, "a target pose image").estimate(target_image, f"pose image {args.pose!r}")
    target = Poses(kp133=kp[None], width=target_image.shape[1], height=target_image.shape[0])
  model, vae, mesh, stack = _load_models(args, progress=progress)
  with stack:
    guidance, max_short = _defaults_from_model(args, model)
    inputs = _prepare(args, image, ref, target, max_short=max_short, progress=progress)
    video = _sample(args, model, vae, mesh, inputs, guidance, progress=progress)
  _write(args, video, inputs.poses, 16.0)
  return 0


def run_extract(args) -> int:
  from o2a_jax import pose as pose_lib
  from o2a_jax.inference.load import write_pose_npy
  from o2a_jax.inference.prepare import frame_indices
  from o2a_jax.io.video import read_video
  from o2a_jax.pose.coco import dwpose_from_meta, metas_from_kp133

  out = pathlib.Path(args.out)
  if out.suffix not in (".json", ".npy"):
    raise ValueError(f"--out {args.out!r}: use .json (o2a-pose) or .npy (official pose dicts)")
  check_output(out, overwrite=args.overwrite)
  est = _estimator(args, "pose extract")
  stop = None if args.frames is None else args.start + args.frames * args.stride
  frames, _ = read_video(args.input, max_frames=stop)
  idx = frame_indices(len(frames), start=args.start, count=args.frames, stride=args.stride)
  frames = frames[idx]
  kp = est.estimate_video(frames, what=repr(args.input), progress=not args.no_progress)
  h, w = frames.shape[1:3]
  if out.suffix == ".json" and args.kind == "coco_wholebody":
    pose_lib.write_keypoints_json(out, kp, w, h)
  else:
    dicts = [dwpose_from_meta(m) for m in metas_from_kp133(kp, w, h, repr(args.input))]
    if out.suffix == ".json":
      pose_lib.write_poses_json(out, dicts, w, h)
    else:
      write_pose_npy(out, dicts)
  print(f"wrote {out} ({len(kp)} frames, {w}x{h})")
  return 0


def run_render(args) -> int:
  from tqdm import tqdm

  from o2a_jax import pose as pose_lib
  from o2a_jax.inference.load import read_pose_file
  from o2a_jax.inference.prepare import driving_dicts, frame_indices
  from o2a_jax.io.video import write_video

  out = pathlib.Path(args.out)
  if out.suffix.lower() not in (".mp4", ".gif", ".png", ""):
    raise ValueError(f"--out {args.out!r}: use .mp4, .gif, .png or a folder name")
  check_output(out, overwrite=args.overwrite, folder=out.suffix == "")
  poses = read_pose_file(args.poses)
  idx = frame_indices(len(poses), start=args.start, count=args.frames, stride=args.stride)
  poses = poses.select(idx)
  if args.size is not None:
    h, w = args.size
    if h < 1 or w < 1:
      raise ValueError(f"--size {h}x{w} must be positive")
  elif poses.width and poses.height:
    h, w = poses.height, poses.width
  else:
    raise ValueError(f"{args.poses!r} does not record its frame size: give --size HxW")
  dicts = driving_dicts(poses, w, h)
  frames = np.stack(
    [
      pose_lib.render(
        p,
        h,
        w,
        without_face=args.without_face,
        face_change=args.face_change,
        head_change=args.head_change,
      )
      for p in tqdm(dicts, desc="rendering poses", unit="frame", disable=args.no_progress)
    ]
  )
  path = write_video(args.out, frames, args.fps)
  print(f"wrote {path} ({len(frames)} frames, {h}x{w})")
  return 0
