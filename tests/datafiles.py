"""Small dataset folders for tests, written into a test's tmp dir.

Real MovieLens files are only ever read from the shared data folder and
copied into tmp dirs (the license forbids putting them in the repo).
"""

from __future__ import annotations

import os
import shutil

import numpy as np


def write(path, text: str, encoding: str = "utf-8", newline: str = "\n"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(text.replace("\n", newline).encode(encoding))
  return path


def ml1m_subset(shared_data: str, dest: str, num_users: int, *,
                extrainfos: bool = True) -> str:
  """The real ML-1M files with the ratings of users 1..num_users only."""
  src = os.path.join(shared_data, "ml-1m")
  os.makedirs(dest, exist_ok=True)
  names = ["users.dat", "movies.dat"]
  if extrainfos:
    names.append("movies_extrainfos.dat")
  for name in names:
    shutil.copyfile(os.path.join(src, name), os.path.join(dest, name))
  with open(os.path.join(src, "ratings.dat"), "rb") as f, \
      open(os.path.join(dest, "ratings.dat"), "wb") as out:
    for line in f:
      if int(line.split(b"::", 1)[0]) > num_users:
        break  # the file is sorted by user
      out.write(line)
  return dest


def ml1m_ratings_of(shared_data: str, users: range) -> str:
  """The real ratings.dat lines of `users` (text)."""
  lines = []
  with open(os.path.join(shared_data, "ml-1m", "ratings.dat")) as f:
    for line in f:
      if int(line.split("::", 1)[0]) in users:
        lines.append(line)
  return "".join(lines)


def tiny_ml1m(dest: str) -> str:
  """A hand-made ML-1M folder exercising every rule of the loader."""
  write(os.path.join(dest, "users.dat"),
        "3::M::25::15::55117\n"
        "1::F::1::10::48067\n"
        "2::M::56::16::70072\n")  # user 2 has no ratings
  write(os.path.join(dest, "movies.dat"),
        "20::Caf\u00e9 Society (1999)::Comedy|Drama\n"
        "10::Toy Story (1995)::Animation|Children's|Comedy\n"
        "30::Old Film (1950)::Drama\n",
        encoding="iso-8859-1")
  write(os.path.join(dest, "movies_extrainfos.dat"),
        "10::Toy Story::1995::G::22 Nov 1995::Animation, Adventure, Comedy,"
        " Family, Fantasy::John Lasseter::W::Tom Hanks, Tim Allen, Don"
        " Rickles, Jim Varney, Wallace Shawn::plot::poster\n"
        "20::Caf\u00e9 Society::1999::N/A::N/A::Drama::"
        "Ash Brannon(co-director), John Lasseter, Lee Unkrich (co-director)"
        "::W::N/A::plot::N/A\n",
        newline="\r\n")  # movie 30 has no extra infos
  write(os.path.join(dest, "ratings.dat"),
        "1::20::4::300\n"
        "1::10::5::100\n"
        "3::10::2::50\n"
        "1::30::3::200\n"
        "1::20::1::400\n")  # (1, 20) twice: the last (1 star) stays
  return dest


def tiny_ml100k(dest: str, *, num_users: int = 30, num_items: int = 40,
                ratings_per_user: int = 25, seed: int = 0) -> str:
  """An ML-100K folder: fixed users and items, random ratings."""
  rng = np.random.default_rng(seed)
  genres = ["unknown", "Action", "Comedy", "Drama", "Sci-Fi"]
  write(os.path.join(dest, "u.genre"),
        "".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
  occupations = ["administrator", "artist", "engineer", "student"]
  write(os.path.join(dest, "u.occupation"),
        "".join(o + "\n" for o in occupations))
  ages = [7, 17, 18, 24, 25, 40, 45, 50, 55, 56, 73]
  write(os.path.join(dest, "u.user"), "".join(
      f"{u}|{ages[u % len(ages)]}|{'MF'[u % 2]}|"
      f"{occupations[u % len(occupations)]}|{10000 + 37 * u}\n"
      for u in range(1, num_users + 1)))
  items = []
  for i in range(1, num_items + 1):
    year = 1990 + i % 10
    date = "" if i == num_items else f"01-Jan-{year}"
    flags = ["1" if (i + g) % 3 == 0 else "0" for g in range(len(genres))]
    title = f"Film {i} \u00e0 la carte ({year})"
    items.append(f"{i}|{title}|{date}||http://x/{i}|" + "|".join(flags))
  write(os.path.join(dest, "u.item"), "\n".join(items) + "\n",
        encoding="iso-8859-1")
  rows = []
  for u in range(1, num_users + 1):
    chosen = rng.choice(num_items, ratings_per_user, replace=False) + 1
    stars = rng.integers(1, 6, ratings_per_user)
    times = rng.integers(8e8, 9e8, ratings_per_user)
    rows += [f"{u}\t{i}\t{r}\t{t}\n" for i, r, t in zip(chosen, stars, times)]
  order = rng.permutation(len(rows))
  write(os.path.join(dest, "u.data"), "".join(rows[k] for k in order))
  return dest


TASTE_DIM = 3


def taste_ratings(root, *, users=300, items=80, per_user=(30, 60), seed=0,
                  unrated=(), item_name=lambda i: f"i{i}"):
  """Writes `root/ratings.csv`, a ratings file alone: biases plus a
  `TASTE_DIM`-dimensional taste plus a little noise; the items of `unrated`
  get no rating. Returns the true item factors `[items, TASTE_DIM]` (item
  `item_name(n)` is row n)."""
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(items, TASTE_DIM))
  p = rng.normal(size=(users, TASTE_DIM))
  b_item = rng.normal(0, 0.3, items)
  rated = np.setdiff1d(np.arange(items), unrated)
  lines = ["user,item,rating"]
  for u in range(users):
    n = rng.integers(*per_user)
    for i in rng.choice(rated, size=min(n, len(rated)), replace=False):
      r = 3.0 + b_item[i] + 0.6 * p[u] @ q[i] + rng.normal(0, 0.2)
      lines.append(f"u{u},{item_name(i)},{np.clip(r, 1, 5):.2f}")
  write(os.path.join(root, "ratings.csv"), "\n".join(lines) + "\n")
  return q
