"""Puppet identities, backgrounds and camera framing as seeded dataclasses.

`PuppetSpec.sample(rng)` draws a character: cartoon-like (big head, short limbs, any skin colour,
outlines) or human-like (realistic proportions and skin tones), with clothing colours and textures
per body part, hair colour and style, eye colour, a facial mark. `Background.sample(rng)` and
`Framing.sample(rng)` draw the scene and the camera. Everything is plain data (JSON via
`dataclasses.asdict`), so a world is reproducible from its seed and inspectable afterwards.
"""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

from o2a_jax.puppet.skeleton import Proportions

Color = tuple[int, int, int]

SKIN_TONES = (
  (255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 92), (160, 102, 66),
  (118, 74, 48), (86, 54, 36),
)  # fmt: skip
HAIR_STYLES = ("bald", "short", "long", "spiky", "bun")
MARKS = ("none", "mole", "scar", "freckles", "blush")
TEXTURES = ("solid", "stripes", "dots", "band")
STYLES = ("cartoon", "human")


def _rgb(h: float, s: float, v: float) -> Color:
  r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
  return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def _color(rng: np.random.Generator, s=(0.45, 1.0), v=(0.35, 1.0)) -> Color:
  return _rgb(rng.random(), rng.uniform(*s), rng.uniform(*v))


def _far_color(rng: np.random.Generator, avoid: list[Color], min_dist: float = 90.0) -> Color:
  """A saturated colour at least `min_dist` (RGB distance) from each colour in `avoid`."""
  best, best_d = None, -1.0
  for _ in range(32):
    c = _color(rng)
    d = min((np.linalg.norm(np.subtract(c, a)) for a in avoid), default=1e9)
    if d >= min_dist:
      return c
    if d > best_d:
      best, best_d = c, d
  return best


@dataclasses.dataclass(frozen=True)
class PartStyle:
  """Fill of one body part: `base` colour, `accent` for the texture, `texture` kind, `period`
  (texture period as a fraction of the part length), `split` (band texture: fraction from the
  start of the part painted `base`, the rest `accent`, e.g. a short sleeve over skin)."""

  base: Color
  accent: Color
  texture: str = "solid"
  period: float = 0.25
  split: float = 1.0

  def colors(self) -> tuple[Color, ...]:
    return (self.base,) if self.texture == "solid" else (self.base, self.accent)


