"""Every config key is documented; the README's table is the generated one."""

import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from metarec_jax import (config_defaults, config_io, config_meanings,
                         config_reference, config_table)
from metarec_jax.errors import InputError
from conftest import ROOT, config_path


def default_config():
  return config_io.load_config_file(config_path("default"))


def test_every_default_key_has_a_meaning_and_no_meaning_is_stale():
  assert config_table.check(default_config()) == []


def test_every_algorithm_is_described_in_its_key_meaning():
  """The allowed values come from `meta.ALGORITHMS`; the meaning lists
  them by hand (helper N: a new algorithm was allowed, not described)."""
  from metarec_jax import meta  # pylint: disable=g-import-not-at-top
  text = config_meanings.MEANINGS["meta.algorithm"]
  assert [n for n in meta.ALGORITHMS if f"`{n}`" not in text] == []


def test_readme_table_is_the_generated_one():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  section = config_table.section(readme)
  assert section is not None, "README.md lacks the config-reference markers"
  assert section == config_table.markdown_table(default_config()), (
      "README's config reference is stale: run"
      " `python tools/config_reference.py --write`")


def test_an_undocumented_or_removed_key_is_caught():
  config = default_config()
  config.train.new_knob = 3
  problems = config_table.check(config)
  assert problems == ["config key train.new_knob has no meaning in"
                      " metarec_jax/config_meanings.py MEANINGS",
                      "config key train.new_knob has no rule in"
                      " metarec_jax/config_reference.py ALLOWED"]
  with pytest.raises(KeyError):
    config_table.markdown_table(config)
  del config.train["new_knob"]
  del config.log["every_steps"]
  assert config_table.check(config) == [
      "MEANINGS names log.every_steps, which the default config does not"
      " have", "ALLOWED names log.every_steps, which the default config does"
      " not have"]


def test_table_rows_show_key_default_allowed_values_and_meaning():
  config = ml_collections.ConfigDict(
      {"model": {"name": "melu", "hidden": (64, 64)}})
  table = config_table.markdown_table(config).splitlines()
  assert table[0] == "| key | default | allowed | meaning |"
  assert table[2] == ("| `model.hidden` | `(64, 64)` | tuple of 1 or more:"
                      " integer >= 1 | "
                      + config_meanings.MEANINGS["model.hidden"] + " |")
  from metarec_jax import models  # pylint: disable=g-import-not-at-top
  # (a literal list of the models failed this test with a bare `assert
  # False` when a newcomer added one)
  assert table[3].startswith('| `model.name` | `"melu"` | one of ' + ", ".join(
      f'"{name}"' for name in models.MODELS) + " |"), table[3]


def test_every_key_has_a_rule_and_no_rule_is_stale():
  config = default_config()
  config.train.new_knob = 3
  config_meanings.MEANINGS["train.new_knob"] = "A knob."
  try:
    assert config_table.check(config) == [
        "config key train.new_knob has no rule in"
        " metarec_jax/config_reference.py ALLOWED"]
  finally:
    del config_meanings.MEANINGS["train.new_knob"]


