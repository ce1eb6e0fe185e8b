"""SGD(m) with residuals (RSGD(m)) as Optax gradient transformations."""
