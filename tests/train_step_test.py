"""The train step on the tiny denoiser and tiny VAE: the loss falls, frozen parameters stay
bit-identical, non-finite batches are skipped and counted, runs are reproducible; the stage
trainable sets are the spec's (official three training stages); the optimizer follows torch's AdamW
/ coupled-L2 Adam.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest
from flax import nnx

from o2a_jax.convert import load_official, load_vae
from o2a_jax.convert.official import abstract_model, official_shapes
from o2a_jax.model.config import preset
from o2a_jax.train import optim, step, trainable

B, F, H, W = 2, 9, 32, 32  # 3 latent frames of 4x4 latents (2x2 tokens)


def make_batch(seed=0):
  r = np.random.default_rng(seed)
  t = (F - 1) // 4 + 1
  face = np.zeros((B, t, H, W), np.float32)
  face[:, :, 8:16, 8:24] = 1.0
  ocr = np.ones((B, t, H, W), np.float32)
  ocr[:, :, 24:, :8] = 0.0
  mask = np.zeros((B, 1, H, W, 1), np.float32)
  mask[:, :, :, 16:] = 1.0
  return {
    "video": r.uniform(-1, 1, (B, F, H, W, 3)).astype(np.float32),
    "pose_video": r.uniform(-1, 1, (B, F, H, W, 3)).astype(np.float32),
    "ref_image": r.uniform(-1, 1, (B, 1, H, W, 3)).astype(np.float32),
    "ref_mask": mask,
    "ref_pose": r.uniform(-1, 1, (B, 1, H, W, 3)).astype(np.float32),
    "face_mask": face,
    "ocr_mask": ocr,
    "pose_dropped": np.array([False, True]),
  }


def make_config(**optim_overrides):
  c = mlc.ConfigDict()
  c.stage = 3
  c.loss = step.default_loss_config(3)
  c.loss.token_replace_prob = 0.5
  c.optim = optim.default_optim_config()
  c.optim.update(dict(lr=1e-3, warmup_steps=2, ema_decay=0.9, **optim_overrides))
  return c


@pytest.fixture(scope="module")
def setup(fixtures_dir):
  model = load_official(fixtures_dir / "model_tiny")
  vae = load_vae(fixtures_dir / "vae_tiny")
  config = make_config()
  text = np.random.default_rng(1).normal(size=(5, model.cfg.text_dim)).astype(np.float32)
  graphs, state = step.init_train_state(
    model, vae, step.step_config(config), seed=3, text_embeds=text
  )
  train_step = jax.jit(step.make_train_step(graphs, step.step_config(config)))
  return graphs, state, train_step


@pytest.fixture(scope="module")
def run(setup):
  """16 steps on one fixed batch; metrics per step and the final state."""
  _, state, train_step = setup
  batch = make_batch()
  history = []
  for _ in range(16):
    state, metrics = train_step(state, batch)
    history.append(jax.device_get(metrics))
  return state, history


def _eval_loss(train_step, state, batch, keys):
  """Mean loss of the current parameters over fixed draws (the step reports the pre-update loss)."""
  return np.mean([float(train_step(state.replace(rng=k), batch)[1]["loss"]) for k in keys])


def test_loss_falls_on_a_fixed_batch(setup, run):
  _, state0, train_step = setup
  state, history = run
  batch = make_batch()
  keys = [jax.random.PRNGKey(100 + i) for i in range(2)]
  before = _eval_loss(train_step, state0, batch, keys)
  after = _eval_loss(train_step, state, batch, keys)
  assert after < 0.7 * before, (before, after)
  assert all(h["skipped"] == 0 for h in history)
  assert int(state.step) == 16 and int(state.skipped) == 0
  np.testing.assert_allclose([h["lr"] for h in history[:3]], [0.0, 5e-4, 1e-3])
  assert 0 < np.mean([h["token_replace"] for h in history]) < 1


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _norm(xs):
  return np.sqrt(sum(np.sum(np.square(x.astype(np.float64))) for x in xs))


def test_frozen_parameters_bit_unchanged_and_trainable_moved(setup, run):
  _, state0, _ = setup
  state, _ = run
  for old, new in ((state0.frozen, state.frozen), (state0.vae, state.vae)):
    for a, b in zip(_leaves(old), _leaves(new)):
      np.testing.assert_array_equal(a, b)
  p0, p1, ema = _leaves(state0.params), _leaves(state.params), _leaves(state.ema)
  assert all(not np.array_equal(a, b) for a, b in zip(p0, p1))
  assert all(x.dtype == np.float32 for x in p1)
  # EMA follows the parameters but lags them.
  gap = _norm([e - p for e, p in zip(ema, p1)])
  assert 0 < gap < _norm([a - b for a, b in zip(p1, p0)])


def test_non_finite_batch_is_skipped_and_counted(setup, run):
  _, _, train_step = setup
  state, _ = run
  bad = make_batch()
  bad["video"][0, 0, 0, 0, 0] = np.nan
  s1, m1 = train_step(state, bad)
  s2, m2 = train_step(s1, bad)
  assert int(m1["skipped"]) == 1 and int(m2["skipped"]) == 1
  assert (int(s2.skipped), int(s2.bad_in_row), int(s2.step)) == (2, 2, int(state.step))
  for new, old in ((s2.params, state.params), (s2.opt_state, state.opt_state), (s2.ema, state.ema)):
    for a, b in zip(_leaves(new), _leaves(old)):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(s2.rng, state.rng)
  s3, m3 = train_step(s2, make_batch())
  assert (int(m3["skipped"]), int(s3.bad_in_row), int(s3.skipped)) == (0, 0, 2)


def test_same_seed_same_result(setup, run):
  _, state0, train_step = setup
  state, history = run
  again = state0
  for _ in range(2):
    again, metrics = train_step(again, make_batch())
  s = state0
  for _ in range(2):
    s, _ = train_step(s, make_batch())
  for a, b in zip(_leaves(again), _leaves(s)):
    np.testing.assert_array_equal(a, b)
  assert float(metrics["loss"]) == float(history[1]["loss"])


# --- trainable sets (official three training stages, the prose rules written independently of
# trainable.py) -----

SPEC = {
  1: (r"^blocks\.\d+\.attn1\.(add_k_proj|add_v_proj|norm_added_k|to_out\.0)\.", r"^refextractor\."),
  2: (
    r"^blocks\.\d+\.attn1\.",
    r"^(refextractor\.)?patch_embedding\.",
    r"^input_hint_block\.",
    r"^controlnet\.",
    r"^controlnet_zero\.",
    r"^image_to_cond\.",
    r"^refextractor\.",
  ),
}
ALWAYS_FROZEN = (
  r"^condition_embedder\.",
  r"^blocks\.\d+\.(attn2|norm2|ffn)\.",
  r"^blocks\.\d+\.scale_shift_table$",
  r"^scale_shift_table$",
  r"^proj_out\.",
)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_trainable_sets_are_the_specs(stage):
  cfg = preset("tiny")
  model = abstract_model(cfg.stage1() if stage == 1 else cfg)
  keys = trainable.trainable_keys(model, stage)

  all_keys = official_shapes(cfg.stage1() if stage == 1 else cfg)
  spec = SPEC[min(stage, 2)]
  want = sorted(k for k in all_keys if any(re.match(p, k) for p in spec))
  assert keys == want
  assert not any(re.match(p, k) for k in keys for p in ALWAYS_FROZEN)
  assert len(keys) == {1: 65, 2: 197, 3: 197}[stage]
  # The filter selects exactly these parameters (stacked ones whole).
  paths = trainable.trainable_paths(model, stage)
  _, params, frozen = nnx.split(model, trainable.trainable_filter(model, stage), ...)
  assert {".".join(map(str, p)) for p, _ in params.flat_state()} == set(paths)


def test_trainable_all_and_unknown_set():
  """`train.trainable = "all"` (no pretrained backbone) leaves nothing frozen but the buffers."""
  model = abstract_model(preset("tiny").stage1())
  _, params, frozen = trainable.split_params(model, 1, "all")
  n_all = len(nnx.state(model, nnx.Param).flat_state())
  assert len(params.flat_state()) == n_all
  assert not any(isinstance(v, nnx.Param) for _, v in frozen.flat_state())
  with pytest.raises(ValueError, match="trainable 'some'"):
    trainable.split_params(model, 1, "some")


@pytest.mark.parametrize("stage, expected", [(1, 782_929_408), (2, 1_075_071_264)])
def test_trainable_counts_full_size(stage, expected):
  """Stage 1 of the 1.3B model: the spec's ~783 M."""
  cfg = preset("1.3b")
  model = abstract_model(cfg.stage1() if stage == 1 else cfg)
  n, total = trainable.count(model, stage)
  assert n == expected
  assert total == (2_131_101_248 if stage == 1 else 2_210_576_224)


