"""`eval.predictions_file`: the query predictions `--write_tasks` writes."""

import numpy as np
import pytest

from metarec_jax.errors import InputError
from metarec_jax.eval import predictions_file


def test_round_trip_leaves_out_padding():
  text = predictions_file.format_predictions(
      np.array([7, 9]), np.array([[1, 2], [3, 0]]),
      np.array([[True, True], [True, False]]),
      {"rating": np.array([[4.0, 5.0], [1.0, 0.0]]),
       "prediction": np.array([[3.25, 4.5], [2.0, 9.0]])})
  assert text == ("user\titem\trating\tprediction\n7\t1\t4\t3.25\n"
                  "7\t2\t5\t4.5\n9\t3\t1\t2\n")


def test_values_read_back_exactly(tmp_path):
  """Served predictions near a whole star differ in their 7th digit: six
  digits made them ties, and nDCG from the file differed from the
  report's."""
  near = np.float32(3.99179)
  prediction = np.array([[near, np.nextafter(near, np.float32(5)),
                          np.float32(1) / 3]], np.float32)
  baseline = np.array([[3.7123, 1 / 3, 4.0]])  # float64
  path = tmp_path / "p.tsv"
  path.write_text(predictions_file.format_predictions(
      np.array([7]), np.array([[1, 2, 3]]), np.ones((1, 3), bool),
      {"rating": np.array([[4.0, 5.0, 1.0]], np.float32),
       "prediction": prediction, "item_mean_user_bias": baseline}))
  p = predictions_file.read_predictions(path)
  assert (p["prediction"].astype(np.float32) == prediction[0]).all()
  assert (p["item_mean_user_bias"] == baseline[0]).all()
  assert p["prediction"][0] < p["prediction"][1]  # no tie
  assert path.read_text().splitlines()[1] == "7\t1\t4\t3.99179\t3.7123"


def test_ids_holding_a_tab_or_a_quote_read_back_as_they_are(tmp_path):
  """A generic file's quoted field may hold a tab: written bare, it split
  the line into one field too many."""
  path = tmp_path / "p.tsv"
  users = np.array(["ann\tlee", 'say "hi"'])
  items = np.array([["i\t1", 'x"'], ["plain", "p"]])
  path.write_text(predictions_file.format_predictions(
      users, items, np.ones((2, 2), bool),
      {"rating": np.array([[4.0, 5.0], [1.0, 2.0]], np.float32)}))
  p = predictions_file.read_predictions(path)
  assert p["user"].tolist() == ["ann\tlee"] * 2 + ['say "hi"'] * 2
  assert p["item"].tolist() == ["i\t1", 'x"', "plain", "p"]
  assert p["rating"].tolist() == [4, 5, 1, 2]


def test_read_back_and_an_empty_scenario(tmp_path):
  path = tmp_path / "p.tsv"
  path.write_text("user\titem\trating\tprediction\n7\t1\t4\t3.25\n")
  p = predictions_file.read_predictions(path)
  assert p["user"].tolist() == ["7"] and p["prediction"].tolist() == [3.25]
  path.write_text("user\titem\trating\tprediction\n")  # a scenario of 0 tasks
  p = predictions_file.read_predictions(path)
  assert p["rating"].shape == (0,) and p["item"].shape == (0,)


@pytest.mark.parametrize("content, message", [
    ("u\ti\trating\n1\t2\t3\n", "p.tsv:1: not a predictions file"),
    ("user\titem\trating\n1\t2\t3\n1\t2\n", "p.tsv:3: 2 field(s)"),
    ("user\titem\trating\n1\t2\tx\n", "p.tsv:2: rating 'x' is not a finite"),
    ("", "p.tsv: empty file"),
])
def test_bad_files_name_file_and_line(tmp_path, content, message):
  path = tmp_path / "p.tsv"
  path.write_text(content)
  with pytest.raises(InputError) as e:
    predictions_file.read_predictions(path)
  assert message in e.value.message


def test_ids_a_store_of_integer_ids_cannot_hold_are_unknown(tmp_path):
  """A file of another dataset (`i1373`) read against a store of integer
  ids ended in a ValueError traceback (`tools/average_predictions.py`,
  `tools/ndcg_ceiling.py`): such an id is one the store lacks, -1."""
  import types  # pylint: disable=g-import-not-at-top
  path = tmp_path / "p.tsv"
  path.write_text("user\titem\trating\tprediction\n7\ti1373\t4\t3.5\n"
                  "7\t2\t5\t4.5\nu8\t99999999999999999999\t1\t2\n"
                  "u8\t3\t2\t2\n008\t05\t1\t2\n008\t5\t1\t2\n")
  store = types.SimpleNamespace(item_ids=np.array([3, 2, 5]),
                                user_ids=np.array([7, 8]))
  a = predictions_file.task_arrays(path, store, 2)
  # "05" and "008" are no ids of the store, which writes 5 and 8.
  assert a["items"].tolist() == [[-1, 1], [-1, 0], [-1, 2]]
  assert a["users"].tolist() == [0, -1, -1]
