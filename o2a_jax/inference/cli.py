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
import dataclasses
import pathlib
import time

from o2a_jax.cli_types import dtype_name
from o2a_jax.inference.prepare import MODES
from o2a_jax.io.output_paths import check_output

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
  _add_drawing_arg(
    r,
    "as the model was trained: official for the released checkpoints, viewing "
    "for the puppet toy (its folder's pose_drawing.txt)",
  )
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
  _add_drawing_arg(r, "viewing for a picture to look at at small sizes")
  _add_range_args(r)
  r.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  r.set_defaults(func=run_render)


def _add_drawing_arg(r, use: str) -> None:
  r.add_argument(
    "--pose-drawing",
    choices=("official", "viewing"),  # o2a_jax.pose.render.DRAWINGS (not imported: light --help)
    default="official",
    help="how poses are drawn: 'official' (a 2160-px canvas resized bilinearly: broken dots below "
    "about 128 px) or 'viewing' (a canvas twice the frame, area-averaged: continuous lines at any "
    f"size); {use} (default official)",
  )


# --- options -> library values -----------------------------------------------------------------
# The library (`inference.generation`, `inference.pose_sources`) is imported when a command runs,
# so that `--help` does not load JAX.


def _pose_models(args):
  from o2a_jax.inference.pose_sources import PoseModels

  return PoseModels(
    det_model=args.det_model,
    pose_model=args.pose_model,
    det_kind=args.det_kind,
    pose_kind=args.pose_kind,
    person=args.person,
  )


def _anchor(text: str):
  if text == "auto":
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"--anchor must be a frame index or 'auto', got {text!r}") from None


def _generation_options(args, *, reproduce_official: bool = False) -> dict:
  """The keyword arguments of `generation.generate` from the generation options."""
  from o2a_jax.inference import generation as g
  from o2a_jax.inference.sharded import parse_mesh

  files = g.ModelFiles(
    checkpoint=args.checkpoint,
    vae=args.vae,
    dtype=args.dtype,
    vae_dtype=args.vae_dtype,
    attn_impl=args.attn_impl,
    mesh=parse_mesh(args.mesh) if args.mesh else None,
    context_parallel=args.context_parallel,
  )
  text = g.TextSource(**{f.name: getattr(args, f.name) for f in dataclasses.fields(g.TextSource)})
  sampling = g.Sampling(
    steps=args.steps,
    shift=args.shift,
    image_guidance=args.image_guidance,
    pose_guidance=args.pose_guidance,
    pose_scale=args.pose_scale,
    seed=args.seed,
    reproduce_official=reproduce_official,
  )
  preprocess = g.Preprocess(
    mode=args.mode,
    retarget=args.retarget,
    anchor=_anchor(args.anchor),
    size=args.size,
    max_short=args.max_short,
    face_change=not args.no_face_change,
    head_change=args.head_change,
    without_face=args.without_face,
    drawing=args.pose_drawing,
  )
  progress = not args.no_progress
  return dict(files=files, text=text, sampling=sampling, preprocess=preprocess, progress=progress)


def _check_video_out(out: str, overwrite: bool) -> None:
  path = pathlib.Path(out)
  if path.suffix.lower() not in (".mp4", ".gif", ".png", ""):
    raise ValueError(f"--out {out!r}: use .mp4, .gif, .png or a folder name")
  check_output(path, overwrite=overwrite, folder=path.suffix == "")


def _write(args, video, poses, fps):
  from o2a_jax.io.video import side_by_side, write_video

  if args.side_by_side:
    video = side_by_side(poses, video)
  path = write_video(args.out, video, fps)
  print(f"wrote {path} ({video.shape[0]} frames, {video.shape[1]}x{video.shape[2]})")


# --- commands -------------------------------------------------------------------------------------


def run_animate(args) -> int:
  from o2a_jax.inference import generation, pose_sources

  t0 = time.perf_counter()
  _check_video_out(args.out, args.overwrite)
  options = _generation_options(args, reproduce_official=args.reproduce_official)
  models = _pose_models(args)
  image, ref = pose_sources.reference(args.ref, pose_file=args.ref_pose, models=models)
  driving, fps = pose_sources.driving_poses(
    args.driving, image.shape[:2], start=args.start, count=args.frames, stride=args.stride,
    models=models, progress=options["progress"],
  )  # fmt: skip
  video, poses = generation.generate(image=image, ref=ref, driving=driving, **options)
  _write(args, video, poses, args.fps or fps)
  print(f"done in {time.perf_counter() - t0:.1f} s")
  return 0


def run_transfer(args) -> int:
  from o2a_jax.inference import generation, pose_sources

  _check_video_out(args.out, args.overwrite)
  options = _generation_options(args)
  models = _pose_models(args)
  image, ref = pose_sources.reference(args.ref, pose_file=args.ref_pose, models=models)
  target = pose_sources.target_poses(args.pose, frame=args.pose_frame, models=models)
  video, poses = generation.generate(image=image, ref=ref, driving=target, **options)
  _write(args, video, poses, pose_sources.POSE_FILE_FPS)
  return 0


def run_extract(args) -> int:
  from o2a_jax.inference import pose_sources

  n, w, h = pose_sources.extract(
    args.input, args.out, kind=args.kind, start=args.start, count=args.frames,
    stride=args.stride, models=_pose_models(args), overwrite=args.overwrite,
    progress=not args.no_progress,
  )  # fmt: skip
  print(f"wrote {args.out} ({n} frames, {w}x{h})")
  return 0


def run_render(args) -> int:
  from o2a_jax.inference import pose_sources
  from o2a_jax.io.video import write_video

  _check_video_out(args.out, args.overwrite)
  frames = pose_sources.render_file(
    args.poses, size=args.size, start=args.start, count=args.frames, stride=args.stride,
    without_face=args.without_face, face_change=args.face_change, head_change=args.head_change,
    drawing=args.pose_drawing, progress=not args.no_progress,
  )  # fmt: skip
  path = write_video(args.out, frames, args.fps)
  print(f"wrote {path} ({len(frames)} frames, {frames.shape[1]}x{frames.shape[2]})")
  return 0