# --- optimizer --------------------------------------------------------------------------------


def _torch_like(name, p, grads, lr_at, wd, b1=0.9, b2=0.95, eps=1e-8, decay=True):
  """Reference torch.optim.Adam(W) arithmetic in float64."""
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  for k, g in enumerate(grads, start=1):
    lr = lr_at(k - 1)
    if name == "adam_l2" and decay:
      g = g + wd * p
    if name == "adamw" and decay:
      p = p * (1 - lr * wd)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mh, vh = m / (1 - b1**k), v / (1 - b2**k)
    p = p - lr * mh / (np.sqrt(vh) + eps)
  return p


def _flat(state):
  return {".".join(map(str, p)): v for p, v in state.flat_state()}


@pytest.mark.parametrize("name", ["adamw", "adam_l2"])
def test_optimizer_matches_torch_arithmetic_and_decay_groups(name):
  model = abstract_model(preset("tiny"))
  _, params, _ = trainable.split_params(model, 2)
  r = np.random.default_rng(0)
  rand = lambda shape: jnp.asarray(r.normal(size=shape), jnp.float32)
  # A stacked matrix, a stacked bias and a stacked norm scale (official ndim 2, 1, 1).
  pick = ["blocks.attn1.to_q.kernel", "blocks.attn1.to_q.bias", "blocks.attn1.norm_q.scale"]
  flat = _flat(params)
  small = nnx.from_flat_state(
    {tuple(k.split(".")): flat[k].replace(value=rand(flat[k].get_value().shape)) for k in pick}
  )
  c = optim.OptimConfig(name=name, lr=1e-2, warmup_steps=3, weight_decay=0.1, clip_grad_norm=0.0)
  tx = optim.make_optimizer(c, small)
  opt_state = tx.init(small)
  grads = [jax.tree.map(lambda x: rand(x.shape), small) for _ in range(5)]
  p = small
  for g in grads:
    updates, opt_state = tx.update(g, opt_state, p)
    p = optax.apply_updates(p, updates)
  sched = optim.learning_rate_schedule(c)
  got, start = _flat(p), _flat(small)
  for k in pick:
    decayed = name == "adamw" or k.endswith("kernel")  # adam_l2: official ndim > 1, not bias
    want = _torch_like(
      name,
      np.asarray(start[k].get_value(), np.float64),
      [np.asarray(_flat(g)[k].get_value(), np.float64) for g in grads],
      lambda i: float(sched(i)),
      0.1,
      decay=decayed,
    )
    np.testing.assert_allclose(got[k].get_value(), want, rtol=2e-5, atol=1e-6)


