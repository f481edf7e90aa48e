"""MeLU on MovieLens-100K (the standard ml-100k layout).

Run (data.root is the folder of u.data, u.user, u.item, u.genre and
u.occupation; `metarec data fetch --dataset=movielens-100k --dest=DIR`
downloads it):

    metarec train --config=configs/melu_ml100k.py \\
        --workdir=/tmp/metarec-ml100k --config.data.root=/path/to/ml-100k
    metarec eval --workdir=/tmp/metarec-ml100k

The task store is built in WORKDIR/store on first use. Items are new when
their release year is 1998 or later, so the IC and UIC scenarios are small
on this dataset.

Expect: not measured. The machines this engine was developed on hold no
copy of MovieLens-100K and reach no network, so this config has only run on
the small ml-100k-layout fixtures of tests/test_movielens.py, which
check the loader, the feature set and a short training run, not quality. Judge a run against the `item_mean_user_bias` baseline that
`metarec eval` prints beside every scenario; on ML-1M the MeLU config beats
it by 2-4% (configs/melu_ml1m.py), and this config takes the two model
settings that moved ML-1M most (embeddings at std 0.1, an item-ID
embedding); the feature set is the 100K files' own.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.name = "movielens-100k"
  c.data.root = ""  # required: --config.data.root=DIR
  # Protocol tasks have 13-100 ratings, 10 of them the query set, so up to
  # 90 support ratings: pad evaluation supports up to 96.
  c.data.max_support = 96
  c.data.buckets = (16, 32, 64, 96)
  # The features of the 100K files: items have genres and a release year
  # (no MPAA rating, directors or actors), users their demographics.
  c.model.features = ("genre", "year", "gender", "age", "occupation", "zip")
  # The two settings that helped most on ML-1M (configs/melu_ml1m.py).
  c.model.embed_std = 0.1
  c.model.item_id = True
  c.eval.max_tasks = 0  # all tasks
  return c
