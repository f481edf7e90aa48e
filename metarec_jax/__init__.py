"""metarec_jax: a JAX engine that meta-trains personalised recommenders."""

__version__ = "0.1.0"
