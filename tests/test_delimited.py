"""The byte tokenizer of `delimited.read_table` splits lines and fields
exactly as `str.splitlines`-free Python does (`_lines` and `str.split`),
block by block, and its bulk conversions follow Python's `int`, `float`
and `str.strip`."""

import numpy as np
import pytest

from metarec_jax.data.convert import delimited, parsing, tokens, writing
from metarec_jax.errors import InputError

TEXTS = [
    ("a,b\n1,2\r\n\n  \n3,4", ","),  # CRLF, blank lines, no final newline
    ("a,b\n1,2\n3,4\n\n", ","),  # blank lines at the end
    ("x\ty\n\t\n1\t2\n", "\t"),  # a line of delimiters that are space
    ("1:::2::3\n4::5::6\n", "::"),  # longer delimiter, overlapping run
    ("1::2\n::\n", "::"),  # a line of delimiters that are not space
    ("\u00a0\u3000\n\u00e9,\u00fc\n \u00e9 ,x\n", ","),  # non-ASCII
    ("1,2\r", ","),  # a final \r without a newline: the line's end
    ("a,b\r1,2\r\r3,4", ","),  # lines ended by \r alone (old Mac)
    ("a\rb,c\n1\r\r\n", None),  # a lone \r stays in the line
    ("1\x1f2::3\n", "::"),  # the stand-in byte itself: the plain split
    ("1\u00a72\n3\u00a74\n", "\u00a7"),  # a two-byte delimiter
    ("a b\n   \n1 2\n", " "),  # space-delimited, a line of spaces
]


def reference(text, delimiter):
  lines, numbers = delimited._lines(delimited.cr_lines(text))  # pylint: disable=protected-access
  return [line.split(delimiter) for line in lines], list(numbers)


def columns_of(table):
  return [list(c) for c in table.columns]


@pytest.mark.parametrize("block", [1 << 24, 3])
@pytest.mark.parametrize("text,delimiter", TEXTS)
def test_fields_and_lines_are_pythons(tmp_path, monkeypatch, block, text,
                                      delimiter):
  monkeypatch.setattr(tokens, "BLOCK", block)  # many blocks at 3
  delimiter = delimiter or ","
  path = tmp_path / "t.txt"
  path.write_bytes(text.encode("utf-8"))
  rows, numbers = reference(text, delimiter)
  width = len(rows[0])
  if any(len(r) != width for r in rows):
    with pytest.raises(InputError, match="field"):
      delimited.read_table(path, delimiter=delimiter, encoding="utf-8")
    return
  table = delimited.read_table(path, delimiter=delimiter, encoding="utf-8")
  assert list(table.lines) == numbers
  assert columns_of(table) == [list(c) for c in zip(*rows)]
  assert [table.column(j)[i] for i in range(len(table))
          for j in range(width)] == [f for r in rows for f in r]


def test_a_header_and_a_wrong_field_count_name_their_lines(tmp_path):
  path = tmp_path / "r.csv"
  path.write_text("\n user , item \n1,2\n\n3,4,5\n")
  with pytest.raises(InputError, match=r"r\.csv:5: 3 field\(s\) separated by"
                     r" ',', expected 2 like line 2"):
    delimited.read_table(path, delimiter=",", encoding="utf-8", header=True)
  path.write_text("user,item\n")
  table = delimited.read_table(path, delimiter=",", encoding="utf-8",
                               header=True, allow_no_rows=True)
  assert table.header == ["user", "item"] and len(table) == 0
  assert table.column(1).strings().tolist() == []


def test_latin1_files_read_the_same(tmp_path):
  path = tmp_path / "u.dat"
  path.write_bytes("1::Andr\xe9::F\n2::Zo\xeb::M\n".encode("latin-1"))
  table = delimited.read_table(path, delimiter="::", encoding="latin-1")
  assert columns_of(table) == [["1", "2"], ["Andr\xe9", "Zo\xeb"],
                               ["F", "M"]]


