"""UMT5 text encoder, tokenizer and prompt embedding against `tests/fixtures/text_tiny/`.

The fixture was produced by `scripts/make_text_fixture.py` with transformers' `UMT5EncoderModel`
and the diffusers Wan pipeline's prompt procedure; these tests need no torch.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from o2a_jax import sharding
from o2a_jax import text as T
from o2a_jax.convert import load_text_encoder
from o2a_jax.convert.text import text_encoder_keys
from o2a_jax.inference import text_cli
from o2a_jax.io import safetensors as sio
from o2a_jax.text import embed as embed_mod
from o2a_jax.text.umt5 import relative_position_buckets

TOL = 1e-5  # issue 4: float32 parity, relative error


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
  return fixtures_dir / "text_tiny"


@pytest.fixture(scope="module")
def io(tiny):
  return dict(np.load(tiny / "io.npz"))


@pytest.fixture(scope="module")
def cases(tiny):
  return json.loads((tiny / "cases.json").read_text())


@pytest.fixture(scope="module")
def encoder(tiny):
  return load_text_encoder(tiny / "text_encoder")


@pytest.fixture(scope="module")
def tokenizer(tiny):
  return T.load_tokenizer(tiny / "tokenizer")


def test_config_from_shapes_and_config_json(encoder, cases):
  c = cases["config"]
  assert encoder.cfg == T.UMT5Config(
    vocab_size=c["vocab_size"], dim=c["d_model"], num_heads=c["num_heads"], head_dim=c["d_kv"],
    ffn_dim=c["d_ff"], num_layers=c["num_layers"], num_buckets=16, max_distance=20, eps=1e-6,
    activation="gelu",
  )  # fmt: skip
  assert encoder.checkpoint_id


def test_parity_padded_and_unpadded(encoder, io):
  out = encoder(io["hidden.padded.input_ids"], io["hidden.padded.attention_mask"])
  assert out.shape == io["hidden.padded.out"].shape and out.dtype == jnp.float32
  assert rel(out, io["hidden.padded.out"]) < TOL
  out = encoder(io["hidden.unpadded.input_ids"])  # no mask: every token is real
  assert rel(out, io["hidden.unpadded.out"]) < TOL


def test_bfloat16(tiny, io):
  enc = load_text_encoder(tiny / "text_encoder", dtype=jnp.bfloat16)
  assert enc.embedding[...].dtype == jnp.bfloat16 and enc.layers.attn_norm[...].dtype == jnp.float32
  out = enc(io["hidden.padded.input_ids"], io["hidden.padded.attention_mask"])
  assert out.dtype == jnp.bfloat16
  # transformers' own bf16 run is 1.2e-2 from its float32 one; ours keeps the residual in fp32.
  assert rel(out, io["hidden.padded.out"]) < 2e-2


def test_buckets_match_transformers_xxl(io):
  np.testing.assert_array_equal(relative_position_buckets(512, 512, 32, 128), io["buckets.xxl.512"])


def test_prompt_clean(cases):
  for prompt, cleaned in zip(cases["prompts"], cases["pipeline"]["32"]["cleaned"]):
    assert T.prompt_clean(prompt) == cleaned


@pytest.mark.parametrize(
  "source", ["tokenizer", "tokenizer/tokenizer.json", "tokenizer/spiece.model"]
)
def test_tokenizer_matches_transformers(tiny, io, cases, source):
  tok = T.load_tokenizer(tiny / source)
  for n in (32, 12):  # 12 truncates three prompts, keeping the final </s>
    ids, mask = tok([T.prompt_clean(p) for p in cases["prompts"]], n)
    np.testing.assert_array_equal(ids, io[f"pipeline.{n}.input_ids"])
    np.testing.assert_array_equal(mask, io[f"pipeline.{n}.attention_mask"])


def test_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    T.load_tokenizer(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="no tokenizer.json or spiece.model"):
    T.load_tokenizer(tmp_path)


def test_embed_prompts_matches_official_procedure(encoder, tokenizer, io, cases):
  for n in (32, 12):
    embeds = T.embed_prompts(encoder, tokenizer, cases["prompts"], max_length=n, batch_size=4)
    ref = io[f"pipeline.{n}.embeds"]
    assert embeds.shape == ref.shape
    assert rel(embeds, ref) < TOL
    lengths = io[f"pipeline.{n}.attention_mask"].sum(1)
    for row, length in zip(np.asarray(embeds), lengths):
      assert not row[length:].any() and row[:length].any()  # padding exactly zero


def _variant(tiny, tmp_path, edit, config=True):
  out = tmp_path / "enc"
  out.mkdir(parents=True)
  with sio.TensorSource(tiny / "text_encoder") as src:
    tensors = {k: np.array(src[k]) for k in src}
  edit(tensors)
  sio.save_dict(out / "model.safetensors", tensors)
  if config:
    shutil.copy(tiny / "text_encoder" / "config.json", out / "config.json")
  return out


def test_embedding_key_layouts(tiny, tmp_path, io, encoder):
  ids, mask = io["hidden.padded.input_ids"], io["hidden.padded.attention_mask"]
  ref = encoder(ids, mask)

  def only_encoder_key(t):
    t["encoder.embed_tokens.weight"] = t.pop("shared.weight")

  def both(t):
    t["encoder.embed_tokens.weight"] = t["shared.weight"]

  for i, edit in enumerate((only_encoder_key, both)):
    enc = load_text_encoder(_variant(tiny, tmp_path / str(i), edit), dtype=jnp.float32)
    np.testing.assert_array_equal(enc(ids, mask), ref)

  def differ(t):
    t["encoder.embed_tokens.weight"] = t["shared.weight"] + 1

  with pytest.raises(ValueError, match="differ"):
    load_text_encoder(_variant(tiny, tmp_path / "x", differ))


def test_strict_keys(tiny, tmp_path):
  def broken(t):
    del t["encoder.block.1.layer.0.SelfAttention.k.weight"]
    t["encoder.block.0.layer.0.SelfAttention.extra.weight"] = np.zeros(3, np.float32)
    t["encoder.block.2.layer.1.DenseReluDense.wo.weight"] = np.zeros((64, 95), np.float32)

  with pytest.raises(ValueError) as e:
    load_text_encoder(_variant(tiny, tmp_path, broken))
  msg = str(e.value)
  assert "missing: encoder.block.1.layer.0.SelfAttention.k.weight" in msg
  assert "unexpected: encoder.block.0.layer.0.SelfAttention.extra.weight" in msg
  assert "encoder.block.2.layer.1.DenseReluDense.wo.weight: expected (64, 96)" in msg
  with pytest.raises(ValueError, match="no token embedding"):
    load_text_encoder(_variant(tiny, tmp_path / "e", lambda t: t.pop("shared.weight")))
  with pytest.raises(ValueError, match="does not exist"):
    load_text_encoder(tmp_path / "missing")
  with pytest.raises(ValueError, match="dtype"):
    load_text_encoder(tiny / "text_encoder", dtype=jnp.float16)


def test_config_json_is_needed_and_checked(tiny, tmp_path, io):
  folder = _variant(tiny, tmp_path, lambda t: None, config=False)
  enc = load_text_encoder(folder)  # without config.json: the UMT5 defaults
  assert enc.cfg.max_distance == 128
  enc = load_text_encoder(folder, max_distance=20)  # or explicit overrides
  out = enc(io["hidden.padded.input_ids"], io["hidden.padded.attention_mask"])
  assert rel(out, io["hidden.padded.out"]) < TOL
  cfg = json.loads((tiny / "text_encoder" / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**cfg, "num_heads": 8}))
  with pytest.raises(ValueError, match="num_heads=8 contradicts"):
    load_text_encoder(folder)


def test_full_size_shapes():
  cfg = T.UMT5_XXL
  abstract = T.abstract_text_encoder(cfg, dtype=jnp.bfloat16)
  graphdef, state = nnx.split(abstract)
  leaves = jax.tree.leaves(state)
  count = sum(int(np.prod(x.shape)) for x in leaves)
  assert count == cfg.param_count() == 5_680_910_336
  assert abstract.layers.wi_0.get_value().shape == (24, 4096, 10240)
  assert abstract.layers.q.get_value().dtype == jnp.bfloat16
  ids = jax.ShapeDtypeStruct((1, 512), jnp.int32)
  out = jax.eval_shape(lambda st, i: nnx.merge(graphdef, st)(i, jnp.ones_like(i)), state, ids)
  assert out.shape == (1, 512, 4096) and out.dtype == jnp.bfloat16
  assert len(text_encoder_keys(cfg)) == 2 + 24 * 10


def test_sharded_load(tiny, io, encoder):
  mesh = sharding.make_mesh((1, 4, 1, 2))
  with jax.set_mesh(mesh):
    enc = load_text_encoder(tiny / "text_encoder")
    assert enc.layers.q[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert enc.layers.wo[...].sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")
    assert enc.embedding[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    out = T.embed_prompts(enc, T.load_tokenizer(tiny / "tokenizer"), [""], max_length=12)
  assert rel(out, io["pipeline.12.embeds"][:1]) < TOL


def test_embedding_cache(encoder, tokenizer, tmp_path, monkeypatch, io, cases):
  cache = T.EmbeddingCache(tmp_path / "cache")
  prompts = cases["prompts"][:3]
  first = T.embed_prompts(encoder, tokenizer, prompts, max_length=12, cache=cache)
  assert rel(first, io["pipeline.12.embeds"][:3]) < TOL
  files = sorted((tmp_path / "cache").rglob("*.safetensors"))
  assert len(files) == 3 and not list((tmp_path / "cache").rglob("*.tmp"))

  def no_encoder(*a):
    raise AssertionError("cache miss")

  monkeypatch.setattr(embed_mod, "_encode", no_encoder)
  again = T.embed_prompts(encoder, tokenizer, prompts, max_length=12, cache=cache)
  np.testing.assert_array_equal(again, first)
  assert cache.get(encoder, prompts[0], 32) is None  # the length is part of the key
  with pytest.raises(ValueError, match="no checkpoint id"):
    cache.get(T.build_text_encoder(encoder.cfg), "", 12)


def test_cli_text_embed(tiny, tmp_path, capsys, io):
  with pytest.raises(SystemExit) as e:
    text_cli.main(["text", "embed", "--help"])
  assert e.value.code == 0 and "--text-encoder" in capsys.readouterr().out
  argv = ["text", "embed", "--text-encoder", str(tiny / "text_encoder"), "--tokenizer",
          str(tiny / "tokenizer"), "--cache", str(tmp_path), "--max-length", "12",
          "--dtype", "float32"]  # fmt: skip
  assert text_cli.main(argv) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2 and lines[0].startswith("12\t") and lines[0].endswith("''")
  enc = load_text_encoder(tiny / "text_encoder")
  hit = T.EmbeddingCache(tmp_path).get(enc, "", 12)
  assert rel(hit, io["pipeline.12.embeds"][0]) < TOL
  assert T.EmbeddingCache(tmp_path).get(enc, T.DEFAULT_NEGATIVE_PROMPT, 12) is not None


def test_embeddings_file_formats_and_errors(tmp_path):
  from o2a_jax.io.safetensors import save_dict
  from o2a_jax.text.embeddings_file import read_embeddings

  a = np.arange(12, dtype=np.float32).reshape(3, 4)
  np.save(tmp_path / "e.npy", a[None])
  np.savez(tmp_path / "e.npz", text_embeds=a, negative_text_embeds=-a)
  save_dict(tmp_path / "cache.safetensors", {"embeds": a})
  save_dict(tmp_path / "one.safetensors", {"whatever": a})
  save_dict(tmp_path / "two.safetensors", {"x": a, "y": a})
  assert np.array_equal(read_embeddings(tmp_path / "e.npy", 4)["text"], a)
  got = read_embeddings(tmp_path / "e.npz", 4)
  assert np.array_equal(got["text"], a) and np.array_equal(got["negative"], -a)
  for name in ("cache.safetensors", "one.safetensors"):
    assert np.array_equal(read_embeddings(tmp_path / name, 4)["text"], a)
  with pytest.raises(ValueError, match=r"two.safetensors.*2 tensors"):
    read_embeddings(tmp_path / "two.safetensors", 4)
  with pytest.raises(ValueError, match=r"e.npy.*needs \(S, 5\)"):
    read_embeddings(tmp_path / "e.npy", 5)
  with pytest.raises(FileNotFoundError, match="nope.npy"):
    read_embeddings(tmp_path / "nope.npy", 4)
  (tmp_path / "e.txt").write_text("1 2 3")
  with pytest.raises(ValueError, match=r"e.txt.*\.npy"):
    read_embeddings(tmp_path / "e.txt", 4)
