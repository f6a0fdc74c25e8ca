"""jaxset: quality-aware set-to-set recognition in JAX/Flax.

`jaxset.ops` holds the papers' math (also re-exported here: jaxset.quality_pool,
jaxset.netvlad, ...); `jaxset.models` the Flax networks; `jaxset.data` the
datasets and input pipelines; `jaxset.eval` the evaluation protocols;
`jaxset.convert` PyTorch weight import.
"""
from jaxset import ops
from jaxset.ops import *  # noqa: F401,F403  (the ops are the package's front door)

__version__ = "0.1.0"
__all__ = ["ops", *ops.__all__]