@dataclasses.dataclass(frozen=True)
class PuppetSpec:
  """One character; every field is plain data."""

  style: str
  proportions: Proportions
  skin: Color
  hair: Color
  hair_style: str
  eye: Color
  eye_size: float  # eye radius in head radii
  mark: str
  mark_color: Color
  mouth: Color
  torso: PartStyle
  upper_arm: PartStyle
  forearm: PartStyle
  thigh: PartStyle
  shin: PartStyle
  shoe: Color
  outline: Color | None  # cartoon outline colour, None for no outline
  thickness: float  # limb thickness multiplier

  @staticmethod
  def sample(rng: np.random.Generator) -> PuppetSpec:
    style = STYLES[int(rng.integers(2))]
    cartoon = style == "cartoon"
    if cartoon:
      head = rng.uniform(0.17, 0.26)
      k = rng.uniform(0.75, 1.0)
      prop = Proportions(
        head_r=head,
        head_aspect=rng.uniform(0.85, 1.1),
        neck=rng.uniform(0.03, 0.06),
        torso=rng.uniform(0.36, 0.48),
        shoulder_w=rng.uniform(0.15, 0.22),
        hip_w=rng.uniform(0.09, 0.14),
        upper_arm=0.24 * k,
        forearm=0.22 * k,
        hand=rng.uniform(0.12, 0.17),
        thigh=0.28 * k,
        shin=0.27 * k,
        foot=rng.uniform(0.18, 0.26),
        ankle_h=0.06,
      )
      skin = _color(rng, s=(0.3, 0.9), v=(0.55, 1.0)) if rng.random() < 0.6 else None
    else:
      k = rng.uniform(0.92, 1.08)
      prop = Proportions(
        head_r=rng.uniform(0.1, 0.12),
        head_aspect=rng.uniform(0.78, 0.9),
        neck=rng.uniform(0.06, 0.09),
        torso=rng.uniform(0.48, 0.56) * k,
        shoulder_w=rng.uniform(0.16, 0.21),
        hip_w=rng.uniform(0.09, 0.13),
        upper_arm=0.3 * k,
        forearm=0.27 * k,
        hand=0.18 * k,
        thigh=0.44 * k,
        shin=0.42 * k,
        foot=0.24 * k,
        ankle_h=0.07,
      )
      skin = None
    if skin is None:
      skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    shirt = _far_color(rng, [skin])
    pants = _far_color(rng, [skin, shirt])

    def part(base: Color, allow_band: bool) -> PartStyle:
      kinds = TEXTURES if allow_band else TEXTURES[:3]
      weights = np.array([0.5, 0.2, 0.15, 0.15])[: len(kinds)]
      tex = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
      accent = skin if tex == "band" else _far_color(rng, [base], 70)
      return PartStyle(
        base=base,
        accent=accent,
        texture=tex,
        period=float(rng.uniform(0.18, 0.4)),
        split=float(rng.uniform(0.35, 0.8)),
      )

    torso = part(shirt, False)
    sleeve_short = rng.random() < 0.5
    upper_arm = part(shirt, True) if not sleeve_short else PartStyle(shirt, skin, "band", 0.25, 0.5)
    forearm = PartStyle(skin, skin) if sleeve_short else PartStyle(shirt, torso.accent)
    shorts = rng.random() < 0.35
    thigh = part(pants, True)
    shin = PartStyle(skin, skin)
    if not shorts:
      shin = PartStyle(pants, thigh.accent, thigh.texture, thigh.period, 1.0)
    if shin.texture == "band":
      shin = PartStyle(pants, pants)
    hair_style = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
    return PuppetSpec(
      style=style,
      proportions=prop,
      skin=skin,
      hair=_far_color(rng, [skin], 80)
      if cartoon
      else _rgb(*rng.uniform((0, 0.2, 0.1), (0.12, 0.9, 0.9))),
      hair_style=hair_style,
      eye=_color(rng, s=(0.5, 1.0), v=(0.3, 0.9)),
      eye_size=float(rng.uniform(0.17, 0.26) if cartoon else rng.uniform(0.1, 0.14)),
      mark=MARKS[int(rng.integers(len(MARKS)))],
      mark_color=_far_color(rng, [skin], 60),
      mouth=_rgb(rng.uniform(-0.05, 0.03), rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.8)),
      torso=torso,
      upper_arm=upper_arm,
      forearm=forearm,
      thigh=thigh,
      shin=shin,
      shoe=_color(rng, s=(0.0, 0.8), v=(0.1, 0.7)),
      outline=(20, 20, 28) if cartoon and rng.random() < 0.8 else None,
      thickness=float(rng.uniform(1.1, 1.5) if cartoon else rng.uniform(0.85, 1.1)),
    )

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @staticmethod
  def from_json(d: dict) -> PuppetSpec:
    d = dict(d)
    d["proportions"] = Proportions(**d["proportions"])
    for k in ("torso", "upper_arm", "forearm", "thigh", "shin"):
      p = dict(d[k])
      p["base"], p["accent"] = tuple(p["base"]), tuple(p["accent"])
      d[k] = PartStyle(**p)
    for k in ("skin", "hair", "eye", "mark_color", "mouth", "shoe", "outline"):
      d[k] = None if d[k] is None else tuple(d[k])
    return PuppetSpec(**d)


BACKGROUNDS = ("solid", "gradient", "floor", "stripes", "checker", "blobs")


def check_background_kinds(kinds, what: str = "background kinds") -> tuple[str, ...]:
  """`kinds` as a tuple; ValueError naming `what` and them unless a non-empty subset of
  `BACKGROUNDS`."""
  kinds = tuple(kinds)
  if not kinds or set(kinds) - set(BACKGROUNDS):
    raise ValueError(f"{what} must be a non-empty subset of {BACKGROUNDS}, got {kinds}")
  return kinds


