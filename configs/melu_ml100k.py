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

Expect: not measured on MovieLens-100K itself. The machines this engine was
developed on hold no copy of it and reach no network; the loader, the
feature set and a short training run are tested on ml-100k-layout fixtures
(tests/test_movielens.py). Measured instead on a stand-in of the same
layout and size class (the first 943 rated users of ML-1M, 151K ratings,
with only the features the 100K files have), 2-core CPU: training 68 s
(1500 steps, store build and compilation included), `metarec eval` 3.4 s.
On that stand-in this config, with the plain MeLU it had then
(`--config.model.anchor=false --config.data.item_id_dropout=0`), did NOT
beat the item-mean + user-bias baseline: query MAE W 0.7833 / UC 0.7604 / IC 0.8990 / UIC 0.8512 against
0.7427 / 0.7450 / 0.8807 / 0.8454. With only genre, year, gender and age
(`--config.model.features='("genre","year","gender","age")'`) and the
step-500 checkpoint, which the validation MAE picks: 0.7619 / 0.7546 /
0.8704 / 0.8305, below the baseline on IC and UIC only. A few hundred
training users are too few for this model to learn more than the
baseline's item means; compare every run with the `item_mean_user_bias`
figures that `metarec eval` prints beside each scenario.

Now this config inherits the baseline-anchored model of
`configs/default.py` (`model.anchor`: it starts from that baseline), its
validated shares of the learned part, the validation set sized from the
data (30% of the existing users here) and early stopping. Measured on the
ML-100K-sized stand-in of `tools/ml100k_subset.py` (943 random ML-1M users,
their 1682 most rated movies, 100,440 ratings; its `ml-100k/` folder as
`data.root`), 3 seeds (`train.seed` 0, 1, 2, `eval.seed` 0), 2-core CPU,
2026-12-02 (the anchored network started at zero through its output
layer):

    python tools/compare.py --out=runs/melu_ml100k --seeds=0,1,2 \
        --run="melu_ml100k configs/melu_ml100k.py" \
        --config.data.root=runs/ml100k-sized/ml-100k

query MAE W 0.7191 / UC 0.7293 / IC 0.8949 / UIC 0.9510 against the
baseline's 0.7203 / 0.7265 / 0.8949 / 0.9510: W 0.17% below it, UC 0.39%
ABOVE it (108 tasks), IC and UIC exactly the baseline's (every seed's
new-item share is 0). Two seeds of three validated an existing-item share
of 0.25 (validation MAE 1.0% below the baseline's); it carried over to
the existing users (W 0.2-0.3% below) but not to the new ones (UC 0.4-0.7%
above): the validation users are existing users, whose other ratings the
item-ID embeddings have seen. Without item IDs (`model.item_id=false`)
every scenario ties the baseline exactly (3 seeds: the shares are 0);
with `data.item_id_dropout=0.3`, W +0.01%, UC +0.16%, IC -0.72%, UIC
-0.51%.

Since then the served ratings go through the validated median map
(`model.calibration=median`, the default; docs/results.md): the same
command, 2026-12-02 (third session), query MAE W 0.6794 ± 0.0052 / UC
0.6956 ± 0.0072 / IC 0.8636 ± 0.0035 / UIC 0.9223 ± 0.0069, 5.7%, 4.3%,
3.5% and 3.0% below the baseline, every seed below it in every scenario;
RMSE 3-4% above the baseline's (W 0.954 against 0.923). The new items'
share stays 0 in every seed and the existing items' is 0, 0.25, 0.25: the
network adds little that validates, and most of the gain is the map's,
which the baseline given the same map would share
(`tools/median_map_effect.py`). Expect the same on the real
MovieLens-100K: below the baseline's MAE by the map's few percent, not by
what the network learned, and compare UC with the baseline that `metarec
eval` prints. Each run took about 1 minute (57-76 s). On
the real 100K, where new items are those released in 1998 or later, IC
and UIC have a handful of tasks and `metarec eval` warns that they are too
few to compare models.

2026-12-04 (fifteenth session), with the model starting from the training
users' mean rating (`model.global_mean=training`) and the validated
new-item prior and minimum support added since: the same command, query
MAE W 0.6812 ± 0.0070 / UC 0.6920 ± 0.0136 / IC 0.8551 ± 0.0047 / UIC
0.9177 ± 0.0109, 5.4%, 4.7%, 4.4% and 3.5% below the baseline, every seed
below it in every scenario (docs/results.md).

2026-12-07 (fortieth session), with the meta-parameters' own query loss
in the meta-objective (`train.unadapted_weight=0.02`, now the default):
W 0.6798 ± 0.0100 / UC 0.6945 ± 0.0093 / IC 0.8534 ± 0.0058 / UIC 0.9212
± 0.0072, every seed still below the baseline in every scenario; at 0 the
same runs this session gave the figures above (W 0.6811, UC 0.6920, IC
0.8551, UIC 0.9177).
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
