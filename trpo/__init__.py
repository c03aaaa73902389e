"""Trust-region policy optimisation research framework: TRPO, natural PG and KL-penalty solvers."""

# Importing the package registers the config schemas with Hydra's ConfigStore.
from trpo import config as _config  # noqa: F401

__all__ = ["Agent", "AgentLoadError", "load_agent"]


def __getattr__(name: str):
    """``trpo.load_agent``, ``trpo.Agent`` and ``trpo.AgentLoadError`` (:mod:`trpo.agent`),
    imported on first use: ``import trpo`` stays light (no torch), as the analysis needs."""
    if name in __all__:
        from trpo import agent

        return getattr(agent, name)
    raise AttributeError(f"module 'trpo' has no attribute {name!r}")
