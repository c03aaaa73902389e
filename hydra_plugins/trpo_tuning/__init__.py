"""The ``tune`` sweeper (``hydra/sweeper=tune``): Hydra finds its plug-ins in ``hydra_plugins``."""
