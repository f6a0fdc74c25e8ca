"""Models: shapes, jit forward/backward on 1 device and data-parallel on 8, bfloat16."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxset.models import adaface, backbones, casn, eqface, heads, netvlad, qan
from jaxset.ops import losses, margins
from jaxset.ops import netvlad_layer as netvlad_ops

TINY = {"widths": (8, 16, 16, 16)}  # a fast SmallCNN for the tests


def _images(shape, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, 256).astype(jnp.uint8)


def _scalar(tree):
  """A loss touching every float output."""
  return sum(jnp.mean(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.floating))


# ---------------------------------------------------------------------------
# Shapes.


@pytest.mark.parametrize("name,hw,expected", [
    ("small_cnn", (64, 32), (8, 4, 128)),
    ("small_cnn", (64, 64), (8, 8, 128)),
    ("resnet18", (224, 224), (7, 7, 512)),
    ("resnet50", (224, 224), (7, 7, 2048)),
    ("vgg16", (224, 224), (14, 14, 512)),
    ("iresnet50", (112, 112), (7, 7, 512)),
    ("iresnet100", (112, 112), (7, 7, 512)),
])
def test_backbone_feature_map_shapes(name, hw, expected):
  model = backbones.create_backbone(name)
  x = jnp.zeros((2,) + hw + (3,), jnp.uint8)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  out = jax.eval_shape(model.apply, variables, x)
  assert out.shape == (2,) + expected


def test_face_embedder_shapes_and_sizes():
  x = jnp.zeros((2, 112, 112, 3), jnp.uint8)
  sizes = {}
  for name in ("iresnet50", "iresnet100"):
    model = backbones.FaceEmbedder(name)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    assert out["embedding"].shape == (2, 512) and out["norm"].shape == (2,)
    assert variables["params"]["embedding"]["fc"]["kernel"].shape == (7 * 7 * 512, 512)
    sizes[name] = sum(v.size for v in jax.tree.leaves(variables["params"]))
  # insightface r50 / r100: 43.6M / 65.2M parameters (with the 25088x512 fc).
  assert 43e6 < sizes["iresnet50"] < 44e6
  assert 65e6 < sizes["iresnet100"] < 66e6


def test_normalisation_inside_model_and_errors():
  model = backbones.SmallCNN(TINY["widths"])
  x = _images((2, 16, 16, 3))
  v = jax.jit(model.init)(jax.random.key(0), x)
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply(v, x), apply(v, x.astype(jnp.float32)), atol=1e-6)
  with pytest.raises(ValueError, match="NHWC"):
    model.apply(v, jnp.zeros((2, 3, 16, 16), jnp.uint8))
  with pytest.raises(ValueError, match="unknown backbone"):
    backbones.create_backbone("resnet34")
  imgs = np.full((1, 1, 1, 3), 255, np.uint8)
  np.testing.assert_allclose(backbones.normalize_images(imgs, "insightface"),
                             np.full((1, 1, 1, 3), 127.5 / 128), rtol=1e-6)


def test_cosine_classifier_and_norms():
  cls = heads.CosineClassifier(5)
  e = jax.random.normal(jax.random.key(0), (3, 8)) * 7
  v = cls.init(jax.random.key(1), e)
  cos = cls.apply(v, e)
  w = v["params"]["kernel"]
  expected = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
  np.testing.assert_allclose(cos, expected, atol=1e-5)
  g = jax.grad(lambda x: jnp.sum(heads.safe_norm(x)))(jnp.zeros((2, 4)))
  assert np.all(np.isfinite(g))


# ---------------------------------------------------------------------------
# Every model: jit forward + backward on 1 device, data-parallel on 8.
# A case returns (variables, batch, loss(params, batch_stats, batch) ->
# (scalar, (outputs, updated collections))); every batch array has a leading
# batch dim of 8, the one sharded over the 'data' axis.


def _apply_loss(model, extra_mutable=()):
  def loss(params, stats, batch):
    v = {"params": params, "batch_stats": stats, **batch.get("collections", {})}
    args = batch["args"]
    out, upd = model.apply(v, *args, train=True,
                           mutable=["batch_stats", *extra_mutable])
    return _scalar(out), (out, upd)
  return loss


def _qan_case():
  model = qan.QAN(backbone="small_cnn", feature_dim=16, embedding_dim=8, num_parts=2,
                  num_classes=5, backbone_kwargs=TINY)
  images = _images((8, 2, 16, 8, 3))
  mask = jnp.asarray(np.arange(16).reshape(8, 2) % 5 != 4)
  variables = jax.jit(model.init)(jax.random.key(0), images, mask)
  return variables, {"args": (images, mask)}, _apply_loss(model)


def _eqface_case(form="paper"):
  model = eqface.EQFace(6, backbone="small_cnn", embedding_dim=16, quality_hidden=8,
                        quality_form=form, backbone_kwargs=TINY)
  images = _images((8, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(0), images)
  return variables, {"args": (images,)}, _apply_loss(model)


def _netvlad_case(pooling="netvlad"):
  model = netvlad.VPRModel(backbone="small_cnn", pooling=pooling, num_clusters=4,
                               pca_dim=6 if pooling == "netvlad" else None,
                               backbone_kwargs=TINY)
  images = _images((8, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(0), images)
  return variables, {"args": (images,)}, _apply_loss(model)


def _adaface_case(head="adaface"):
  model = adaface.MarginFaceModel(6, backbone="small_cnn", embedding_dim=16, head=head,
                          backbone_kwargs=TINY)
  images = _images((8, 32, 32, 3))
  labels = jnp.arange(8) % 6
  variables = jax.jit(model.init)(jax.random.key(0), images, labels)

  def loss(params, stats, batch):
    v = {"params": params, "batch_stats": stats}
    mutable = ["batch_stats"]
    if "adaface_stats" in variables:  # not sharded: a replicated collection
      v["adaface_stats"] = variables["adaface_stats"]
      mutable.append("adaface_stats")
    out, upd = model.apply(v, batch["images"], batch["labels"], train=True, mutable=mutable)
    ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["labels"])
    return ce.mean() + 1e-3 * _scalar(out["feature_map"]), (out, upd)
  return variables, {"images": images, "labels": labels}, loss


CASN_PAIRS = (np.arange(8), 8 + np.arange(8), np.arange(8) % 2)  # explicit pairs (i, 8 + i)


def _casn_model():
  # A random free-signed verifier, so that every term reaches the trunk at init
  # and the "positive" indicator is not empty.
  return casn.CASN(5, backbone="small_cnn", feature_dim=16, backbone_kwargs=TINY,
                   verifier_sign="free", verifier_init="lecun_normal")


def _casn_case():
  model = _casn_model()
  images = _images((16, 16, 8, 3))
  batch = {"images": images, "labels": jnp.arange(16) % 5}
  variables = jax.jit(model.init)(jax.random.key(0), images[:8], images[8:])

  def loss(params, stats, batch):
    total, aux = casn.casn_loss(model, params, stats, batch, CASN_PAIRS)
    return total, (aux["metrics"], {"batch_stats": aux["batch_stats"]})
  return variables, batch, loss


CASES = {"qan": _qan_case, "eqface": _eqface_case, "netvlad": _netvlad_case,
         "adaface": _adaface_case, "casn": _casn_case}


def _check_grads_nonzero_finite(grads):
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(x)) for x in leaves)
  assert sum(float(jnp.sum(jnp.abs(x))) for x in leaves) > 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_jit_single_and_data_parallel(name):
  variables, batch, loss = CASES[name]()
  params, stats = variables["params"], variables.get("batch_stats", {})
  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (l1, aux1), g1 = step(params, stats, batch)
  assert np.isfinite(float(l1))
  _check_grads_nonzero_finite(g1)

  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  p8, s8 = jax.device_put((params, stats), NamedSharding(mesh, P()))
  b8 = jax.device_put(batch, NamedSharding(mesh, P("data")))
  assert len(jax.tree.leaves(b8)[0].sharding.device_set) == 8
  (l8, aux8), g8 = step(p8, s8, b8)
  np.testing.assert_allclose(l8, l1, rtol=2e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves((aux1, g1)), jax.tree.leaves((aux8, g8))):
    np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32),
                               rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("name", ["qan", "eqface", "netvlad", "adaface", "casn"])
def test_model_bfloat16_runs(name):
  builders = {
      "qan": lambda d: (qan.QAN(feature_dim=8, embedding_dim=8, dtype=d,
                                backbone_kwargs=TINY), (_images((2, 2, 32, 16, 3)),)),
      "eqface": lambda d: (eqface.EQFace(4, backbone="small_cnn", embedding_dim=8,
                                         quality_hidden=8, dtype=d, backbone_kwargs=TINY),
                           (_images((2, 32, 32, 3)),)),
      "netvlad": lambda d: (netvlad.VPRModel(backbone="small_cnn", num_clusters=4,
                                                 dtype=d, backbone_kwargs=TINY),
                            (_images((2, 32, 32, 3)),)),
      "adaface": lambda d: (adaface.MarginFaceModel(4, backbone="small_cnn", embedding_dim=8,
                                            dtype=d, backbone_kwargs=TINY),
                            (_images((2, 32, 32, 3)), jnp.array([0, 1]))),
      "casn": lambda d: (casn.CASN(4, backbone="small_cnn", feature_dim=8, dtype=d,
                                   backbone_kwargs=TINY),
                         (_images((2, 32, 16, 3)), _images((2, 32, 16, 3), 1))),
  }
  model, args = builders[name](jnp.bfloat16)
  variables = jax.jit(model.init)(jax.random.key(0), *args)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))
  out = jax.jit(model.apply)(variables, *args)
  if "feature_map" in out:
    assert out["feature_map"].dtype == jnp.bfloat16
  for x in jax.tree.leaves(out):
    assert np.all(np.isfinite(np.asarray(x, np.float32)))
  ref, _ = builders[name](jnp.float32)
  out32 = jax.jit(ref.apply)(variables, *args)
  key = {"qan": "embedding", "eqface": "cos", "netvlad": "descriptor", "adaface": "cos",
         "casn": "logits"}[name]
  np.testing.assert_allclose(np.asarray(out[key], np.float32), out32[key], atol=0.1)


@pytest.mark.parametrize("name", ["eqface_official", "gem", "arcface"])
def test_variants_forward_backward(name):
  """Heads / poolings not covered by the data-parallel test (1 device)."""
  case = {"eqface_official": lambda: _eqface_case("official"),
          "gem": lambda: _netvlad_case("gem"),
          "arcface": lambda: _adaface_case("arcface")}[name]
  variables, batch, loss = case()
  (l, _), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      variables["params"], variables.get("batch_stats", {}), batch)
  assert np.isfinite(float(l))
  _check_grads_nonzero_finite(g)
  if name == "gem":
    assert float(jnp.abs(g["gem_p"])) > 0


def test_avg_max_pooling_and_cosface_forward():
  images = _images((2, 32, 32, 3))
  v = None
  for pooling in ("avg", "max"):  # no pooling params: one init serves both
    model = netvlad.VPRModel(backbone="small_cnn", pooling=pooling,
                                 backbone_kwargs=TINY)
    v = jax.jit(model.init)(jax.random.key(0), images) if v is None else v
    out = jax.jit(model.apply)(v, images)
    assert out["descriptor"].shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(out["descriptor"], axis=-1), 1.0, rtol=1e-5)
  model = adaface.MarginFaceModel(4, backbone="small_cnn", embedding_dim=8, head="cosface",
                          backbone_kwargs=TINY)
  labels = jnp.array([1, 3])
  v = jax.jit(model.init)(jax.random.key(0), images, labels)
  out = jax.jit(model.apply)(v, images, labels)
  # CosFace: target logit s (cos - 0.35), others s cos.
  expected = 64.0 * (out["cos"] - 0.35 * jax.nn.one_hot(labels, 4))
  np.testing.assert_allclose(out["logits"], expected, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------
# Method-specific behaviour.


def test_eqface_param_groups_and_frozen_backbone_step():
  variables, batch, _ = _eqface_case()
  model = eqface.EQFace(6, backbone="small_cnn", embedding_dim=16, quality_hidden=8,
                        backbone_kwargs=TINY)
  params, stats = variables["params"], variables["batch_stats"]
  assert set(params) == set(eqface.GROUPS)
  labels = eqface.param_labels(params)
  assert set(jax.tree.leaves(labels)) == set(eqface.GROUPS)
  assert eqface.stage_trainable(2) == ("quality",)
  tx = eqface.masked_optimizer(optax.sgd(0.1), eqface.stage_trainable(2))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state):
    def loss(p):
      out, upd = model.apply({"params": p, "batch_stats": stats}, *batch["args"],
                             train=True, frozen_backbone=True, mutable=["batch_stats"])
      # Touches all three groups: without the mask every group would move.
      return _scalar(out) + jnp.mean(out["quality"] * out["cos"][:, 0]), upd
    (_, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), upd["batch_stats"], opt_state, g

  new, new_stats, _, grads = step(params, stats, opt_state)
  assert float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(grads["head"]))) > 0
  for a, b in zip(jax.tree.leaves(params["backbone"]), jax.tree.leaves(new["backbone"])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(params["head"]), jax.tree.leaves(new["head"])):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(params["quality"]), jax.tree.leaves(new["quality"])))
  # frozen_backbone: the backbone's BN statistics are not updated either.
  for a, b in zip(jax.tree.leaves(stats["backbone"]), jax.tree.leaves(new_stats["backbone"])):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="stage"):
    eqface.stage_trainable(4)


def test_eqface_applies_loss_6_given_labels():
  # The model's logits are eqface_logits of its cosines with the s_i that
  # loss_quality names; the quality head gets a gradient only from "trained".
  variables, batch, _ = _eqface_case()
  model = eqface.EQFace(6, backbone="small_cnn", embedding_dim=16, quality_hidden=8,
                        backbone_kwargs=TINY, scale=8.0, m2=0.3)
  labels = jnp.asarray([0, 1, 2, 3, 4, 5, -1, 0])
  kw = dict(scale=8.0, m1=1.0, m2=0.3, m3=0.0, quality_transform="paper", grad="exact")

  def quality_grad(mode):
    def loss(p):
      out = model.apply({**variables, "params": p}, *batch["args"], labels=labels,
                        loss_quality=mode)
      return jnp.sum(out["logits"]), out
    g, out = jax.grad(loss, has_aux=True)(variables["params"])
    s = {"one": jnp.ones_like(out["quality"])}.get(mode, out["quality"])
    want = margins.eqface_logits(out["cos"], labels, s, **kw)
    np.testing.assert_array_equal(out["logits"], want)
    return sum(float(jnp.sum(jnp.abs(x))) for x in jax.tree.leaves(g["quality"]))

  assert quality_grad("trained") > 0
  assert quality_grad("frozen") == 0 and quality_grad("one") == 0
  assert "logits" not in model.apply(variables, *batch["args"])
  with pytest.raises(ValueError, match="loss_quality"):
    model.apply(variables, *batch["args"], labels=labels, loss_quality="learned")


def test_adaface_stats_update_only_when_training():
  model = adaface.MarginFaceModel(6, backbone="small_cnn", embedding_dim=16, backbone_kwargs=TINY)
  images, labels = _images((4, 32, 32, 3)), jnp.array([0, 1, 2, -1])
  variables = jax.jit(model.init)(jax.random.key(0), images, labels)
  assert float(variables["adaface_stats"]["head"]["mean"]) == 20.0
  assert float(variables["adaface_stats"]["head"]["std"]) == 100.0
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  out = apply(variables, images, labels)  # eval: nothing mutable needed
  np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=-1), 1.0, rtol=1e-5)
  out, upd = apply(variables, images, labels, train=True,
                   mutable=("batch_stats", "adaface_stats"))
  norms = np.asarray(out["norm"])
  np.testing.assert_allclose(upd["adaface_stats"]["head"]["mean"],
                             0.01 * norms.mean() + 0.99 * 20.0, rtol=1e-5)
  np.testing.assert_allclose(upd["adaface_stats"]["head"]["std"],
                             0.01 * norms.std(ddof=1) + 0.99 * 100.0, rtol=1e-5)
  no_labels = apply(variables, images)
  np.testing.assert_allclose(no_labels["logits"], 64.0 * no_labels["cos"], rtol=1e-6)


def test_adaface_head_global_stats_under_shard_map():
  head = adaface.AdaFaceHead(5, axis_name="data")
  emb = jax.random.normal(jax.random.key(0), (16, 8)) * 3
  norms = jnp.linalg.norm(emb, axis=-1)
  labels = jnp.arange(16) % 5
  single = adaface.AdaFaceHead(5)  # same variables; psum needs shard_map
  variables = single.init(jax.random.key(1), emb, norms, labels)
  ref, ref_upd = single.apply(variables, emb, norms, labels, train=True,
                              mutable=["adaface_stats"])
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))

  def per_device(v, e, n, y):
    out, upd = head.apply(v, e, n, y, train=True, mutable=["adaface_stats"])
    return out["logits"], upd

  logits, upd = jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), P("data"), P("data"), P("data")),
      out_specs=(P("data"), P())))(variables, emb, norms, labels)
  np.testing.assert_allclose(logits, ref["logits"], rtol=1e-5, atol=1e-4)
  for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(ref_upd)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_netvlad_init_from_kmeans_and_pca_whitening():
  model = netvlad.VPRModel(backbone="small_cnn", num_clusters=4, pca_dim=3,
                               backbone_kwargs=TINY)
  images = _images((6, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(0), images)
  local = jax.jit(lambda v, x: model.apply(v, x, method=netvlad.VPRModel.local_descriptors))(
      variables, images)
  assert local.shape == (6, 16, 16)
  flat = local.reshape(-1, 16)
  centroids = netvlad_ops.kmeans(netvlad.descriptors_as_seen(model, flat), 4,
                                 key=jax.random.key(2), iters=5)
  params = netvlad.init_netvlad_params(model, variables["params"], centroids, flat)
  alpha = netvlad_ops.netvlad_alpha(netvlad.descriptors_as_seen(model, flat), centroids)
  np.testing.assert_allclose(params["vlad"]["assign_weight"], 2 * alpha * centroids,
                             rtol=1e-5)
  np.testing.assert_allclose(params["vlad"]["assign_bias"],
                             -alpha * np.sum(np.square(centroids), -1), rtol=1e-5)
  apply = jax.jit(model.apply)
  out = apply({**variables, "params": params}, images)
  assert out["pooled"].shape == (6, 4 * 16)
  np.testing.assert_allclose(np.linalg.norm(out["pooled"], axis=-1), 1.0, rtol=1e-4)
  # PCA-whitening fitted on the pooled vectors whitens them.
  vectors = jax.random.normal(jax.random.key(3), (50, 8)) * jnp.arange(1.0, 9.0)
  mean, proj = netvlad.fit_pca_whitening(vectors, 3)
  y = (vectors - mean) @ proj
  np.testing.assert_allclose(np.cov(np.asarray(y).T), np.eye(3), atol=1e-3)
  mean, proj = netvlad.fit_pca_whitening(out["pooled"], 3)
  params = netvlad.set_pca_params(params, mean, proj)
  out2 = apply({**variables, "params": params}, images)
  expected = (out["pooled"] - mean) @ proj
  expected = expected / np.linalg.norm(expected, axis=-1, keepdims=True)
  np.testing.assert_allclose(out2["descriptor"], expected, atol=1e-4)
  with pytest.raises(ValueError, match="dim="):
    netvlad.fit_pca_whitening(vectors, 60)


def test_qan_mask_and_quality():
  variables, batch, _ = _qan_case()
  model = qan.QAN(backbone="small_cnn", feature_dim=16, embedding_dim=8, num_parts=2,
                  num_classes=5, backbone_kwargs=TINY)
  images, mask = batch["args"]
  apply = jax.jit(model.apply)
  out = apply(variables, images, mask)
  assert out["quality"].shape == (8, 2, 2) and out["frame_features"].shape == (8, 2, 2, 16)
  assert np.all((out["quality"] > 0) & (out["quality"] < 1))
  # A padded frame's content does not change the set embedding (eval mode).
  changed = images.at[~mask].set(0)
  np.testing.assert_allclose(apply(variables, changed, mask)["embedding"], out["embedding"],
                             atol=1e-6)
  logits = jax.jit(lambda v, x: model.apply(v, x, method=qan.QAN.classify))(
      variables, images[:, 0])
  np.testing.assert_allclose(logits, out["frame_logits"][:, 0], rtol=1e-5, atol=1e-5)
  one_part = qan.QAN(feature_dim=4, embedding_dim=4, quality_input="image",
                     backbone_kwargs=TINY)
  v = jax.jit(one_part.init)(jax.random.key(0), images)
  o = jax.jit(one_part.apply)(v, images)
  assert o["quality"].shape == (8, 2) and o["frame_features"].shape == (8, 2, 4)
  with pytest.raises(ValueError, match="num_parts"):
    qan.horizontal_parts(jnp.zeros((1, 2, 2, 3)), 3)


def test_backbone_tap_returns_a_middle_map_and_the_same_last_map():
  x = _images((2, 32, 16, 3))
  plain = backbones.SmallCNN(**TINY)
  tapped = backbones.SmallCNN(**TINY, tap=2)
  variables = jax.jit(plain.init)(jax.random.key(0), x)
  mid, last = jax.jit(tapped.apply)(variables, x)  # the tap adds no parameter
  assert mid.shape == (2, 8, 4, 16) and last.shape == (2, 4, 2, 16)
  np.testing.assert_array_equal(last, jax.jit(plain.apply)(variables, x))
  r = backbones.ResNet18(tap=2)
  xr = jnp.zeros((1, 64, 64, 3), jnp.uint8)
  mid, last = jax.eval_shape(r.apply, jax.eval_shape(r.init, jax.random.key(0), xr), xr)
  assert mid.shape == (1, 8, 8, 128) and last.shape == (1, 2, 2, 512)
  with pytest.raises(ValueError, match="tap"):
    backbones.SmallCNN(**TINY, tap=4).init(jax.random.key(0), x)


def test_qan_middle_quality_reads_only_the_shared_blocks():
  """quality_input='middle' (QAN fig. 2): mu depends on the trunk's blocks up to
  the split and on the quality CNN, not on the blocks only the features use."""
  x = _images((2, 3, 32, 16, 3))
  for relu in (False, True):
    model = qan.QAN(feature_dim=4, embedding_dim=4, quality_input="middle", quality_tap=2,
                    quality_relu=relu, backbone_kwargs=TINY)
    v = jax.jit(model.init)(jax.random.key(0), x)
    mu = lambda p: jnp.sum(model.apply({**v, "params": p}, x)["quality"])
    g = jax.jit(jax.grad(mu))(v["params"])["trunk"]
    assert all(float(jnp.abs(g[f"conv{i}"]["kernel"]).max()) > 0 for i in (1, 2))
    assert all(float(jnp.abs(g[f"conv{i}"]["kernel"]).max()) == 0 for i in (3, 4))
  flat = qan.QAN(feature_dim=4, embedding_dim=4, quality_input="middle",
                 backbone_kwargs=TINY)
  bent = flat.clone(quality_relu=True)
  v = jax.jit(flat.init)(jax.random.key(0), x)
  assert not np.allclose(flat.apply(v, x)["quality"], bent.apply(v, x)["quality"])
  with pytest.raises(ValueError, match="quality_input"):
    qan.QAN(quality_input="mid", backbone_kwargs=TINY).init(jax.random.key(0), x)


def test_adaface_margin_quality_replaces_the_norm():
  model = adaface.MarginFaceModel(6, backbone="small_cnn", embedding_dim=16, backbone_kwargs=TINY)
  images, labels = _images((4, 32, 32, 3)), jnp.array([0, 1, 2, 3])
  variables = jax.jit(model.init)(jax.random.key(0), images, labels)
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  out, upd = apply(variables, images, labels, train=True, mutable=("batch_stats",
                                                                   "adaface_stats"))
  same, _ = apply(variables, images, labels, train=True, mutable=("batch_stats",
                                                                  "adaface_stats"),
                  margin_quality=out["norm"])
  np.testing.assert_allclose(same["logits"], out["logits"], rtol=1e-6)
  q = jnp.array([30.0, 10.0, 20.0, 25.0])
  other, upd_q = apply(variables, images, labels, train=True,
                       mutable=("batch_stats", "adaface_stats"), margin_quality=q)
  np.testing.assert_allclose(upd_q["adaface_stats"]["head"]["mean"],
                             0.01 * float(q.mean()) + 0.99 * 20.0, rtol=1e-6)
  assert not np.allclose(other["logits"], out["logits"])
  np.testing.assert_allclose(other["norm"], out["norm"], rtol=1e-6)


def test_casn_in_batch_pairs_equal_the_gathered_pair_batch():
  """A P x 2 batch with pk_pairs gives the objective (and gradient) of the batch
  of its pairs written out, images gathered: with K = 2 every image is in
  exactly two pairs, so the per-image terms and BatchNorm's statistics agree."""
  from jaxset.data.samplers.pk import pk_pairs
  variables, _, _ = _casn_case()
  model = _casn_model()
  images, labels = _images((8, 16, 8, 3)), jnp.arange(8) // 2
  a, b, same = pk_pairs(4, 2)
  gathered = {"images": jnp.concatenate([images[a], images[b]]),
              "labels": jnp.concatenate([labels[a], labels[b]])}
  m = len(a)
  cfg = casn.CASNLossConfig(indicator="positive")
  loss = lambda p, batch, pairs: casn.casn_loss(model, p, variables["batch_stats"], batch,
                                                pairs, config=cfg)
  # Jitted: one program per batch layout instead of hundreds of eager ops.
  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (l1, aux1), g1 = value_and_grad(
      variables["params"], {"images": images, "labels": labels}, (a, b, same))
  (l2, aux2), g2 = value_and_grad(
      variables["params"], gathered, (np.arange(m), m + np.arange(m), same))
  for key in ("id", "ia", "verification", "sa"):
    np.testing.assert_allclose(aux1["metrics"][key], aux2["metrics"][key], rtol=2e-4, atol=1e-6)
  assert float(aux1["metrics"]["verification"]) > 0 and float(aux1["metrics"]["ia"]) > 0
  np.testing.assert_allclose(l1, l2, rtol=2e-4)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-3, atol=2e-5), g1, g2)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
               aux1["batch_stats"], aux2["batch_stats"])
  with pytest.raises(AssertionError):
    loss(variables["params"], {"images": images, "labels": labels}, (a, b[:-1], same))


