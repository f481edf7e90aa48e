"""The test bed: generic-format datasets of several shapes, reproducibly.

Each shape is a small generative model of ratings, written as the files the
README's "Your own data" recipe reads (`ratings.csv`, `items.csv`,
`users.csv`) plus `flags.txt`, the `metarec` flags that read them (one per line, without
shell quoting: pass them as `$(cat flags.txt)`):

    rating = clip(round(mu + b_user + b_item + taste * <p_user, q_item>
                        + noise), 1, 5)

Item features (`cat`, a category, and `tags`, a list) and a user feature
(`group`) are either *useful* (the latent vectors and biases are built from
the feature values, so a model can learn them) or *useless* (drawn
independently of everything). An item is new (`new` = 1) with probability
`new_item_fraction`. The shapes span few and many users, sparse and dense
rating counts, useful and useless features, ratings mostly bias and mostly
taste:

    bias        pure biases (taste 0): the baseline is the true model
    few_sparse  300 users, 15-60 ratings each, useless features, some taste
    many_dense  3000 users, 40-150 ratings each, useful features, taste
    taste       1500 users, strong taste, useful features
    useless     1500 users, strong taste, useless features
    shop        2000 users, most with a handful of ratings and a few with
                hundreds, ratings mostly 4 and 5 (J-shaped), noisy
    shop_new    the shop with 4000 users and half its items new
    long_tail   3000 users, 12,000 items mostly rated a few times, taste
                carried by the item categories
    stars       a store's review log: 6000 users with 5 to 400 ratings,
                15,000 items, ratings mostly 4 and 5, useless features
    priced      3000 users, 2000 items (half of them new) whose price, a
                numeric column, sets much of their bias and taste;
                categories and tags useless

Usage (from the repository root):

    python tools/testbed.py --out=runs/testbed            # every shape
    python tools/testbed.py --out=runs/testbed --shape=bias --seed=1
    metarec train --config=configs/default.py --workdir=runs/tb-bias \\
        $(cat runs/testbed/bias/flags.txt)

The files are a pure function of (shape, seed). The module is also a
`tools/compare.py` spec: `--spec=tools/testbed.py:FOLDER[,FOLDER...]` runs
the own-data recipe (`configs/default.py` plus each folder's `flags.txt`)
on every folder holding one (e.g. those of `tools/ml100k_subset.py`):

    python tools/compare.py --out=runs/tb-cmp --seeds=0,1,2 \
        --spec=tools/testbed.py:runs/testbed/bias,runs/testbed/taste

`--ratings_only=FOLDER` writes the same log without its feature tables
(`out/<folder's name>`: the ratings file and the flags that read it, no
feature flag), the shape of a bare ratings file, whose ids the recipe then
takes as its only features:

    python tools/testbed.py --ratings_only=runs/testbed/taste --out=runs/ro

`--clicks` writes `clicks`, a shop's order log of ISO-dated purchases
without ratings where popularity is all there is (implicit feedback: the
most-popular ranking is the true model), with its flags:

    python tools/testbed.py --clicks --out=runs/testbed
"""

from __future__ import annotations

import argparse
import datetime
import os
from typing import NamedTuple

import numpy as np

from metarec_jax import toolkit


class Shape(NamedTuple):
  """One generator's knobs."""

  users: int
  items: int
  min_ratings: int
  max_ratings: int
  taste: float  # scale of the interaction term
  item_bias: float = 0.5  # std of the item biases
  user_bias: float = 0.4  # std of the user biases
  noise: float = 0.5
  useful_features: bool = True
  new_item_fraction: float = 0.2
  dim: int = 4
  categories: int = 12
  tags: int = 30
  groups: int = 8
  mean: float = 3.6
  # 0: each user's rating count uniform in [min_ratings, max_ratings]; > 0:
  # log-normal with this sigma and a median of half their geometric mean,
  # clipped to them (a shop's few heavy buyers and many users with a
  # handful).
  activity_sigma: float = 0.0
  # > 0: items get a `price` column (log-normal) whose log moves the item
  # bias by this many standard deviations of it and sets one latent
  # dimension, read by the recipe as a numeric feature
  # (`data.generic.numeric`); 0: no price (and no draw for one).
  price_effect: float = 0.0


