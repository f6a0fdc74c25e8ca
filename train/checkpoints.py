"""Checkpoint integrity and the workdir's safety checks (used by train/loop.py).

Orbax writes a step atomically (a temporary folder renamed when the save is
final), which protects against a killed process but not against damage
afterwards: a truncated or overwritten file, a garbled _METADATA, a half
copied folder. So every finished step gets a digest manifest beside it,
<checkpoints>/<step>.digest.json, the SHA-256 and size of every file of the
step. On resume the newest step whose files match its manifest is restored;
a step that does not match (or cannot be read at all) is moved aside to
<checkpoints>/<step>.damaged-<n> (nothing is deleted) with a warning naming
what failed, and the previous step is tried. A step with no manifest (saved by
an older jaxset, or killed between orbax's rename and the manifest) is
restored with a warning that it could not be checked. If no step can be
restored the error names the folder and the fix.

A workdir also remembers its config (config.json). Resuming it with a config
that differs in what shapes the state or the data (anything but the `train.*`
and `eval.*` schedules, `distributed` and the data folders) is refused before
anything in the workdir is written; `--config.train.allow_config_change=True`
resumes anyway.

Hashing reads every checkpoint file once after its save (roughly a second
per GB), and the save is waited for before the manifest is written.

The best checkpoint (<workdir>/best: one step, by config.eval.best_metric)
is replaced, never overwritten in place: the new one is written beside it
(best.tmp-*), checked by its digest, and swapped in by renames, with its
metrics in best/best.json. So a resume from any kept step, including one
older than the best (after a damaged newest checkpoint was moved aside),
never fails on a step the best folder already holds, and never loses a
better best: on resume the run's best is the better of the restored step's
record and best/best.json (or, for a best folder written without one, its
eval line in metrics.jsonl).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

DIGEST_SUFFIX = ".digest.json"
# Keys that may change when a run resumes: schedules, logging, where data lives,
# the Partial FC head's block size (memory and speed only).
RESUMABLE_PREFIXES = ("train.", "eval.", "distributed", "data.dir", "data.cache_dir",
                      "model.classifier.chunk_classes")

# Keys added after runs were saved, with the value that means what their
# absence meant: a config.json without them compares as if it held these.
ADDED_KEYS = {"data.holdout_identities": 0.0, "data.holdout_seed": 0}


class CheckpointError(RuntimeError):
  """No usable checkpoint; the message names the folder and the fix."""


class DamagedCheckpoint(CheckpointError):
  """A step's files do not match its digest manifest."""


class ConfigMismatchError(RuntimeError):
  """The workdir was written by a different config."""


# --------------------------------------------------------------------------
# Digests.


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def digest_path(directory: Path, step: int) -> Path:
  return Path(directory) / f"{step}{DIGEST_SUFFIX}"


def step_dirs(directory: Path) -> list[int]:
  """The finished steps in `directory` (orbax's <step> folders), ascending."""
  directory = Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def write_digest(directory: Path, step: int) -> Path:
  """Writes <directory>/<step>.digest.json for a finished step; prunes stale ones."""
  directory = Path(directory)
  root = directory / str(step)
  files = {str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": _sha256(p)}
           for p in sorted(root.rglob("*")) if p.is_file()}
  out = digest_path(directory, step)
  tmp = out.with_name(out.name + ".tmp")
  tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
  tmp.replace(out)  # atomic: a manifest is complete or absent
  kept = set(step_dirs(directory))
  for p in directory.glob(f"*{DIGEST_SUFFIX}"):
    name = p.name[:-len(DIGEST_SUFFIX)]
    if name.isdigit() and int(name) not in kept:
      p.unlink()
  return out