def test_casn_attention_terms_reach_backbone():
  """The attention losses alone (Grad-CAM inside) give finite, nonzero backbone grads."""
  variables, batch, _ = _casn_case()
  model = _casn_model()
  for cfg in (casn.CASNLossConfig(id_weight=0, verification_weight=0, sa_weight=0),
              # "positive": on this 4x2 map the "relative" indicator happens to give
              # one-hot profiles, whose max-normalised loss has zero gradient.
              casn.CASNLossConfig(id_weight=0, verification_weight=0, ia_weight=0,
                                  indicator="positive"),
              casn.CASNLossConfig(id_weight=0, verification_weight=0, ia_weight=0,
                                  siamese_map="signed")):
    loss = lambda p: casn.casn_loss(model, p, variables["batch_stats"], batch, CASN_PAIRS,
                                    config=cfg)[0]
    g = jax.jit(jax.grad(loss))(variables["params"])
    _check_grads_nonzero_finite(g["trunk"])
  with pytest.raises(ValueError, match="siamese_map"):
    casn.casn_loss(model, variables["params"], variables["batch_stats"], batch, CASN_PAIRS,
                   config=casn.CASNLossConfig(siamese_map="relu"))
  ind = casn.siamese_indicator(model, variables["params"], jnp.ones((2, 16)),
                               jnp.zeros((2, 16)))
  w = variables["params"]["verifier"]["kernel"][:, 0]
  np.testing.assert_array_equal(ind, np.broadcast_to(np.asarray(w) > 0, (2, 16)))


