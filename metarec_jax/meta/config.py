"""`MetaConfig`: the static description of a meta-learning algorithm.

It is a frozen, hashable dataclass so that it can be a static argument of
`jax.jit`: two equal configs share one compiled program.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re

from metarec_jax.meta import paths



@dataclasses.dataclass(frozen=True)
class Algorithm:
  """What one algorithm does in the core (its row of `ALGORITHMS`).

  Attributes:
    update: how `meta_grad` forms the update direction: `grad` (the gradient
      of `meta_loss`), `reptile` or `pretrain` (see `MetaConfig`).
    rates: learned inner rates held in `inner`: `element` (Meta-SGD, one
      per element), `step` (MAML++, one per step and leaf) or none.
    encoder: the set encoder held in `inner` that computes the task's
      starting parameters from the support set (`meta.encoder`):
      `prototype` (metric learner), `set` (TaNP-style) or none.
    steps: takes inner gradient steps; False forces `inner_steps=0` (the
      encoder alone adapts, in one forward pass).
    dual_form: the `LinearHead` dual form may run its inner loop (plain SGD
      with one scalar rate per step and leaf).
    msl: accepts MAML++'s multi-step loss weights.
    first_order: always first order (`second_order=False`).
    alias_of: the row this name stands for (`MetaConfig.algorithm` becomes
      that name: `fomaml` is `maml` first order); empty: its own.
  """

  update: str = "grad"
  rates: str = ""
  encoder: str = ""
  steps: bool = True
  dual_form: bool = True
  msl: bool = False
  first_order: bool = False
  alias_of: str = ""


# The one table of algorithms: every place in the core that depends on the
# algorithm reads its row here instead of testing names.
ALGORITHMS = {
    "maml": Algorithm(msl=True),
    "fomaml": Algorithm(msl=True, first_order=True, alias_of="maml"),
    "reptile": Algorithm(update="reptile"),
    "metasgd": Algorithm(rates="element", dual_form=False, msl=True),
    "mamlpp": Algorithm(rates="step", msl=True),
    "pretrain": Algorithm(update="pretrain"),
    "metric": Algorithm(encoder="prototype", steps=False),
    "amortised": Algorithm(encoder="set", steps=False),
    "hybrid": Algorithm(encoder="set"),
}
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
      `metric`, `amortised` and `hybrid` adapt by computing: an encoder of
      the support set, learned in `inner`, modulates the adapted leaves
      (see `meta.encoder`). `metric` (a rating-weighted prototype of the
      support rows in the model's feature space, mapped linearly) and
      `amortised` (a TaNP-style set encoder) take no gradient steps
      (`inner_steps` is set to 0); `hybrid` is `amortised` followed by
      `inner_steps` SGD steps, differentiated through exactly (second
      order unless `second_order=False`).
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
    encoder_hidden: width of the `set` encoder's layers.
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
  encoder_hidden: int = 64

  def __post_init__(self):
    # What was asked before an algorithm's rule rewrites it (fomaml: maml
    # first order; an encoder: no steps), for `replace`. Not a field: the
    # export's manifest records the fields (`dataclasses.asdict`).
    object.__setattr__(self, "_asked", (self.algorithm, self.inner_steps,
                                        self.second_order))
    if self.algorithm not in ALGORITHMS:
      raise ValueError(
          f"meta.algorithm must be one of {', '.join(ALGORITHMS)}, got"
          f" {self.algorithm!r}")
    if self.spec.first_order:
      object.__setattr__(self, "second_order", False)
    if self.spec.alias_of:
      object.__setattr__(self, "algorithm", self.spec.alias_of)
    if not self.spec.steps:
      object.__setattr__(self, "inner_steps", 0)
    if self.inner_optimizer not in INNER_OPTIMIZERS:
      raise ValueError(
          "meta.inner_optimizer must be one of"
          f" {', '.join(INNER_OPTIMIZERS)}, got {self.inner_optimizer!r}")
    # A library caller's values, checked here rather than failing deep in
    # the first traced call (`inner_steps=2.5` passed `int(...) >= 0`).
    object.__setattr__(self, "inner_steps",
                       _whole(self.inner_steps, "meta.inner_steps"))
    if int(self.inner_steps) < 0:
      raise ValueError(f"meta.inner_steps must be >= 0, got {self.inner_steps}")
    if (isinstance(self.inner_lr, bool)
        or not isinstance(self.inner_lr, numbers.Real)
        or not math.isfinite(self.inner_lr)):
      raise ValueError(f"meta.inner_lr must be a finite number, got"
                       f" {self.inner_lr!r}")
    object.__setattr__(self, "encoder_hidden",
                       _whole(self.encoder_hidden, "meta.encoder_hidden"))
    if self.encoder_hidden < 1:
      raise ValueError(f"meta.encoder_hidden must be >= 1, got"
                       f" {self.encoder_hidden}")
    if self.adapt is None:
      object.__setattr__(self, "adapt", ())
    if isinstance(self.adapt, str):
      object.__setattr__(self, "adapt", (self.adapt,) if self.adapt else ())
    object.__setattr__(self, "adapt", tuple(self.adapt))
    for pattern in self.adapt:
      try:
        paths.compile_patterns((pattern,))
      except (re.error, TypeError) as e:
        raise ValueError(f"meta.adapt: {pattern!r} is not a regular"
                         f" expression ({e})") from None
    object.__setattr__(self, "msl_weights",
                       tuple(float(w) for w in self.msl_weights))
    if self.msl_weights and not self.spec.msl:
      msl = [n for n, a in ALGORITHMS.items() if a.msl and not a.alias_of]
      raise ValueError(f"meta.msl_weights applies to {', '.join(msl)}")
    if self.msl_weights and len(self.msl_weights) != self.inner_steps:
      raise ValueError(
          f"meta.msl_weights has {len(self.msl_weights)} weights but"
          f" meta.inner_steps is {self.inner_steps}")

  @property
  def spec(self) -> Algorithm:
    """The algorithm's row of `ALGORITHMS`."""
    return ALGORITHMS[self.algorithm]

  @property
  def learns_inner(self) -> bool:
    """Whether `init_inner` returns learned parameters (rates, encoder)."""
    return bool(self.spec.rates or self.spec.encoder)

  def replace(self, **changes) -> "MetaConfig":
    """A copy with `changes`, built from what was asked: another algorithm
    applies its own rule to the asked steps and order (derived from a
    `metric` config, `maml` had 0 inner steps; from `fomaml`, first order)."""
    algorithm, steps, second_order = self._asked
    return dataclasses.replace(self, **{
        "algorithm": algorithm, "inner_steps": steps,
        "second_order": second_order, **changes})


def _whole(value, name: str) -> int:
  """`value` as an int where it is a whole number (a float such as 2.0
  too); ValueError naming `name` otherwise (2.5, "3", True)."""
  if isinstance(value, bool) or not (
      isinstance(value, numbers.Integral)
      or isinstance(value, numbers.Real) and float(value).is_integer()):
    raise ValueError(f"{name} must be a whole number, got {value!r}")
  return int(value)
