r"""One-to-All configurations: model presets, the golden-fixture model, and the training recipe.

  get_config("tiny")     the golden fixture's model (shared/golden/model_tiny), for tests
  get_config("1.3b")     One-to-All-1.3b (Wan2.1-T2V-1.3B backbone, 14 extractor, 2 pose blocks)
  get_config("14b")      One-to-All-14b (Wan2.1-T2V-14B backbone, 7 extractor, 1 pose block)
  get_config("model=1.3b,stage=3,bf16,remat=full")   options below

Options (comma-separated `name=value`, a bare name sets a flag; the first bare token is the model):
  model=tiny|1.3b|14b   architecture (`variant=` is the older spelling)
  stage=1|2|3           training stage (the official three): trainable set, loss weights, data
  bf16                  bfloat16 compute and frozen-parameter storage (trainable masters stay f32)
  attn=<impl>           attention implementation (`kernels.attention`)
  remat=<policy>        rematerialisation policy per scanned block (none|full|dots|dots_no_batch)
  noscan                unrolled blocks instead of `lax.scan`
  data=synthetic        the built-in synthetic source (default for `tiny`) instead of ArrayRecord
  small                 `tiny` shrunk further (width 64, 2 blocks, small VAE): loop tests
  puppet                the puppet-world toy model (`o2a demo`, assets/puppet_model): `tiny` with
                        the shipped puppet VAE and its latent statistics, 64x64 clips of 9 frames;
                        set --config.data.source to an `o2a data build` folder
  vae=<folder>          with `puppet`: another trained VAE folder (default assets/puppet_vae); its
                        config.json latent statistics normalise the latents
  patch=<n>             with `puppet`: the denoiser's spatial patch (default: 16 / the VAE's
                        stride); the pose encoder gets log2(n x stride) stages to match

Used by `o2a` commands as `--config configs/o2a.py:1.3b --config.model.attn_impl=cudnn`, and by
`o2a train --config configs/o2a.py:model=tiny,stage=2 --workdir DIR --config.optim.lr=1e-5`.
"""

import dataclasses

import ml_collections as mlc