def test_casn_verifier_only_trains_the_verifier_alone():
  """verifier_only: the BCE's gradient reaches the verifier but none of the
  trunk, the embedding or the classifier; without it, it reaches the trunk.
  verification_acc is the share of pairs whose logit has the right sign."""
  variables, batch, _ = _casn_case()
  model = _casn_model()
  grads = {}
  for only in (True, False):
    cfg = casn.CASNLossConfig(id_weight=0, ia_weight=0, sa_weight=0, verifier_only=only)
    loss = lambda p, cfg=cfg: casn.casn_loss(model, p, variables["batch_stats"], batch,
                                             CASN_PAIRS, config=cfg)
    (total, aux), grads[only] = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables["params"])
    assert float(total) == pytest.approx(float(aux["metrics"]["verification"]))
  _check_grads_nonzero_finite(grads[True]["verifier"])
  for part in ("trunk", "embed", "embed_norm", "classifier"):
    assert all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves(grads[True][part]))
  _check_grads_nonzero_finite(grads[False]["trunk"])
  jax.tree.map(np.testing.assert_array_equal, grads[True]["verifier"],
               grads[False]["verifier"])
  # The pairs (i, 8 + i) written out: one BatchNorm batch of the same 16 images.
  out, _ = model.apply(variables, batch["images"][:8], batch["images"][8:], train=True,
                       mutable=["batch_stats"])
  want = np.mean((np.asarray(out["siamese_logits"]) > 0) == CASN_PAIRS[2].astype(bool))
  assert float(aux["metrics"]["verification_acc"]) == pytest.approx(want, abs=1e-6)


