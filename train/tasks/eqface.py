"""EQFace (Liu et al., CVPR 2021): a quality head trained inside the margin loss.

The paper's three steps run in one job, their lengths in config.eqface.steps
(fractions of config.train.steps), with steps 2-3 repeated config.eqface.cycles
times (sec. 3.4):
  1. s_i = 1: backbone and classifier train with the combined margin loss (3);
  2. the backbone is frozen (inference-mode BatchNorm, no gradient) and the
     quality head learns s_i through loss (6);
  3. the quality head is frozen and its s_i weight loss (6) while the backbone
     and classifier train again.
One optax.multi_transform over the parameter groups serves all steps: a frozen
group's update is zero and its optimiser state is carried over untouched, so
the TrainState keeps one structure (and one checkpoint format) across steps.
The model applies loss (6)'s margin head, Partial FC included, as the other
face models do (train/tasks/faces.py); the task picks each step's s_i.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxset.models import EQFace
from jaxset.models.eqface import GROUPS, param_labels, stage_trainable
from train import optim, partial_fc, task
from train.tasks import common, faces, identities

# Step -> the s_i of loss (6) (jaxset.models.eqface.LOSS_QUALITY): 1 in step 1,
# the trained quality in step 2, the frozen one in step 3.
LOSS_QUALITY = {1: "one", 2: "trained", 3: "frozen"}


class Task(faces.FaceTask):

  def build_model(self, config):
    return common.model_from_config(EQFace, config, num_classes=identities.num_classes(config),
                                    **partial_fc.model_kwargs(config))

  def schedule(self, config):
    """[(step number 1|2|3, steps)] for the whole run."""
    f1, f2, f3 = config.eqface.steps
    cycles = config.eqface.cycles
    total = config.train.steps
    s1 = int(round(f1 * total))
    rest = total - s1
    per = rest / cycles
    plan = [(1, s1)]
    done = s1
    for c in range(cycles):
      n2 = int(round(per * f2 / (f2 + f3)))
      n3 = (int(round(per * (c + 1))) if c < cycles - 1 else rest) - (done - s1) - n2
      plan += [(2, n2), (3, n3)]
      done += n2 + n3
    return [(k, n) for k, n in plan if n > 0]

  def create_state(self, config, rng):
    h, w = config.data.image_size
    model = self.model(config)
    sample = jnp.zeros((1, h, w, 3), jnp.uint8)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), sample))["params"]
    base = optim.make_optimizer(config.optim, config.train.steps)
    tx = optax.multi_transform({g: base for g in GROUPS}, param_labels(params))
    return common.create_state(model, config, rng, sample, config.train.steps, tx=tx)

  def forward(self, model, state, batch, params, stage=None):
    # Loss (6) with this step's s_i; step 2 freezes the backbone
    # (inference-mode BatchNorm, no gradient).
    return common.apply(model, state, batch["image"], params=params, train=True,
                        frozen_backbone=(stage == 2), labels=batch["label"],
                        loss_quality=LOSS_QUALITY[stage])

  def update(self, state, grads, new_model_state, config, stage=None):
    # A frozen group's update is zero and its optimiser state carried over.
    trainable = stage_trainable(stage, config.eqface.official_stage2)
    grads = {g: (v if g in trainable else jax.tree.map(jnp.zeros_like, v))
             for g, v in grads.items()}
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    inner = {g: (opt_state.inner_states[g] if g in trainable
                 else state.opt_state.inner_states[g]) for g in GROUPS}
    opt_state = opt_state._replace(inner_states=inner)
    updates = {g: (v if g in trainable else jax.tree.map(jnp.zeros_like, v))
               for g, v in updates.items()}
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state, model_state=new_model_state)

  def metrics(self, out, new_model_state):
    return {"quality_mean": jnp.mean(out["quality"]), "norm_mean": jnp.mean(out["norm"])}

  def stages(self, config):
    return [task.Stage(f"step{k}", n, lambda: identities.pk_iterator(config),
                       self.train_step(config, k))
            for k, n in self.schedule(config)]

  def evaluate(self, state, config):
    return identities.face_metrics(self.model(config), state, config, "quality", "quality")

  def curves(self, state, config):
    return identities.face_curves(self.model(config), state, config, "quality", "quality",
                                  also={"norm": "norm"})
