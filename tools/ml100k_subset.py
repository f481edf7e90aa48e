"""An ML-100K-sized subset of MovieLens-1M, in two layouts.

MovieLens-100K has 943 users, 1682 movies and 100,000 ratings (each user
at least 20). This script draws the same shape from an ML-1M folder
(`users.dat`, `movies.dat`, `ratings.dat`): 943 users drawn at random
(seeded) among those with at least 20 ML-1M ratings, their ratings of the
1682 movies they rate most, each user's ratings thinned at random to about
100,000 in total (keeping at least 20 per user where they have 20 of those
movies: unlike ML-100K's, a few users keep fewer, 23 of the 943 with seed
0, the fewest 13; left so, since the published figures were measured on
this subset). Only the features the
100K files have are kept: gender, age, occupation, zip; genres and the
year. Movies from 1998 on are new (the protocol's rule).

It writes two folders under `--out`:

- `ml-100k/`: the standard 100K layout (`u.data`, `u.user`, `u.item`,
  `u.genre`, `u.occupation`) for `configs/melu_ml100k.py`;
- `generic/`: the README's own-data layout (`ratings.csv`, `items.csv`,
  `users.csv`) with `flags.txt`, the flags of that recipe (pass them as
  `$(cat flags.txt)`).

Usage (from the repository root; SRC is an ML-1M folder):

    python tools/ml100k_subset.py --src=SRC --out=runs/ml100k-sized
"""

from __future__ import annotations

import argparse
import os
import re

import numpy as np

from metarec_jax import atomic, toolkit
from metarec_jax.errors import InputError

USERS, ITEMS, RATINGS, MIN_PER_USER = 943, 1682, 100_000, 20
NEW_YEAR = 1998
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _lines(path, encoding="utf-8"):
  with open(path, encoding=encoding) as f:
    return [line.rstrip("\r\n").split("::") for line in f if line.strip()]


def select(ratings: np.ndarray, seed: int) -> np.ndarray:
  """Rows of `ratings` (`[N, 3]` user, movie, rating) kept in the subset."""
  rng = np.random.default_rng(seed)
  users, counts = np.unique(ratings[:, 0], return_counts=True)
  chosen = rng.choice(users[counts >= MIN_PER_USER], USERS, replace=False)
  rows = np.flatnonzero(np.isin(ratings[:, 0], chosen))
  movies, movie_counts = np.unique(ratings[rows, 1], return_counts=True)
  top = movies[np.argsort(-movie_counts, kind="stable")[:ITEMS]]
  rows = rows[np.isin(ratings[rows, 1], top)]
  share = RATINGS / len(rows)
  keep = []
  for user in np.sort(chosen):
    own = rows[ratings[rows, 0] == user]
    n = max(min(len(own), MIN_PER_USER), int(round(len(own) * share)))
    keep.append(np.sort(rng.choice(own, min(n, len(own)), replace=False)))
  return np.concatenate(keep)


def write(src: str, out: str, seed: int = 0) -> None:
  """Writes both layouts of the subset into `out`, each folder all or
  nothing (an earlier one of this script is replaced whole)."""
  raw = _lines(os.path.join(src, "ratings.dat"))
  ratings = np.array([[int(r[0]), int(r[1]), int(r[2])] for r in raw])
  rows = select(ratings, seed)
  sub = ratings[rows]
  users = {int(r[0]): r for r in _lines(os.path.join(src, "users.dat"))}
  movies = {int(m[0]): m for m in _lines(os.path.join(src, "movies.dat"),
                                          "iso-8859-1")}
  user_ids = sorted(set(sub[:, 0]))
  movie_ids = sorted(set(sub[:, 1]))
  genres = sorted({g for m in movie_ids for g in movies[m][2].split("|")})
  years = {m: int(_YEAR.search(movies[m][1]).group(1)) for m in movie_ids}

  # Each layout is built in memory and written all or nothing
  # (`toolkit.write_folder`): a failure half-way leaves an earlier one whole.
  files = {"ml-100k": {}, "generic": {}}

  def dump(folder, name, lines, encoding="utf-8"):
    files[os.path.basename(folder)][name] = (
        "\n".join(lines) + "\n").encode(encoding)

  # The 100K layout (ML-1M's age codes are ages its bucketing maps back).
  k = os.path.join(out, "ml-100k")
  dump(k, "u.data", [f"{u}\t{m}\t{r}\t{i}" for i, (u, m, r)
                     in enumerate(sub)])
  occupations = sorted({int(users[u][3]) for u in user_ids})
  dump(k, "u.occupation", [f"occ{o}" for o in occupations])
  dump(k, "u.user", [f"{u}|{users[u][2]}|{users[u][1]}|occ{users[u][3]}|"
                     f"{users[u][4]}" for u in user_ids])
  dump(k, "u.genre", ["unknown|0"] + [f"{g}|{i + 1}"
                                       for i, g in enumerate(genres)])
  item_lines = []
  for m in movie_ids:
    flags = ["0"] + ["1" if g in movies[m][2].split("|") else "0"
                     for g in genres]
    title = movies[m][1].replace("|", "/")
    item_lines.append(f"{m}|{title}|01-Jan-{years[m]}||"
                      f"http://example.invalid/{m}|" + "|".join(flags))
  dump(k, "u.item", item_lines, "iso-8859-1")

  # The README's own-data layout.
  g = os.path.join(out, "generic")
  dump(g, "ratings.csv", ["user,item,rating,ts"] + [
      f"{u},{m},{r},{i}" for i, (u, m, r) in enumerate(sub)])
  dump(g, "items.csv", ["item,genre,year,new"] + [
      f"{m},{movies[m][2]},{years[m]},{int(years[m] >= NEW_YEAR)}"
      for m in movie_ids])
  dump(g, "users.csv", ["user,gender,age,occupation,zip"] + [
      f"{u},{users[u][1]},{users[u][2]},{users[u][3]},{users[u][4][:3]}"
      for u in user_ids])
  flags = ["--config.data.name=generic",
           f"--config.data.root={os.path.abspath(g)}",
           "--config.data.generic.timestamp_col=ts",
           "--config.data.generic.item_features=items.csv",
           "--config.data.generic.user_features=users.csv",
           '--config.data.generic.categorical=("year","gender","age",'
           '"occupation","zip")',
           '--config.data.generic.lists=("genre",)',
           "--config.data.list_pad.genre=4",
           "--config.data.generic.new_item_col=new"]
  dump(g, "flags.txt", flags)
  toolkit.write_folder(k, files["ml-100k"], marker="u.data")
  toolkit.write_folder(g, files["generic"], marker="flags.txt")
  print(f"{len(user_ids)} users, {len(movie_ids)} movies, {len(sub)} ratings"
        f" ({int(sum(years[m] >= NEW_YEAR for m in movie_ids))} new movies)"
        f" -> {k}, {g}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True, help="an ML-1M folder")
  parser.add_argument("--out", required=True)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if atomic.is_inside(args.out, args.src):
    # (it wrote its folders into the dataset's own)
    raise InputError(f"--out={args.out} is inside --src={args.src}: write"
                     " the subset elsewhere")
  write(args.src, args.out, args.seed)


if __name__ == "__main__":
  toolkit.run(main)
