"""Built-in synthetic data: users and items with planted preferences.

Items carry MeLU-like features (an MPAA-like rate, genre, director and actor
lists) and users demographic ones (gender, age, occupation, zip). Every
feature value has a latent vector; an item's latent vector is a mix of its
features' vectors, so a model can learn it from the features. A user's
taste is partly predictable from the user's features and partly personal
(a random vector nobody can see), and

    rating = clip(round(mean + user_bias + item_bias + scale * taste . item))

so the meta-parameters alone predict the population's average taste, and
adapting to a user's support set recovers the personal part: the gain of
adaptation is real and measurable.

Users are generated in chunks, each a pure function of (seed, chunk), and
streamed to disk, so a store of millions of users never sits in memory.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from metarec_jax import config_io
from metarec_jax.data import store as store_lib
from metarec_jax.data.schema import FeatureSpec


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Sizes and knobs of the generator (the `data.synthetic` config)."""

  num_users: int = 5000
  num_items: int = 2000
  min_ratings: int = 20
  max_ratings: int = 100
  seed: int = 0
  latent_dim: int = 8
  personal_scale: float = 1.0
  noise: float = 0.3
  new_item_fraction: float = 0.2
  rate_vocab: int = 6
  genre_vocab: int = 25
  director_vocab: int = 2186
  actor_vocab: int = 8030
  gender_vocab: int = 2
  age_vocab: int = 7
  occupation_vocab: int = 21
  zip_vocab: int = 3402
  genre_len: int = 4
  director_len: int = 2
  actor_len: int = 4
  chunk_users: int = 65536

  def features(self) -> list[FeatureSpec]:
    # +1: index 0 is reserved for padding / missing.
    return [
        FeatureSpec("rate", "item", "categorical", self.rate_vocab + 1),
        FeatureSpec("genre", "item", "list", self.genre_vocab + 1,
                    self.genre_len),
        FeatureSpec("director", "item", "list", self.director_vocab + 1,
                    self.director_len),
        FeatureSpec("actor", "item", "list", self.actor_vocab + 1,
                    self.actor_len),
        FeatureSpec("gender", "user", "categorical", self.gender_vocab + 1),
        FeatureSpec("age", "user", "categorical", self.age_vocab + 1),
        FeatureSpec("occupation", "user", "categorical",
                    self.occupation_vocab + 1),
        FeatureSpec("zip", "user", "categorical", self.zip_vocab + 1),
    ]


def spec_of(data_config) -> SyntheticSpec:
  """The generator spec of a `data` config section: `data.synthetic`, its
  list lengths from `data.list_pad`."""
  given = dict(data_config.synthetic)
  for name in ("genre", "director", "actor"):
    if name in data_config.list_pad:
      given.setdefault(f"{name}_len", int(data_config.list_pad[name]))
  return config_io.dataclass_of(SyntheticSpec, given, "data.synthetic")


def _rng(spec: SyntheticSpec, *stream: int) -> np.random.Generator:
  return np.random.default_rng([spec.seed, *stream])


def _zipf_choice(rng, vocab: int, shape, exponent: float = 1.0):
  """Indices 1..vocab with Zipf-like popularity (index order is random)."""
  weights = 1.0 / np.arange(1, vocab + 1) ** exponent
  perm = rng.permutation(vocab) + 1
  cdf = np.cumsum(weights / weights.sum())
  return perm[np.minimum(np.searchsorted(cdf, rng.random(shape)), vocab - 1)]


def _lists(rng, vocab: int, max_len: int, n: int, exponent: float):
  """Padded lists of 1..max_len distinct-ish indices per row (0 = pad)."""
  values = _zipf_choice(rng, vocab, (n, max_len), exponent)
  lengths = rng.integers(1, max_len + 1, size=n)
  values[np.arange(max_len)[None, :] >= lengths[:, None]] = 0
  return values.astype(np.int32)


@dataclasses.dataclass
class _World:
  """Everything shared by all users: items and feature latents."""

  item_features: dict[str, np.ndarray]
  item_latent: np.ndarray
  item_bias: np.ndarray
  item_cdf: np.ndarray
  user_latents: dict[str, np.ndarray]
  user_vocab: dict[str, int]


