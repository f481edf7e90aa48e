"""MeLU on MovieLens-1M with the MeLU item features (the paper's protocol).

Run (data.root is the folder of users.dat, movies.dat,
movies_extrainfos.dat and ratings.dat; `metarec data fetch
--dataset=movielens-1m --dest=DIR` downloads the GroupLens release, which
lacks movies_extrainfos.dat: the loader then falls back to the genres and
year of movies.dat and says so):

    metarec train --config=configs/melu_ml1m.py --workdir=/tmp/metarec-ml1m \\
        --config.data.root=/path/to/ml-1m
    metarec eval --workdir=/tmp/metarec-ml1m

The task store is built in WORKDIR/store on first use. Evaluation uses all
tasks of every scenario (W, UC, IC, UIC); compare `mae` with the
`item_mean_user_bias` baseline printed beside it on the same tasks.

Expect: TODO(lead): measured numbers (MAE and nDCG@3 per scenario, run time).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.name = "movielens-1m"
  c.data.root = ""  # required: --config.data.root=DIR
  # Protocol tasks have 13-100 ratings, 10 of them the query set, so up to
  # 90 support ratings: pad evaluation supports up to 96.
  c.data.max_support = 96
  c.data.buckets = (16, 32, 64, 96)
  # () = every feature of the store: gender, age, occupation, zip, rate,
  # genre, director, actor (genre and year without movies_extrainfos.dat).
  c.model.features = ()
  c.eval.max_tasks = 0  # all tasks
  return c