def test_a_utf8_file_read_as_latin1_is_refused_at_its_byte_order_mark(tmp_path):
  # Decoded as Latin-1 or cp1252 the mark is the text `ï»¿`:
  # the first id would be `ï»¿a`, another user than `a`.
  path = tmp_path / "r.csv"
  path.write_bytes(b"\xef\xbb\xbfa,x,4\na,y,3\n")
  for encoding in ("latin-1", "cp1252"):
    with pytest.raises(InputError, match=r"r\.csv:1: the file starts with a"
                       " UTF-8 byte order mark but is read as " + encoding):
      delimited.read_table(path, delimiter=",", encoding=encoding)
  for encoding in ("utf-8", "UTF8", "utf-8-sig"):
    table = delimited.read_table(path, delimiter=",", encoding=encoding)
    assert table.column(0).strings().tolist() == ["a", "a"]


VALUES = [" 5", "+3", "1_000", "-7 ", "x", "", "5.0",
          "99999999999999999999", "\t12\r"]


def column(tmp_path, values):
  path = tmp_path / "c.txt"
  path.write_text("".join(f"{v};\n" for v in values))
  return delimited.read_table(path, delimiter=";", encoding="utf-8").column(0)


@pytest.mark.parametrize("held", ["bytes", "list"])
def test_bulk_integers_follow_pythons_int(tmp_path, held):
  values = column(tmp_path, VALUES) if held == "bytes" else list(VALUES)
  ints, ok = parsing.parse_ints(values)
  expected = []
  for v in VALUES:
    try:
      x = None if "_" in v else int(v)  # `1_000`: a typo, not 1000
      expected.append(x if x is None or -2 ** 63 <= x < 2 ** 63 else None)
    except ValueError:
      expected.append(None)
  assert ok.tolist() == [e is not None for e in expected]
  assert ints[ok].tolist() == [e for e in expected if e is not None]
  good = [" 5", "+3", "-7 "]
  if held == "bytes":
    good = column(tmp_path, good)
  assert parsing.parse_ints(good)[0].tolist() == [5, 3, -7]


def test_integer_ids_are_those_written_as_the_store_writes_them(tmp_path):
  """`parse_int_ids` on a column of integers (the bulk path reads two
  characters of each), on one with a word (field by field), and on a list
  agrees with `CANONICAL_INT`."""
  spellings = ["0", "7", "-7", "10", "-10", " 5 ", "-9223372036854775808",
               "007", "+7", "-0", "00", "-07", "+0"]
  expected = [bool(parsing.CANONICAL_INT.fullmatch(v.strip()))
              for v in spellings]
  assert expected == [True] * 7 + [False] * 6
  for values in (column(tmp_path, spellings), spellings,
                 np.array(spellings)):
    numbers, ok = parsing.parse_int_ids(values)
    assert ok.tolist() == expected
    assert numbers[ok].tolist() == [int(v) for v in spellings[:7]]
  _, ok = parsing.parse_int_ids(column(tmp_path, spellings + ["x"]))
  assert ok.tolist() == expected + [False]


def test_bulk_floats_follow_pythons_float(tmp_path):
  values = [" 4.5", "1e3", "+.5", "5."]
  table = delimited.Table("c.txt", None, [], np.arange(1, 5))
  for held in (column(tmp_path, values), values):
    out = parsing.floats(table, held, "rating")
    assert out.tolist() == [float(v) for v in values]
  # But not `1_0.5` (10.5 to Python, a typo in a data file), either way.
  for held in (column(tmp_path, ["4", "1_0.5"]), ["4", "1_0.5"]):
    with pytest.raises(InputError, match=r"c\.txt:2: rating '1_0\.5' is"
                       " not a finite number"):
      parsing.floats(table, held, "rating")
  with pytest.raises(InputError, match=r"c\.txt:3: rating 'x' is not a"
                     " finite number"):
    bad = column(tmp_path, ["1", "2", "x", "nan"])
    parsing.floats(delimited.Table(str(tmp_path / "c.txt"), None, [],
                                     np.arange(1, 5)), bad, "rating")


