"""The export's pure parts: grouping ratings into users, top-k lines, the
folder writer and the bfloat16 encoding."""

import io
import json
import logging
import os

import ml_dtypes
import numpy as np
import pytest
from rich.console import Console

from metarec_jax.errors import InputError
from metarec_jax.export import layout, topk
from metarec_jax.export import users as users_lib
from metarec_jax.workdir.progress import UserProgress

ITEMS = np.array([10, 20, 30, 40, 50])


def collect(users, items, ratings, timestamps=None, **kw):
  kw.setdefault("known_users", np.array([1, 2, 3]))
  kw.setdefault("known_items", ITEMS)
  kw.setdefault("max_support", 2)
  return users_lib.collect(np.array(users), np.array(items),
                           np.array(ratings, float), timestamps, **kw)


def rows_of(u, user_row):
  lo, hi = u.offsets[user_row], u.offsets[user_row + 1]
  return (ITEMS[u.items[lo:hi]].tolist(), u.ratings[lo:hi].tolist(),
          int(u.support_sizes[user_row]))


def test_support_is_the_most_recent_ratings_by_timestamp():
  u = collect([2, 1, 2, 2, 2], [10, 20, 30, 40, 50], [1, 2, 3, 4, 5],
              timestamps=np.array([50, 0, 10, 40, 10]))
  assert u.ids.tolist() == [1, 2]
  # User 2 by time: 30 (t=10, line 3), 50 (t=10, line 5), 40, 10; the two
  # most recent (40, 10) are the support, then the older ones.
  assert rows_of(u, 1) == ([40, 10, 30, 50], [4, 1, 3, 5], 2)
  assert u.flags[1] == layout.TRUNCATED and u.flags[0] == 0
  assert rows_of(u, 0) == ([20], [2], 1)


def test_times_within_one_second_order_the_support_by_their_fractions():
  # Exact times (`parsing.Times.order`): 10, first in the file, is newer
  # than 30 by 0.25 s (whole seconds tie them, and file order decides).
  u = collect([1, 1, 1], [10, 30, 20], [1, 3, 2],
              timestamps=np.array([7.75, 7.5, 3.0]))
  assert rows_of(u, 0) == ([30, 10, 20], [3, 1, 2], 2)


def test_without_timestamps_the_last_lines_are_the_most_recent():
  u = collect([1, 1, 1], [30, 10, 20], [3, 1, 2])
  assert rows_of(u, 0) == ([10, 20, 30], [1, 2, 3], 2)


def test_a_repeated_item_keeps_its_latest_rating_by_timestamp():
  # Newest first, as a `created_at DESC` export: item 10's 5 (t=9) stays.
  u = collect([1, 1, 1], [10, 20, 10], [5, 2, 1],
              timestamps=np.array([9, 5, 3]))
  assert rows_of(u, 0) == ([20, 10], [2, 5], 2)
  assert u.counts["duplicate_ratings"] == 1


def test_odd_users_and_items_are_flagged_and_counted():
  u = collect([1, 7, 7, 3, 3, 1, 1], [10, 20, 30, 99, 98, 99, 10],
              [1, 2, 3, 4, 5, 3, 4], max_support=5)
  assert u.ids.tolist() == [1, 3, 7]
  assert u.counts == {"skipped_users": 0, "skipped_items": 3,
                      "duplicate_ratings": 1}
  assert u.flags.tolist() == [layout.SKIPPED_ITEMS,
                              layout.NO_RATINGS | layout.SKIPPED_ITEMS,
                              layout.NOT_IN_USER_TABLE]
  assert u.table_index.tolist() == [0, 2, -1]
  assert rows_of(u, 0) == ([10], [4], 1)  # the repeated item's last rating
  assert rows_of(u, 1) == ([], [], 0)
  assert users_lib.flag_counts(u.flags) == {
      "not_in_user_table": 1, "no_ratings": 1, "truncated": 0,
      "skipped_items": 2, "uncounted": 0}  # set by the adaptation
  skip = collect([1, 7, 7, 3, 3, 1, 1], [10, 20, 30, 99, 98, 99, 10],
                 [1, 2, 3, 4, 5, 3, 4], max_support=5, unknown_users="skip")
  assert skip.ids.tolist() == [1, 3]
  assert skip.counts["skipped_users"] == 1
  assert skip.counts["skipped_items"] == 3  # 7's ratings go with the user
  assert rows_of(skip, 0) == ([10], [4], 1)


