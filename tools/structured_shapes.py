"""More test-bed datasets: structure `tools/testbed.py`'s one formula lacks.

`testbed.py` draws every shape from one model (biases plus a taste inner
product, features useful or useless). These four, written by a helper
agent of the thirtieth session as data the recipe was never tuned on and
kept so that its figures (docs/results.md) can be rerun, each break that
model in one way a real log does:

    half10    1500 users, ratings 1 to 10 in half points, useful item
              features, strong taste (a scale the defaults are not set for)
    drift     2000 users of a shop whose items launch over time and whose
              popularity and quality drift; epoch-second timestamps
    mixture   2000 accounts each shared by two people of different taste
              clusters (every rating drawn from one of them)
    userfeat  2500 users whose age, country and occupation set most of
              their bias and taste; 8 item columns of which one matters
    half10_bias, drift_flat: the first two with no taste at all (the
              item-mean + user-bias baseline is about the true model)

Each folder holds the README's own-data files and `flags.txt`, as
`testbed.py` writes them (so `tools/compare.py --spec=tools/testbed.py:DIR`
runs the recipe on it):

    python tools/structured_shapes.py --out=runs/shapes   # the first four
    python tools/structured_shapes.py --out=runs/shapes --shape=drift_flat
    metarec train --config=configs/default.py --workdir=runs/s-drift \\
        $(cat runs/shapes/drift/flags.txt)

The files are a pure function of (shape, seed).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testbed  # noqa: E402  pylint: disable=g-import-not-at-top
from metarec_jax import toolkit  # noqa: E402  pylint: disable=g-import-not-at-top

DIM = 4  # the latent taste's dimension


def _tagged_items(rng, num_items: int, cats: int = 12, tags: int = 30):
  """Categories, tag lists and item vectors built from both (useful)."""
  cat = rng.integers(cats, size=num_items)
  tag = [rng.choice(tags, size=rng.integers(1, 4), replace=False)
         for _ in range(num_items)]
  cv, tv = rng.normal(size=(cats, DIM)), rng.normal(size=(tags, DIM))
  q = np.stack([0.7 * cv[c] + 0.7 * tv[t].mean(0) for c, t in zip(cat, tag)])
  return cat, tag, (q + 0.3 * rng.normal(size=q.shape)) / np.sqrt(DIM)


def _item_table(cat, tag, new) -> list[str]:
  return ["item,cat,tags,new"] + [
      f"i{i},c{cat[i]},{'|'.join(f't{t}' for t in tag[i])},{int(new[i])}"
      for i in range(len(cat))]


_TAGGED_FLAGS = ["--config.data.generic.item_features=items.csv",
                 '--config.data.generic.categorical=("cat",)',
                 '--config.data.generic.lists=("tags",)',
                 "--config.data.list_pad.tags=3",
                 "--config.data.generic.new_item_col=new"]


def _users_items(rng, users: int, items: int, least: int, most: int):
  """Yields each user's items, `least` to `most` - 1 of them drawn without
  replacement by a heavy-tailed popularity (drawn at the first user, so
  that the random stream is the one the figures in docs/results.md were
  measured on)."""
  pop = rng.pareto(1.5, size=items) + 0.2
  pop /= pop.sum()
  for u in range(users):
    yield u, rng.choice(items, size=int(rng.integers(least, most)),
                        replace=False, p=pop)


def half10(rng, taste: float = 2.0):
  """Ratings 1 to 10 in half points."""
  users, items = 1500, 900
  cat, tag, q = _tagged_items(rng, items)
  b_item = 0.8 * rng.normal(size=12)[cat] + rng.normal(scale=0.5, size=items)
  new = rng.random(items) < 0.2
  p = rng.normal(size=(users, DIM))
  b_user = rng.normal(scale=0.9, size=users)
  lines = ["user,item,rating"]
  for u, it in _users_items(rng, users, items, 30, 121):
    v = (6.5 + b_user[u] + b_item[it] + taste * q[it] @ p[u]
         + rng.normal(size=len(it)))
    v = np.clip(np.round(v * 2) / 2, 1, 10)
    lines += [f"u{u},i{i},{r:g}" for i, r in zip(it, v)]
  flags = _TAGGED_FLAGS + ["--config.data.generic.rating_min=1",
                           "--config.data.generic.rating_max=10"]
  return {"ratings.csv": lines, "items.csv": _item_table(cat, tag, new)}, flags


def drift(rng, taste: float = 0.7):
  """Items launch over time; popularity decays after launch and each item's
  bias drifts linearly; users are active in a window; the items launched
  last are new."""
  users, items, span = 2000, 1200, 1000.0
  cat = rng.integers(15, size=items)
  q = (0.8 * rng.normal(size=(15, DIM))[cat]
       + 0.5 * rng.normal(size=(items, DIM))) / np.sqrt(DIM)
  launch = rng.uniform(0, span, size=items)
  b0 = rng.normal(scale=0.5, size=items)
  trend = rng.normal(scale=1.2, size=items)  # over the whole period
  hype = rng.pareto(1.3, size=items) + 0.2
  new = launch > 0.8 * span
  p = rng.normal(size=(users, DIM))
  b_user = rng.normal(scale=0.5, size=users)
  lines = ["user,item,rating,ts"]
  for u in range(users):
    n = int(np.clip(rng.lognormal(np.log(40), 0.8), 5, 250))
    start = rng.uniform(0, span * 0.9)
    end = min(span, start + rng.uniform(30, 300))
    seen = np.zeros(items, bool)
    for t in np.sort(rng.uniform(start, end, size=n)):
      w = np.where((launch <= t) & ~seen,
                   hype * np.exp(-(t - launch) / 80.0), 0.0)
      if w.sum() <= 0:
        continue
      i = int(rng.choice(items, p=w / w.sum()))
      seen[i] = True
      v = (3.8 + b_user[u] + b0[i] + trend[i] * (t - launch[i]) / span
           + taste * q[i] @ p[u] + rng.normal(scale=0.6))
      lines.append(f"u{u},i{i},{int(np.clip(np.round(v), 1, 5))},"
                   f"{int(t * 86400)}")
  table = ["item,cat,new"] + [f"i{i},c{cat[i]},{int(new[i])}"
                              for i in range(items)]
  flags = ["--config.data.generic.timestamp_col=ts",
           "--config.data.generic.item_features=items.csv",
           '--config.data.generic.categorical=("cat",)',
           "--config.data.generic.new_item_col=new"]
  return {"ratings.csv": lines, "items.csv": table}, flags


def mixture(rng):
  """Each account's ratings come from one of two people at random."""
  users, items = 2000, 1000
  cat, tag, q = _tagged_items(rng, items)
  b_item = (0.8 * rng.normal(scale=0.5, size=12)[cat]
            + rng.normal(scale=0.2, size=items))
  new = rng.random(items) < 0.2
  clusters = rng.normal(size=(6, DIM)) * 1.3
  first, second = rng.integers(6, size=users), rng.integers(6, size=users)
  p1 = clusters[first] + 0.3 * rng.normal(size=(users, DIM))
  p2 = clusters[second] + 0.3 * rng.normal(size=(users, DIM))
  b_user = rng.normal(scale=0.4, size=users)
  lines = ["user,item,rating"]
  for u, it in _users_items(rng, users, items, 25, 121):
    who = rng.random(len(it)) < 0.5
    pu = np.where(who[:, None], p1[u], p2[u])
    v = (3.5 + b_user[u] + b_item[it] + np.sum(q[it] * pu, 1)
         + rng.normal(scale=0.5, size=len(it)))
    lines += [f"u{u},i{i},{r}" for i, r in
              zip(it, np.clip(np.round(v), 1, 5).astype(int))]
  return ({"ratings.csv": lines, "items.csv": _item_table(cat, tag, new)},
          list(_TAGGED_FLAGS))