def test_strings_strip_as_python_does(tmp_path):
  values = [" a ", "\u00e9\u00a0", "\u3000b", "c\t"]
  assert column(tmp_path, values).strings().tolist() == [
      v.strip() for v in values]
  assert column(tmp_path, ["u1 ", " u22"]).strings().tolist() == ["u1", "u22"]
  long = "z" * 100  # wider than a bulk column: the plain path
  assert column(tmp_path, [long, "y"]).strings().tolist() == [long, "y"]


def test_the_parse_benchmark_prints_its_figures():
  import json
  import subprocess
  import sys
  from conftest import ROOT
  out = subprocess.run([sys.executable, "tools/bench_parse.py", "--rows=3000"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["rows"] == 3000 and result["file_bytes"] > 3000 * 20
  assert result["peak_rss_mb"] >= result["rss_before_mb"] > 0


def test_a_column_named_twice_is_an_error_at_the_header(tmp_path):
  path = tmp_path / "r.csv"
  path.write_text("\nuser,item,rating,rating\n1,2,3,4\n")
  with pytest.raises(InputError, match=r"r\.csv:2: column 'rating' appears"
                     r" twice in the header \(fields 3 and 4\)"):
    delimited.read_table(path, delimiter=",", encoding="utf-8", header=True)
  path.write_text("user,item,,\n1,2,3,4\n")  # unnamed columns may repeat
  assert delimited.read_table(path, delimiter=",", encoding="utf-8",
                              header=True).header == ["user", "item", "", ""]


def test_automatic_quoting_only_where_the_file_has_quotes(tmp_path):
  path = tmp_path / "q.csv"
  path.write_text('a,b\n"x, y",2\n')
  table = delimited.read_table(path, delimiter=",", encoding="utf-8",
                               header=True, quoting="auto")
  assert columns_of(table) == [["x, y"], ["2"]]
  path.write_text("a::b\n\"x\"::2\n")  # a longer delimiter: never quoted
  table = delimited.read_table(path, delimiter="::", encoding="utf-8",
                               header=True, quoting="auto")
  assert columns_of(table) == [['"x"'], ["2"]]
  values = np.array(["plain", 'a "q"', "a,b"])
  assert writing.quote_fields(values, ",").tolist() == [
      "plain", '"a ""q"""', '"a,b"']


def test_a_longer_delimiter_writes_quotes_as_text_and_reads_them_back(
    tmp_path):
  """`i0" pizza` was written `"i0"" pizza"` in a `::` file, which reads
  back as another id (eval --write_tasks' files refused by eval --ratings
  of the same run)."""
  values = np.array(["plain", 'i0" pizza', '"q"'])
  written = writing.quote_fields(values, "::")
  assert written.tolist() == values.tolist()
  path = tmp_path / "r.dat"
  path.write_text(writing.join_lines([written, np.array(["1"] * 3)], "::"))
  table = delimited.read_table(path, delimiter="::", encoding="utf-8",
                               header=False, quoting="auto")
  assert columns_of(table)[0] == values.tolist()
  with pytest.raises(ValueError, match="holds the delimiter '::'"):
    writing.quote_fields(np.array(["a::b"]), "::")


def test_hints_for_a_position_under_a_header_and_a_decimal_comma(tmp_path):
  path = tmp_path / "r.csv"
  path.write_text("user;item;rating\n1;2;4,5\n")
  table = delimited.read_table(path, delimiter=";", encoding="utf-8",
                               header=True)
  with pytest.raises(InputError, match=r"no column '2' in the header .*"
                     r"needs a file without a header"):
    table.position("2")
  with pytest.raises(InputError, match=r"r\.csv:2: rating '4,5' is not a"
                     r" finite number \(write decimals with a '\.'"):
    parsing.floats(table, table.column(2), "rating")


@pytest.mark.parametrize("wide", ["utf-16", "utf-32", "utf-16-be"])
def test_a_utf16_or_utf32_file_is_named_by_its_byte_order_mark(tmp_path,
                                                               wide):
  # Excel's "Unicode Text" is UTF-16 with a mark: read as UTF-8 it was
  # "byte 0xff ... is not valid utf-8 text", as Latin-1 "a NUL byte".
  path = tmp_path / "r.txt"
  text = "user\titem\trating\na\tx\t4\n"
  bom = {"utf-16-be": b"\xfe\xff"}.get(wide, b"")
  path.write_bytes(bom + text.encode(wide))
  family = wide[:6]
  for encoding in ("utf-8", "latin-1"):
    with pytest.raises(InputError, match=(
        rf"r\.txt:1: the file starts with a {family.upper()} byte order mark"
        rf" but is read as {encoding}: it is {family.upper()} text \(set the"
        rf" encoding to {family}\)$")):
      delimited.read_table(path, delimiter="\t", encoding=encoding)
  table = delimited.read_table(path, delimiter="\t", encoding=family,
                               header=True)
  assert table.header == ["user", "item", "rating"]
  assert [c[0] for c in table.columns] == ["a", "x", "4"]


def test_a_quoted_field_with_a_line_break_says_so_at_its_line(tmp_path):
  # Was "malformed quoting: unexpected end of data", naming no cause.
  path = tmp_path / "items.csv"
  path.write_text('item,about\nmug,"big"\npen,"blue\nink"\n')
  with pytest.raises(InputError) as e:
    delimited.read_table(path, delimiter=",", encoding="utf-8", header=True,
                         quoting=True)
  assert str(e.value) == (
      f"{path}:3: a quoted field is not closed on this line (a line break"
      " inside quotes? a field may not span lines)")  # no key of its own
  path.write_text('item,about\nmug,"big" one\n')  # other quoting errors
  with pytest.raises(InputError, match=r"items\.csv:2: malformed quoting: "):
    delimited.read_table(path, delimiter=",", encoding="utf-8", header=True,
                         quoting=True)


def test_a_fixed_layout_split_on_another_delimiter_is_hinted(tmp_path):
  # MovieLens' u.data with spaces for tabs: the field count alone was said.
  path = tmp_path / "u.data"
  path.write_text("1 10 4 881250949\n2 20 3 881250950\n")
  with pytest.raises(InputError) as e:
    delimited.read_table(path, delimiter="\t", encoding="utf-8",
                         num_fields=(3, 4))
  assert str(e.value) == (
      f"{path}:1: 1 field(s) separated by '\\t', expected 3 or 4; line 1 is"
      " one field split on '\\t': is the delimiter ' '?")


@pytest.mark.parametrize("packer", ["gzip", "zip"])
def test_a_compressed_file_is_named_as_such(tmp_path, packer):
  # A ratings.csv.gz (or a zip) was "byte 0x8b at column 2 is not valid
  # utf-8 text": true, but not what to do.
  import gzip  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  text = "user,item,rating\na,x,4\n"
  path = tmp_path / f"ratings.{'csv.gz' if packer == 'gzip' else 'zip'}"
  if packer == "gzip":
    path.write_bytes(gzip.compress(text.encode()))
    what = r"gzip-compressed \(decompress it: gunzip ratings\.csv\.gz"
  else:
    with zipfile.ZipFile(path, "w") as z:
      z.writestr("ratings.csv", text)
    what = r"a zip archive \(unpack it: unzip ratings\.zip"
  for encoding in ("utf-8", "latin-1"):
    with pytest.raises(InputError, match=(
        rf"ratings\.(csv\.gz|zip): the file is {what}, and name the text"
        r" file it holds\)$")):
      delimited.read_table(path, delimiter=",", encoding=encoding)


def test_a_spreadsheet_and_a_comment_line_are_named_as_such(tmp_path):
  """A workbook was "a zip archive (unpack it: unzip ...)", which yields
  XML parts; a comment above the header was "is the delimiter ' '?"."""
  import zipfile  # pylint: disable=g-import-not-at-top
  path = tmp_path / "ratings.xlsx"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("[Content_Types].xml", "<x/>")
    z.writestr("xl/workbook.xml", "<x/>")
  with pytest.raises(InputError, match=r"ratings\.xlsx: the file is an Excel"
                     r" workbook, not delimited text: save its sheet as CSV"):
    delimited.read_table(path, delimiter=",", encoding="utf-8")
  path = tmp_path / "ratings.csv"
  path.write_text("# exported 2024\nuser,item,rating\na,x,4\n")
  with pytest.raises(InputError, match=r"line 1 looks like a comment \('#"
                     r" exported 2024'\): remove comment lines"):
    delimited.read_table(path, delimiter=",", encoding="utf-8", header=True)


@pytest.mark.parametrize("text,line,what", [
    # Yelp's and Amazon's review exports: one object per line.
    ('{"user_id": "u1", "business_id": "b1", "stars": 4}\n'
     '{"user_id": "u2", "business_id": "b1", "stars": 5}\n', 1,
     r"one object per line\), not delimited text: write it as CSV first"
     r" \(e\.g\. pandas\.read_json\(PATH, lines=True\)"),
    ('\n[\n  {"user": "a", "item": "b", "rating": 4}\n]\n', 2,
     r"one document\), not delimited text: write it as CSV first"
     r" \(e\.g\. pandas\.read_json\(PATH\)\.to_csv"),
    # Arrays, one per line (JSON Lines of arrays).
    ('["a", "b", 4]\n["c", "b", 5]\n', 1,
     r"one array per line\), not delimited text: write it as CSV first"
     r" \(e\.g\. pandas\.read_json\(PATH, lines=True\)"),
    # An array on one line (was "one object per line", lines=True).
    ('[{"user": "a", "item": "b", "rating": 4}]\n', 1,
     r"one document\), not delimited text: write it as CSV first"
     r" \(e\.g\. pandas\.read_json\(PATH\)\.to_csv"),
])
def test_a_json_file_is_named_as_such(tmp_path, text, line, what):
  # Split on ',' it failed at its first quote: "malformed quoting: ','
  # expected after '\"'", which does not say what the file is.
  path = tmp_path / "ratings.csv"
  path.write_text(text)
  for quoting in ("auto", False):
    with pytest.raises(InputError,
                       match=rf"ratings\.csv:{line}: the file is JSON \({what}"):
      delimited.read_table(path, delimiter=",", encoding="utf-8",
                           header=True, quoting=quoting)


def test_delimited_lines_that_open_with_a_bracket_are_text(tmp_path):
  # Only a first line (or file) that parses as JSON is refused.
  path = tmp_path / "ratings.csv"
  path.write_text("\n[unknown],b,4\n{x},c,5\n")
  table = delimited.read_table(path, delimiter=",", encoding="utf-8")
  assert table.width == 3 and len(table.lines) == 2
  path.write_text("[1],b,4\n")  # JSON, then more: not JSON as a whole
  assert delimited.read_table(path, delimiter=",", encoding="utf-8").width == 3


def test_spaces_after_a_closing_quote_are_skipped_as_those_before(tmp_path):
  # `"b" ,` (aligned columns) was "malformed quoting: ',' expected after
  # '"'", though `, "b"` was read.
  path = tmp_path / "r.csv"
  path.write_text('user , item , rating\n"a b" , "x, y"  ,4\nc, "z" , "5" \n')
  table = delimited.read_table(path, delimiter=",", encoding="utf-8",
                               header=True, quoting=True)
  assert columns_of(table)[:2] == [["a b", "c"], ["x, y", "z"]]
  path.write_text('user,item\n"a" b,x\n')  # text after the quote: refused
  with pytest.raises(InputError, match=r"r\.csv:2: malformed quoting: "):
    delimited.read_table(path, delimiter=",", encoding="utf-8", header=True,
                         quoting=True)
