"""Two processes on localhost (gloo CPU collectives) train like one process.

Each process has 2 fake CPU devices and reads its half of every global batch
(the jaxset.data samplers shard by process); the loss curve must match one
process on 4 devices with the same global batch. Loopback only.

The driver calls jax.distributed.initialize the way train.main does with
--config.distributed=True --coordinator_address=... and runs
loop.train_and_evaluate with the method's own evaluation, whose feature
extraction gathers every process's rows (train/tasks/common.extract).
"""
import socket
import subprocess
import sys
import textwrap

import numpy as np

from tests.train_helpers import ROOT, env, train_losses

_DRIVER = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + sys.argv[4]
    import jax
    if sys.argv[1] != "-":
      jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                                 process_id=int(sys.argv[2]))
    from tests.train_helpers import make_config, tiny_overrides
    from train import loop
    config = make_config("arcface", tiny_overrides(sys.argv[5], 3))
    out = loop.train_and_evaluate(config, sys.argv[3])
    print("done", jax.process_index(), jax.device_count(), flush=True)
    print("pair_acc", out["after"]["pair_acc"], flush=True)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tiny_data, tmp_path):
  address = f"127.0.0.1:{_free_port()}"
  e = env()
  e.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, "-c", _DRIVER, address, str(i),
                             str(tmp_path / "multi"), "2", tiny_data], cwd=ROOT, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  single = subprocess.run([sys.executable, "-c", _DRIVER, "-", "0", str(tmp_path / "single"),
                           "4", tiny_data], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=300)
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]
  assert "done 0 4" in outs[0] and "done 1 4" in outs[1] and "done 0 4" in single.stdout
  multi, one = train_losses(tmp_path / "multi"), train_losses(tmp_path / "single")
  assert sorted(multi) == sorted(one) == [1, 2, 3]
  np.testing.assert_allclose([multi[s] for s in (1, 2, 3)], [one[s] for s in (1, 2, 3)],
                             rtol=2e-4, atol=1e-5)
  # Both processes see the same, complete evaluation.
  accs = [float(o.split("pair_acc ")[1].split()[0]) for o in outs]
  assert accs[0] == accs[1]
  assert abs(accs[0] - float(single.stdout.split("pair_acc ")[1].split()[0])) < 0.05