from o2a_jax import config_lib, sharding
from o2a_jax.model.config import PRESET_DEFAULTS, PRESETS, hint_time_down, preset


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(
    arg,
    model="tiny",
    variant="",
    stage=2,
    bf16=False,
    attn="xla",
    remat="none",
    noscan=False,
    data="",
    small=False,
    puppet=False,
    vae="",
    patch=0,
  )
  variant = arg.variant or arg.model
  if variant not in PRESETS:
    raise KeyError(f"unknown model {variant!r}; choose one of {sorted(PRESETS)}")
  if arg.stage not in (1, 2, 3):
    raise KeyError(f"unknown stage {arg.stage!r}; choose 1, 2 or 3")
  c = mlc.ConfigDict()
  c.seed = 0
  c.stage = arg.stage
  # The preset's DenoiserConfig (its defaults in one home, o2a_jax.model.config) plus the options.
  dtype = "bfloat16" if arg.bf16 else "float32"
  model = preset(
    variant,
    dtype=dtype,
    param_dtype=dtype,
    attn_impl=arg.attn,
    scan_layers=not arg.noscan,
    remat=arg.remat,
  )
  c.model = mlc.ConfigDict(dataclasses.asdict(model))
  if arg.small:
    # Same structure as `tiny` (every block kind, HRFA, pose branch), fewer and narrower layers:
    # the training-loop tests compile and run it in seconds.
    c.model.update(
      dict(
        num_heads=2,
        head_dim=32,
        num_layers=2,
        ffn_dim=64,
        text_dim=16,
        freq_dim=32,
        ref_layers=1,
        pose_layers=1,
        hint_channels=(8, 8, 8, 8),
        cond_channels=8,
        cond_blocks=1,
      )
    )
  if arg.stage == 1:
    # The stage-1 model (official three training stages): backbone + extractor, no prefix frame, no
    # pose branch.
    c.model.update(dict(prefix_frame=False, pose_branch=False, pose_layers=0))
  if variant == "tiny":
    # The golden fixture's inputs: 2 samples, 9 frames (3 latent), 64x96 pixels, 7 text tokens.
    c.example = mlc.ConfigDict(dict(batch=2, frames=9, height=64, width=96, text_len=7))

  # --- training -------------------------------------------------------------------------------
  c.train = mlc.ConfigDict()
  c.train.steps = 60 if variant == "tiny" else 1_000_000  # the official run gives no count
  c.train.log_every = 5 if variant == "tiny" else 10  # TensorBoard and progress-bar figures
  c.train.ckpt_every = 20 if variant == "tiny" else 1000  # official: 1000 (14B stage 1: 500)
  c.train.keep_checkpoints = 2  # official: keep 2
  c.train.async_checkpoint = True
  c.train.sample_every = 0  # sample videos to workdir/samples every N steps; 0 = never
  c.train.sample_steps = 4  # Euler steps of those samples (cheap previews, not evaluations)
  c.train.max_bad_steps = 10  # consecutive non-finite steps that stop the run
  # Mesh (data, fsdp, context, tensor); -1 takes the remaining devices. `c.mesh_shape` is the
  # older top-level name of the same field.
  c.train.mesh_shape = (1, -1, 1, 1)
  c.mesh_shape = c.train.get_ref("mesh_shape")
  # With a context axis > 1: how attention spans it (kernels/attention/context_parallel.py):
  # "allgather" (K/V gathered; any head count) or "ulysses" (all-to-all over heads).
  c.train.context_parallel = "allgather"
  # Trainable parameters: "official" (the stage's set, official three training stages) or "all" (no
  # pretrained backbone).
  c.train.trainable = "official"
  # Per-block rematerialisation and compute precision: views of the model fields they set.
  c.train.remat = c.model.get_ref("remat")
  c.train.precision = c.model.get_ref("dtype")
  c.train.peak_tflops = 0.0  # per-device peak for MFU; 0 = look it up from the device kind
  # LoRA (o2a_jax.model.lora): rank 0 = full training of the stage's set; rank >= 1 freezes the
  # whole model and trains adapters on `targets` (attn, ffn, hrfa, pose, ref); the base stays in
  # config.model.param_dtype (bf16 with `bf16`), or int8 with `base_int8`. Checkpoints then hold
  # the adapters and their optimizer state only; the base comes from config.init.checkpoint.
  c.lora = mlc.ConfigDict(dict(rank=0, alpha=0.0, targets="attn,ffn,hrfa", base_int8=False))
  # Logical-axis rules (logical name -> mesh axes) for parameters and activations.
  c.sharding = mlc.ConfigDict()
  c.sharding.rules = tuple(sharding.RULES)

  # Initialisation (official initialisation): "" = random (tests, smoke runs); else a native Orbax
  # checkpoint, the Wan2.1-T2V diffusers transformer (stage 1), a stage-1 export (stage 2) or a full
  # One-to-All checkpoint (stage 3, fine-tuning); a resumed run ignores it.
  c.init = mlc.ConfigDict()
  c.init.checkpoint = ""
  c.init.format = "auto"  # auto | native | wan_t2v (stage 1) | stage1 (-> stage 2) | official

  # The prompt embedding of every sample (official: UMT5 of "" at length 226): a .npy or
  # .safetensors (S, text_dim) file, e.g. from `o2a text embed`; "" = zeros of `length` tokens.
  c.text = mlc.ConfigDict(dict(embeds="", length=7 if variant == "tiny" else 226))

  from o2a_jax.vae.model import VAEConfig

  c.vae = mlc.ConfigDict(
    dict(
      path="", seed=0, temperal_downsample=VAEConfig.temperal_downsample,
      **PRESET_DEFAULTS[variant].vae,
    )
  )  # fmt: skip
  if arg.small:
    c.vae.base_dim = 8
  c.vae.dim_mult = tuple(c.vae.dim_mult)

  from data_pipeline.config import get_data_config

  c.data = get_data_config(arg.stage)
  # The built-in synthetic source (o2a_jax.train.synthetic_data): `data.source=synthetic`.
  c.data.synthetic = mlc.ConfigDict(
    dict(num_samples=64, height=32, width=32, poison_from=-1, seed=0)
  )
  if arg.data == "synthetic" or (variant == "tiny" and not arg.data):
    c.data.source = "synthetic"
  if variant == "tiny":
    c.data.frames = 5  # 2 latent frames: enough for TokenReplace, tiny on a CPU
    c.data.global_batch = 2

  from o2a_jax.train import optim, step

  c.loss = step.default_loss_config(arg.stage)
  c.optim = optim.default_optim_config()
  if variant == "tiny":
    c.optim.lr = 1e-3  # a visible loss drop within the short smoke run
    c.optim.warmup_steps = 0
  if arg.puppet:
    _puppet(c, arg.vae, arg.patch)
  elif arg.vae or arg.patch:
    raise KeyError("config args vae= and patch= go with puppet (the puppet toy model)")
  return c