def verify(directory: Path, step: int) -> bool:
  """True if the step matches its manifest, False if it has none.

  Raises DamagedCheckpoint naming the first file that is missing, has another
  size or another digest (or an unreadable manifest).
  """
  directory = Path(directory)
  manifest = digest_path(directory, step)
  if not manifest.exists():
    return False
  try:
    files = json.loads(manifest.read_text())["files"]
  except (ValueError, KeyError, TypeError) as e:
    raise DamagedCheckpoint(f"its digest manifest {manifest} is unreadable ({e})") from None
  root = directory / str(step)
  for rel, want in files.items():
    path = root / rel
    if not path.is_file():
      raise DamagedCheckpoint(f"{path} is missing")
    size = path.stat().st_size
    if size != want["size"]:
      raise DamagedCheckpoint(f"{path} has {size} bytes, {want['size']} when saved (truncated?)")
    if _sha256(path) != want["sha256"]:
      raise DamagedCheckpoint(f"{path} differs from the file saved (SHA-256 mismatch)")
  return True


def last_good_step(directory: Path) -> int | None:
  """The newest step that matches its manifest (None if none does)."""
  for step in reversed(step_dirs(directory)):
    try:
      if verify(directory, step):
        return step
    except DamagedCheckpoint:
      continue
  return None


def _move_aside(directory: Path, step: int) -> Path:
  n = 0
  while (target := Path(directory) / f"{step}.damaged-{n}").exists():
    n += 1
  (Path(directory) / str(step)).rename(target)
  manifest = digest_path(directory, step)
  if manifest.exists():
    manifest.rename(target.with_name(target.name + DIGEST_SUFFIX))
  return target


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def restore_newest_good(directory: Path, open_manager: Callable[[], Any],
                        restore_step: Callable[[Any, int], Any],
                        warn: Callable[[str], None]):
  """Restores the newest intact step; returns (manager, step, restored).

  restore_step(manager, step) does the orbax restore. A step that fails its
  manifest, or that has no manifest and fails to restore, is moved aside and
  the previous one tried. A step whose files match their manifest but do not
  restore is not damaged: the run's state no longer fits it (another config
  or code), and that is an error, with nothing moved.
  """
  directory = Path(directory)
  manager = open_manager()
  moved = []
  for step in reversed(step_dirs(directory)):
    try:
      checked = verify(directory, step)
    except DamagedCheckpoint as e:
      reason = str(e)
    else:
      if not checked:
        warn(f"warning: checkpoint step {step} in {directory} has no digest manifest "
             f"(saved by an older jaxset, or killed before it was written); its files "
             "cannot be checked.")
      try:
        return manager, step, restore_step(manager, step)
      except Exception as e:  # orbax, tensorstore and grain raise many types
        if checked:
          raise CheckpointError(
              f"checkpoint step {step} in {directory} is intact (its files match their "
              f"digests) but does not restore into this run's state ({_first_line(e)}). "
              "The code or config that wrote it differs from this one: resume with the "
              "config it was written with (config.json in the workdir), or use a new "
              "--workdir.") from None
        reason = f"it could not be read ({_first_line(e)})"
    manager.close()
    target = _move_aside(directory, step)
    moved.append(target)
    warn(f"warning: checkpoint step {step} in {directory} is damaged: {reason}. Moved it to "
         f"{target}; falling back to the previous checkpoint.")
    manager = open_manager()
  manager.close()
  raise CheckpointError(
      f"no readable checkpoint in {directory}: every step was damaged and moved aside "
      f"({', '.join(p.name for p in moved)}). Nothing was deleted. To start again from "
      f"step 0, remove or rename {directory}; to recover, restore the folder from a copy.")


# --------------------------------------------------------------------------
# The best checkpoint.

BEST_JSON = "best.json"