SHIPPED = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                 if f.endswith(".py") and not f.startswith("_"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_is_valid(name):
  config_reference.validate(config_io.load_config_file(config_path(name)))


@pytest.mark.parametrize("key, text, message", [
    ("data.buckets", "()", "config key data.buckets=(): must hold at least 1"
     " value"),
    ("model.hidden", "()", "config key model.hidden=(): must hold at least 1"),
    ("data.buckets", "(0, 16)", "each value must be an integer >= 1 (got 0)"),
    ("train.num_steps", "-10", "train.num_steps=-10: must be an integer >= 1"),
    ("data.query_size", "0", "data.query_size=0: must be an integer >= 1"),
    ("train.lr", "0", "train.lr=0.0: must be a number > 0"),
    ("train.lr", "nan", "train.lr=nan: must be a number > 0"),
    ("meta.inner_lr", "-0.1", "meta.inner_lr=-0.1: must be a number > 0"),
    ("data.item_id_dropout", "1.5", "must be a number >= 0 and <= 1"),
    ("data.generic.categorical", "(genre,user_key)", "data.generic: no"
     " feature column may be named user_key or item_key"),
    ("train.end_lr_factor", "1.5", "train.end_lr_factor=1.5: must be a"
     " number >= 0 and <= 1"),
    ("train.preempt_exit_code", "300", "must be an integer 0 to 255"),
    ("train.cpu_devices", "1000000", "train.cpu_devices=1000000: must be an"
     " integer 0 to 256"),
    ("train.prefetch", "1000000000", "train.prefetch=1000000000: must be an"
     " integer 1 to 64"),
    ("train.input_workers", "100000", "train.input_workers=100000: must be"
     " an integer 0 to 256"),
    ("model.loss", "l1", 'must be one of "mse", "huber"'),
    ("data.min_support", "40", "data.min_support must not exceed"
     " data.max_support (data.min_support=40, data.max_support=32)"),
    ("data.synthetic.num_items", "12", "data.synthetic.min_ratings must not"
     " exceed data.synthetic.num_items (a user rates an item once)"),
    ("eval.val_fraction", "0.9", "eval.new_user_fraction + eval.val_fraction"
     " must be below 1"),
    ("model.query_rank_weight", "-1", "must be a number >= 0"),
    ("model.support_rank_weight", "-0.5", "must be a number >= 0"),
])
def test_validate_names_the_key_and_the_problem(key, text, message):
  config = config_io.apply_overrides(default_config(), [(key, text)])
  with pytest.raises(InputError, match=re.escape(message)):
    config_reference.validate(config)


@pytest.mark.parametrize("key", ["query_rank_weight", "support_rank_weight"])
def test_a_rank_weight_with_a_ranking_loss_is_refused(key):
  config = config_io.apply_overrides(default_config(), [
      ("data.implicit.enabled", "true"), ("model.loss", "bce"),
      (f"model.{key}", "2")])
  with pytest.raises(InputError, match=f"model.{key} adds a listwise term"):
    config_reference.validate(config)
  config.model[key] = 0.0
  config_reference.validate(config)


@pytest.mark.parametrize("overrides,message", [
    # A rating loss on 1/0 labels: the inner loop diverged (loss 4e8).
    ((("model.loss", "mse"),), "implicit feedback"
     " (data.implicit.enabled=true) trains a ranking loss"),
    ((("model.loss", "bce"), ("model.query_loss", "mse")),
     "trains a ranking loss"),
    # BPR without negatives: every loss 0, nothing learned.
    ((("model.loss", "bpr"), ("data.implicit.negatives", "0")),
     "implicit feedback needs sampled negatives"),
])
def test_implicit_feedback_refuses_what_cannot_train(overrides, message):
  config = config_io.apply_overrides(
      default_config(), [("data.implicit.enabled", "true"), *overrides])
  with pytest.raises(InputError, match=re.escape(message)):
    config_reference.validate(config)
  config = config_io.apply_overrides(default_config(), [
      ("data.implicit.enabled", "true"), ("model.loss", "bpr")])
  config_reference.validate(config)


def test_a_threshold_without_a_rating_column_is_refused():
  """Every line of a file without a rating column is a positive (stored
  at the top of the scale): a threshold was silently ignored."""
  base = [("data.name", "generic"), ("data.generic.ratings", "r.csv"),
          ("data.implicit.enabled", "true"), ("model.loss", "bpr"),
          ("data.generic.rating_col", "")]
  config = config_io.apply_overrides(
      default_config(), base + [("data.implicit.threshold", "4")])
  with pytest.raises(InputError, match=re.escape(
      "data.implicit.threshold compares ratings, but data.generic.rating_col"
      " is empty")):
    config_reference.validate(config)
  config.data.implicit.threshold = 0.0
  config_reference.validate(config)
  config = config_io.apply_overrides(default_config(), base[:-1] + [
      ("data.implicit.threshold", "4")])  # a rating column: compared
  config_reference.validate(config)


def test_a_huge_value_is_cut_in_the_error():
  config = default_config()
  config.model.loss = "x" * 50_000_000
  with pytest.raises(InputError) as e:
    config_reference.validate(config)
  assert len(e.value.message) < 200
  assert "(50,000,000 characters)" in e.value.message


def test_replace_section_round_trips():
  text = ("intro\n" + config_table.START + "\nold\n"
          + config_table.END + "\nafter\n")
  new = config_table.replace_section(text, "| t |")
  assert config_table.section(new) == "| t |"
  assert new.startswith("intro\n") and new.endswith("\nafter\n")
  with pytest.raises(ValueError):
    config_table.replace_section("no markers", "| t |")


def test_tool_prints_the_table():
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "config_reference.py")],
      capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == config_table.markdown_table(
      default_config())