def _puppet(c: mlc.ConfigDict, vae: str, patch: int) -> None:
  """The puppet-world toy recipe (assets/puppet_model/README.md has the commands and settings)."""
  import pathlib

  from o2a_jax.convert.vae import read_latent_stats
  from o2a_jax.io.json_files import read_json
  from o2a_jax.vae.model import VAEConfig

  vae = vae or str(pathlib.Path(__file__).resolve().parents[1] / "assets" / "puppet_vae")
  c.vae.path = vae
  # The puppet VAE normalises with its own per-channel statistics (its config.json, carried by
  # the loaded VAE into training and sampling alike); checked here so a VAE without them fails
  # before any work.
  read_latent_stats(vae)
  # Its architecture, so that a run's config describes its VAE even where the folder is gone
  # (`o2a convert run` builds the checkpoint's template from it), and the denoiser's patch: the
  # pose encoder maps pixels to tokens 16x (`spatial_down`), so patch x VAE stride must be 16
  # (2 x 8 as released; 4 x 4 for a VAE of three stages).
  arch = read_json(pathlib.Path(vae) / "config.json", "the puppet VAE's diffusers config")
  c.vae.base_dim = int(arch["base_dim"])
  c.vae.dim_mult = tuple(int(u) for u in arch["dim_mult"])
  c.vae.num_res_blocks = int(arch["num_res_blocks"])
  c.vae.temperal_downsample = tuple(bool(t) for t in arch["temperal_downsample"])
  vae_cfg = VAEConfig(dim_mult=c.vae.dim_mult, temperal_downsample=c.vae.temperal_downsample)
  stride = vae_cfg.spatial_factor
  if patch:
    # A finer patch (more tokens per frame): the pose encoder's stages follow, so that its tokens
    # still land on the patch grid; its time halvings stay 4x (`hint_time_down`, the rule
    # `load_official` also uses to read such a checkpoint back).
    down = patch * stride
    stages = down.bit_length() - 1
    if patch < 1 or 2**stages != down or stages < 3:
      raise ValueError(
        f"puppet patch={patch}: patch x VAE stride {stride} must be a power of two >= 8"
      )
    c.model.hint_channels = (c.model.hint_channels[0],) * stages
    c.model.hint_time_down = hint_time_down(stages)
  down = config_lib.denoiser_config(c.model).spatial_down
  if down % stride:
    raise ValueError(
      f"{vae}: a VAE of spatial stride {stride} does not divide the pose encoder's {down}x"
    )
  c.model.patch_size = (1, down // stride, down // stride)
  # Training text is always the empty prompt (official condition dropout); here it is zeros of (7,
  # text_dim): no text encoder exists for the toy, and sampling uses the same zeros.
  c.text.embeds = ""
  c.data.source = ""  # the `o2a data build official` folder of a puppet world (required)
  c.data.frames = 9  # 3 latent frames: TokenReplace (stage 3) needs more than 2
  c.data.global_batch = 4
  c.data.bucket_scale = 0.125  # the 512 bucket -> 64x64 (the world's frame size)
  # At 64 px the official pose drawing keeps about 1 % of its line pixels (broken dots): the
  # toy draws its poses continuous (trained and sampled alike; the model folder records it).
  c.data.pose_drawing = "viewing"
  c.optim.lr = 1e-3  # a toy model trained from scratch for minutes, not the official 1e-5
  # There is no pretrained Wan2.1-T2V backbone for the toy: stage 1 trains every parameter in its
  # place (the official stage-1 set would leave the FFNs, cross-attention, time embedding and head
  # at their random init for good); stages 2 and 3 train the official sets.
  if c.stage == 1:
    c.train.trainable = "all"
  c.optim.warmup_steps = 20
