"""Datasets: tfds builders (embedded and real formats) and grain input pipelines.

`load(name, split)` is the one way to get a dataset: it prepares the builder on
first use (array_record files, TensorFlow-free) and returns a random-access
data source that grain reads. Real datasets read the user's local copy, given
as `manual_dir` (config flag `--config.data.dir`).
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
from pathlib import Path

# name -> "module:BuilderClass" (modules under jaxset.data). Imported lazily so
# that `import jaxset.data` stays cheap and tfds is only loaded when needed.
BUILDERS = {
    # embedded, generated deterministically on first use
    "synthetic_places": "synthetic_places:SyntheticPlaces",
    "synthetic_identities": "synthetic_identities:SyntheticIdentities",
    # place recognition
    "pittsburgh30k": "places:Pittsburgh30k",
    "pittsburgh250k": "places:Pittsburgh250k",
    "tokyo247": "places:Tokyo247",
    "msls": "places:Msls",
    "vpr_folder": "places:VprFolder",
    # image re-identification
    "market1501": "reid:Market1501",
    "dukemtmc_reid": "reid:DukeMTMCReID",
    "cuhk03_np": "reid:CUHK03NP",
    "msmt17": "reid:Msmt17",
    # video re-identification (sets)
    "mars": "video_reid:Mars",
    "prid2011": "video_reid:Prid2011",
    "ilids_vid": "video_reid:ILidsVid",
    # faces
    "lfw": "faces:Lfw",
    "face_bin": "faces:FaceBin",
    "ijb": "faces:Ijb",
    "youtube_faces": "faces:YoutubeFaces",
    "mxnet_recordio": "recordio:MxnetRecordio",
}

# Sources read in place, without a tfds copy: name -> "module:function(root,
# split)" returning a random-access source with a metadata() method. Training
# on them starts at once (RecordIO: MS1M's 5.8M images are not copied).
DIRECT = {
    "recordio": "recordio:open_split",        # <dir>/train.rec + train.idx (insightface)
    "face_folder": "faces:open_folder_split",  # <dir>/<identity>/<image>
}

# The datasets that build themselves offline; every other one reads the user's copy.
EMBEDDED = ("synthetic_places", "synthetic_identities")


def default_data_dir() -> Path:
  """Where prepared datasets live: $JAXSET_DATA_DIR or ~/.cache/jaxset/datasets."""
  return Path(os.environ.get("JAXSET_DATA_DIR", Path.home() / ".cache" / "jaxset" / "datasets"))


def builder_class(name: str):
  """The tfds builder class registered under `name`."""
  if name not in BUILDERS:
    raise ValueError(
        f"unknown dataset {name!r}. Known datasets: {', '.join(sorted(BUILDERS))}.")
  module, cls = BUILDERS[name].split(":")
  return getattr(importlib.import_module(f"jaxset.data.{module}"), cls)


def builder(name: str, *, data_dir=None, manual_dir=None, config=None, **kwargs):
  """Makes the tfds builder for `name`, prepared on first use.

  Args:
    name: a key of BUILDERS.
    data_dir: where prepared array_record files go (default_data_dir()).
    manual_dir: the user's local copy of a real dataset (ignored by the
      embedded ones).
    config: a tfds BuilderConfig name, e.g. a size of an embedded dataset.
    **kwargs: passed to the builder's constructor.
  """
  import tensorflow_datasets as tfds

  cls = builder_class(name)
  data_dir = Path(data_dir) if data_dir else default_data_dir()
  dl_config = tfds.download.DownloadConfig(
      manual_dir=str(manual_dir) if manual_dir else None)
  # Built under the lock too: a builder made before another process finished
  # preparing would not know the files' format.
  with _prepare_lock(data_dir, name):
    b = cls(data_dir=str(data_dir), config=config, **kwargs) if config else cls(
        data_dir=str(data_dir), **kwargs)
    b.download_and_prepare(download_config=dl_config, file_format="array_record")
  return b


@contextlib.contextmanager
def _prepare_lock(data_dir: Path, name: str):
  """Holds an exclusive lock on <data_dir>/.<name>.prepare.lock: two processes
  preparing one dataset at once (two runs started together on a fresh
  machine) would race to rename the same folder, so the second waits and then
  finds it prepared. A data_dir where no lock file can be written (a read-only
  copy of prepared data) is used without one."""
  try:
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / f".{name}.prepare.lock", "a")
  except OSError:
    yield
    return
  with lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def open_direct(name: str, root, split: str):
  """The split of a DIRECT source at `root` (the user's folder)."""
  module, fn = DIRECT[name].split(":")
  return getattr(importlib.import_module(f"jaxset.data.{module}"), fn)(root, split)


def load(name: str, split: str, **kwargs):
  """A random-access data source over one split (records are dicts of numpy)."""
  return builder(name, **kwargs).as_data_source(split)