def test_casn_mining_mask_area_is_the_share_the_mask_covers():
  """ia_mask_area = mean soft mask: 0 when the threshold is above every map
  value (with a steep mask), 1 when below every value."""
  variables, batch, _ = _casn_case()
  model = _casn_model()
  areas = []
  for threshold in (2.0, -1.0):
    cfg = casn.CASNLossConfig(verification_weight=0, sa_weight=0, mask_scale=1e3,
                              mask_threshold=threshold)
    _, aux = casn.casn_loss(model, variables["params"], variables["batch_stats"], batch,
                            CASN_PAIRS, config=cfg)
    areas.append(float(aux["metrics"]["ia_mask_area"]))
  np.testing.assert_allclose(areas, [0.0, 1.0], atol=1e-6)


def test_casn_zero_verifier_starts_neutral_and_learns_the_right_sign():
  """verifier_init="zeros": logit 0 and no BCE gradient on the trunk at init
  (exactly with free signs; with nonpositive ones w = -1e-6); on pairs whose
  positives differ less than their negatives, the BCE's gradient on every w_j
  is positive, so descent makes w_j < 0 (a larger difference means
  "different"), the sign that pulls positives together."""
  images = _images((16, 16, 8, 3))
  batch = {"images": images, "labels": jnp.arange(16) % 5}
  cfg = casn.CASNLossConfig(id_weight=0, ia_weight=0, sa_weight=0)
  f = jax.random.normal(jax.random.key(1), (8, 16))
  same = np.arange(8) % 2
  f_b = f + jnp.where(same[:, None] == 1, 0.1, 2.0) * jax.random.normal(jax.random.key(2),
                                                                       (8, 16))
  for sign, tol in (("free", 0.0), ("nonpositive", 1e-4)):
    model = casn.CASN(5, backbone="small_cnn", feature_dim=16, backbone_kwargs=TINY,
                      verifier_sign=sign)
    variables = jax.jit(model.init)(jax.random.key(0), images[:8], images[8:])
    w = casn.verifier_weight(model, variables["params"])
    assert w.shape == (16,) and float(jnp.max(jnp.abs(w))) <= 1.1e-6
    (l, _), g = jax.value_and_grad(
        lambda p: casn.casn_loss(model, p, variables["batch_stats"], batch, CASN_PAIRS,
                                 config=cfg), has_aux=True)(variables["params"])
    np.testing.assert_allclose(float(l), np.log(2), rtol=1e-4)
    assert all(float(jnp.max(jnp.abs(x))) <= tol for x in jax.tree.leaves(g["trunk"]))
    bce = lambda p: jnp.mean(losses.verification_bce(
        model.apply({"params": p}, f, f_b, method=casn.CASN.siamese_logits), same))
    g_w = jax.grad(lambda p: bce(p))(variables["params"])["verifier"]
    # d L / d w_j > 0 on every dim (nonpositive: d L / d r_j = -2 r_j d L / d w_j < 0).
    got = g_w["kernel"][:, 0] if sign == "free" else -g_w["root"]
    assert np.all(np.asarray(got) > 0)
  with pytest.raises(ValueError, match="verifier_init"):
    casn.CASN(5, backbone="small_cnn", verifier_init="ones").init(
        jax.random.key(0), images[:2])
  with pytest.raises(ValueError, match="verifier_sign"):
    casn.CASN(5, backbone="small_cnn", verifier_sign="positive").init(
        jax.random.key(0), images[:2])


