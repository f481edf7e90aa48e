"""Checkpoint selection and early stopping (`train.selection`)."""

from metarec_jax.train.selection import Selection


def test_the_start_is_kept_but_is_no_bar_for_the_patience():
  s = Selection(patience=2)
  assert s.start(0.70)  # the anchored start: the baseline
  # Training validates worse than the start at first, but improves on its
  # own best each time: no early stop, and nothing beats the start yet.
  assert [s.update(m) for m in (0.80, 0.75, 0.72)] == [False, False, False]
  assert not s.should_stop and s.best == 0.70
  assert s.update(0.69) and s.best == 0.69  # now training wins
  assert [s.update(m) for m in (0.695, 0.70)] == [False, False]
  assert s.should_stop and s.stale == 2


def test_no_patience_never_stops_and_a_resume_keeps_the_best():
  s = Selection(patience=0)
  for m in (0.9, 1.0, 1.1, 1.2):
    s.update(m)
  assert not s.should_stop and s.best == 0.9 and s.stale == 3
  resumed = Selection.resumed(3, {200: 0.5, 400: 0.55})
  assert not resumed.update(0.6) and resumed.stale == 1
  assert Selection.resumed(3, {}).update(2.0)


def test_a_resume_whose_best_is_the_start_counts_patience_from_training():
  # Kept: the start (the best) and a worse trained step.
  resumed = Selection.resumed(1, {0: 0.70, 500: 0.80})
  assert resumed.best == 0.70 and resumed.trained == 0.80
  # Better than training's own best, not than the start: no stop.
  assert not resumed.update(0.75) and not resumed.should_stop
  assert not resumed.update(0.76) and resumed.should_stop
  # Only the start kept: any trained validation is training's first.
  only_start = Selection.resumed(1, {0: 0.70})
  assert not only_start.update(0.9) and not only_start.should_stop
