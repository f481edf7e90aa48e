"""Progress: a rich bar on a terminal, plain log lines elsewhere."""

import io
import logging

from rich.console import Console

from metarec_jax.workdir import progress as progress_lib

METRICS = {"train/loss": 0.5, "train/query_loss_unadapted": 0.75,
           "train/tasks_per_sec": 1234.4}


def make_logger(name, stream):
  logger = logging.getLogger(name)
  handler = logging.StreamHandler(stream)
  handler.setFormatter(logging.Formatter("%(message)s"))
  logger.handlers[:] = [handler]
  logger.setLevel(logging.INFO)
  logger.propagate = False
  return logger, handler


def test_not_a_terminal_logs_plain_lines_on_log_steps_only():
  out = io.StringIO()
  console = Console(file=out)  # a StringIO is not a terminal
  logger, _ = make_logger("metarec.test.plain", out)
  p = progress_lib.Progress(console=console, log=logger)
  assert not p.uses_bar
  p.start(10, 2)
  p.advance(3)
  p.advance(4, METRICS)
  p.advance(5)
  p.close()
  assert out.getvalue().splitlines() == [
      "step 4/10  loss 0.5000  unadapted 0.7500  1234 tasks/s"]


def test_plain_lines_say_about_how_long_the_run_has_left(monkeypatch):
  """A days-long run under nohup or a scheduler logged no ETA (helper L);
  the pace is that since the first line (the steps before it include a
  resume's restore)."""
  out = io.StringIO()
  logger, _ = make_logger("metarec.test.left", out)
  clock = iter([100.0, 160.0, 220.0])
  monkeypatch.setattr(progress_lib.time, "perf_counter", lambda: next(clock))
  p = progress_lib.Progress(console=Console(file=out), log=logger)
  p.start(1000, 400)
  for step in (500, 600, 1000):
    p.advance(step, METRICS)
  assert out.getvalue().splitlines() == [
      "step 500/1000  loss 0.5000  unadapted 0.7500  1234 tasks/s",
      "step 600/1000  loss 0.5000  unadapted 0.7500  1234 tasks/s  about 4"
      " min left",
      "step 1000/1000  loss 0.5000  unadapted 0.7500  1234 tasks/s"]


def test_terminal_renders_the_bar_and_keeps_log_records():
  out = io.StringIO()
  console = Console(file=out, force_terminal=True, width=120)
  logger, handler = make_logger("metarec.test.bar", out)
  p = progress_lib.Progress(console=console, log=logger)
  assert p.uses_bar
  p.start(10, 2)
  p.advance(3)
  logger.info("validation MAE 0.8")  # printed above the live bar
  p.advance(10, METRICS)
  p.close()
  text = out.getvalue()
  assert "step 10/10" in text and "ETA" in text
  assert "loss 0.5000" in text and "unadapted 0.7500" in text
  assert "1234 tasks/s" in text
  assert "validation MAE 0.8" in text
  assert handler.stream is out  # the log handler is restored after close
  logger.info("after")
  assert out.getvalue().endswith("after\n")


def test_bar_can_be_refused_on_a_terminal():
  out = io.StringIO()
  console = Console(file=out, force_terminal=True)
  logger, _ = make_logger("metarec.test.refused", out)
  p = progress_lib.Progress(console=console, log=logger, bar=False)
  p.start(4)
  p.advance(4, {"train/loss": 1.0})
  p.close()
  assert out.getvalue() == "step 4/4  loss 1.0000  unadapted n/a  n/a tasks/s\n"


def test_a_slow_export_states_its_rate_not_zero(monkeypatch):
  out = io.StringIO()
  logger, _ = make_logger("metarec.test.users", out)
  clock = iter([100.0, 106.25])  # start, then 2 users 6.25 s later
  monkeypatch.setattr(progress_lib.time, "perf_counter", lambda: next(clock))
  p = progress_lib.UserProgress(2, console=Console(file=io.StringIO()),
                                log=logger)
  p.advance(2)
  p.close()
  assert out.getvalue().strip() == "exported 2/2 users (0.32 users/s)"


def test_an_unfinished_export_says_about_how_long_it_has_left(monkeypatch):
  """A --top_k export of a 50,000-item shop ran at 30 users/s for 200,000
  users: two hours, which the log's rate left to the reader to reckon. The
  rate and the time left are those since the first chunk, whose time is
  mostly compiling: "about 12 min left" of an export done 0.1 s later
  (helper E); the last line gives the whole export's rate."""
  out = io.StringIO()
  logger, _ = make_logger("metarec.test.eta", out)
  clock = iter([0.0, 60.0, 70.0, 80.0, 3000.0])
  monkeypatch.setattr(progress_lib.time, "perf_counter", lambda: next(clock))
  p = progress_lib.UserProgress(200_000, console=Console(file=io.StringIO()),
                                log=logger, every_seconds=5.0)
  p.advance(300)  # the first chunk: a minute of compiling
  p.advance(300)  # 30 users/s since: 199,400 left
  p.advance(300)
  p.advance(199_100)
  p.close()
  assert out.getvalue().splitlines() == [
      "exported 300/200000 users (5 users/s)",
      "exported 600/200000 users (30 users/s, about 1 h 51 min left)",
      "exported 900/200000 users (30 users/s, about 1 h 51 min left)",
      "exported 200000/200000 users (67 users/s)"]
  assert [progress_lib.duration(s)
          for s in (0, 59.4, 61, 150, 3599, 3600, 5430)] == [
              "0 s", "59 s", "1 min", "3 min", "1 h 0 min", "1 h 0 min",
              "1 h 31 min"]
