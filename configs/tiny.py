"""A seconds-long run for tests: tiny synthetic data, tiny MeLU.

Run:

    metarec train --config=configs/tiny.py --workdir=/tmp/metarec-tiny

Expect: a few seconds after compilation; the numbers mean nothing.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.synthetic.num_users = 400
  c.data.synthetic.num_items = 150
  c.data.synthetic.min_ratings = 15
  c.data.synthetic.max_ratings = 40
  c.data.synthetic.update({"director_vocab": 40, "actor_vocab": 60,
                           "zip_vocab": 30})
  c.data.max_support = 16
  c.data.buckets = (16,)  # one support width: one program to compile
  c.model.embed_dim = 8
  c.model.hidden = (16, 16)
  c.meta.inner_steps = 2
  c.train.num_steps = 6
  c.train.tasks_per_step = 16
  c.train.warmup_steps = 2
  c.train.eval_every_steps = 3
  c.train.cpu_devices = 0
  c.eval.max_tasks = 24
  c.eval.batch_tasks = 8
  c.checkpoint.every_steps = 3
  c.log.every_steps = 2
  return c
