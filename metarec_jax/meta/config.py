"""`MetaConfig`: the static description of a meta-learning algorithm.

It is a frozen, hashable dataclass so that it can be a static argument of
`jax.jit`: two equal configs share one compiled program.
"""

from __future__ import annotations

import dataclasses

ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "mamlpp", "pretrain")
INNER_OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
  """What the inner loop does and how the meta-gradient is formed.

  Attributes:
    algorithm: `maml` (second-order unless `second_order=False`), `fomaml`
      (normalised to `maml` with `second_order=False`), `reptile`, `metasgd`
      (learned per-element inner rates), `mamlpp` (learned per-step,
      per-leaf inner rates and the multi-step query loss) or `pretrain`.
      `reptile`: the update direction of the adapted leaves is the mean of
      `params - adapted` (Nichol et al., 2018); leaves that `adapt` leaves
      frozen (e.g. MeLU's embeddings) would never move under that rule, so
      they get the gradient of the query loss at the adapted parameters
      (the first-order MAML gradient of those leaves).
      `pretrain` is the baseline without meta-learning: training minimises
      the plain loss of the unadapted model, `0.5 * (support loss + query
      loss)` averaged over tasks (no inner loop); evaluation (`adapt`)
      fine-tunes it per task with the same inner loop as MAML
      (`inner_steps` steps of `inner_optimizer` at `inner_lr`), so it is
      "pretrained on all training ratings, then fine-tuned per user with
      the same number of steps".
    inner_steps: number of inner gradient steps on the support set.
    inner_lr: inner learning rate; the initial value of the learned rates of
      `metasgd` and `mamlpp`.
    second_order: differentiate through the inner gradients (exact MAML).
      False gives the first-order approximation.
    adapt: regular expressions searched (`re.search`) in '/'-joined
      parameter paths; the inner loop updates the leaves that match any of
      them. Empty: every leaf adapts.
    inner_optimizer: `sgd`, `momentum` or `adam` (optax; Adam uses a
      positive `eps_root` so that its second-order gradients stay finite
      where an inner gradient is zero).
    remat: rematerialise each inner step in the backward pass
      (`jax.checkpoint`): memory O(1) instead of O(inner_steps) for the
      price of recomputing the forward inner step.
    dual_form: when the loss is a `LinearHead` and the inner optimizer is
      plain SGD, run the first layer in its dual (Gram) form; exactly the
      same values and gradients for less arithmetic (see `linear_head`).
    unroll: unroll factor of the inner `lax.scan` (True = fully unrolled).
    msl_weights: MAML++ multi-step loss: the weight of the query loss after
      each inner step (length `inner_steps`). Empty: only the final step.
    momentum: the decay of the `momentum` inner optimizer.
    adam_b1, adam_b2, adam_eps, adam_eps_root: the `adam` inner optimizer.
  """

  algorithm: str = "maml"
  inner_steps: int = 1
  inner_lr: float = 0.01
  second_order: bool = True
  adapt: tuple[str, ...] = ()
  inner_optimizer: str = "sgd"
  remat: bool = False
  dual_form: bool = True
  unroll: int | bool = 1
  msl_weights: tuple[float, ...] = ()
  momentum: float = 0.9
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  adam_eps_root: float = 1e-16

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(
          f"meta.algorithm must be one of {', '.join(ALGORITHMS)}, got"
          f" {self.algorithm!r}")
    if self.algorithm == "fomaml":
      object.__setattr__(self, "algorithm", "maml")
      object.__setattr__(self, "second_order", False)
    if self.inner_optimizer not in INNER_OPTIMIZERS:
      raise ValueError(
          "meta.inner_optimizer must be one of"
          f" {', '.join(INNER_OPTIMIZERS)}, got {self.inner_optimizer!r}")
    if int(self.inner_steps) < 0:
      raise ValueError(f"meta.inner_steps must be >= 0, got {self.inner_steps}")
    if isinstance(self.adapt, str):
      object.__setattr__(self, "adapt", (self.adapt,) if self.adapt else ())
    object.__setattr__(self, "adapt", tuple(self.adapt))
    object.__setattr__(self, "msl_weights",
                       tuple(float(w) for w in self.msl_weights))
    if self.msl_weights and len(self.msl_weights) != self.inner_steps:
      raise ValueError(
          f"meta.msl_weights has {len(self.msl_weights)} weights but"
          f" meta.inner_steps is {self.inner_steps}")
    if self.msl_weights and self.algorithm not in ("maml", "mamlpp",
                                                   "metasgd"):
      raise ValueError("meta.msl_weights applies to maml, metasgd and mamlpp")

  @property
  def learns_inner(self) -> bool:
    """Whether `init_inner` returns learned inner-loop parameters."""
    return self.algorithm in ("metasgd", "mamlpp")

  def replace(self, **changes) -> "MetaConfig":
    return dataclasses.replace(self, **changes)
