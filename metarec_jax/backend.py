"""Choices that depend on the accelerator, in one table with their reasons.

The engine was tuned on a 2-core CPU; what is right there is not always
right on a GPU or a TPU. Every such choice is a field of `Defaults`, and
`DEFAULTS` gives its value per JAX backend (`jax.default_backend()`):

- `chunk_tasks`: tasks per device per chunk of the meta-step when
  `train.chunk_tasks=0`. CPU: 16, where a 16-task working set stays in
  cache (melu-ref measured 2,200 tasks/s against 1,800 with 32 and 1,500
  with 64). GPU/TPU: 0 = the whole per-device batch at once: an
  accelerator needs thousands of tasks in flight to fill its cores, and
  a chunk loop would serialise them (memory is the limit there; set
  `train.chunk_tasks` when a batch does not fit).
- `full_unroll_steps`: with `meta.unroll=0` the inner loop's `lax.scan`
  is fully unrolled up to this many inner steps, rolled (unroll 1) beyond.
  Unrolled, XLA fuses across inner steps and keeps no per-step residual
  stacks (melu-ref on CPU: 7% faster at 5 steps); the program, and its
  compile time, grow with the steps, so a long inner loop stays rolled.
  CPU: 8, since compilation competes with training for the same cores.
  GPU/TPU: 32: a rolled loop costs a GPU a device-to-host copy of the
  loop predicate and a fresh kernel sequence per iteration, and blocks
  fusion across steps, while compilation runs on the host beside the
  accelerator.
- `input_workers`: threads building training batches when
  `train.input_workers=0`. CPU: 1: the host's cores are the devices (one
  CPU device per core), so a second builder takes time from the step it
  would feed; one thread builds melu-ref's 256-task batch in about 3.5 ms
  of a 27 ms metric-learner step. GPU/TPU: 12 (at most one per host
  core): the host's cores are free while the accelerator computes, and
  numpy's sorts and gathers release the GIL. On an H200 host (16 cores,
  2026-12-04, docs/results.md) 4 threads built 117,000-182,000 melu-ref
  tasks/s at 4,096 tasks per step, while the step alone ran MAML's at
  335,000-391,000 and the metric learner's at 0.8-1.2 M: training waited
  on the input 69-81% of the time; 12 threads built 314,000-390,000 at
  16,384 tasks per step and the step no longer waited.
- `onehot_vocab`: embedding tables of at most this many rows are looked
  up as a one-hot matrix product rather than a gather (`models.melu.
  Embedder`). GPU/TPU: 64. A gather's gradient is a scatter-add, and on a
  GPU thousands of tasks' rows adding into a handful of table rows (a
  user's gender, a rating class, 25 genres) serialise on atomic adds: on
  an H200 the embedding tables' scatters took about 3.5 of the metric
  learner's 6.3 ms per 4,096-task melu-ref step (`tools/profile_step.py`,
  2026-12-04), whereas the one-hot product's gradient is a matmul. CPU: 0
  (always a gather): there a scatter-add is a plain loop and the one-hot
  product's arithmetic would cost more.
- `matmul_size`: the n of the n x n matmuls whose best rate is the bench's
  peak (`bench.peak_matmul_gflops`). CPU: 2048 (a few hundred ms on two
  cores, past the size where the rate still climbs). GPU/TPU: 8192: a
  2048 matmul is ~17 GFLOP, tens of microseconds on a current GPU, where
  launch overhead would understate the peak.

Not per backend (the same reasoning holds everywhere): `train.prefetch`
(batches built ahead), `meta.remat` (off: memory is bounded by the
chunk). Float32 matmuls run at XLA's default precision on every backend;
on NVIDIA GPUs since Ampere that may use TF32 (10-bit mantissa);
`model.compute_dtype=bfloat16` is the explicit low-precision choice.
"""

from __future__ import annotations

import dataclasses
import os

import jax


@dataclasses.dataclass(frozen=True)
class Defaults:
  """The backend-dependent choices (see the module docstring)."""

  chunk_tasks: int
  full_unroll_steps: int
  matmul_size: int
  input_workers: int
  onehot_vocab: int


_ACCELERATOR = Defaults(chunk_tasks=0, full_unroll_steps=32,
                        matmul_size=8192, input_workers=12, onehot_vocab=64)
DEFAULTS = {
    "cpu": Defaults(chunk_tasks=16, full_unroll_steps=8, matmul_size=2048,
                    input_workers=1, onehot_vocab=0),
    "gpu": _ACCELERATOR,
    "cuda": _ACCELERATOR,
    "rocm": _ACCELERATOR,
    "tpu": _ACCELERATOR,
}


def defaults(backend: str | None = None) -> Defaults:
  """The defaults of `backend` (default: JAX's default backend); an
  unknown backend gets the accelerators' ones."""
  return DEFAULTS.get(backend or jax.default_backend(), _ACCELERATOR)


def inner_unroll(unroll: int, inner_steps: int,
                 backend: str | None = None) -> int | bool:
  """The inner `lax.scan`'s unroll for `meta.unroll` (0 = automatic:
  fully unrolled up to the backend's `full_unroll_steps`, else 1)."""
  if unroll > 0:
    return unroll
  return True if inner_steps <= defaults(backend).full_unroll_steps else 1


def input_workers(workers: int, backend: str | None = None) -> int:
  """The input threads for `train.input_workers` (0 = the backend's, at
  most one per host core)."""
  if workers > 0:
    return workers
  return max(1, min(defaults(backend).input_workers, os.cpu_count() or 1))