def userfeat(rng):
  """User features that set most of the taste; one useful item column
  (`genres`) among eight."""
  users, items, genres = 2500, 1000, 20
  genre = [rng.choice(genres, size=rng.integers(1, 4), replace=False)
           for _ in range(items)]
  gv, gb = rng.normal(size=(genres, DIM)), rng.normal(scale=0.6, size=genres)
  q = np.stack([gv[g].mean(0) for g in genre]) / np.sqrt(DIM) * 1.5
  b_item = (np.array([gb[g].mean() for g in genre])
            + rng.normal(scale=0.15, size=items))
  noise_cat = {f"c{k}": rng.integers(size, size=items)
               for k, size in enumerate((5, 50, 200, 12))}
  noise_list = {f"l{k}": [rng.choice(40, size=rng.integers(1, 5),
                                     replace=False) for _ in range(items)]
                for k in range(3)}
  new = rng.random(items) < 0.25
  age, country, job = (rng.integers(n, size=users) for n in (7, 10, 21))
  p = (0.8 * rng.normal(size=(7, DIM))[age]
       + 0.6 * rng.normal(size=(10, DIM))[country]
       + 0.5 * rng.normal(size=(21, DIM))[job]
       + 0.3 * rng.normal(size=(users, DIM)))
  b_user = (rng.normal(scale=0.5, size=7)[age]
            + rng.normal(scale=0.3, size=10)[country]
            + rng.normal(scale=0.15, size=users))
  lines = ["user,item,rating"]
  for u, it in _users_items(rng, users, items, 20, 100):
    v = (3.5 + b_user[u] + b_item[it] + q[it] @ p[u]
         + rng.normal(scale=0.5, size=len(it)))
    lines += [f"u{u},i{i},{r}" for i, r in
              zip(it, np.clip(np.round(v), 1, 5).astype(int))]
  table = ["item,genres," + ",".join(noise_cat) + "," + ",".join(noise_list)
           + ",new"]
  for i in range(items):
    table.append(",".join(
        [f"i{i}", "|".join(f"g{g}" for g in genre[i])]
        + [f"{k}_{v[i]}" for k, v in noise_cat.items()]
        + ["|".join(f"{k}_{x}" for x in v[i]) for k, v in noise_list.items()]
        + [str(int(new[i]))]))
  people = ["user,age,country,occupation"] + [
      f"u{u},a{age[u]},k{country[u]},o{job[u]}" for u in range(users)]
  flags = ["--config.data.generic.item_features=items.csv",
           "--config.data.generic.user_features=users.csv",
           '--config.data.generic.categorical=("c0","c1","c2","c3","age",'
           '"country","occupation")',
           '--config.data.generic.lists=("genres","l0","l1","l2")',
           "--config.data.list_pad.genres=3",
           "--config.data.list_pad.l0=4",
           "--config.data.list_pad.l1=4",
           "--config.data.list_pad.l2=4",
           "--config.data.generic.new_item_col=new"]
  return ({"ratings.csv": lines, "items.csv": table, "users.csv": people},
          flags)