SHAPES = {
    "bias": Shape(users=1000, items=800, min_ratings=30, max_ratings=120,
                  taste=0.0, useful_features=True),
    "few_sparse": Shape(users=300, items=600, min_ratings=15, max_ratings=60,
                        taste=0.4, useful_features=False),
    "many_dense": Shape(users=3000, items=1000, min_ratings=40,
                        max_ratings=150, taste=0.6, useful_features=True),
    "taste": Shape(users=1500, items=800, min_ratings=30, max_ratings=120,
                   taste=1.0, item_bias=0.3, user_bias=0.3),
    "useless": Shape(users=1500, items=800, min_ratings=30, max_ratings=120,
                     taste=1.0, item_bias=0.3, user_bias=0.3,
                     useful_features=False),
    "shop": Shape(users=2000, items=1500, min_ratings=3, max_ratings=250,
                  taste=0.6, item_bias=0.6, user_bias=0.6, noise=0.8,
                  mean=4.1, activity_sigma=0.8),
    # The shop with twice the users and half its catalog new, so that its
    # new-item scenarios have tasks enough to mean something (fifth
    # session; `shop` has 19 and 5).
    "shop_new": Shape(users=4000, items=1500, min_ratings=3,
                      max_ratings=250, taste=0.6, item_bias=0.6,
                      user_bias=0.6, noise=0.8, mean=4.1, activity_sigma=0.8,
                      new_item_fraction=0.5),
    # Added in the twenty-fifth session and never tuned on (module
    # docstring).
    "long_tail": Shape(users=3000, items=12000, min_ratings=20,
                       max_ratings=80, taste=1.2, item_bias=0.2,
                       user_bias=0.4, categories=40),
    "stars": Shape(users=6000, items=15000, min_ratings=5, max_ratings=400,
                   taste=0.8, item_bias=0.7, user_bias=0.5, noise=0.7,
                   mean=4.2, activity_sigma=0.9, useful_features=False),
    # Added in the twenty-sixth session: what an item costs is most of what
    # its ratings share; categories and tags tell nothing, half the
    # catalogue is new.
    "priced": Shape(users=3000, items=2000, min_ratings=20, max_ratings=120,
                    taste=0.8, useful_features=False, new_item_fraction=0.5,
                    price_effect=1.0),
}

FLAGS = ("--config.data.name=generic",
         "--config.data.root={root}",
         "--config.data.generic.item_features=items.csv",
         "--config.data.generic.user_features=users.csv",
         '--config.data.generic.categorical=("cat","group")',
         '--config.data.generic.lists=("tags",)',
         "--config.data.list_pad.tags=3",
         "--config.data.generic.new_item_col=new")
PRICE_FLAGS = ('--config.data.generic.numeric=("price",)',)