def test_clipping_is_applied_before_adam():
  """Adam's first moment after one step is (1 - b1) x the clipped gradient."""
  c = optim.OptimConfig(lr=1.0, warmup_steps=0, clip_grad_norm=1.0)
  p = {"w": jnp.ones((3,))}
  tx = optim.make_optimizer(c, p)
  _, opt_state = tx.update({"w": jnp.array([30.0, 40.0, 0.0])}, tx.init(p), p)
  mu = [s.mu for s in opt_state if hasattr(s, "mu")][0]
  np.testing.assert_allclose(mu["w"], 0.1 * np.array([0.6, 0.8, 0.0]), rtol=1e-6)
  tx = optim.make_optimizer(dataclasses.replace(c, clip_grad_norm=0.0), p)
  _, opt_state = tx.update({"w": jnp.array([30.0, 40.0, 0.0])}, tx.init(p), p)
  mu = [s.mu for s in opt_state if hasattr(s, "mu")][0]
  np.testing.assert_allclose(mu["w"], [3.0, 4.0, 0.0], rtol=1e-6)


# --- stage initialisation (official initialisation) on tiny shapes with a synthetic T2V state dict
# ---------


# A Wan2.1-T2V transformer has the backbone keys only (no HRFA, extractor or pose branch).
T2V_ABSENT = (
  r"^(blocks\.\d+\.attn1\.(add_k_proj|add_v_proj|norm_added_k)\.|refextractor\.|"
  r"input_hint_block\.|controlnet|image_to_cond\.)"
)


@pytest.fixture(scope="module")
def inits():
  from o2a_jax.convert import official_state_dict
  from o2a_jax.train import init

  cfg = preset("tiny")
  r = np.random.default_rng(1)
  shapes = official_shapes(cfg)
  t2v = {
    k: r.normal(size=s).astype(np.float32) for k, s in shapes.items() if not re.match(T2V_ABSENT, k)
  }
  stage1 = init.stage1_from_t2v(t2v, cfg, seed=0)
  sd1 = official_state_dict(stage1)
  sd2 = official_state_dict(init.stage2_from_stage1(sd1, cfg, seed=0))
  sd3 = official_state_dict(init.from_checkpoint(sd2, cfg))
  return cfg, t2v, sd1, sd2, sd3, stage1


