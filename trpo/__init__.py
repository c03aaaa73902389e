"""Trust-region policy optimisation research framework: TRPO, natural PG and KL-penalty solvers."""

# Importing the package registers the config schemas with Hydra's ConfigStore.
from trpo import config as _config  # noqa: F401
