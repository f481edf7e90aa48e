"""`model.table_row_multiple`: a large table's rows are rounded up so that a
`mesh.model` axis divides them, and the padding changes no prediction."""

import jax
import numpy as np
import pytest

from conftest import model_section, random_tasks
from metarec_jax import meta, models
from metarec_jax.data.schema import FeatureSpec, item_id_spec
from metarec_jax.meta import paths

ITEMS = 130  # an item_id table of 131 rows: odd, so no even axis splits it
FIELDS = (FeatureSpec("genre", "item", "list", 7, 3),
          FeatureSpec("tag", "item", "categorical", 200),  # 200 rows: even
          FeatureSpec("gender", "user", "categorical", 3),
          item_id_spec(ITEMS))
_r = np.random.default_rng(0)
MEANS = _r.uniform(1.5, 4.5, ITEMS)
COUNTS = np.where(_r.random(ITEMS) < 0.2, 0, _r.integers(1, 50, ITEMS))
KINDS = {
    "melu_anchored": {"name": "melu", "anchor": True, "anchor_version": 2,
                      "calibration": "median", "item_id": True},
    "idemb_anchored": {"name": "idemb", "anchor": True, "anchor_version": 2,
                       "interaction": "dot", "calibration": "median"},
    "idemb": {"name": "idemb", "anchor": False, "interaction": "mlp",
              "calibration": "median"},
    "melu_popularity": {"name": "melu", "anchor": False, "loss": "bce",
                        "popularity_prior": True, "calibration": "none"},
}


def build(kind: str, multiple: int):
  cfg = model_section({**KINDS[kind], "embed_dim": 4, "hidden": (8,),
                       "embed_std": 0.1, "table_row_multiple": multiple})
  return models.build(cfg, FIELDS, rating_mean=3.4,
                      item_means=(MEANS, COUNTS / (COUNTS + 5.0)),
                      inner_lr=0.1, item_counts=COUNTS)


def pad_like(small, big):
  """The leaves of `small` with zero rows appended to `big`'s shapes."""
  def pad(a, b):
    a = np.asarray(a)
    if a.shape == np.shape(b):
      return a
    return np.pad(a, [(0, n - m) for m, n in zip(a.shape, b.shape)])
  return jax.tree.map(pad, small, big)


def test_table_rows():
  assert models.table_rows(131, 2) == 132
  assert models.table_rows(127, 2) == 127  # under 64 multiples: as it is
  assert models.table_rows(1_000_001, 1024) == 1_000_448
  assert models.table_rows(2**21, 1024) == 2**21
  assert models.table_rows(1_000_001, 1) == 1_000_001


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_padding_changes_no_prediction(kind):
  """Only the tables of at least 64 * 2 rows with an odd count grow (the
  item-ID tables, the median map's kind); their data-filled rows are where
  they were, the new rows zero, and the padded model predicts and adapts
  exactly as the model without padding."""
  plain, padded = build(kind, 1), build(kind, 2)
  p1 = plain.init(jax.random.PRNGKey(0))
  p2 = padded.init(jax.random.PRNGKey(0))
  grown = {path for path, a, b in zip(paths.leaf_paths(p1),
                                      jax.tree.leaves(p1), jax.tree.leaves(p2))
           if a.shape != b.shape}
  assert grown and all("item_id" in p or "item/" in p or "item_bias" in p
                       or "median_kind" in p or "popularity" in p
                       for p in grown), grown
  for path, a, b in zip(paths.leaf_paths(p1), jax.tree.leaves(p1),
                        jax.tree.leaves(p2)):
    if a.shape != b.shape:
      assert b.shape[-2 if b.ndim > 1 else 0] == ITEMS + 2, path
      if any(k in path for k in ("item_bias", "median_kind", "popularity")):
        # filled from the data: the same rows, zero padding
        np.testing.assert_array_equal(np.asarray(b),
                                      pad_like(np.asarray(a), b), path)
  params = pad_like(p1, p2)
  t = random_tasks(FIELDS, n_tasks=3, n_support=8, n_query=5)
  config = meta.MetaConfig(inner_lr=0.1, inner_steps=2, adapt=plain.adapt)
  for i in range(3):
    support = jax.tree.map(lambda a, i=i: a[i], t["support"])
    query = jax.tree.map(lambda a, i=i: a[i], t["query"])
    np.testing.assert_allclose(
        padded.predict(params, query["features"]),
        plain.predict(p1, query["features"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        padded.predict(meta.adapt(padded.loss_fn, params, support,
                                  config=config), query["features"]),
        plain.predict(meta.adapt(plain.loss_fn, p1, support, config=config),
                      query["features"]), rtol=1e-5, atol=1e-6)