def generate(shape: Shape, seed: int) -> dict[str, list[str]]:
  """The lines of each file of one dataset."""
  rng = np.random.default_rng(seed)
  s = shape
  # Item side: a category, 1-3 tags, a latent vector and a bias.
  cat = rng.integers(s.categories, size=s.items)
  tags = [rng.choice(s.tags, size=rng.integers(1, 4), replace=False)
          for _ in range(s.items)]
  cat_vec = rng.normal(size=(s.categories, s.dim))
  tag_vec = rng.normal(size=(s.tags, s.dim))
  cat_bias = rng.normal(scale=s.item_bias, size=s.categories)
  if s.useful_features:
    q = np.stack([0.7 * cat_vec[c] + 0.7 * tag_vec[t].mean(0)
                  for c, t in zip(cat, tags)])
    q += 0.3 * rng.normal(size=q.shape)
    b_item = 0.8 * cat_bias[cat] + rng.normal(scale=0.4 * s.item_bias,
                                               size=s.items)
  else:
    q = rng.normal(size=(s.items, s.dim))
    b_item = rng.normal(scale=s.item_bias, size=s.items)
  price = None
  if s.price_effect:
    price = np.round(np.exp(rng.normal(3.0, 1.0, size=s.items)), 2)
    z = np.log(price) - 3.0
    b_item = b_item + s.price_effect * s.item_bias * z
    q[:, 0] = s.price_effect * np.sqrt(s.dim) * z
  q /= np.sqrt(s.dim)
  new = rng.random(s.items) < s.new_item_fraction
  # User side: a group, a latent vector and a bias.
  group = rng.integers(s.groups, size=s.users)
  group_vec = rng.normal(size=(s.groups, s.dim))
  if s.useful_features:
    p = 0.6 * group_vec[group] + 0.8 * rng.normal(size=(s.users, s.dim))
  else:
    p = rng.normal(size=(s.users, s.dim))
  b_user = rng.normal(scale=s.user_bias, size=s.users)
  # Popularity: some items are rated far more often than others.
  popularity = rng.pareto(1.5, size=s.items) + 0.2
  popularity /= popularity.sum()
  ratings = ["user,item,rating"]
  for u in range(s.users):
    if s.activity_sigma > 0:
      n = int(np.clip(rng.lognormal(
          np.log(np.sqrt(s.min_ratings * s.max_ratings) / 2),
          s.activity_sigma), s.min_ratings, s.max_ratings))
    else:
      n = int(rng.integers(s.min_ratings, s.max_ratings + 1))
    items = rng.choice(s.items, size=min(n, s.items), replace=False,
                       p=popularity)
    value = (s.mean + b_user[u] + b_item[items]
             + s.taste * q[items] @ p[u]
             + rng.normal(scale=s.noise, size=len(items)))
    value = np.clip(np.round(value), 1, 5).astype(int)
    ratings += [f"u{u},i{i},{r}" for i, r in zip(items, value)]
  item_lines = ["item,cat,tags,new" + (",price" if price is not None else "")
                ] + [
      f"i{i},c{cat[i]},{'|'.join(f't{t}' for t in tags[i])},{int(new[i])}"
      + (f",{price[i]}" if price is not None else "")
      for i in range(s.items)]
  user_lines = ["user,group"] + [f"u{u},g{group[u]}" for u in range(s.users)]
  return {"ratings.csv": ratings, "items.csv": item_lines,
          "users.csv": user_lines}


def write(out: str, name: str, seed: int = 0) -> str:
  """Writes shape `name` into `out/name`, all or nothing; returns that
  folder."""
  folder = os.path.join(out, name)
  files = {file: "\n".join(lines) + "\n"
           for file, lines in generate(SHAPES[name], seed).items()}
  flags = FLAGS + (PRICE_FLAGS if SHAPES[name].price_effect else ())
  files["flags.txt"] = "\n".join(flags).format(
      root=os.path.abspath(folder)) + "\n"
  return _write_folder(folder, files)


def _write_folder(folder: str, files: dict[str, str | bytes]) -> str:
  """Writes `files` (text or bytes) as `folder`, all or nothing: an earlier
  dataset of this tool there is replaced only once the new one is whole
  (`toolkit.write_folder`)."""
  return toolkit.write_folder(
      folder, {name: data.encode("utf-8") if isinstance(data, str) else data
               for name, data in files.items()},
      marker="flags.txt")


CLICK_FLAGS = ("--config.data.name=generic",
               "--config.data.root={root}",
               "--config.data.generic.ratings=orders.csv",
               "--config.data.generic.delimiter=;",
               "--config.data.generic.user_col=customer_id",
               "--config.data.generic.item_col=sku",
               "--config.data.generic.rating_col=",
               "--config.data.generic.timestamp_col=purchased_at",
               "--config.data.implicit.enabled=true",
               "--config.model.loss=bce")


def write_clicks(out: str, seed: int = 5) -> str:
  """Writes `out/clicks`: a shop's order log where popularity is all
  there is (3000 customers, 2000 SKUs drawn by a Pareto popularity, 3-200
  orders each, log-normal), as `customer_id;sku;purchased_at` with ISO
  date-times and no rating, plus the flags that read it as implicit
  feedback with a ranking loss. The most-popular ranking is the true
  model here; returns the folder."""
  rng = np.random.default_rng(seed)
  popularity = rng.pareto(1.2, 2000) + 0.1
  popularity /= popularity.sum()
  start = datetime.datetime(2024, 1, 1)
  lines = ["customer_id;sku;purchased_at"]
  for user in range(3000):
    n = int(np.clip(rng.lognormal(2.7, 0.8), 3, 200))
    for item in rng.choice(2000, size=min(n, 2000), replace=False,
                           p=popularity):
      when = start + datetime.timedelta(seconds=int(rng.integers(0, 3e7)))
      lines.append(f"C{user:05d};SKU-{item};{when.isoformat(sep=' ')}")
  folder = os.path.join(out, "clicks")
  return _write_folder(folder, {
      "orders.csv": "\n".join(lines) + "\n",
      "flags.txt": "\n".join(CLICK_FLAGS).format(
          root=os.path.abspath(folder)) + "\n"})


