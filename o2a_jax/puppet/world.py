"""Writing a puppet world in the official on-disk training layout (official training data layout),
plus ground truth.

Layout of `OUT/` (paths inside the CSVs are relative to `OUT/`, the folder holding the CSV):

    world.json                 generator settings (seed, counts, size, fps) and the file list
    train.csv                  video rows and image-group rows (the official combined CSV columns)
    heldout.csv                the held-out split: other puppets (never in train.csv), same columns
    videos/vNNNNN.mp4          H.264 clip, 4:4:4 chroma (`write_mp4_444`, read by `read_video`)
    videos/vNNNNN_pose.npy     one DWPose-style dict per frame (`np.save` of a list, as officially)
    images/iNNNNN.png          image-pair sources and targets
    images/iNNNNN_pose.npy     a list holding the image's one pose dict (`<stem>_pose.npy`)
    gt/vNNNNN.npz, gt/iNNNNN.npz   lossless ground truth: `frames` uint8 (N,H,W,3), `kp133`
                               float32 (N,133,3) pixel keypoints + scores, `labels` uint8 (N,H,W)
                               part labels (`draw.PART_NAMES`), `meta` (JSON: puppet, motion,
                               framing, background, fps); held-out videos also hold `ref_frame`
                               (H,W,3), `ref_kp133` (133,3) and `ref_labels`: a misaligned reference
                               (same puppet, another framing and pose, in front of the clip's
                               background) for evaluation.

Video rows: `path, pose_path, height, width, fps, num_frames, start_frame, end_frame, all_ocr_bbox`
(one empty box list per frame: puppets carry no text), `train_start_index` (empty: no list),
`refimg_index` (the frames whose face is visible, as a list), `qwen_caption`.
Image-group rows: `path = image_NNNNN`, `img_pairs` (list of `{src_path, tgt_path, tgt_pose_path,
qwen_caption, text}`, the source pose being `<src stem>_pose.npy`), `height, width, aspect_ratio`
(height / width, two decimals), `resolution` (height * width), `num_frames = 1`; images are grouped
as `datasets/prepare_training_data.py` does (one group per 6 video rows). List cells are JSON, which
is also a Python literal. Every image pair is a misaligned reference pair: the source is the
same puppet in another pose with another framing (full body, half body or close-up, another scale
and offset), in front of the target's background (`reference_background = "same"`, the default: the
reference shows the scene, as a crop of the target's scene does in the paper's setting; "new" gives
it an independent background, so the target's background cannot be known from it).
With `moving_camera` > 0 that fraction of the training clips has a camera that glides from the
clip's framing to one of another kind over the clip (`meta.framing_end`, `meta.camera_end`), so
that the clip's own frames are references in other framings; held-out clips never move.

Everything is a function of the world seed: item k of kind c draws from
`np.random.default_rng([seed, c, k])`, so items do not depend on each other or on the counts,
and `write_world(workers=N)` writes them in N processes with the same files. The MP4 clips are
lossless by default (`quality` 0), the only x264 setting whose output is reproducible
(`write_mp4_444`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import shutil
import tempfile

import numpy as np

from data_pipeline.records import write_bytes_atomic
from o2a_jax.io import video as video_io
from o2a_jax.io.output_paths import publish_mode
from o2a_jax.puppet import draw as D
from o2a_jax.puppet import skeleton as S
from o2a_jax.puppet.motion import MOTIONS, make_motion, still
from o2a_jax.puppet.spec import Background, Framing, PuppetSpec, check_background_kinds

VIDEO_COLUMNS = (
  "path", "pose_path", "height", "width", "fps", "num_frames", "start_frame", "end_frame",
  "all_ocr_bbox", "train_start_index", "refimg_index", "qwen_caption",
)  # fmt: skip
IMAGE_COLUMNS = ("img_pairs", "aspect_ratio", "resolution")
COLUMNS = VIDEO_COLUMNS + IMAGE_COLUMNS

# Kinds of random streams (the second entry of every seed sequence).
_PUPPET, _VIDEO, _IMAGE, _HELD_PUPPET, _HELD_VIDEO, _MOVING_CAMERA = 1, 2, 3, 4, 5, 6
# A moving camera's end framing: draws allowed, and body joints every frame must keep in view.
_GLIDE_TRIES, _MIN_BODY_JOINTS = 4, 5


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  seed: int = 0
  videos: int = 64  # training clips
  images: int = 32  # training image pairs
  heldout: int = 8  # held-out clips (held-out puppets), each with a misaligned reference
  height: int = 64
  width: int = 64
  frames: int = 48
  heldout_frames: int = 0  # frames of the held-out clips; 0 = `frames` (longer: two-chunk tests)
  fps: float = 16.0
  puppets: int = 0  # training identities; 0 = max(2, videos // 4)
  heldout_puppets: int = 0  # 0 = max(1, heldout // 2)
  supersample: int = 4
  # x264 CRF of the MP4 files. 0 (lossless) is the only deterministic setting: at any other the
  # encoder's choices depend on what the process allocated before (`write_mp4_444`), so the same
  # world would be written with other pixels on every run. The worlds before this option used 12.
  quality: int = 0
  # Background of a misaligned reference (held-out references, training image-pair sources):
  # "same" = the scene of its target (the paper's setting: a crop of the same scene, so the
  # target's background is recoverable from the reference); "new" = an independent one, as the
  # worlds before this option (the background is then unknowable from the reference).
  reference_background: str = "same"
  # Background kinds drawn (`spec.BACKGROUNDS`); the default keeps the smooth ones (solid,
  # gradient, floor), which the small toy VAE can reproduce, so that what the toy must
  # learn is the puppet, not texture. `spec.BACKGROUNDS` gives every kind (the worlds before).
  backgrounds: tuple[str, ...] = ("solid", "gradient", "floor")
  # Multiplies every puppet's limb and torso thickness: thicker parts survive the small VAE's
  # compression at 64 px (1.0: the worlds before this option).
  thickness: float = 1.6
  # Fraction of the training clips whose camera moves: it glides from the clip's framing to one of
  # another kind (full body, half body, close-up) over the clip, so that a reference taken from
  # another frame of the clip (the official choice) shows the puppet at another size and place,
  # as the demo's reference does. Held-out clips keep a fixed camera (the evaluation is the same
  # as in worlds without it). 0: the worlds before this option.
  moving_camera: float = 0.0

  def __post_init__(self):
    kinds = check_background_kinds(self.backgrounds, "world: backgrounds")
    object.__setattr__(self, "backgrounds", kinds)
    if not 0.0 <= self.moving_camera <= 1.0:
      raise ValueError(f"world: moving_camera must be in [0, 1], got {self.moving_camera}")
    if not 0 <= self.quality <= 51:
      raise ValueError(f"world: quality (x264 CRF) must be in [0, 51], got {self.quality}")
    if not 0.25 <= self.thickness <= 4.0:
      raise ValueError(f"world: thickness must be in [0.25, 4], got {self.thickness}")
    for name in ("videos", "images", "heldout", "puppets", "heldout_puppets"):
      if getattr(self, name) < 0:
        raise ValueError(f"world: {name} must be >= 0, got {getattr(self, name)}")
    if self.height < 16 or self.width < 16 or self.height % 16 or self.width % 16:
      raise ValueError(
        f"world: height and width must be multiples of 16 (the training bucket grid), "
        f"got {self.height}x{self.width}"
      )
    if self.reference_background not in ("same", "new"):
      raise ValueError(
        f"world: reference_background must be 'same' or 'new', got {self.reference_background!r}"
      )
    if self.frames < 5 or self.fps <= 0 or (self.heldout_frames and self.heldout_frames < 5):
      raise ValueError(
        f"world: need frames >= 5 (and heldout_frames 0 or >= 5) and fps > 0, got "
        f"{self.frames}, {self.heldout_frames}, {self.fps}"
      )

  @property
  def n_puppets(self) -> int:
    return self.puppets or max(2, self.videos // 4)

  @property
  def n_heldout_puppets(self) -> int:
    return self.heldout_puppets or max(1, self.heldout // 2)


def _rng(cfg: WorldConfig, kind: int, k: int) -> np.random.Generator:
  return np.random.default_rng([cfg.seed, kind, k])


def puppet(cfg: WorldConfig, k: int, heldout: bool = False) -> PuppetSpec:
  """Identity k of the training (or held-out) puppets."""
  spec = PuppetSpec.sample(_rng(cfg, _HELD_PUPPET if heldout else _PUPPET, k))
  return dataclasses.replace(spec, thickness=spec.thickness * cfg.thickness)


@dataclasses.dataclass
class Clip:
  """A rendered clip: frames uint8 (N,H,W,3), kp133 float64 (N,133,3), labels uint8 (N,H,W)."""

  frames: np.ndarray
  kp133: np.ndarray
  labels: np.ndarray
  meta: dict


def render_clip(
  spec: PuppetSpec,
  angles: dict[str, np.ndarray],
  framing: Framing,
  background: Background,
  height: int,
  width: int,
  *,
  supersample: int = 4,
  meta: dict | None = None,
  framing_end: Framing | None = None,
) -> Clip:
  """Renders the motion `angles` of puppet `spec`; keypoints and frames share one projection.

  With `framing_end` the camera glides from `framing` (first frame) to `framing_end` (last frame),
  eased in and out; the background stays fixed to the frame (a backdrop)."""
  world, vis = S.joints_3d(angles, spec.proportions)
  cam = D.camera_for(world, framing, spec.proportions, height, width)
  cams = [cam] * len(world)
  info_end = {}
  if framing_end is not None:
    end = D.camera_for(world, framing_end, spec.proportions, height, width)
    cams = _glide_cameras(cam, end, len(world))
    info_end = {"framing_end": framing_end.to_json(), "camera_end": dataclasses.asdict(end)}
  px = _project(cams, world)
  kp = S.keypoints(px, vis, height, width)
  bg = background.draw(height, width)
  frames, labels = [], []
  for t in range(len(px)):
    img, lab = D.render_frame(spec, px[t], vis[t], bg, cams[t].scale, supersample=supersample)
    frames.append(img)
    labels.append(lab)
  info = {
    "puppet": spec.to_json(),
    "framing": framing.to_json(),
    "background": background.to_json(),
    "camera": dataclasses.asdict(cam),
    **info_end,
    **(meta or {}),
  }
  return Clip(np.stack(frames), kp, np.stack(labels), info)


def _glide_cameras(start: S.Camera, end: S.Camera, n: int) -> list[S.Camera]:
  """The n cameras of a glide from `start` to `end`, smoothstep-eased (no jump in speed at
  either end)."""
  a = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
  return [_camera_between(start, end, t) for t in a * a * (3 - 2 * a)]


def _project(cams: list[S.Camera], world: np.ndarray) -> np.ndarray:
  """(N,137,3) world joints -> pixels, frame t through camera t."""
  return np.stack([c.project(w) for c, w in zip(cams, world)])


def _camera_between(a: S.Camera, b: S.Camera, t: float) -> S.Camera:
  """The camera a fraction `t` of the way from `a` to `b`.

  Every parameter is interpolated linearly, so each point's pixel is the same interpolation of its
  pixels under `a` and `b`: what both cameras keep in the frame stays in it all the way (a
  geometric zoom with a linear centre can swing the puppet out of the frame)."""
  return S.Camera(
    scale=float(a.scale + t * (b.scale - a.scale)),
    cx=float(a.cx + t * (b.cx - a.cx)),
    cy=float(a.cy + t * (b.cy - a.cy)),
  )


def make_video(cfg: WorldConfig, k: int, heldout: bool = False) -> Clip:
  """Training (or held-out) video k: a puppet, a motion, a framing and a background."""
  rng = _rng(cfg, _HELD_VIDEO if heldout else _VIDEO, k)
  n_p = cfg.n_heldout_puppets if heldout else cfg.n_puppets
  p = int(rng.integers(n_p))
  spec = puppet(cfg, p, heldout)
  motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
  n = cfg.heldout_frames if heldout and cfg.heldout_frames else cfg.frames
  angles = make_motion(motion, rng, n, cfg.fps)
  framing = Framing.sample(rng)
  background = Background.sample(rng, cfg.backgrounds)
  framing_end = None
  if not heldout and cfg.moving_camera > 0:
    framing_end = _moving_framing(cfg, k, spec, angles, framing)
  clip = render_clip(
    spec,
    angles,
    framing,
    background,
    cfg.height,
    cfg.width,
    supersample=cfg.supersample,
    meta={"puppet_index": p, "heldout": heldout, "motion": motion, "fps": cfg.fps},
    framing_end=framing_end,
  )
  if heldout:
    # A misaligned reference: the same puppet in a still pose with another framing, in front of
    # the clip's background unless `reference_background` is "new".
    kinds = [f for f in ("full", "half", "close") if f != framing.kind]
    pose, ref_framing = still(rng), Framing.sample(rng, kinds[int(rng.integers(len(kinds)))])
    ref = render_clip(
      spec,
      pose,
      ref_framing,
      background if cfg.reference_background == "same" else Background.sample(rng, cfg.backgrounds),
      cfg.height,
      cfg.width,
      supersample=cfg.supersample,
    )
    clip.meta["reference"] = {k: ref.meta[k] for k in ("framing", "background", "camera")}
    clip.meta["ref"] = ref
  return clip


def _moving_framing(
  cfg: WorldConfig, k: int, spec: PuppetSpec, angles: dict[str, np.ndarray], framing: Framing
) -> Framing | None:
  """The framing training clip k's camera glides to, or None for a fixed camera.

  Drawn from a stream of its own, so that the rest of the clip is the same with or without
  `moving_camera`. A glide must keep at least `_MIN_BODY_JOINTS` body joints in every frame (a
  close-up framed on the clip's mean position loses a puppet that walks off it); up to
  `_GLIDE_TRIES` end framings are drawn, then the camera stays fixed.
  """
  move = _rng(cfg, _MOVING_CAMERA, k)
  if move.random() >= cfg.moving_camera:
    return None
  world, vis = S.joints_3d(angles, spec.proportions)
  start = D.camera_for(world, framing, spec.proportions, cfg.height, cfg.width)
  kinds = [f for f in ("full", "half", "close") if f != framing.kind]
  for _ in range(_GLIDE_TRIES):
    end = Framing.sample(move, kinds[int(move.integers(len(kinds)))])
    cam = D.camera_for(world, end, spec.proportions, cfg.height, cfg.width)
    kp = S.keypoints(
      _project(_glide_cameras(start, cam, len(world)), world), vis, cfg.height, cfg.width
    )
    if (kp[:, S.BODY, 2] > 0).sum(1).min() >= _MIN_BODY_JOINTS:
      return end
  return None


def make_image_pair(cfg: WorldConfig, k: int) -> tuple[Clip, Clip]:
  """Training image pair k: (source, target), one puppet in two stills with different framings."""
  rng = _rng(cfg, _IMAGE, k)
  p = int(rng.integers(cfg.n_puppets))
  spec = puppet(cfg, p)
  f_tgt = Framing.sample(rng)
  kinds = [f for f in ("full", "half", "close") if f != f_tgt.kind]
  f_src = Framing.sample(rng, kinds[int(rng.integers(len(kinds)))])
  # Both backgrounds are drawn whatever the option, so that the poses and framings do not depend
  # on it; with "same" the source is shown in front of the target's background.
  poses, backgrounds = [], []
  for _ in range(2):
    poses.append(still(rng))
    backgrounds.append(Background.sample(rng, cfg.backgrounds))
  if cfg.reference_background == "same":
    backgrounds[0] = backgrounds[1]
  out = []
  for framing, pose, background in zip((f_src, f_tgt), poses, backgrounds):
    out.append(
      render_clip(
        spec,
        pose,
        framing,
        background,
        cfg.height,
        cfg.width,
        supersample=cfg.supersample,
        meta={"puppet_index": p, "motion": "still"},
      )
    )
  return out[0], out[1]


def poses_from_kp(kp133: np.ndarray, height: int, width: int) -> list[dict]:
  """(N,133,3) pixel keypoints -> DWPose-style dicts through `o2a_jax.pose.from_coco_wholebody`."""
  from o2a_jax.pose import from_coco_wholebody

  return [from_coco_wholebody(k, width, height) for k in kp133]


def caption(spec: PuppetSpec, motion: str) -> str:
  what = {"walk": "walking", "wave": "waving", "turn": "turning around", "dance": "dancing"}
  hair = "bald" if spec.hair_style == "bald" else f"{spec.hair_style}-haired"
  return f"a {spec.style} puppet, {hair}, {what.get(motion, 'standing')}"


# --- atomic writers ------------------------------------------------------------------------------


def save_pose_npy(path: pathlib.Path, poses: list[dict]) -> None:
  """The official per-video pose file: `np.save` of a list of pose dicts (an object array)."""
  arr = np.empty(len(poses), dtype=object)
  for i, p in enumerate(poses):
    arr[i] = p
  buf = io.BytesIO()
  np.save(buf, arr, allow_pickle=True)
  write_bytes_atomic(path, buf.getvalue())


def save_npz(path: pathlib.Path, **arrays) -> None:
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  write_bytes_atomic(path, buf.getvalue())


def _save_gt(out: pathlib.Path, name: str, clip: Clip, **extra: np.ndarray) -> None:
  """`gt/<name>.npz`: the clip's lossless frames, keypoints, part labels, `extra`, and meta."""
  save_npz(
    out / "gt" / f"{name}.npz",
    frames=clip.frames,
    kp133=clip.kp133.astype(np.float32),
    labels=clip.labels,
    **extra,
    meta=json.dumps(clip.meta),
  )


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
  w.writeheader()
  for r in rows:
    w.writerow({c: r.get(c, "") for c in COLUMNS})
  write_bytes_atomic(path, buf.getvalue().encode())


def _js(x) -> str:
  return json.dumps(x, separators=(",", ":"))


# --- the world -----------------------------------------------------------------------------------


def write_mp4_444(path: pathlib.Path, frames: np.ndarray, fps: float, crf: int) -> None:
  """H.264 in full-resolution chroma (yuv444p), atomically.

  yuv420p's half-resolution chroma caps a 64x64 puppet clip at about 31 dB PSNR (small coloured
  parts bleed); 4:4:4 at CRF 12 gives about 42 dB, and CRF 0 is lossless (the frames come back
  within 2 levels, the RGB <-> YUV rounding). Only CRF 0 is reproducible: with libx264 as PyAV
  ships it, a lossy encoding of the same frames depends on what the process allocated before
  (one clip encoded 20 times with other allocations in between gave 10 different bitstreams and
  decoded frames at CRF 12, 16 at CRF 4, one at CRF 0). `o2a_jax.io.video.read_video` reads it.
  """
  video_io.write_video(path, frames, fps, quality=crf, chroma="444")


def _video_row(out: pathlib.Path, name: str, clip: Clip, cfg: WorldConfig) -> dict:
  n, h, w = clip.frames.shape[:3]
  write_mp4_444(out / "videos" / f"{name}.mp4", clip.frames, cfg.fps, cfg.quality)
  save_pose_npy(out / "videos" / f"{name}_pose.npy", poses_from_kp(clip.kp133, h, w))
  kp = clip.kp133
  face_ok = (kp[:, 0, 2] > 0) & (kp[:, 1, 2] > 0) & (kp[:, 2, 2] > 0)
  ref_idx = [int(i) for i in np.nonzero(face_ok)[0] if 1 <= i <= n - 2]
  spec = PuppetSpec.from_json(clip.meta["puppet"])
  return {
    "path": f"videos/{name}.mp4",
    "pose_path": f"videos/{name}_pose.npy",
    "height": h,
    "width": w,
    "fps": cfg.fps,
    "num_frames": n,
    "start_frame": 0,
    "end_frame": n,
    "all_ocr_bbox": _js([[] for _ in range(n)]),
    "train_start_index": "",
    "refimg_index": _js(ref_idx) if ref_idx else "",
    "qwen_caption": caption(spec, clip.meta.get("motion", "")),
  }


def _image(out: pathlib.Path, name: str, clip: Clip) -> str:
  from o2a_jax.io.video import write_video

  h, w = clip.frames.shape[1:3]
  write_video(out / "images" / f"{name}.png", clip.frames[:1])
  save_pose_npy(out / "images" / f"{name}_pose.npy", poses_from_kp(clip.kp133[:1], h, w))
  _save_gt(out, name, clip)
  return f"images/{name}.png"


def _image_rows(pairs: list[dict], n_videos: int, h: int, w: int, start: int) -> list[dict]:
  """Groups image pairs into image rows, one group per 6 video rows (the official grouping)."""
  if not pairs:
    return []
  groups = max(1, math.ceil(n_videos / 6))
  size = max(1, len(pairs) // groups)
  chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
  if len(chunks) > groups:  # the remainder joins the last group
    chunks[groups - 1 :] = [sum(chunks[groups - 1 :], [])]
  return [
    {
      "path": f"image_{start + i:05d}",
      "img_pairs": _js(c),
      "height": h,
      "width": w,
      "aspect_ratio": f"{h / w:.2f}",
      "resolution": h * w,
      "num_frames": 1,
    }
    for i, c in enumerate(chunks)
  ]


def write_world(
  cfg: WorldConfig, out: str | os.PathLike, *, progress: bool = True, workers: int = 1
) -> dict:
  """Generates and writes the world; returns the `world.json` summary.

  Refuses a non-empty `out` folder (FileExistsError), so two worlds never mix; the folder appears
  only once it is complete. `workers` > 1 renders and encodes the items in that many processes;
  every item draws from its own stream, so the files are the same for any count.
  """
  if workers < 1:
    raise ValueError(f"world: workers must be >= 1, got {workers}")
  final = pathlib.Path(out)
  if final.exists() and (not final.is_dir() or any(final.iterdir())):
    raise FileExistsError(f"{final} exists and is not an empty folder; choose a new --out")
  final.parent.mkdir(parents=True, exist_ok=True)
  # The world is built in a temporary sibling folder and renamed into place when complete.
  out = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
  try:
    summary = _write(cfg, out, progress, workers)
    if final.exists():
      final.rmdir()  # empty (checked above)
    publish_mode(out)
    os.replace(out, final)
  except BaseException:
    shutil.rmtree(out, ignore_errors=True)
    raise
  return summary


def _write_video(cfg: WorldConfig, out: pathlib.Path, k: int) -> dict:
  """Training clip k: its files, and its CSV row."""
  clip = make_video(cfg, k)
  name = f"v{k:05d}"
  row = _video_row(out, name, clip, cfg)
  _save_gt(out, name, clip)
  return row


def _pair(spec: PuppetSpec, src_path: str, tgt_path: str) -> dict:
  cap = caption(spec, "still")
  return {
    "src_path": src_path,
    "tgt_path": tgt_path,
    "tgt_pose_path": tgt_path.replace(".png", "_pose.npy"),
    "qwen_caption": cap,
    "text": cap,
  }


def _write_image_pair(cfg: WorldConfig, out: pathlib.Path, k: int) -> dict:
  """Training image pair k: its files, and its entry of an image row."""
  src, tgt = make_image_pair(cfg, k)
  spec = PuppetSpec.from_json(src.meta["puppet"])
  return _pair(spec, _image(out, f"i{2 * k:05d}", src), _image(out, f"i{2 * k + 1:05d}", tgt))


def _write_heldout(cfg: WorldConfig, out: pathlib.Path, k: int) -> tuple[dict, dict]:
  """Held-out clip k with its misaligned reference: its files, its CSV row and image pair."""
  clip = make_video(cfg, k, heldout=True)
  ref = clip.meta.pop("ref")
  name = f"h{k:05d}"
  row = _video_row(out, name, clip, cfg)
  _save_gt(
    out,
    name,
    clip,
    ref_frame=ref.frames[0],
    ref_kp133=ref.kp133[0].astype(np.float32),
    ref_labels=ref.labels[0],
  )
  # The misaligned reference and a frame of the clip as an image pair of the held-out split.
  spec = PuppetSpec.from_json(clip.meta["puppet"])
  tgt = Clip(clip.frames[:1], clip.kp133[:1], clip.labels[:1], clip.meta)
  return row, _pair(spec, _image(out, f"{name}_ref", ref), _image(out, f"{name}_f0", tgt))


_WRITERS = {"video": _write_video, "image": _write_image_pair, "heldout": _write_heldout}


def _write_item(cfg: WorldConfig, out: pathlib.Path, job: tuple[str, int]):
  return _WRITERS[job[0]](cfg, out, job[1])


def _end_with_parent() -> None:
  """A worker is killed when the process that started it dies (Linux; elsewhere a no-op).

  Without it, a writer killed by SIGKILL leaves its idle workers waiting for work forever.
  """
  import ctypes
  import signal
  import sys

  if sys.platform.startswith("linux"):
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _write(cfg: WorldConfig, out: pathlib.Path, progress: bool, workers: int) -> dict:
  import concurrent.futures
  import functools
  import multiprocessing

  from tqdm import tqdm

  jobs = [("video", k) for k in range(cfg.videos)]
  jobs += [("image", k) for k in range(cfg.images)]
  jobs += [("heldout", k) for k in range(cfg.heldout)]
  write = functools.partial(_write_item, cfg, out)
  bar = tqdm(total=len(jobs), desc="puppet world", unit="item", disable=not progress)
  results = []
  if workers == 1 or len(jobs) < 2:
    for job in jobs:
      results.append(write(job))
      bar.update()
  else:
    # Spawned, not forked: the parent has imported JAX, whose threads do not survive a fork.
    pool = concurrent.futures.ProcessPoolExecutor(
      min(workers, len(jobs)),
      mp_context=multiprocessing.get_context("spawn"),
      initializer=_end_with_parent,
    )
    try:  # one item per task: the bar moves per item, and a failure waits for one item only
      for r in pool.map(write, jobs):
        results.append(r)
        bar.update()
    finally:
      pool.shutdown(wait=True, cancel_futures=True)
  bar.close()
  kinds = [kind for kind, _ in jobs]
  train_rows = [r for kind, r in zip(kinds, results) if kind == "video"]
  train_pairs = [r for kind, r in zip(kinds, results) if kind == "image"]
  held = [r for kind, r in zip(kinds, results) if kind == "heldout"]
  held_rows, held_pairs = [r for r, _ in held], [p for _, p in held]
  h, w = cfg.height, cfg.width
  train_rows += _image_rows(train_pairs, cfg.videos, h, w, 0)
  held_rows += _image_rows(held_pairs, cfg.heldout, h, w, len(train_rows))
  write_csv(out / "train.csv", train_rows)
  write_csv(out / "heldout.csv", held_rows)
  summary = {
    "format": "o2a-puppet-world",
    "version": 1,
    "config": dataclasses.asdict(cfg),
    "train_csv": "train.csv",
    "heldout_csv": "heldout.csv",
    "train_videos": [r["path"] for r in train_rows if r["path"].endswith(".mp4")],
    "heldout_videos": [r["path"] for r in held_rows if r["path"].endswith(".mp4")],
    "train_puppets": cfg.n_puppets,
    "heldout_puppets": cfg.n_heldout_puppets,
  }
  write_bytes_atomic(out / "world.json", json.dumps(summary, indent=1).encode())
  return summary


def read_csv(path: str | os.PathLike) -> list[dict]:
  """Rows of a world CSV as dicts of strings (list cells still JSON text)."""
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def load_gt(path: str | os.PathLike) -> dict:
  """A ground-truth `.npz` as a dict (meta parsed from JSON)."""
  with np.load(path) as z:
    d = {k: z[k] for k in z.files}
  d["meta"] = json.loads(str(d["meta"]))
  return d