def best_record(workdir: Path, metric: str) -> dict | None:
  """The metrics of the checkpoint in <workdir>/best (with "step"), or None.

  Read from best/best.json; a best folder saved by an older jaxset has none,
  and its step's eval line in <workdir>/metrics.jsonl is used instead.
  """
  best = Path(workdir) / "best"
  steps = step_dirs(best)
  if not steps:
    return None
  step = steps[-1]
  # A missing or unreadable best.json falls back to metrics.jsonl below.
  with contextlib.suppress(OSError, ValueError):
    rec = json.loads((best / BEST_JSON).read_text())
    if int(rec.get("step", -1)) == step and metric in rec:
      return rec
  found = None
  try:
    with open(Path(workdir) / "metrics.jsonl") as f:
      for line in f:
        try:
          r = json.loads(line)
        except ValueError:
          continue
        if r.get("split") == "eval" and r.get("step") == step and metric in r:
          found = {k: v for k, v in r.items() if k not in ("split", "time")}
  except OSError:
    return None
  return found


def better_best(current: dict | None, saved: dict | None, metric: str) -> dict | None:
  """The better of two best records (higher `metric`; `current` on ties)."""
  if saved is None or metric not in saved:
    return current
  if current is None or metric not in current or saved[metric] > current[metric]:
    return saved
  return current


def save_best(workdir: Path, step: int, save: Callable[[Path], None], record: dict,
              is_chief: bool = True, barrier: Callable[[str], None] | None = None) -> Path:
  """Replaces <workdir>/best with step `step`, by renames (see the module doc).

  save(directory) writes the checkpoint of `step` into the fresh folder
  `directory` (an orbax manager there) and returns once it is final. The old
  best folder is deleted only after the new one is complete and in place.
  """
  import shutil
  workdir = Path(workdir)
  best = workdir / "best"
  tmp = workdir / f"best.tmp-{step}"
  if is_chief and tmp.exists():
    shutil.rmtree(tmp)  # a replacement interrupted earlier: never the live best
  if barrier:
    barrier("best_tmp_clean")
  save(tmp)
  if barrier:
    barrier("best_saved")
  if is_chief:
    write_digest(tmp, step)
    (tmp / BEST_JSON).write_text(json.dumps(dict(record, step=step), indent=1))
    old = workdir / f"best.old-{step}"
    if old.exists():
      shutil.rmtree(old)
    if best.exists():
      best.rename(old)
    tmp.rename(best)
    if old.exists():
      shutil.rmtree(old)
  if barrier:
    barrier("best_swapped")
  return best


def recover_best(workdir: Path) -> None:
  """Puts back a best folder whose replacement was interrupted between renames."""
  workdir = Path(workdir)
  best = workdir / "best"
  if best.exists():
    return
  olds = sorted(workdir.glob("best.old-*"))
  if olds:
    olds[-1].rename(best)


# --------------------------------------------------------------------------
# The workdir's config.


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def check_config(workdir: Path, config) -> None:
  """Refuses to resume a workdir written by another config (see the module doc).

  Runs before anything is written. Only a workdir with a checkpoint and a
  config.json is checked; a changed key under RESUMABLE_PREFIXES is fine.
  """
  workdir = Path(workdir)
  saved_path = workdir / "config.json"
  if not saved_path.is_file() or not step_dirs(workdir / "checkpoints"):
    return
  if config.get("train", {}).get("allow_config_change", False):
    return
  try:
    saved = _flatten(json.loads(saved_path.read_text()))
  except ValueError as e:
    raise ConfigMismatchError(
        f"{saved_path} is not valid JSON ({e}); it cannot be compared with this config. "
        "Restore the file, or pass --config.train.allow_config_change=True to resume "
        "anyway (it is then rewritten).") from None
  new = _flatten(json.loads(config.to_json_best_effort()))
  saved = {**{k: v for k, v in ADDED_KEYS.items() if k in new}, **saved}
  diff = [k for k in sorted(set(saved) | set(new))
          if saved.get(k, "<absent>") != new.get(k, "<absent>")
          and not k.startswith(RESUMABLE_PREFIXES)]
  if diff:
    shown = "; ".join(f"{k}: {saved.get(k, '<absent>')!r} there, {new.get(k, '<absent>')!r} now"
                      for k in diff[:8])
    raise ConfigMismatchError(
        f"{workdir} holds a run of another config ({len(diff)} key(s) differ: {shown}). "
        f"Nothing in it was changed. Use a new --workdir for this config, run with the "
        f"config in {saved_path}, or pass --config.train.allow_config_change=True to "
        "resume anyway (the checkpoint's shapes must still fit).")


