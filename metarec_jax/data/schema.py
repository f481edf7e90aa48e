"""The feature schema shared by the task store, the batches and the models.

A feature belongs to the user or the item side and is either categorical
(one index per row) or a list (a padded row of indices, mean-pooled by the
model). Index 0 is reserved everywhere: padding in lists, "missing or
unknown" for categories, so every vocabulary has `vocab = categories + 1`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

SIDES = ("user", "item")
KINDS = ("categorical", "list")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """One feature field.

  Attributes:
    name: field name, unique over both sides (e.g. `genre`, `zip`).
    side: `user` or `item`.
    kind: `categorical` or `list`.
    vocab: number of indices including the reserved 0.
    max_len: list length (lists only; 1 for categorical).
  """

  name: str
  side: str
  kind: str
  vocab: int
  max_len: int = 1

  def __post_init__(self):
    if self.side not in SIDES:
      raise ValueError(f"feature {self.name}: side must be one of {SIDES}")
    if self.kind not in KINDS:
      raise ValueError(f"feature {self.name}: kind must be one of {KINDS}")
    if self.vocab < 1 or self.max_len < 1:
      raise ValueError(f"feature {self.name}: vocab and max_len must be >= 1")

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "FeatureSpec":
    return cls(**d)


ITEM_ID = "item_id"
# The categorical features that are the ids themselves (a generic ratings
# file without other features, or `data.generic.id_features`): one row per
# user or item, trained only for those with training ratings.
ID_KEYS = {"user": "user_key", "item": "item_key"}


def item_id_spec(num_items: int) -> FeatureSpec:
  """The virtual feature `item_id`: item index + 1 (0 is padding).

  Not stored (it is the item index itself); `FeatureTables` provides it to
  models that learn one embedding per item (`idemb`).
  """
  return FeatureSpec(name=ITEM_ID, side="item", kind="categorical",
                     vocab=int(num_items) + 1)


def select(specs: Iterable[FeatureSpec],
           names: Iterable[str] | None) -> tuple[FeatureSpec, ...]:
  """The specs named in `names` (all of them when `names` is empty)."""
  specs = tuple(specs)
  names = tuple(names or ())
  if not names:
    return specs
  by_name = {s.name: s for s in specs}
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise ValueError(
        f"model.features names unknown feature(s) {', '.join(unknown)};"
        f" the data has: {', '.join(by_name)}")
  return tuple(by_name[n] for n in names)