def test_casn_nonpositive_verifier_never_rewards_a_larger_difference():
  """On pairs whose POSITIVES differ more (a dim that tells identities apart
  backwards), descent on the BCE turns a free verifier's weights positive;
  the nonpositive verifier's stay <= 0 (they go to 0 instead), so its logit
  never rises with a difference."""
  f = jax.random.normal(jax.random.key(1), (64, 8))
  same = np.arange(64) % 2
  f_b = f + jnp.where(same[:, None] == 1, 2.0, 0.1) * jax.random.normal(jax.random.key(2),
                                                                       (64, 8))
  weights = {}
  for sign in ("free", "nonpositive"):
    model = casn.CASN(5, backbone="small_cnn", feature_dim=8, backbone_kwargs=TINY,
                      verifier_sign=sign, verifier_init="lecun_normal")
    x = jnp.zeros((2, 16, 8, 3), jnp.uint8)
    params = {"verifier": model.init(jax.random.key(0), x, x)[
        "params"]["verifier"]}
    bce = lambda p: jnp.mean(losses.verification_bce(
        model.apply({"params": p}, f, f_b, method=casn.CASN.siamese_logits), same))
    tx = optax.adam(1e-2)  # the embedded configs train with Adam
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, bce=bce, tx=tx):
      updates, opt = tx.update(jax.grad(bce)(params), opt)
      return optax.apply_updates(params, updates), opt

    for _ in range(200):
      params, opt = step(params, opt)
      assert float(jnp.max(casn.verifier_weight(model, params))) <= 0 or sign == "free"
    weights[sign] = np.asarray(casn.verifier_weight(model, params))
  assert np.all(weights["free"] > 0)
  assert np.all(weights["nonpositive"] <= 0) and np.max(np.abs(weights["nonpositive"])) < 0.05
