"""The face benchmarks of `python -m train.eval` against the protocols, written here
from their descriptions (docs/evaluation.md): insightface's eval/verification.py
for .bin sets, eval_ijbc.py for IJB-C templates, and converted torch weights.
"""
import pickle
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxset import convert
from jaxset.data import export
from jaxset.models import backbones
from tests import torch_reference as tr
from tests.train_helpers import ROOT, env
from train import eval_embed, eval_faces, evaluators

torch.set_num_threads(2)


# --------------------------------------------------------------------------
# References, from the protocol descriptions.


def insightface_reference(emb, flip_emb, issame, folds=10):
  """verification.test: XNorm over every embedding, the flip sum normalised,
  squared L2, sequential folds (the first n % folds one larger), threshold
  0..3.99 step 0.01 with the best training accuracy (first on ties) applied
  to the test fold; mean and population std of the fold accuracies."""
  norms = [np.linalg.norm(e, axis=1) for e in (emb, flip_emb)]
  xnorm = float(np.mean(np.concatenate(norms)))
  e = emb.astype(np.float64) + flip_emb.astype(np.float64)
  e = e / np.linalg.norm(e, axis=1, keepdims=True)
  dist = np.sum((e[0::2] - e[1::2]) ** 2, axis=1)
  same = np.asarray(issame, bool)
  n = len(same)
  sizes = [n // folds + (1 if i < n % folds else 0) for i in range(folds)]
  starts = np.cumsum([0] + sizes)
  thresholds = np.arange(0, 4, 0.01)
  accs = []
  for k in range(folds):
    test = np.zeros(n, bool)
    test[starts[k]:starts[k + 1]] = True
    best_t, best_acc = None, -1.0
    for t in thresholds:
      acc = np.mean((dist[~test] < t) == same[~test])
      if acc > best_acc:
        best_t, best_acc = t, acc
    accs.append(np.mean((dist[test] < best_t) == same[test]))
  return xnorm, float(np.mean(accs)), float(np.std(accs))


def _projection(image_size, dim=16, seed=0):
  """A deterministic stand-in model: a fixed random projection of the pixels."""
  h, w = image_size
  rng = np.random.default_rng(seed)
  variables = {"w": jnp.asarray(rng.standard_normal((h * w * 3, dim)) / (h * w * 3) ** .5,
                                jnp.float32)}

  def apply(v, x):
    x = (jnp.asarray(x, jnp.float32) - 127.5) / 127.5
    return {"embedding": x.reshape(x.shape[0], -1) @ v["w"]}
  return evaluators.Embedder(apply, variables, image_size, batch_size=32, progress=False)


class _Config(dict):
  """The few config keys the benchmarks read (config.eval.* / config.data.*)."""
  __getattr__ = dict.__getitem__


def _config(**eval_keys):
  return _Config(eval=_Config(dict(dir="", sets="", flip=True, far=1e-3, resize=False,
                                   val_interpolation="insightface", ijb_norm=False,
                                   ijb_detector=False, ijb_align=True), **eval_keys),
                 data=_Config(dir=""))


# --------------------------------------------------------------------------
# .bin sets.


@pytest.fixture(scope="module")
def faces_folder(tiny_data, tmp_path_factory):
  """An insightface training folder (train.rec/.idx/property, lfw.bin) and an
  IJB-C folder of the tiny synthetic identities, 64x32, written once."""
  out = tmp_path_factory.mktemp("faces")
  export.export("insightface", out / "faces_emore", data_dir=tiny_data)
  export.export("ijb", out / "IJBC", data_dir=tiny_data)
  return out


def test_bin_table_equals_insightface_verification(faces_folder):
  embed = _projection((64, 32))
  cfg = _config(dir=str(faces_folder / "faces_emore"))
  result = eval_faces.face_bin(embed, cfg)
  images, issame = eval_faces.load_bin(faces_folder / "faces_emore" / "lfw.bin", (64, 32))
  emb, flip = embed(images)["embedding"], embed(images[:, :, ::-1])["embedding"]
  xnorm, acc, std = insightface_reference(emb, flip, issame)
  assert f"[lfw]XNorm: {xnorm:f}" in result.text
  assert f"[lfw]Accuracy-Flip: {acc:1.5f}+-{std:1.5f}" in result.text
  assert result.metrics["lfw_acc"] == pytest.approx(acc, abs=1e-12)
  assert result.metrics["lfw_acc_std"] == pytest.approx(std, abs=1e-12)
  assert result.metrics["bin_acc_mean"] == result.metrics["lfw_acc"]
  assert 0 <= result.metrics["lfw_val"] <= 1 and "lfw_erc" in result.curves


def test_bin_of_another_image_size_names_file_and_fix(faces_folder):
  with pytest.raises(ValueError, match=r"lfw\.bin image 0.*64x32.*data\.image_size.*"
                     r"eval\.resize=True"):
    eval_faces.face_bin(_projection((32, 32)), _config(dir=str(faces_folder / "faces_emore")))
  resized = eval_faces.face_bin(_projection((32, 32)),
                                _config(dir=str(faces_folder / "faces_emore"), resize=True))
  assert 0 <= resized.metrics["lfw_acc"] <= 1


def test_bin_folder_without_bins_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="insightface .bin files.*--config.eval.dir"):
    eval_faces.face_bin(_projection((64, 32)), _config(dir=str(tmp_path)))