def test_string_ids():
  u = users_lib.collect(
      np.array(["b", "a", "b"]), np.array(["x", "y", "zz"]),
      np.array([1.0, 2.0, 3.0]), None, known_users=np.array(["a"]),
      known_items=np.array(["y", "x"]), max_support=4)
  assert u.ids.tolist() == ["a", "b"]
  assert u.items.tolist() == [0, 1]
  assert u.flags.tolist() == [0, layout.NOT_IN_USER_TABLE
                              | layout.SKIPPED_ITEMS]


def test_top_k_lines_are_json_with_fewer_entries_when_short():
  text = topk.format_lines(
      topk.json_texts(np.array(['a"b', "c\\d"])),
      topk.json_texts(np.array(["i\n1", "i2", "i3"])),
      np.array([[4.5, 3.25, -np.inf], [2.0, -np.inf, -np.inf]], np.float32),
      np.array([[2, 0, -1], [1, -1, -1]]))
  lines = [json.loads(l) for l in text.splitlines()]
  assert lines == [{"user": 'a"b', "items": ["i3", "i\n1"],
                    "scores": [4.5, 3.25]},
                   {"user": "c\\d", "items": ["i2"], "scores": [2.0]}]
  text = topk.format_lines(topk.json_texts(np.array([7])),
                           topk.json_texts(np.array([5, 6])),
                           np.full((1, 2), -np.inf), np.full((1, 2), -1))
  assert json.loads(text) == {"user": 7, "items": [], "scores": []}


def test_bfloat16_round_trip():
  x = np.array([[1.0, -2.5e-3, 3.14159, 1e30]], np.float32)
  stored = layout.encode(x, "bfloat16")
  assert stored.dtype == np.uint16
  np.testing.assert_array_equal(
      layout.decode(stored, "bfloat16"),
      x.astype(ml_dtypes.bfloat16).astype(np.float32))
  np.testing.assert_allclose(layout.decode(stored, "bfloat16"), x, rtol=2**-8)
  np.testing.assert_array_equal(layout.decode(layout.encode(x, "float32"),
                                              "float32"), x)


def test_writer_swaps_in_whole_folders_only(tmp_path):
  out = tmp_path / "out"
  with layout.ExportWriter(out) as w:
    w.save_array("a.npy", np.arange(3))
    w.finish({"num_users": 3})
  assert layout.read_manifest(str(out))["num_users"] == 3
  with pytest.raises(RuntimeError):
    with layout.ExportWriter(out) as w:
      w.save_array("a.npy", np.arange(5))
      raise RuntimeError("killed")
  np.testing.assert_array_equal(np.load(out / "a.npy"), np.arange(3))
  stale = tmp_path / ".out.tmp-deadbeef"  # as a killed writer leaves it
  stale.mkdir()
  with layout.ExportWriter(out) as w:
    assert not stale.exists()
    w.save_array("b.npy", np.arange(2))
    w.finish({})
  assert sorted(os.listdir(out)) == ["b.npy", "manifest.json",
                                    "manifest.sha256"]
  assert sorted(os.listdir(tmp_path)) == ["out"]
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "x").write_text("x")
  with pytest.raises(InputError, match="not an earlier export"):
    layout.ExportWriter(foreign)
  (tmp_path / "file").write_text("x")
  with pytest.raises(InputError, match="not an earlier export"):
    layout.ExportWriter(tmp_path / "file")
  with pytest.raises(InputError, match="not a metarec export"):
    layout.read_manifest(str(foreign))


def test_progress_is_a_bar_on_a_terminal_and_log_lines_elsewhere(caplog):
  console = Console(file=io.StringIO(), force_terminal=True, width=100)
  with UserProgress(10, console=console) as bar:
    bar.advance(4)
    bar.advance(6)
  assert "export 10/10 users" in console.file.getvalue()
  plain = Console(file=io.StringIO(), force_terminal=False)
  with caplog.at_level(logging.INFO, logger="metarec"):
    with UserProgress(10, console=plain, every_seconds=3600) as lines:
      for _ in range(5):
        lines.advance(2)
  messages = [r.getMessage() for r in caplog.records]
  # The first chunk, then (within the hour) only the last.
  assert [m.split(" (")[0] for m in messages] == [
      "exported 2/10 users", "exported 10/10 users"]
  assert plain.file.getvalue() == ""
