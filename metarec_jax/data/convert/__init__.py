"""The one-time conversion of a dataset's files into a task store.

`prepare` builds the store a config names (`data.name`): `movielens` and
`movielens100k` read GroupLens' files, `generic` any delimited ratings file
with optional user and item tables, `synthetic` generates one; `fetch`
downloads GroupLens' zips. The readers share `delimited` (parsing),
`ratings_io` (a ratings file in the dataset's input format), `features`
(feature columns to vocabularies) and `assemble` (rows to the store's CSR
arrays); `describe` summarises a store; `command` is `metarec data`.
Nothing of the training-time path (`metarec_jax.data`) imports this.
"""