def _pool(latent: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """Mean of the latent rows of the non-zero indices of each list."""
  mask = (idx > 0)[..., None]
  return (latent[idx] * mask).sum(-2) / np.maximum(mask.sum(-2), 1)


def _world(spec: SyntheticSpec) -> _World:
  rng = _rng(spec, 0)
  d = spec.latent_dim
  n = spec.num_items
  feats = {
      "rate": _zipf_choice(rng, spec.rate_vocab, n, 0.5).astype(np.int32),
      "genre": _lists(rng, spec.genre_vocab, spec.genre_len, n, 1.0),
      "director": _lists(rng, spec.director_vocab, spec.director_len, n, 0.7),
      "actor": _lists(rng, spec.actor_vocab, spec.actor_len, n, 0.8),
  }
  lat = {name: rng.normal(size=(vocab + 1, d)) / np.sqrt(d)
         for name, vocab in (("rate", spec.rate_vocab),
                             ("genre", spec.genre_vocab),
                             ("director", spec.director_vocab),
                             ("actor", spec.actor_vocab))}
  item_latent = (0.3 * lat["rate"][feats["rate"]]
                 + 1.0 * _pool(lat["genre"], feats["genre"])
                 + 0.6 * _pool(lat["director"], feats["director"])
                 + 0.6 * _pool(lat["actor"], feats["actor"]))
  item_latent /= np.sqrt(np.mean(np.sum(item_latent ** 2, -1)))
  bias_of = {name: rng.normal(0, 0.25, size=l.shape[0])
             for name, l in lat.items()}
  item_bias = (bias_of["rate"][feats["rate"]]
               + _pool(bias_of["genre"][:, None], feats["genre"])[:, 0]
               + _pool(bias_of["director"][:, None], feats["director"])[:, 0]
               + rng.normal(0, 0.2, size=n))
  popularity = 1.0 / np.arange(1, n + 1) ** 0.8
  popularity = popularity[rng.permutation(n)]
  user_vocab = {"gender": spec.gender_vocab, "age": spec.age_vocab,
                "occupation": spec.occupation_vocab, "zip": spec.zip_vocab}
  user_latents = {name: rng.normal(size=(v + 1, d)) / np.sqrt(d)
                  for name, v in user_vocab.items()}
  return _World(feats, item_latent, item_bias,
                np.cumsum(popularity / popularity.sum()), user_latents,
                user_vocab)


def _chunk(spec: SyntheticSpec, world: _World, chunk: int):
  """Users [chunk * C, ...): their features, items and ratings."""
  rng = _rng(spec, 1, chunk)
  start = chunk * spec.chunk_users
  n = min(spec.chunk_users, spec.num_users - start)
  d = spec.latent_dim
  ufeat = {
      "gender": rng.integers(1, spec.gender_vocab + 1, n),
      "age": _zipf_choice(rng, spec.age_vocab, n, 0.5),
      "occupation": _zipf_choice(rng, spec.occupation_vocab, n, 0.7),
      "zip": _zipf_choice(rng, spec.zip_vocab, n, 0.6),
  }
  ufeat = {k: v.astype(np.int32) for k, v in ufeat.items()}
  shared = sum(world.user_latents[k][v] for k, v in ufeat.items()
               if k != "zip") / 1.7
  taste = shared + spec.personal_scale * rng.normal(size=(n, d)) / np.sqrt(d)
  user_bias = rng.normal(0, 0.35, size=n)

  counts = rng.integers(spec.min_ratings, spec.max_ratings + 1, n)
  counts = np.minimum(counts, spec.num_items)
  # Oversample by popularity, then keep each user's first distinct items.
  draws = np.ceil(counts * 1.5).astype(np.int64) + 4
  owner = np.repeat(np.arange(n), draws)
  cand = np.minimum(np.searchsorted(world.item_cdf, rng.random(len(owner))),
                    spec.num_items - 1)
  order = np.lexsort((cand, owner))
  owner_s, cand_s = owner[order], cand[order]
  first = np.ones(len(owner_s), bool)
  first[1:] = (owner_s[1:] != owner_s[:-1]) | (cand_s[1:] != cand_s[:-1])
  # Restore a random order among each user's distinct items, then truncate.
  keep_idx = order[first]
  keep_idx.sort()
  owner_k, item_k = owner[keep_idx], cand[keep_idx]
  starts = np.searchsorted(owner_k, np.arange(n))
  rank = np.arange(len(owner_k)) - starts[owner_k]
  keep = rank < counts[owner_k]
  owner_k, item_k = owner_k[keep], item_k[keep]

  def rate(owner, item, noise_rng):
    signal = np.einsum("nd,nd->n", taste[owner], world.item_latent[item])
    raw = (3.6 + user_bias[owner] + world.item_bias[item] + 1.2 * signal
           + noise_rng.normal(0, spec.noise, size=len(owner)))
    return np.clip(np.round(raw), 1, 5).astype(np.float32)

  ratings = rate(owner_k, item_k, rng)
  # Few or very popular items: a user's draws may hold fewer distinct items
  # than its count. Such users get the rest from a stream of their own (the
  # other users' data stay as they were) and after their own items.
  more_owner, more_item = _top_up(world, counts, owner_k, item_k,
                                  _rng(spec, 3, chunk))
  if len(more_owner):
    order = np.argsort(np.concatenate([owner_k, more_owner]), kind="stable")
    ratings = np.concatenate([
        ratings, rate(more_owner, more_item, _rng(spec, 4, chunk))])[order]
    owner_k = np.concatenate([owner_k, more_owner])[order]
    item_k = np.concatenate([item_k, more_item])[order]
  user_counts = np.bincount(owner_k, minlength=n)
  return ufeat, user_counts, item_k.astype(np.int32), ratings


def _top_up(world: _World, counts, owner, item, rng):
  """(owner, item) pairs giving every user short of its count the rest,
  drawn by popularity without replacement among the items it lacks."""
  have = np.bincount(owner, minlength=len(counts))
  short = np.flatnonzero(have < counts)
  num_items = len(world.item_cdf)
  log_pop = np.log(np.maximum(np.diff(world.item_cdf, prepend=0.0), 1e-30))
  new_owner, new_item = [], []
  block = max(1, (1 << 22) // num_items)  # rows of keys held at once
  for lo in range(0, len(short), block):
    users = short[lo:lo + block]
    # Gumbel top-k: the k largest of log p + Gumbel noise are a draw of k
    # items without replacement, each in proportion to its popularity.
    keys = log_pop + rng.gumbel(size=(len(users), num_items))
    rows = np.searchsorted(users, owner)
    rated = (rows < len(users)) & (users[np.minimum(rows, len(users) - 1)]
                                   == owner)
    keys[rows[rated], item[rated]] = -np.inf
    ranked = np.argsort(-keys, axis=1, kind="stable")
    need = counts[users] - have[users]
    take = np.arange(num_items)[None, :] < need[:, None]
    new_owner.append(np.broadcast_to(users[:, None], ranked.shape)[take])
    new_item.append(ranked[take])
  if not new_owner:
    return np.zeros(0, np.int64), np.zeros(0, item.dtype)
  return np.concatenate(new_owner), np.concatenate(new_item).astype(item.dtype)


def generate(spec: SyntheticSpec, out: str | os.PathLike, *,
             log=None) -> None:
  """Writes a synthetic task store of `spec.num_users` users to `out`."""
  t0 = time.time()
  world = _world(spec)
  num_chunks = -(-spec.num_users // spec.chunk_users)
  specs = spec.features()
  with store_lib.StoreWriter(out) as w:
    user_feat = {s.name: w.open_array(f"user/{s.name}.npy", np.int32,
                                (spec.num_users,))
                 for s in specs if s.side == "user"}
    offsets = w.open_array("offsets.npy", np.int64, (spec.num_users + 1,))
    offsets[0] = 0
    raw_items = open(os.path.join(w.tmp, "items.raw"), "wb")
    raw_ratings = open(os.path.join(w.tmp, "ratings.raw"), "wb")
    total = 0
    rating_sum = 0.0
    for c in range(num_chunks):
      ufeat, counts, items, ratings = _chunk(spec, world, c)
      lo = c * spec.chunk_users
      hi = lo + len(counts)
      for name, values in ufeat.items():
        user_feat[name][lo:hi] = values
      offsets[lo + 1:hi + 1] = total + np.cumsum(counts)
      total += len(items)
      rating_sum += float(ratings.sum(dtype=np.float64))
      raw_items.write(items.tobytes())
      raw_ratings.write(ratings.tobytes())
      if log is not None and (c + 1) % 4 == 0:
        log(f"synthetic: {hi:,} of {spec.num_users:,} users,"
            f" {time.time() - t0:.1f}s")
    raw_items.close()
    raw_ratings.close()
    for name, dtype in (("items", np.int32), ("ratings", np.float32)):
      src = np.memmap(os.path.join(w.tmp, f"{name}.raw"), dtype=dtype,
                      mode="r", shape=(total,))
      dst = w.open_array(f"{name}.npy", dtype, (total,))
      step = 1 << 24
      for i in range(0, total, step):
        dst[i:i + step] = src[i:i + step]
      dst.flush()
      del src, dst
      os.remove(os.path.join(w.tmp, f"{name}.raw"))
    for arr in (*user_feat.values(), offsets):
      arr.flush()
    del user_feat, offsets
    w.save_array("user_ids.npy",
                 np.arange(1, spec.num_users + 1, dtype=np.int64))
    w.save_array("item_ids.npy",
                 np.arange(1, spec.num_items + 1, dtype=np.int64))
    num_new = int(round(spec.new_item_fraction * spec.num_items))
    item_new = np.zeros(spec.num_items, bool)
    item_new[_rng(spec, 2).permutation(spec.num_items)[:num_new]] = True
    w.save_array("item_new.npy", item_new)
    for s in specs:
      if s.side == "item":
        w.save_array(f"item/{s.name}.npy", world.item_features[s.name])
      w.save_vocab(s.name, ["<pad>"] + [f"{s.name}_{i}"
                                        for i in range(1, s.vocab)])
    mean = rating_sum / max(total, 1)
    manifest = store_lib.manifest_for(
        dataset="synthetic", num_users=spec.num_users,
        num_items=spec.num_items, ratings=np.array([mean], np.float32),
        features=specs, rating_range=(1.0, 5.0),
        extra={"synthetic": dataclasses.asdict(spec),
               "item_class_rule": "a seeded random new_item_fraction of"
                                  " the items is new"})
    manifest["num_ratings"] = int(total)
    w.finish(manifest)
  if log is not None:
    log(f"synthetic: wrote {spec.num_users:,} users, {total:,} ratings to"
        f" {out} in {time.time() - t0:.1f}s")