SHAPES = {"half10": half10, "drift": drift, "mixture": mixture,
          "userfeat": userfeat,
          "half10_bias": lambda rng: half10(rng, taste=0.0),
          "drift_flat": lambda rng: drift(rng, taste=0.0)}
DEFAULT = ("half10", "drift", "mixture", "userfeat")


def generate(name: str, seed: int = 0) -> tuple[dict[str, list[str]], list]:
  """`({file: lines}, flags)` of shape `name` (flags without the data name
  and root, which `write` adds)."""
  return SHAPES[name](np.random.default_rng(seed))


def write(out: str, name: str, seed: int = 0) -> str:
  """Writes shape `name` into `out/name`, all or nothing; returns it."""
  folder = os.path.join(out, name)
  files, flags = generate(name, seed)
  text = {file: "\n".join(lines) + "\n" for file, lines in files.items()}
  text["flags.txt"] = "\n".join(
      ["--config.data.name=generic",
       f"--config.data.root={os.path.abspath(folder)}"] + flags) + "\n"
  return testbed._write_folder(folder, text)  # pylint: disable=protected-access


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="folder of the datasets")
  parser.add_argument("--shape", action="append", choices=sorted(SHAPES),
                      help="shape(s) to write (default: the first four)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  for name in args.shape or DEFAULT:
    print(write(args.out, name, args.seed))


if __name__ == "__main__":
  toolkit.run(main)
