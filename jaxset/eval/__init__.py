"""Evaluation protocols (numpy / JAX): Recall@N, CMC/mAP, k-fold, TAR@FAR, templates, ERC,
EDC/pAUC, top-k search, re-ranking and query expansion."""
from jaxset.eval.edc import edc, edc_pauc, edc_pauc_bootstrap
from jaxset.eval.quality import (
  error_vs_reject,
  image_statistics,
  proxy_by_tier,
  quality_degradation_spearman,
  spearman,
)
from jaxset.eval.reid import cmc_map, cmc_map_from_distances
from jaxset.eval.rerank import (
  alpha_query_expansion,
  average_query_expansion,
  database_side_augmentation,
  k_reciprocal_rerank,
  k_reciprocal_rerank_features,
)
from jaxset.eval.retrieval import nearest_neighbors, pairwise_sq_distances, recall_at_n
from jaxset.eval.search import ShardedDatabase, top_k_search
from jaxset.eval.stats import (
  minimum_detectable_effect,
  paired_bootstrap,
  replicate_bootstrap,
  verdict,
)
from jaxset.eval.templates import aggregate_templates, rows_of, template_pair_scores
from jaxset.eval.verification import (
  combine_flip,
  fold_splits,
  kfold_verification_accuracy,
  l2_normalize,
  pair_distances,
  roc_curve,
  tar_at_far,
  val_at_far,
)