# --------------------------------------------------------------------------
# Full disks.

_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_DISK_TEXT = re.compile(r"No space left on device|File too large|Disk quota exceeded")
_PATH_IN_TEXT = re.compile(r"(/[^\s\"'\]\[:,]+)")


def disk_full_message(exc: BaseException, workdir: Path) -> str | None:
  """One line for an exception caused by a full disk or a file-size limit, else None."""
  seen = set()
  e: BaseException | None = exc
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    where = None
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
      where, what = e.filename, e.strerror
    elif _DISK_TEXT.search(str(e)):
      what = _DISK_TEXT.search(str(e)).group(0)
      paths = [p for p in _PATH_IN_TEXT.findall(str(e)) if str(workdir) in p]
      where = max(paths, key=len) if paths else None  # the deepest: the file itself
    else:
      e = e.__cause__ or e.__context__
      continue
    where = where or str(workdir)
    return (f"error: could not write {where}: {what} (the disk is full or a file-size "
            f"limit was hit). Free space under {workdir} (or raise the limit) and run the "
            "same command again: it resumes from the last good checkpoint.")
  return None


class _DropDiskFullRecords(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      text += str(record.exc_info[1])
    return not _DISK_TEXT.search(text)


def quiet_disk_full_logs() -> None:
  """Drops orbax's background-thread log records of a full disk (each with a
  traceback, hundreds of lines); the entry point prints one message instead."""
  for name in ("absl", ""):
    logging.getLogger(name).addFilter(_DropDiskFullRecords())


class _StderrWithoutFailedWriteTracebacks:
  """sys.stderr, minus the traceback blocks of a failed write's aftermath.

  When a checkpoint write fails, tensorstore's callback threads print a
  traceback for each pending write once orbax has closed its event loop
  ("RuntimeError: Event loop is closed"), plus the disk error itself, one
  block per array. Those blocks are dropped; every other line passes through.
  """

  def __init__(self, stream):
    self._stream = stream
    self._block: list[str] | None = None
    self._after_drop = False
    self._partial = ""

  def write(self, text: str) -> int:
    self._partial += text
    *lines, self._partial = self._partial.split("\n")
    for line in lines:
      self._line(line + "\n")
    return len(text)

  def _dropped(self, line: str) -> bool:
    is_exception = re.match(r"[A-Za-z_][\w.]*(Error|Exception)\b", line)
    return bool(is_exception) and bool(
        _DISK_TEXT.search(line) or "Event loop is closed" in line)

  def _line(self, line: str) -> None:
    indented = line.startswith((" ", "\t")) or not line.strip()
    if line.startswith("Traceback (most recent call last):"):
      # Threads interleave their tracebacks: one block holds them all.
      self._block = (self._block or []) + [line]
      return
    if self._block is None:
      # Frames of an interleaved traceback whose block was already dropped.
      if self._after_drop and (indented or self._dropped(line)):
        return
      self._after_drop = False
      self._stream.write(line)
      return
    if indented or line.startswith(("The above exception", "During handling")):
      self._block.append(line)
      return
    block, self._block = self._block + [line], None
    self._after_drop = self._dropped(line)
    if not self._after_drop:
      self._stream.write("".join(block))

  def flush(self) -> None:
    if self._partial and self._block is None:
      self._stream.write(self._partial)
      self._partial = ""
    self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def quiet_failed_write_output() -> None:
  """Installs both filters: log records and stderr tracebacks of a full disk."""
  import sys
  quiet_disk_full_logs()
  if not isinstance(sys.stderr, _StderrWithoutFailedWriteTracebacks):
    sys.stderr = _StderrWithoutFailedWriteTracebacks(sys.stderr)