@dataclasses.dataclass(frozen=True)
class Background:
  kind: str
  c1: Color
  c2: Color
  horizon: float  # floor: fraction of the height where the floor starts
  period: float  # stripes / checker period in fractions of the width
  seed: int  # blobs positions

  @staticmethod
  def sample(rng: np.random.Generator, kinds: tuple[str, ...] = BACKGROUNDS) -> Background:
    """A background of one of `kinds` (all of `BACKGROUNDS` by default)."""
    kinds = check_background_kinds(kinds)
    kind = kinds[int(rng.integers(len(kinds)))]
    c1 = _color(rng, s=(0.05, 0.6), v=(0.3, 0.95))
    return Background(
      kind=kind,
      c1=c1,
      c2=_far_color(rng, [c1], 50),
      horizon=float(rng.uniform(0.55, 0.85)),
      period=float(rng.uniform(0.08, 0.25)),
      seed=int(rng.integers(2**31)),
    )

  def draw(self, height: int, width: int) -> np.ndarray:
    """uint8 (H,W,3) background image."""
    H, W = height, width
    img = np.empty((H, W, 3), np.uint8)
    c1, c2 = np.array(self.c1, np.float64), np.array(self.c2, np.float64)
    yy, xx = np.mgrid[0:H, 0:W]
    if self.kind == "solid":
      img[:] = self.c1
    elif self.kind == "gradient":
      t = (yy / max(H - 1, 1))[..., None]
      img[:] = np.round(c1 * (1 - t) + c2 * t).astype(np.uint8)
    elif self.kind == "floor":
      img[:] = self.c1
      img[yy >= int(self.horizon * H)] = self.c2
    elif self.kind == "stripes":
      band = (xx // max(1, int(self.period * W))) % 2 == 1
      img[:] = self.c1
      img[band] = self.c2
    elif self.kind == "checker":
      p = max(1, int(self.period * W))
      img[:] = self.c1
      img[((xx // p) + (yy // p)) % 2 == 1] = self.c2
    elif self.kind == "blobs":
      import cv2

      img[:] = self.c1
      r = np.random.default_rng(self.seed)
      for _ in range(6):
        c = (int(r.uniform(0, W)), int(r.uniform(0, H)))
        cv2.circle(img, c, int(r.uniform(0.05, 0.2) * W), tuple(int(v) for v in self.c2), -1)
    else:
      raise ValueError(f"unknown background kind {self.kind!r}; choose one of {BACKGROUNDS}")
    return img

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @staticmethod
  def from_json(d: dict) -> Background:
    d = dict(d)
    d["c1"], d["c2"] = tuple(d["c1"]), tuple(d["c2"])
    return Background(**d)


FRAMINGS = ("full", "half", "close")


@dataclasses.dataclass(frozen=True)
class Framing:
  """Camera framing: `kind` (full body, half body from the hips up, close-up of head and
  shoulders), `fill` (fraction of the frame height the framed region takes) and the offset of the
  region centre from the frame centre (fractions of the frame size)."""

  kind: str
  fill: float
  dx: float
  dy: float

  @staticmethod
  def sample(rng: np.random.Generator, kind: str | None = None) -> Framing:
    if kind is None:
      kind = str(rng.choice(FRAMINGS, p=[0.55, 0.3, 0.15]))
    if kind not in FRAMINGS:
      raise ValueError(f"unknown framing {kind!r}; choose one of {FRAMINGS}")
    fill = {"full": (0.6, 0.92), "half": (0.75, 1.0), "close": (0.75, 1.0)}[kind]
    return Framing(
      kind=kind,
      fill=float(rng.uniform(*fill)),
      dx=float(rng.uniform(-0.12, 0.12)),
      dy=float(rng.uniform(-0.06, 0.06)),
    )

  def to_json(self) -> dict:
    return dataclasses.asdict(self)
