"""`metarec data inspect`: what a task store holds, for people and scripts."""

from __future__ import annotations

import numpy as np

from metarec_jax.data.store import TaskStore

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


def summary(store: TaskStore) -> dict:
  """Counts, rating scale and mean, features, ratings per user, new items."""
  counts = store.counts()
  rated = counts[counts > 0]
  item_new = np.asarray(store.item_new)
  items = np.asarray(store.items)
  m = store.manifest
  numeric = set(m.get("source", {}).get("generic", {}).get("numeric", ()))
  return {
      "store": store.path,
      "dataset": m["dataset"],
      "users": store.num_users,
      "users_with_ratings": int(len(rated)),
      "items": store.num_items,
      "ratings": store.num_ratings,
      "rating_min": float(m["rating_min"]),
      "rating_max": float(m["rating_max"]),
      "rating_mean": float(m["rating_mean"]),
      "timestamps": store.timestamps is not None,
      # A numeric column's categories are its quantile bins, by bounds.
      "features": [{"name": f.name, "side": f.side, "kind": f.kind,
                    "vocab": f.vocab, "max_len": f.max_len,
                    **({"bins": store.vocab(f.name)[1:]}
                       if f.name in numeric else {})}
                   for f in store.features],
      "ratings_per_user": {
          f"q{int(q * 100)}": (float(np.quantile(rated, q)) if len(rated)
                               else None) for q in QUANTILES},
      "new_items": int(item_new.sum()),
      "new_item_share": float(item_new.mean()) if len(item_new) else None,
      "new_item_rating_share": (float(item_new[items].mean()) if len(items)
                                else None),
      "item_class_rule": m.get("item_class_rule"),
      # Implicit feedback: the positives are the "ratings" above (all 1),
      # by the rule that made them.
      "implicit": m.get("implicit") and {**m["implicit"],
                                         "positives": positive_rule(m)},
      # Repeated (user, item) rows the build dropped, and which it kept.
      "duplicates": m.get("duplicates"),
      "notes": m.get("notes", []),
      # What a resume compares its input files with (`fingerprint`).
      "source_files": {name: {"bytes": f["bytes"], "sha256": f["sha256"]}
                       for name, f in m.get("source", {}).get(
                           "files", {}).items()},
  }


def positive_rule(manifest: dict) -> str:
  """How an implicit store's positives were read (its `manifest`): every
  line of a file without a rating column, else the ratings at or above the
  threshold (0 included: a 0/1 column read at 0 is still a rating
  column)."""
  fmt = manifest.get("ratings_format", {})
  if fmt.get("rating", "") is None:
    return "every line"
  return f"a rating >= {manifest['implicit']['threshold']:g}"


def _dropped(duplicates: dict | None) -> str:
  """The repeated rows a build dropped, as a clause of the ratings line
  (before, only `data prepare`'s log said so, once)."""
  if not duplicates or not duplicates.get("dropped"):
    return ""
  n = duplicates["dropped"]
  return (f"; {n:,} repeated (user, item) row{'s' if n > 1 else ''} dropped"
          f" ({duplicates['rule']})")


def format_summary(s: dict) -> str:
  """The human-readable form of `summary`."""
  def share(x):
    return "-" if x is None else f"{100 * x:.1f}%"
  q = s["ratings_per_user"]
  implicit = s.get("implicit")
  what = "positives" if implicit else "ratings"
  if implicit:  # its ratings are all 1: it was read as "on 1..5, mean 1"
    rated = (f"  positives {s['ratings']:,} of {implicit['interactions']:,}"
             f" (user, item) interactions ({implicit['positives']})")
  else:
    rated = (f"  ratings  {s['ratings']:,} on {s['rating_min']:g}.."
             f"{s['rating_max']:g}, mean {s['rating_mean']:.3f}")
  lines = [
      f"{s['dataset']} task store at {s['store']}",
      f"  users    {s['users']:,} ({s['users_with_ratings']:,} with {what})",
      f"  items    {s['items']:,} ({s['new_items']:,} new ="
      f" {share(s['new_item_share'])}; {share(s['new_item_rating_share'])}"
      f" of the {what})",
      rated + (", with timestamps" if s["timestamps"] else "")
      + _dropped(s.get("duplicates")),
      f"  {what} per user (users with {what}): "
      + ", ".join(f"{k} {v:g}" for k, v in q.items() if v is not None),
      "  features:",
  ]
  for f in s["features"]:
    shape = f" x{f['max_len']}" if f["kind"] == "list" else ""
    bins = f.get("bins")
    if bins:
      shape = (f", the quantile bins of numbers: {bins[0]}"
               + (f" ... {bins[-1]}" if len(bins) > 1 else ""))
    lines.append(f"    {f['side']:<4} {f['name']:<14} {f['kind']:<11}"
                 f" vocab {f['vocab']:,}{shape}")
  if s["item_class_rule"]:
    lines.append(f"  item classes: {s['item_class_rule']}")
  for name, f in s["source_files"].items():
    lines.append(f"  built from {name}: {f['bytes']:,} bytes, SHA-256"
                 f" {f['sha256'][:16]}...")
  for note in s["notes"]:
    lines.append(f"  note: {note}")
  return "\n".join(lines)