def test_a_config_json_written_before_keys_existed_runs_as_it_did(tmp_path):
  """`config_io.complete`: a missing key takes the value that reproduces a
  run written before the key existed (`config_defaults.BEFORE_KEY`), else
  its default; a variant's own keys are kept."""
  saved = config_io.to_dict(default_config())
  del saved["model"]["anchor"], saved["data"]["item_id_dropout"]
  del saved["train"]["schedule_steps"], saved["distill"]
  saved["model"]["own_key"] = 7
  (tmp_path / config_io.WORKDIR_CONFIG).write_text(
      json.dumps({"format": config_io.CONFIG_FORMAT, "config": saved}))
  config = config_io.read_workdir_config(str(tmp_path))
  assert config.model.anchor is False  # the default is True
  assert config.data.item_id_dropout == 0.0  # the default is 0.1
  assert config.train.schedule_steps == 0 and config.distill.teacher == ""
  assert config.model.own_key == 7
  del config.model["own_key"]
  expected = default_config()
  expected.model.anchor, expected.data.item_id_dropout = False, 0.0
  assert config_io.to_dict(config) == config_io.to_dict(expected)


@pytest.mark.parametrize("content, problem", [
    (b"\xff{}", "not UTF-8 text (at byte offset 0)"),
    (b'{"config": [1, 2]}', "not a metarec config.json"),
    (b'{"config": {"train": 5}}', "train is 5, not a section of keys"),
    (b'{"config": {"data": {"synthetic": "x"}}}',
     "data.synthetic is 'x', not a section of keys"),
])
def test_a_damaged_config_json_is_named(tmp_path, content, problem):
  """Tracebacks (UnicodeDecodeError, TypeError, AttributeError) in every
  command that reads a work directory's config."""
  path = tmp_path / config_io.WORKDIR_CONFIG
  path.write_bytes(content)
  with pytest.raises(InputError) as e:
    config_io.read_workdir_config(str(tmp_path))
  assert e.value.message == f"{path}: {problem}"


@pytest.mark.parametrize("section, key, missing", [
    ("model", None, "model.name"),
    ("train", "lr", "train.lr"),
    ("data", "synthetic", "data.synthetic.num_users"),
])
def test_a_config_json_without_a_key_it_always_had_is_damaged(
    tmp_path, section, key, missing):
  """Completed from the defaults, a config.json without its `model` section
  ran as the default model, and eval reported the checkpoint as "another
  model"; keys every config.json has had are not those of an older run."""
  saved = config_io.to_dict(default_config())
  if key is None:
    del saved[section]
  else:
    del saved[section][key]
  path = tmp_path / config_io.WORKDIR_CONFIG
  path.write_text(json.dumps({"format": config_io.CONFIG_FORMAT,
                              "config": saved}))
  with pytest.raises(InputError) as e:
    config_io.read_workdir_config(str(tmp_path))
  assert e.value.message.startswith(
      f"{path}: config key {missing} is missing (every config.json metarec"
      " writes has it)")


def test_first_keys_are_keys_the_defaults_still_write():
  """`config_defaults.FIRST_KEYS` is kept by hand: a key renamed or moved
  and left there would make every new run's config.json read as damaged.
  The first config.json's keys are all still written."""
  written = set(config_io.flat(default_config()))
  first = {f"{section}.{name}"
           for section, names in config_defaults.FIRST_KEYS.items()
           for name in names.split()}
  assert first and first <= written, sorted(first - written)


@pytest.mark.parametrize("key, text, value", [
    ("train.num_steps", "1_000", 1000),
    ("train.lr", "2_0e-4", 0.002),
    ("data.buckets", "8,1_024", (8, 1024)),
    ("data.buckets", "(8, 1_024)", (8, 1024)),
    ("data.list_pad.studio", "1_0", 10),  # an open section's new key
    ("data.generic.user_col", "1_0", "1_0"),  # text stays text
])
def test_numbers_with_underscores_read_alike_for_every_numeric_key(
    key, text, value):
  """The README's config reference: a number reads as Python reads it."""
  config = config_io.apply_overrides(default_config(), [(key, text)])
  assert config_io.flat(config)[key] == value


def test_a_folder_at_config_json_is_named(tmp_path):
  """A folder standing at WORKDIR/config.json: every command that reads it
  exited 1 with "config.json: Is a directory", and a fresh `train` only
  after building its task store."""
  from cli_run import assert_one_line_error, metarec_here  # pylint: disable=g-import-not-at-top
  path = tmp_path / config_io.WORKDIR_CONFIG
  path.mkdir()
  problem = (f"{path}: not a file: a work directory's config.json is the"
             " JSON file `metarec train` writes")
  with pytest.raises(InputError) as e:
    config_io.read_workdir_config(str(tmp_path))
  assert e.value.message == problem
  out = metarec_here("train", f"--config={config_path('tiny')}",
                     f"--workdir={tmp_path}")
  assert_one_line_error(out, problem)
  assert os.listdir(tmp_path) == [config_io.WORKDIR_CONFIG]