# The flags that read feature tables or derive from them (new items are
# marked in the item table): what a bare ratings file has none of.
FEATURE_FLAGS = ("data.generic.item_features", "data.generic.user_features",
                 "data.generic.categorical", "data.generic.lists",
                 "data.generic.numeric",
                 "data.generic.new_item_col", "data.generic.new_item_year",
                 "data.generic.id_features", "data.list_pad.")


def ratings_only(src: str, out: str) -> str:
  """Writes `src`'s ratings file and its flags less every feature flag
  into `out/<src's name>`; returns that folder."""
  folder = os.path.join(out, os.path.basename(os.path.normpath(src)))
  overrides = recipe_overrides(src)
  ratings = overrides.get("data.generic.ratings", "ratings.csv")
  with open(os.path.join(src, ratings), "rb") as f:
    data = f.read()  # copied as it is
  overrides["data.root"] = "{root}"
  lines = [f"--config.{key}={value}" for key, value in overrides.items()
           if not key.startswith(FEATURE_FLAGS)]
  return _write_folder(folder, {
      ratings: data,
      "flags.txt": "\n".join(lines).format(root=os.path.abspath(folder))
                   + "\n"})


def recipe_overrides(folder: str) -> dict[str, str]:
  """`{key: value}` of a folder's `flags.txt` (the recipe's data flags),
  `data.root` the folder itself: a copied or moved folder (its ratings
  changed, say) is read where it is, not where it was written."""
  with open(os.path.join(folder, "flags.txt"), encoding="utf-8") as f:
    out = recipe_overrides_of(f.read().splitlines())
  out["data.root"] = os.path.abspath(folder)
  return out


def recipe_overrides_of(flags, root: str | None = None) -> dict[str, str]:
  """`{key: value}` of `--config.KEY=VALUE` lines (`{root}` filled in)."""
  out = {}
  for line in flags:
    if root is not None:
      line = line.format(root=root)
    key, _, value = line.strip().removeprefix("--config.").partition("=")
    if key:
      out[key] = value
  return out


def get_runs(arg: str = ""):
  """The `tools/compare.py` spec: the recipe on each folder of `arg`.

  `arg` is comma-separated `FOLDER` or `NAME=FOLDER` entries (NAME default:
  the folder's name); `NAME=FOLDER+KEY=VALUE+...` adds overrides.
  """
  runs = []
  for entry in filter(None, arg.split(",")):
    head, *extra = entry.split("+")
    name, _, folder = head.rpartition("=")
    overrides = recipe_overrides(folder)
    overrides.update(dict(e.split("=", 1) for e in extra))
    runs.append({"name": name or os.path.basename(os.path.normpath(folder)),
                 "config": "configs/default.py", "overrides": overrides})
  return {"runs": runs}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="folder of the datasets")
  parser.add_argument("--shape", action="append", choices=sorted(SHAPES),
                      help="shape(s) to write (default: all)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--ratings_only", action="append", metavar="FOLDER",
                      help="write FOLDER's ratings without its feature"
                           " tables instead (repeatable)")
  parser.add_argument("--clicks", action="store_true",
                      help="write the popularity-only order log `clicks`"
                           " instead")
  args = parser.parse_args()
  if args.seed < 0:  # numpy's generator refuses it in a traceback
    parser.error(f"argument --seed: {args.seed} is not >= 0")
  try:
    os.makedirs(args.out, exist_ok=True)
  except OSError as e:
    parser.exit(2, f"testbed.py: error: --out={args.out}: cannot create it"
                f" ({e.strerror})\n")
  if args.clicks:
    print(write_clicks(args.out))
    return
  if args.ratings_only:
    for src in args.ratings_only:
      print(ratings_only(src, args.out))
    return
  for name in args.shape or sorted(SHAPES):
    print(write(args.out, name, args.seed))


if __name__ == "__main__":
  toolkit.run(main)
