"""Export on real MovieLens-1M users agrees with `metarec eval`."""

import os
import re

import jax
import numpy as np
import pytest

from cli_run import last_json, metarec
from metarec_jax import config_io, experiment, export, meta, runtime
from metarec_jax.data.convert import ratings_io
from metarec_jax.errors import InputError
from metarec_jax.workdir.restore import load_state


def test_export_predictions_reproduce_the_eval_mae(ml1m_tiny_run, tmp_path):
  workdir, ratings = ml1m_tiny_run
  tasks = tmp_path / "tasks"
  out = metarec("eval", f"--workdir={workdir}", f"--ratings={ratings}",
                f"--write_tasks={tasks}", "--config.eval.max_tasks=0",
                "--support_curve=false")
  assert out.returncode == 0, out.stderr
  uc = last_json(out)["scenarios"]["UC"]
  assert uc["tasks"] > 10
  # Eval adapts each UC task on all of its support ratings (up to 90).
  summary = export.export_workdir(
      workdir, str(tasks / "UC" / "support.dat"), str(tmp_path / "export"),
      overrides=[("data.max_support", "100")])
  assert summary["users"] == uc["tasks"]
  assert summary["flagged_users"] == 0 and summary["skipped_items"] == 0
  assert summary["flags"]["truncated"] == 0
  loaded = export.load(str(tmp_path / "export"))
  config = config_io.read_workdir_config(workdir)
  exp = experiment.build(config, workdir)
  users, items, true, _ = ratings_io.read_ratings(tasks / "UC" / "query.dat",
                                                  exp.store)
  errors = []
  for user in np.unique(users):
    mine = users == user
    pred = loaded.predict(user, items[mine], clip=True)
    errors.append(np.abs(pred - true[mine]))
  mae = float(np.concatenate(errors).mean())
  assert mae == pytest.approx(uc["mae"], abs=1e-4)
  # The gain of adaptation is there: the unadapted MAE differs.
  assert abs(uc["mae_unadapted"] - mae) > 1e-3


def test_most_recent_ratings_by_timestamp_form_the_support(ml1m_tiny_run,
                                                           tmp_path):
  workdir, plain = ml1m_tiny_run
  # The ML-1M format's optional 4th field, in an order unlike the lines'.
  lines = open(plain).read().splitlines()
  stamps = np.random.default_rng(0).permutation(len(lines)) // 3  # ties too
  ratings = tmp_path / "stamped.dat"
  ratings.write_text("".join(f"{l}::{978300000 + t}\n"
                             for l, t in zip(lines, stamps)))
  out = str(tmp_path / "export")
  summary = export.export_workdir(workdir, ratings, out)  # max_support 16
  loaded = export.load(out)
  # The server's log writes times after the file's newest (`FileClock`).
  assert loaded.manifest["ratings_clock"] == "seconds"
  assert loaded.manifest["ratings_latest"] == 978300000 + stamps.max()
  from metarec_jax.data.convert import parsing  # pylint: disable=g-import-not-at-top
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  assert interaction_log.export_format(out)[1] == parsing.FileClock(
      "seconds", 978300000 + stamps.max())
  exp = experiment.build(config_io.read_workdir_config(workdir), workdir)
  rows = ratings_io.parse_ratings(ratings, ratings_io.store_format(exp.store))
  assert summary["users"] == len(np.unique(rows.users)) > 40
  assert summary["flags"]["truncated"] > 0
  assert rows.timestamps is not None
  user = 150
  mine = np.flatnonzero(rows.users == user)
  assert len(mine) > 16
  recent = mine[np.lexsort((mine, rows.timestamps[mine]))][-16:]
  want_items = ratings_io.lookup(exp.store.item_ids, rows.items[recent])
  row = loaded.user_row(user)
  lo = loaded.rated_offsets[row]
  np.testing.assert_array_equal(loaded.rated_items[lo:lo + 16], want_items)
  assert loaded.support_sizes[row] == 16
  assert loaded.rated_offsets[row + 1] - lo == len(mine)
  # ...and the exported parameters are the core's adaptation on them.
  meta_params = jax.device_get(
      load_state(exp, workdir, runtime.make_mesh()).params)
  user_index = ratings_io.lookup(exp.store.user_ids, np.array([user]))
  support = exp.tables.rows(user_index, want_items[None],
                            rows.ratings[recent][None].astype(np.float32),
                            np.ones((1, 16), bool))
  adapted = meta.adapt(exp.model.loss_fn, meta_params["model"],
                       jax.tree.map(lambda a: a[0], support),
                       config=exp.meta_config)
  for path, value in meta.paths.partition(adapted,
                                          exp.meta_config.adapt).adapted.items():
    np.testing.assert_allclose(loaded.user(user).fast[path], value,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("top_k", [0, 3])
def test_an_inner_loop_that_diverges_exports_nothing(ml1m_tiny_run, tmp_path,
                                                     top_k):
  """An export at an inner rate where adaptation diverges (finite but huge
  adapted leaves, NaN predictions) was written with exit 0: NaN ratings
  served, empty top-k lists. It is refused in one line, as `eval` refuses,
  and no folder is left."""
  workdir, ratings = ml1m_tiny_run
  out = str(tmp_path / "export")
  with pytest.raises(InputError) as e:
    export.export_workdir(workdir, ratings, out, top_k=top_k,
                          overrides=[("meta.inner_lr", "1e6")])
  assert re.fullmatch(
      r"the adapted model of user '\d+' \(and [\d,]+ more of its chunk of"
      r" [\d,]+\) predicts ratings that are not finite: the inner loop"
      r" diverges at these settings \(meta.inner_lr=1000000.0,"
      r" meta.inner_steps=\d+\); lower meta.inner_lr", e.value.problem), (
          e.value.problem)
  assert not os.path.exists(out)
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".export")]
