"""Swapping two names in one step: Linux's `renameat2(RENAME_EXCHANGE)`.

`atomic.Folder` replaces an earlier output folder by exchanging it with the
new one, so that no moment (not even a SIGKILL's) leaves nothing at the
output's path, as moving one aside and renaming the other in would. Python
has no binding for the call; `ctypes` reaches the C library's.
"""

from __future__ import annotations

import ctypes
import functools
import os


@functools.cache
def _renameat2():
  """glibc's `renameat2`, None where the C library has none (not Linux,
  glibc before 2.28)."""
  try:
    call = ctypes.CDLL(None).renameat2
  except (OSError, AttributeError):
    return None
  call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                   ctypes.c_char_p, ctypes.c_uint]
  call.restype = ctypes.c_int
  return call


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


def exchange(a: str, b: str) -> bool:
  """Swaps the names `a` and `b` (both existing) in one step, so that no
  moment has neither at `b`: True; False where it did not (the caller
  renames in two steps)."""
  call = _renameat2()
  if call is None:
    return False
  if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
          _RENAME_EXCHANGE) == 0:
    return True
  # No such flag here (EINVAL, ENOSYS, EOPNOTSUPP: an old kernel, some file
  # systems), a sandbox's seccomp filter that denies the call (EPERM), or
  # anything else: the two plain renames run instead, and report a real
  # problem (a missing folder, no permission) as `os.rename` does.
  return False