def test_stage1_from_t2v(inits):
  cfg, t2v, sd1, _, _, _ = inits
  assert set(sd1) == set(official_shapes(cfg.stage1()))
  for k, v in t2v.items():
    np.testing.assert_array_equal(sd1[k], v)
  n_copied = 0
  for k, v in sd1.items():
    if k.startswith("refextractor.ref_blocks."):
      assert not v.any(), k
    elif k == "refextractor.patch_embedding.weight":
      np.testing.assert_array_equal(v[:, :16], t2v["patch_embedding.weight"])
      assert not v[:, 16:].any()
    elif k.startswith("refextractor."):
      np.testing.assert_array_equal(v, t2v[k[len("refextractor.") :]])
      n_copied += 1
    elif "norm_added_k" in k:
      np.testing.assert_array_equal(v, 1.0)
    elif re.search(r"add_[kv]_proj\.(weight|bias)$", k):
      bound = 1 / np.sqrt(cfg.dim)
      assert v.std() > 0.1 * bound and np.abs(v).max() <= bound * 1.0001, k
  assert n_copied == 1 + 6 + 2 * 15  # patch bias, time embedder + proj, 2 blocks x 15 tensors


def test_stage2_from_stage1_and_stage3(inits):
  cfg, _, sd1, sd2, sd3, _ = inits
  assert set(sd2) == set(official_shapes(cfg))
  for k, v in sd1.items():
    np.testing.assert_array_equal(sd2[k], v)
  for k, v in sd2.items():
    if k.startswith("controlnet.blocks."):
      np.testing.assert_array_equal(v, sd1[k[len("controlnet.") :]])
    if re.match(r"^(controlnet_zero\.|input_hint_block\.conv_out\.|image_to_cond\.conv_out\.)", k):
      assert not v.any(), k
    if re.match(r"^(input_hint_block|image_to_cond)\..*conv[^.]*(\.conv)?\.weight$", k):
      if "conv_out" not in k:  # PyTorch default: U(+-1/sqrt(fan_in))
        bound = 1 / np.sqrt(np.prod(v.shape[1:]))
        assert v.std() > 0.3 * bound and np.abs(v).max() <= bound, k
  for k, v in sd2.items():
    np.testing.assert_array_equal(sd3[k], v)


def test_stage1_model_runs_without_pose(inits):
  *_, stage1 = inits
  x = jnp.ones((1, 2, 4, 4, 16))
  args = (x, jnp.array([500.0]), jnp.zeros((1, 3, 16)), jnp.ones((1, 1, 4, 4, 32)))
  out = jax.jit(lambda m, *a: m(*a, None, None))(stage1, *args)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  with pytest.raises(ValueError, match="no pose branch"):
    stage1(*args, jnp.zeros((1, 5, 32, 32, 3)), jnp.zeros((1, 1, 32, 32, 3)))


def test_init_rejects_wrong_sources(inits):
  from o2a_jax.train import init

  cfg, t2v, sd1, _, _, _ = inits
  with pytest.raises(ValueError, match="missing.*blocks.0.ffn"):
    init.stage1_from_t2v({k: v for k, v in t2v.items() if k != "blocks.0.ffn.net.2.bias"}, cfg)
  with pytest.raises(ValueError, match="unexpected.*extra"):
    init.stage1_from_t2v({**t2v, "extra.weight": np.zeros(1)}, cfg)
  bad = dict(sd1)
  bad["proj_out.bias"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match="proj_out.bias"):
    init.stage2_from_stage1(bad, cfg)


# --- shardings and bf16 compute ---------------------------------------------------------------


def test_state_shardings_follow_logical_axes(setup):
  graphs, state, _ = setup
  from o2a_jax import sharding

  mesh = sharding.make_mesh((2, 2, 1, 2))
  sh = step.state_shardings(state, mesh)
  q = sh.params["blocks"]["attn1"]["to_q"]["kernel"]
  assert q.spec == jax.P(None, "fsdp", "tensor")
  moments = [s for s in jax.tree.leaves(sh.opt_state) if s.spec == jax.P(None, "fsdp", "tensor")]
  assert len(moments) >= 2  # Adam mu and nu of at least that kernel
  assert sh.step.spec == jax.P() and sh.rng.spec == jax.P()
  assert len(jax.tree.leaves(sh)) == len(jax.tree.leaves(state))


