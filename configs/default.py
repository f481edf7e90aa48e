"""Quickstart: MeLU meta-trained with second-order MAML on built-in synthetic data.

Run:

    metarec train --config=configs/default.py --workdir=/tmp/metarec-default
    metarec eval --workdir=/tmp/metarec-default

Expect: about two minutes on a 2-core laptop CPU (store build, compile,
training and the final evaluation), and a query MAE after adaptation well
below the MAE of the meta-parameters before adaptation (`mae` against
`mae_unadapted` in every scenario of `metarec eval`).

This config is the package's defaults, written once in
`metarec_jax/config_defaults.py`; every key's meaning is in
`metarec_jax/config_meanings.py` (the README's config reference is
generated from both). Every other config imports this one and overrides
only what changes.
"""

from metarec_jax.config_defaults import get_config  # noqa: F401