# --------------------------------------------------------------------------
# IJB-C.


def _ijb_reference(root, embed):
  """eval_ijbc with the F flag: image feature + mirror's, L2, mean per media,
  sum per template, L2; cosine per template pair."""
  meta = root / "meta"
  rows = [ln.split() for ln in (meta / "ijbc_face_tid_mid.txt").read_text().splitlines()]
  feats = []
  for name, _, _ in rows:
    img = eval_faces._decode((root / "loose_crop" / name).read_bytes(), name)
    marks = [ln.split() for ln in (meta / "ijbc_name_5pts_score.txt").read_text().splitlines()
             if ln.split()[0] == name][0]
    img = eval_faces.align_face(img, np.asarray(marks[1:11], float).reshape(5, 2), (64, 32))
    x = img[None]
    f = embed(x)["embedding"][0] + embed(x[:, :, ::-1])["embedding"][0]
    feats.append(f / np.linalg.norm(f))
  templates = {}
  for (_, t, m), f in zip(rows, feats):
    templates.setdefault(int(t), {}).setdefault(int(m), []).append(f)
  tf = {}
  for t, media in templates.items():
    v = sum(np.mean(fs, axis=0) for fs in media.values())
    tf[t] = v / np.linalg.norm(v)
  pairs = [tuple(int(x) for x in ln.split())
           for ln in (meta / "ijbc_template_pair_label.txt").read_text().splitlines()]
  return np.array([tf[a] @ tf[b] for a, b, _ in pairs]), np.array([s for *_, s in pairs])


def test_ijb_equals_eval_ijbc_templates_and_tar(faces_folder):
  from jaxset.eval import tar_at_far
  embed = _projection((64, 32))
  root = faces_folder / "IJBC"
  result = eval_faces.ijb(embed, _config(dir=str(root)))
  scores, same = _ijb_reference(root, embed)
  for method in ("insightface", "floor"):
    want = tar_at_far(scores, same, method=method)["tar"]
    for far, tar in want.items():
      assert result.metrics[f"tar@far={far:g}_{method}"] == pytest.approx(tar, abs=1e-9)
  assert "IJBC 1:1 insightface [F]" in result.text and "gallery" in result.text
  assert 0 <= result.metrics["1n_rank1"] <= result.metrics["1n_rank5"] <= 1


def test_ijb_folder_without_meta_files_names_them(tmp_path):
  (tmp_path / "loose_crop").mkdir()
  with pytest.raises(FileNotFoundError, match=r"ijbc_face_tid_mid\.txt.*--config\.eval\.dir"):
    eval_faces.ijb(_projection((64, 32)), _config(dir=str(tmp_path)))


def test_identification_by_hand():
  g = np.eye(3)
  p = np.array([[1, 0, 0], [0, 0.9, 0.1], [0.6, 0.8, 0]])
  r = eval_faces.identification(p / np.linalg.norm(p, axis=1, keepdims=True), [1, 2, 9],
                                g, [1, 2, 3], fpirs=(0.5,), ranks=(1,))
  assert r["rank1"] == 1.0  # both mated probes find their subject first
  # one non-mated probe (best score 0.8): at FPIR 0.5 the threshold is 0.8 and
  # both mated probes score above it.
  assert r["tpir@fpir=0.5"] == 1.0