@pytest.mark.slow
def test_sharded_and_bf16_steps(fixtures_dir, setup):
  """The step on an 8-device mesh equals the single-device step; a bf16-compute model keeps
  float32 master weights and moments and its loss is close to the float32 one."""
  from o2a_jax import sharding

  graphs, state, train_step = setup
  batch = make_batch()
  ref_state, ref = train_step(state, batch)
  mesh = sharding.make_mesh((2, 2, 1, 2))
  with jax.set_mesh(mesh):
    sh = step.state_shardings(state, mesh)
    fn = jax.jit(
      step.make_train_step(graphs, step.step_config(make_config())),
      in_shardings=(sh, None),
      out_shardings=(sh, None),
    )
    s, m = fn(jax.device_put(state, sh), batch)
  np.testing.assert_allclose(float(m["loss"]), float(ref["loss"]), rtol=1e-5)
  for a, b in zip(_leaves(s.params), _leaves(ref_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

  model = load_official(fixtures_dir / "model_tiny", dtype=jnp.bfloat16)
  vae = load_vae(fixtures_dir / "vae_tiny")
  config = make_config()
  g16, s16 = step.init_train_state(
    model, vae, step.step_config(config), seed=3, text_embeds=np.asarray(state.text[0])
  )
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16.params))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(s16.frozen) if x.ndim)
  s16b, m16 = jax.jit(step.make_train_step(g16, step.step_config(config)))(s16, batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16b.opt_state) if x.ndim)
  assert abs(float(m16["loss"]) - float(ref["loss"])) < 0.05 * float(ref["loss"])


@pytest.mark.slow
def test_stage1_train_step(fixtures_dir, inits):
  """Stage 1 trains the model without prefix frame and pose branch; only its trainable set moves."""
  *_, stage1 = inits
  config = make_config()
  config.stage = 1
  config.loss = step.default_loss_config(1)
  vae = load_vae(fixtures_dir / "vae_tiny")
  text = np.zeros((3, stage1.cfg.text_dim), np.float32)
  graphs, state = step.init_train_state(
    stage1, vae, step.step_config(config), seed=0, text_embeds=text
  )
  keys = {".".join(map(str, p)) for p, _ in state.params.flat_state()}
  assert "blocks.attn1.add_k_proj.kernel" in keys and "blocks.attn1.to_q.kernel" not in keys
  new, metrics = jax.jit(step.make_train_step(graphs, step.step_config(config)))(
    state, make_batch()
  )
  assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
  assert int(new.step) == 1
  with pytest.raises(ValueError, match="stage 2 needs the full model"):
    config.stage = 2
    step.init_train_state(stage1, vae, step.step_config(config), seed=0, text_embeds=text)


def test_step_config_is_typed_and_checked():
  config = make_config()
  sc = step.step_config(config)
  assert isinstance(sc.loss, step.LossConfig) and isinstance(sc.optim, optim.OptimConfig)
  with pytest.raises(ValueError, match="lr must be positive"):
    optim.OptimConfig(lr=0.0)
  with pytest.raises(ValueError, match="token_replace_prob must be in"):
    step.LossConfig(token_replace_prob=1.5)
  bad = make_config()
  bad.loss.unlock()
  bad.loss.face_wieght = 1.0
  with pytest.raises(ValueError, match=r"config.loss: unknown keys \['face_wieght'\]"):
    step.step_config(bad)
  del bad.loss["face_wieght"]
  del bad.optim["lr"]  # optional keys fall back to the dataclass default
  assert step.step_config(bad).optim.lr == optim.OptimConfig().lr


def test_data_config_names_unknown_and_missing_keys():
  from data_pipeline.config import DataConfig, get_data_config

  c = get_data_config(2)
  assert DataConfig.from_config(c).frames == c.frames
  del c["frames"]
  c.framez = 29
  with pytest.raises(ValueError, match=r"unknown keys \['framez'\], missing keys \['frames'\]"):
    DataConfig.from_config(c)


def test_data_config_checks_the_pose_drawing():
  from data_pipeline.config import DataConfig, get_data_config

  c = get_data_config(2)
  assert DataConfig.from_config(c).pose_drawing == "official"  # what the checkpoints saw
  c.pose_drawing = "thin"
  with pytest.raises(ValueError, match="config.data.pose_drawing: unknown pose drawing 'thin'"):
    DataConfig.from_config(c)
  del c["pose_drawing"]  # a config saved before the key existed drew officially
  assert DataConfig.from_config(c).pose_drawing == "official"
