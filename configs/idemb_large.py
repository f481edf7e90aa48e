"""idemb-large: a million-user, two-million-item catalog whose item-ID table
is split over the devices of the mesh's `model` axis.

`idemb` (item-ID embeddings of width 64 plus item features, one
meta-learned user vector that the inner loop adapts) on synthetic data of
1,048,576 users and 2**21 - 1 = 2,097,151 items: the ID table has 2**21
rows (row 0 pads), which any power-of-two `mesh.model` divides (JAX splits
evenly; a catalogue of any other size gets its large tables padded to a
multiple of `model.table_row_multiple`, 1,024, for the same reason). The
ID and bias tables, 2**21 x 65 floats, and Adam's two moments are 1.6 GB
replicated; `mesh.model=4` leaves a quarter of that on each device. The
inner loop adapts only the user vector (`meta.adapt` default `^user/`),
never a split table.

Run (4 fake CPU devices on any machine; the store takes a few minutes to
build the first time):

    metarec bench --config=configs/idemb_large.py
    metarec bench --config=configs/idemb_large.py --config.mesh.model=1 \\
        --config.train.cpu_devices=1   # the replicated layout, for comparison
    metarec train --config=configs/idemb_large.py --workdir=/tmp/idemb-large

Expect: `param_bytes_per_device` in the bench JSON about a quarter of the
replicated run's (the README's "Large catalogs" section has the figures).

10M items: `--config.data.synthetic.num_items=10000000` (a table of
10,000,384 rows, padded, 2.6 GB before Adam's moments) and, for a
proportionate user base, `--config.data.synthetic.num_users=5242880`; keep
`mesh.model` a power of two and give the host memory for the store
(about 8 bytes per rating) and a quarter of the state per device.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model.name = "idemb"
  c.model.embed_dim = 64
  c.model.anchor = False  # idemb has its own item bias
  c.data.synthetic.num_users = 1 << 20
  c.data.synthetic.num_items = (1 << 21) - 1
  c.data.synthetic.min_ratings = 20
  c.data.synthetic.max_ratings = 40
  c.data.max_support = 16
  c.data.buckets = (16,)
  c.data.query_size = 10
  c.eval.min_ratings = 13
  c.eval.max_ratings = 40
  c.eval.max_tasks = 256
  c.meta.inner_steps = 3
  c.train.tasks_per_step = 256
  c.train.num_steps = 200
  # The meta-objective its throughput figures were taken with (the
  # unadapted term adds 11.5% to the step's FLOPs: reviewer R2).
  c.train.unadapted_weight = 0.0
  c.train.warmup_steps = 20
  c.train.eval_every_steps = 100
  c.train.cpu_devices = 4
  c.checkpoint.every_steps = 100
  c.log.every_steps = 10
  c.log.histogram_every_steps = 0  # a 2**21-row table is no histogram
  c.mesh.model = 4
  return c
