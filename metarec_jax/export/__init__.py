"""Export of per-user adapted parameters, and serving from an export.

    metarec export --workdir=DIR --ratings=FILE --out=DIR [--top_k=K] ...

`export_workdir` adapts the meta-parameters to every user of a ratings file
and writes the folder described in `layout`; `load(DIR)` serves it
(`predict`, `recommend`, serving-time `adapt`) without the work directory.

Modules: `users` (ratings file -> support sets, flags and counts),
`compute` (the jitted chunk functions), `exporter` (the export run),
`topk` (topk.jsonl), `layout` (the folder format and its atomic writer),
`checksums` (the files' sizes and digests, checked at load),
`serving` (`load`), `progress` (the progress bar).
"""

from metarec_jax.export.checksums import DamagedExport
from metarec_jax.export.exporter import export_workdir
from metarec_jax.export.layout import DTYPES, FLAGS, FORMAT_VERSION, verify
from metarec_jax.export.serving import Export, UserModel, load

__all__ = ["DTYPES", "DamagedExport", "Export", "FLAGS", "FORMAT_VERSION",
           "UserModel", "export_workdir", "load", "verify"]
