"""Prints the markdown table of every config key (the README's reference).

    python tools/config_reference.py            # print the table
    python tools/config_reference.py --write    # update README.md in place

The keys and defaults come from `configs/default.py` (the package's
`config_defaults`), the meanings from `metarec_jax/config_meanings.py`
(`MEANINGS`), the allowed values from `metarec_jax/config_reference.py`; a
key without a meaning or a rule is an error (status 1) that names it.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from metarec_jax import atomic, config_io, config_table  # noqa: E402
from metarec_jax.errors import InputError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--write", action="store_true",
                      help="replace the table between the README's markers")
  parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
  args = parser.parse_args(argv)
  config = config_io.load_config_file(
      os.path.join(ROOT, "configs", "default.py"))
  problems = config_table.check(config)
  if problems:
    for problem in problems:
      print(f"config_reference: {problem}", file=sys.stderr)
    return 1
  table = config_table.markdown_table(config)
  if not args.write:
    print(table)
    return 0
  with open(args.readme) as f:  # a missing file: one line (toolkit.run)
    text = f.read()
  try:
    text = config_table.replace_section(text, table)
  except ValueError as e:  # no markers: one line, not a traceback
    raise InputError(str(e), path=args.readme) from None
  atomic.write_text(args.readme, text)
  print(f"updated {args.readme}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  from metarec_jax import toolkit  # noqa: E402
  toolkit.run(main)
