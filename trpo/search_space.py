"""A solver's hyperparameter search space: ``conf/search_space/<solver>.yaml``, checked.

Each entry is a config key that ``run.py`` takes as an override (``solver.max_kl``) with either a
range (``low``, ``high``, ``log`` for a log scale, ``integer``) or a list of ``choices``. A space
is checked before anything is tuned: every key must be one the run's config has, every range
non-empty, and every value it can draw one the run's schema accepts (both ends of a range, every
choice), so a bad space is one line naming its key, not a trial that fails hours later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from trpo.config import CONF_DIR, ConfigError, compose, validate_config

SEARCH_SPACES = CONF_DIR / "search_space"


@dataclass(frozen=True)
class Parameter:
    """One searched config key: a range, or a list of choices."""

    key: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    integer: bool = False
    choices: Optional[tuple] = None

    def values_to_check(self) -> tuple:
        """The values whose acceptance by the run's schema stands for the whole parameter."""
        return self.choices if self.choices is not None else (self.low, self.high)

    def suggest(self, trial) -> Any:
        """Optuna's draw of this parameter for ``trial`` (an ``optuna.Trial``)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


def available() -> list[str]:
    """The solvers with a search space in ``conf/search_space/``."""
    return sorted(p.stem for p in SEARCH_SPACES.glob("*.yaml") if p.stem != "shared")


def load(solver: str) -> list[Parameter]:
    """``conf/search_space/<solver>.yaml`` as parameters, in the file's order (its defaults
    first); raises :class:`ConfigError` naming the first bad entry."""
    if solver not in available():
        raise ConfigError("solver", f"has no search space; the solvers with one: "
                          f"{', '.join(available())}", solver)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            node = hydra_compose(config_name=f"search_space/{solver}")
    finally:
        GlobalHydra.instance().clear()
    entries = OmegaConf.to_container(node.search_space, resolve=True)["params"]
    return [parameter(key, spec) for key, spec in entries.items()]


def parameter(key: str, spec: Any) -> Parameter:
    """One entry of a space file as a :class:`Parameter`, its shape checked."""
    where = f"search_space.params.{key}"
    if not isinstance(spec, dict):
        raise ConfigError(where, "must be {low: ..., high: ...} or {choices: [...]}", spec)
    unknown = sorted(set(spec) - {"low", "high", "log", "integer", "choices"})
    if unknown:
        raise ConfigError(where, f"has no setting {unknown[0]} (settings: low, high, log, "
                          "integer, choices)", spec)
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) - {"choices"} or not isinstance(choices, list) or not choices:
            raise ConfigError(where, "choices must be a non-empty list, alone", spec)
        return Parameter(key, choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in (low, high)):
        raise ConfigError(where, "needs finite numbers low and high", spec)
    if not low < high:
        raise ConfigError(where, f"is an empty range: low ({low}) must be below high ({high})",
                          spec)
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(where, "a log range needs low > 0", spec)
    return Parameter(key, low=float(low), high=float(high), log=log,
                     integer=bool(spec.get("integer", False)))


def check(parameters: Sequence[Parameter], overrides: Sequence[str] = ()) -> None:
    """Raise :class:`ConfigError` naming the first parameter that the run composed from
    ``overrides`` does not have, or with a value its schema refuses."""
    base = compose(list(overrides))
    for p in parameters:
        if OmegaConf.select(base, p.key, default=_MISSING) is _MISSING:
            raise ConfigError(f"search_space.params.{p.key}",
                              f"is not a setting of this run ({_section_hint(base, p.key)})",
                              p.key)
        for value in p.values_to_check():
            try:
                validate_config(compose([*overrides, f"{p.key}={value}"]))
            except ConfigError as error:
                raise ConfigError(f"search_space.params.{p.key}",
                                  f"can draw {value}, which the run refuses ({error})",
                                  value) from None


_MISSING = object()


def _section_hint(cfg: DictConfig, key: str) -> str:
    section = key.split(".", 1)[0]
    if section in cfg and isinstance(cfg[section], DictConfig):
        return f"{section} has: {', '.join(str(k) for k in cfg[section])}"
    return f"sections: {', '.join(str(k) for k in cfg)}"