def _dense_identification(p, ps, g, gs, fpirs, ranks):
  """The 1:N protocol on the whole [probes, gallery] score matrix, float64."""
  s = p @ g.T
  order = np.argsort(-s, axis=1, kind="stable")
  hit = gs[order] == ps[:, None]
  mated = np.isin(ps, gs)
  out = {f"rank{k}": float(hit[mated, :k].any(1).mean()) for k in ranks}
  top = s.max(axis=1)
  nonmated = np.sort(top[~mated])[::-1]
  for fpir in fpirs:
    n = int(np.floor(fpir * nonmated.size))
    thr = nonmated[n] if n < nonmated.size else -np.inf
    out[f"tpir@fpir={fpir:g}"] = float((hit[mated, 0] & (top[mated] > thr)).mean())
  return out


def test_identification_by_top_k_search_equals_the_dense_matrix():
  rng = np.random.default_rng(3)
  g = rng.normal(size=(23, 16))
  gs = rng.permutation(100)[:23]
  ps = np.concatenate([rng.choice(gs, 30), 200 + np.arange(11)])  # 11 non-mated
  p = np.concatenate([g[[list(gs).index(x) for x in ps[:30]]] + 2.5 * rng.normal(size=(30, 16)),
                      rng.normal(size=(11, 16))])
  p /= np.linalg.norm(p, axis=1, keepdims=True)
  g /= np.linalg.norm(g, axis=1, keepdims=True)
  fpirs, ranks = (0.1, 0.3, 0.5), (1, 5, 10, 40)  # 40 > the gallery: every template
  want = _dense_identification(p, ps, g, gs, fpirs, ranks)
  assert 0 < want["rank1"] < want["rank5"] < 1  # a case where the ranks differ
  # query_block 8: the probes go through the search in five blocks.
  got = eval_faces.identification(p, ps, g, gs, fpirs=fpirs, ranks=ranks, query_block=8)
  assert got == pytest.approx(want, abs=0, rel=0)


# --------------------------------------------------------------------------
# Converted torch weights through the command.


def test_iresnet100_converted_parity():
  net = tr.randomize_(tr.torch_iresnet100(fc_scale=2 * 2), seed=5)
  images = np.random.default_rng(6).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  with torch.no_grad():
    _, emb = net(torch.from_numpy(((images - 127.5) / 128.0).astype(np.float32)
                                  .transpose(0, 3, 1, 2).copy()))
  variables = convert.convert_state_dict(net.state_dict(), "iresnet100")
  out = backbones.FaceEmbedder("iresnet100").apply(variables, jnp.asarray(images))
  scale = max(1.0, float(np.abs(emb.numpy()).max()))
  np.testing.assert_allclose(out["embedding"] / scale, emb.numpy() / scale, atol=1e-4, rtol=0)


