"""ArcFace / CosFace baseline: the AdaFace task with a fixed margin head.

config.model.head = "arcface" (additive angular margin m2) or "cosface"
(additive cosine margin m3); everything else, data and evaluation included,
is AdaFace's, so the two compare at the same budget.
"""
from train.tasks import adaface


class Task(adaface.Task):
  """AdaFace's task; the margin head is config.model.head."""
