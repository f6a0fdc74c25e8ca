"""The papers' math as pure JAX functions (no Flax, no I/O).

Every op with a paper-derived gradient has a jax.custom_vjp; `python -m
jaxset.gradcheck` compares each backward with autodiff, finite differences and
the paper's equations. The README's API table maps every equation to its
function here.
"""
from jaxset.ops.attention import grad_cam
from jaxset.ops.losses import (
  attention_consistency_loss,
  set_triplet_loss,
  verification_bce,
  weakly_supervised_ranking_loss,
)
from jaxset.ops.margin_ce import (
  adaface_cross_entropy,
  eqface_cross_entropy,
  head_cross_entropy,
  magface_cross_entropy,
  margin_cross_entropy,
)
from jaxset.ops.margins import (
  HEADS,
  adaface_gradient_scaling_term,
  adaface_init_stats,
  adaface_logits,
  adaface_norm_scaler,
  adaface_update_stats,
  eqface_logits,
  head_logits,
  magface_logits,
  magface_margin,
  magface_regularizer,
  margin_logits,
)
from jaxset.ops.multi_similarity import (
  label_pair_masks,
  multi_similarity_from_labels,
  multi_similarity_loss,
  multi_similarity_miner,
)
from jaxset.ops.netvlad_layer import (
  from_matlab_order,
  kmeans,
  netvlad,
  netvlad_alpha,
  netvlad_params_from_centroids,
  to_matlab_order,
  vlad,
)
from jaxset.ops.partial_fc import partial_fc_cross_entropy
from jaxset.ops.pooling import gem_pool, max_pool, mean_pool, quality_pool, segment_quality_pool
from jaxset.ops.salad import salad_aggregate, salad_assignment, salad_log_transport

__all__ = [
    "quality_pool", "segment_quality_pool", "mean_pool", "max_pool", "gem_pool",
    "netvlad", "vlad", "kmeans", "netvlad_alpha", "netvlad_params_from_centroids",
    "to_matlab_order", "from_matlab_order",
    "HEADS", "head_logits", "head_cross_entropy",
    "margin_logits", "eqface_logits", "adaface_logits", "adaface_init_stats",
    "adaface_gradient_scaling_term", "adaface_norm_scaler", "adaface_update_stats",
    "magface_logits", "magface_margin", "magface_regularizer",
    "margin_cross_entropy", "eqface_cross_entropy", "adaface_cross_entropy",
    "magface_cross_entropy",
    "partial_fc_cross_entropy",
    "set_triplet_loss", "weakly_supervised_ranking_loss", "verification_bce",
    "attention_consistency_loss",
    "grad_cam",
    "salad_log_transport", "salad_assignment", "salad_aggregate",
    "multi_similarity_loss", "multi_similarity_miner", "label_pair_masks",
    "multi_similarity_from_labels",
]
