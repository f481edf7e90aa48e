"""melu-ref: the reference benchmark workload of docs/design.md.

MeLU on synthetic data with MovieLens-1M-like vocabularies (rate 6, genre
25, director 2186, actor 8030, gender 2, age 7, occupation 21, zip 3402),
embeddings of width 32, decision MLP 256-64-64-1 (only it adapts), support
padded to 64 (every synthetic user has enough ratings to fill it), query 10,
list features padded to genre 4 / director 2 / actor 4, 5 inner SGD steps,
second order, Adam outer step, float32, 256 tasks per meta-step.

Run:

    metarec bench --config=configs/melu_ref.py
    metarec bench --config=configs/melu_ref.py --config.meta.second_order=false
    metarec bench --config=configs/melu_ref.py --config.train.tasks_per_step=16384

Expect on a 2-core CPU: see the README's benchmark table (the last line of
stdout is the JSON of docs/design.md: tasks_per_sec, step_flops, utilization...).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.synthetic.num_users = 20000
  c.data.synthetic.num_items = 3881
  c.data.synthetic.min_ratings = 80  # >= 64 support + 10 query
  c.data.synthetic.max_ratings = 120
  c.data.max_support = 64
  c.data.buckets = (64,)
  c.data.query_size = 10
  c.model.embed_dim = 32
  c.model.hidden = (64, 64)
  c.model.anchor = False  # the plain MeLU the speed figures were taken on
  c.train.unadapted_weight = 0.0  # its meta-objective, as they were taken
  c.data.item_id_dropout = 0.0
  c.meta.algorithm = "maml"
  c.meta.inner_steps = 5
  c.meta.inner_lr = 0.01
  c.meta.second_order = True
  c.train.tasks_per_step = 256
  c.train.lr = 1e-3
  c.train.num_steps = 1000
  return c
