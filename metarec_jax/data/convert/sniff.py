"""What a file is when it is not delimited text, told before parsing.

A compressed archive, UTF-16 text read as UTF-8, or a JSON export would
otherwise fail at a later symptom ("byte 0x8b is not valid utf-8",
"malformed quoting") that does not say what the file is. Each check here
raises an `InputError` naming the file and what to do with it.
"""

from __future__ import annotations

import codecs
import json
import os
import re

from metarec_jax.errors import InputError

_PACKED = ((b"\x1f\x8b", "gzip-compressed", "decompress it: gunzip"),
           (b"PK\x03\x04", "a zip archive", "unpack it: unzip"))
# A zip whose first entries say it is a spreadsheet (unzipped, XML parts).
_SPREADSHEETS = ((b"xl/", "an Excel workbook"),
                 (b"opendocument.spreadsheet", "an OpenDocument spreadsheet"))


def refuse_packed(raw: bytes, path: str) -> None:
  """Raises InputError where `raw` is a gzip or zip file (a
  `ratings.csv.gz` named as the ratings file), or a spreadsheet, which
  is a zip of XML that unpacking does not make a table of."""
  if raw.startswith(b"PK\x03\x04"):
    head = raw[:4096]
    for mark, what in _SPREADSHEETS:
      if mark in head:
        raise InputError(
            f"the file is {what}, not delimited text: save its sheet as CSV"
            " (or pandas.read_excel(PATH).to_csv('out.csv', index=False))",
            path=path)
  for magic, what, tool in _PACKED:  # was "byte 0x8b ... not valid utf-8"
    if raw.startswith(magic):
      raise InputError(f"the file is {what} ({tool} {os.path.basename(path)},"
                       " and name the text file it holds)", path=path)


def refuse_wide_bom(raw: bytes, encoding: str, path: str) -> None:
  """Raises InputError where `raw` starts with a UTF-16 or UTF-32 byte
  order mark (Excel's "Unicode Text") but is read in another encoding:
  it was "byte 0xff ... is not valid utf-8 text", or as Latin-1 "a NUL
  byte", neither saying what the file is."""
  for bom, wide in ((codecs.BOM_UTF32_LE, "utf-32"),
                    (codecs.BOM_UTF32_BE, "utf-32"),
                    (codecs.BOM_UTF16_LE, "utf-16"),
                    (codecs.BOM_UTF16_BE, "utf-16")):
    if raw.startswith(bom):
      try:
        name = codecs.lookup(encoding).name
      except LookupError:
        return  # the decoding names the unknown encoding
      if not name.startswith(wide):
        raise InputError(f"the file starts with a {wide.upper()} byte order"
                         f" mark but is read as {encoding}: it is"
                         f" {wide.upper()} text (set the encoding to"
                         f" {wide})", path=path, line=1)
      return


def _parses(text: str) -> bool:
  try:
    json.loads(text)
  except ValueError:
    return False
  return True


def refuse_json(text: str, path: str) -> None:
  """Raises InputError where `text` is JSON: one object per line (the
  review exports of Yelp and Amazon) or one JSON document. Split on a
  delimiter it failed at its first quote ("malformed quoting") or at a
  missing `user` column.

  Only a first line that opens with `{` or `[` is looked at further, and
  then it must parse as JSON (that line alone, or the whole text), so a
  delimited file whose first id is `[unknown]` still reads as text.
  """
  # Only the first non-blank character is read for every file: splitting
  # a file of millions of lines here cost 0.15 s and a list of them.
  at = re.search(r"\S", text).start()  # `read_text` refuses blank files
  if text[at] not in "{[":
    return
  start = text.rfind("\n", 0, at) + 1
  end = text.find("\n", at)
  first = text[start:end if end >= 0 else len(text)].strip()
  try:
    record = json.loads(first)
  except ValueError:
    record = None
  # A first line that is no JSON value alone, or an array: one document
  # where the whole text parses as one, else a record per line.
  whole = not isinstance(record, dict) and _parses(text)
  if record is None and not whole:
    return
  what, read = (("one document", "PATH") if whole else
                (f"one {'object' if isinstance(record, dict) else 'array'}"
                 " per line", "PATH, lines=True"))
  raise InputError(
      f"the file is JSON ({what}), not delimited text: write it as CSV first"
      f" (e.g. pandas.read_json({read}).to_csv('out.csv', index=False))",
      path=path, line=text.count("\n", 0, start) + 1)