def test_eval_command_on_converted_torch_weights_equals_verification(tmp_path):
  """Torch IResNet-50 (random) -> .pt -> jaxset.convert -> train.eval --weights on a .bin;
  the printed XNorm and Accuracy-Flip equal the protocol on the torch embeddings."""
  net = tr.randomize_(tr.torch_iresnet50(fc_scale=2 * 2), seed=7)
  torch.save(net.state_dict(), tmp_path / "model.pt")
  rng = np.random.default_rng(8)
  base = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
  a, b, same = [], [], []
  for i in range(40):  # 20 genuine (noisy copies of one base image), 20 impostor
    j = i % 10
    k = j if i < 20 else (j + 1 + i % 9) % 10
    a.append(base[j])
    noise = rng.integers(-40, 40, base[k].shape)
    b.append(np.clip(base[k].astype(int) + noise, 0, 255).astype(np.uint8))
    same.append(i < 20)
  order = rng.permutation(40)
  export.write_bin(tmp_path / "bins" / "lfw.bin", [a[i] for i in order], [b[i] for i in order],
                   [same[i] for i in order])
  run = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env(),  # noqa: E731
                                     capture_output=True, text=True, timeout=600)
  r = run("jaxset.convert", "--arch=iresnet50", f"--checkpoint={tmp_path / 'model.pt'}",
          f"--out={tmp_path / 'w.msgpack'}")
  assert r.returncode == 0, r.stderr[-2000:]
  r = run("train.eval", "--config=configs/pretrained.py", f"--weights={tmp_path / 'w.msgpack'}",
          "--config.data.image_size=(32, 32)", f"--config.eval.dir={tmp_path / 'bins'}",
          f"--out={tmp_path / 'report'}")
  assert r.returncode == 0, r.stderr[-3000:]
  # insightface's side: the .bin decoded, each image and its mirror through torch.
  bins, issame = pickle.loads((tmp_path / "bins" / "lfw.bin").read_bytes())
  imgs = np.stack([eval_faces._decode(x, "") for x in bins])
  with torch.no_grad():
    def embed(x):  # arcface_torch's input: ((x / 255) - 0.5) / 0.5, NCHW
      t = torch.from_numpy((((x / 255.0) - 0.5) / 0.5).astype(np.float32).transpose(0, 3, 1, 2)
                           .copy())
      return net(t)[1].numpy()
    emb, flip = embed(imgs), embed(imgs[:, :, ::-1])
  xnorm, acc, std = insightface_reference(emb, flip, issame)
  assert f"[lfw]Accuracy-Flip: {acc:1.5f}+-{std:1.5f}" in r.stdout, r.stdout
  printed = float(re.search(r"\[lfw\]XNorm: ([\d.]+)", r.stdout).group(1))
  assert printed == pytest.approx(xnorm, rel=1e-4)
  assert (tmp_path / "report" / "report.json").is_file()
  assert 0.5 < acc  # the pairs are separable enough for the check to mean something


def test_weights_of_another_architecture_names_the_fix(tmp_path):
  variables = backbones.FaceEmbedder("iresnet50").init(
      __import__("jax").random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  convert.save_variables(dict(variables), tmp_path / "w.msgpack")
  r = subprocess.run([sys.executable, "-m", "train.eval", "--config=configs/pretrained.py",
                      f"--weights={tmp_path / 'w.msgpack'}", "--config.model.backbone=iresnet100",
                      "--config.data.image_size=(32, 32)", f"--config.eval.dir={tmp_path}"],
                     cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 1
  assert "does not fit config.model.backbone='iresnet100'" in r.stderr
  assert "--config.model.backbone" in r.stderr and "w.msgpack" in r.stderr


# --------------------------------------------------------------------------
# Embedding export (benchmark "embed").


def test_embed_writes_npy_and_resumes(faces_folder, tiny_data, tmp_path):
  export.export("folder", tmp_path / "folder", data_dir=tiny_data)
  embed = _projection((64, 32))
  embed.out = tmp_path / "emb"
  cfg = _config(dir=str(tmp_path / "folder"), chunk=100, flip=False)
  r = eval_embed.embed_split(embed, cfg)
  emb = np.load(tmp_path / "emb" / "embeddings.npy")
  labels = np.load(tmp_path / "emb" / "labels.npy")
  ids = np.load(tmp_path / "emb" / "ids.npy")
  assert emb.shape == (240, 16) and r.rows[0]["resumed_chunks"] == 0
  assert sorted(set(labels.tolist())) == list(range(10)) and ids[0].endswith(".jpg")
  from PIL import Image
  first = np.asarray(Image.open(tmp_path / "folder" / ids[0]).convert("RGB"))
  np.testing.assert_allclose(emb[0], embed(first[None])["embedding"][0], rtol=1e-5, atol=1e-6)
  (tmp_path / "emb" / "parts" / "part-0000000100.npz").unlink()  # stopped mid-way
  r2 = eval_embed.embed_split(embed, cfg)
  assert r2.rows[0]["resumed_chunks"] == 2
  np.testing.assert_array_equal(np.load(tmp_path / "emb" / "embeddings.npy"), emb)
  with pytest.raises(ValueError, match="chunks of another job.*another --out"):
    eval_embed.embed_split(embed, _config(dir=str(tmp_path / "folder"), chunk=50, flip=False))
