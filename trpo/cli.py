"""What ``run.py`` says on the command line: its ``--help``, the check of override keys (with
"did you mean"), the tag of a sweep job's console lines and the summary at a sweep's end.

Everything here is read from ``conf/`` and the schemas in :mod:`trpo.config`, so the help and
the suggestions follow the code.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from trpo import config as schemas
from trpo.config import CONF_DIR

# Groups with one option per YAML in conf/<group>/, in the order the help lists them.
GROUPS = ("env", "network", "advantage", "solver", "logger", "ablation", "experiment")
# Groups whose options are checked against a schema of their own.
SCHEMA_GROUPS = ("env", "network", "advantage", "solver", "logger")


# ---------------------------------------------------------------------------- conf/ reading


def options(group: str) -> list[str]:
    """The option names of a config group (``hopper``, ``walker``, ...)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def first_comment(path: Path) -> str:
    """The first sentence of a YAML file's leading comment (``@package`` lines aside)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            if lines:
                break
            continue
        if "@package" not in line:
            lines.append(line.lstrip("# ").strip())
    return _sentence(" ".join(lines))


# Abbreviations whose full stop ends no sentence.
_ABBREVIATIONS = re.compile(r"(?<!\b(?:al|vs|cf))(?<!\be\.g)(?<!\bi\.e)\. ")


def _sentence(text: str, width: int = 90) -> str:
    """The first sentence of ``text`` (not cut at "et al." or "e.g."), at most ``width``
    characters."""
    text = _ABBREVIATIONS.split(text)[0].rstrip(".")
    return text if len(text) <= width else text[:width - 1].rsplit(" ", 1)[0] + " …"


def default_choices() -> dict[str, Optional[str]]:
    """The group options ``conf/config.yaml`` chooses by default (``{"env": "hopper", ...}``)."""
    defaults = OmegaConf.load(CONF_DIR / "config.yaml").defaults
    choices = {}
    for entry in defaults:
        if isinstance(entry, DictConfig):
            for key, value in entry.items():
                if not str(key).startswith("override"):
                    choices[str(key)] = None if value is None else str(value)
    return choices


def option_schema(group: str, option: str) -> Optional[type]:
    """The dataclass an option's YAML is checked by (its ``/schema/<group>/<name>`` default)."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.exists():
        return None
    for entry in OmegaConf.load(path).get("defaults", []):
        name = str(entry)
        if name.startswith(f"/schema/{group}/"):
            return schemas.GROUP_SCHEMAS[group].get(name.split("/")[3].split("@")[0])
    return None


def field_comments(cls: type) -> dict[str, str]:
    """Each dataclass field's comment, as written above it in the source (its first sentence);
    fields listed right under one comment share it."""
    comments, pending, last = {}, [], ""
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
            continue
        name = stripped.split(":", 1)[0].strip()
        if ":" in stripped and name.isidentifier() and not stripped.startswith(("def ", "class ")):
            if pending:
                last = _sentence(" ".join(pending))
            if last:
                comments[name] = last
        else:
            last = ""
        pending = []
    return comments


# ------------------------------------------------------------------------------------ --help


def help_text() -> str:
    """``python run.py --help``: the groups and their options, the main settings with their
    defaults, the launchers and the studies."""
    lines = ["python run.py [GROUP=OPTION ...] [KEY=VALUE ...]     train one agent",
             "python run.py -m KEY=A,B ...                          a sweep (one run per value)",
             "", "Groups (GROUP=OPTION; the default is marked *):"]
    chosen = default_choices()
    for group in GROUPS:
        lines.append(f"  {group}:")
        for option in options(group):
            mark = "*" if chosen.get(group) == option else " "
            lines.append(f"   {mark} {option:<24} {first_comment(CONF_DIR / group / f'{option}.yaml')}")
    lines += ["", "Main settings (KEY=VALUE; every group's own keys: python run.py --cfg job):"]
    comments = {**field_comments(schemas.TrainConfig),
                **{f"critic.{k}": v for k, v in field_comments(schemas.CriticConfig).items()}}
    comments["env.backend"] = field_comments(schemas.EnvConfig)["backend"]
    logger_yaml = OmegaConf.load(CONF_DIR / "logger" / "default.yaml")
    comments["logger.writers"] = field_comments(schemas.LoggerConfig)["writers"]
    comments["logger.wandb.mode"] = field_comments(schemas.WandbConfig)["mode"]
    defaults = _defaults(schemas.TrainConfig())
    defaults.update({f"critic.{k}": v for k, v in _defaults(schemas.CriticConfig()).items()})
    defaults["env.backend"] = schemas.EnvConfig.backend
    defaults["logger.writers"] = "[" + ",".join(logger_yaml.writers) + "]"
    defaults["logger.wandb.mode"] = logger_yaml.wandb.mode
    for key, value in defaults.items():
        if key in comments:
            lines.append(f"  {key}={value}".ljust(34) + f" {comments[key]}")
    lines += ["", "Launchers for -m (hydra/launcher=NAME):"]
    for path in sorted((CONF_DIR / "hydra" / "launcher").glob("*.yaml")):
        lines.append(f"  {path.stem:<24} {first_comment(path)}")
    lines += ["  basic                    jobs one after another in this process (Hydra's own)",
              "  submitit_local           the SLURM code path, with local processes",
              "", "Studies (conf/experiment/): python -m experiments STUDY [--status]",
              "Analysis of a sweep folder: python -m analysis DIR --out FIGURES",
              "Evaluate a trained agent:   python -m trpo.evaluate RUN_DIR",
              "Hydra's own options: python run.py --hydra-help"]
    return "\n".join(lines)


def _defaults(instance: Any) -> dict[str, Any]:
    """Each setting's default as a user types it; a task setting's (``${task_setting:critic_lr,
    1e-3}``) is the option's own value."""
    out = {}
    for f in fields(instance):
        value = getattr(instance, f.name)
        if is_dataclass(value) or f.name in schemas.SECTIONS:
            continue
        task_setting = re.fullmatch(r"\$\{task_setting:\w+,(.+)\}", str(value))
        if task_setting:
            out[f.name] = task_setting.group(1)
            continue
        text = OmegaConf.to_yaml(OmegaConf.create({"v": value})).strip()[3:]
        out[f.name] = getattr(value, "value", text)
    return out


# ------------------------------------------------------------------------ override keys


def check_override_keys(argv: list[str]) -> Optional[str]:
    """One line naming an override whose key no schema has, with the closest keys ("did you
    mean"); ``None`` if every key exists. Group choices and ``hydra.*`` are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None  # Hydra reports a malformed override itself
    choices = {group: [choice] for group, choice in default_choices().items()}
    for override in parsed:
        key = override.key_or_group
        if key in choices or key in GROUPS:
            values = override.value()
            if override.is_sweep_override():
                values = list(override.sweep_iterator())
            choices[key] = [str(v) for v in (values if isinstance(values, list) else [values])]
    for override in parsed:
        key = override.key_or_group
        if key.startswith("hydra") or override.is_delete() or key in GROUPS:
            continue
        problem = _unknown_key(key, choices)
        if problem:
            return problem
    return None


def _unknown_key(key: str, choices: dict[str, list]) -> Optional[str]:
    section, _, rest = key.partition(".")
    if section in SCHEMA_GROUPS and rest:
        for option in choices.get(section) or []:
            schema = option_schema(section, option)
            if schema is None:
                continue
            names = [f.name for f in fields(schema)]
            head = rest.split(".")[0]
            if head not in names:
                return _suggest(key, f"{section}={option}", [f"{section}.{n}" for n in names])
            if head == "kwargs" or "." not in rest:
                continue
        return None
    sections = {"critic": schemas.CriticConfig, "trial": schemas.TrialConfig}
    if section in sections and rest:
        names = [f"{section}.{f.name}" for f in fields(sections[section])]
        return None if key in names else _suggest(key, section, names)
    names = [f.name for f in fields(schemas.TrainConfig)]
    if key in names or section in SCHEMA_GROUPS:
        return None
    return _suggest(key, "the top level", names)


def check_group_options(argv: list[str]) -> Optional[str]:
    """One line naming a group option that does not exist (``env=hoper``), with the closest
    and every option; ``None`` if each exists (Hydra would say it in many lines, exit 1)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(
            [a for a in argv if "=" in a and not a.startswith("-")])
    except Exception:
        return None  # Hydra reports a malformed override itself
    for override in parsed:
        group = override.key_or_group
        if group not in GROUPS or override.is_delete():
            continue
        values = (list(override.sweep_iterator()) if override.is_sweep_override()
                  else [override.value()])
        known = options(group)
        for value in map(str, values):
            if value not in known and not (value == "null" and group in ("ablation",
                                                                             "experiment")):
                close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
                hint = f"; did you mean {group}={close[0]}?" if close else ""
                return (f"error: {group}={value} is not an option of {group}{hint} "
                        f"(options: {', '.join(known)})")
    return None


def check_value_types(argv: list[str]) -> Optional[str]:
    """One line naming a value of the wrong type or outside an enum (``seed=abc``,
    ``logger.wandb.mode=of``), found by composing the config as the run would (each swept
    value on its own); ``None`` if every value fits its schema."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    task = [a for a in argv if "=" in a and not a.startswith(("-", "hydra.", "hydra/"))]
    try:
        parsed = OverridesParser.create().parse_overrides(task)
    except Exception:
        return None
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    trials = [fixed] + [[*fixed, f"{o.get_key_element()}={v}"] for o in parsed
                        if o.is_sweep_override() for v in o.sweep_iterator()]
    for overrides in trials:
        try:
            schemas.compose(overrides)
        except (ConfigCompositionException, OmegaConfBaseException) as composing:
            error = composing.__cause__ or composing
            if not isinstance(error, OmegaConfBaseException):
                return None  # what Hydra says of its own errors is left to it
            key = getattr(error, "full_key", None) or "a value"
            given = next((o.split("=", 1)[1] for o in reversed(overrides)
                          if o.lstrip("+~").split("=", 1)[0] == key), None)
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            return f"error: {key}={given} is not allowed: {first}"
        except Exception:
            return None  # what Hydra says of its own errors is left to it
    return None


def _suggest(key: str, where: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    settings = sorted(n.split(".")[-1] for n in names if not n.split(".")[-1].startswith("_"))
    return f"error: {key} is not a setting of {where}; {hint}(settings: {', '.join(settings)})"


def check_output_dirs(argv: list[str]) -> Optional[str]:
    """One line if an output folder given on the command line cannot be made or written, or
    names what no config has (Hydra itself would fail with a traceback); ``None`` if fine.
    Nothing is created: the nearest folder that exists is checked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    wanted = [arg for arg in argv if arg.split("=", 1)[0] in ("hydra.run.dir", "hydra.sweep.dir")]
    try:
        parsed = OverridesParser.create().parse_overrides(wanted)
    except Exception as error:  # Hydra's parser names the bad override
        return f"error: {str(error).splitlines()[0]}"
    for override in parsed:
        value = str(override.value())
        for name in re.findall(r"\$\{([^}:]*)[}:]", value):
            if not (name in ("now", "hydra") or name.startswith("oc.")
                    or name.split(".")[0] in schemas.TrainConfig.__dataclass_fields__):
                return (f"error: {override.key_or_group}={value}: ${{{name}}} is neither a config "
                        "key (name, seed, env.id, ...) nor a resolver (now, hydra, oc.env)")
        if "${" in value:
            continue  # a folder known only once Hydra resolves it
        target = Path(value).absolute()
        existing = next(p for p in (target, *target.parents) if p.exists())
        problem = None
        if not existing.is_dir():
            problem = "Not a directory"
        elif os.statvfs(existing).f_flag & os.ST_RDONLY:
            problem = "Read-only file system"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = "Permission denied"
        if problem:
            return f"error: {override.key_or_group}={value} cannot be written: {problem}"
    return None


def _hydra_and_task_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """The command line's overrides of Hydra's own config (``hydra.``, ``hydra/``), and the rest."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    hydra_args = [a for a in overrides if a.startswith(("hydra.", "hydra/"))]
    return hydra_args, [a for a in overrides if a not in hydra_args]


def check_sweep_folders(argv: list[str]) -> Optional[str]:
    """One line if two jobs of a sweep (``-m``) would train in one folder (a
    ``hydra.sweep.subdir`` that is the same for both: one job would find the other's run and be
    skipped, and a seed would never train); ``None`` if each job has a folder of its own.

    The jobs are expanded as Hydra's basic sweeper expands them. A subdir naming
    ``hydra.job.num`` differs by construction; one naming only the job's overrides is computed
    as Hydra computes ``override_dirname``; any other is resolved on each job's composed config.
    """
    if not {"-m", "--multirun"} & set(argv):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_args, task = _hydra_and_task_overrides(argv)
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(task)
        base = schemas.compose([*hydra_args, *(o.input_line for o in parsed
                                               if not o.is_sweep_override())],
                               return_hydra_config=True)
        params = [f"{k}={v}" for k, v in (base.hydra.sweeper.params or {}).items()]
        [jobs] = BasicSweeper.split_arguments(parser.parse_overrides([*params, *task]),
                                              max_batch_size=None)
    except Exception:
        return None  # a malformed override or config: Hydra says what is wrong with it
    template = OmegaConf.to_container(base.hydra.sweep, resolve=False)["subdir"]
    if len(jobs) < 2 or "job.num" in template:
        return None
    naming = base.hydra.job.config.override_dirname
    by_folder: dict[str, list[str]] = {}
    interpolations = set(re.findall(r"\$\{([^}]*)\}", template))
    for job in jobs:
        if interpolations <= {"hydra:job.override_dirname", "hydra.job.override_dirname"}:
            # Hydra's override_dirname: the job's overrides less the excluded keys, sorted
            kept = sorted(o.input_line for o in parser.parse_overrides(job)
                          if o.key_or_group not in naming.exclude_keys)
            dirname = naming.item_sep.join(kept).replace("=", naming.kv_sep)
            folder = re.sub(r"\$\{[^}]*\}", lambda _: dirname, template)
        else:
            try:
                cfg = schemas.compose([*hydra_args, *job], return_hydra_config=True)
                with open_dict(cfg):
                    cfg.hydra.sweep.subdir = template.replace("${hydra:", "${hydra.")
                folder = str(cfg.hydra.sweep.subdir)
            except Exception:
                return None  # a folder known only once Hydra runs the job
        by_folder.setdefault(folder, []).append(" ".join(job) or "(no overrides)")
    for folder, shared in by_folder.items():
        if len(shared) > 1:
            return (f"error: hydra.sweep.subdir={template} gives {len(shared)} jobs one folder "
                    f"({folder!r}: {shared[0]}; {shared[1]}), so only one would train; make it "
                    "differ per job: ${hydra.job.num} or ${hydra:job.override_dirname}")
    return None


def check_tuning(argv: list[str]) -> Optional[str]:
    """One line if a tuning (``-m hydra/sweeper=tune``) could not run: a bad budget or setting,
    a search space with a bad entry, a swept or searched override, Optuna missing; ``None`` if
    it can, or if this is no tuning."""
    if "hydra/sweeper=tune" not in argv:
        return None
    if not {"-m", "--multirun"} & set(argv):
        return "error: hydra/sweeper=tune runs trials as a sweep: add -m"
    from trpo.config import ConfigError
    from trpo.tuning import TuningSettings, plan

    from hydra.errors import ConfigCompositionException

    hydra_args, task = _hydra_and_task_overrides(argv)

    try:
        sweeper = schemas.compose(hydra_args, return_hydra_config=True).hydra.sweeper
    except ConfigCompositionException as error:
        key = getattr(error.__cause__, "full_key", None)
        if not key:
            return None  # Hydra says what is wrong with its own override
        tune = schemas.compose(["hydra/sweeper=tune"], return_hydra_config=True).hydra.sweeper
        names = ", ".join(sorted(k for k in tune if k != "_target_"))
        return f"error: {key} is not a setting of the tune sweeper (settings: {names})"
    try:
        settings = TuningSettings(**{k: v for k, v in sweeper.items() if k != "_target_"})
        plan(task, settings)
    except ConfigError as error:
        return f"error: {error}"
    return None


def preflight(argv: list[str]) -> None:
    """What ``run.py`` checks before Hydra starts: ``--help`` prints :func:`help_text`; a key
    no schema has, or an output folder that cannot be written, exits 2 in one line."""
    if {"--help", "-h"} & set(argv):
        print(help_text())
        raise SystemExit(0)
    problem = (check_group_options(argv) or check_override_keys(argv)
               or check_value_types(argv) or check_output_dirs(argv)
               or check_sweep_folders(argv) or check_tuning(argv))
    if problem:
        print(problem, file=sys.stderr, flush=True)
        raise SystemExit(2)


# ---------------------------------------------------------------------------------- sweeps


def job_tag(choices: dict[str, Any], seed: int, job_number: int) -> str:
    """``[#3 hopper trpo s1]``: which job of a sweep a console line comes from."""
    return f"[#{job_number} {choices.get('env')} {choices.get('solver')} s{seed}]"


class SweepSummary(Callback):
    """At a sweep's end (also when a job failed), one line per run: its state, final score and
    what it swept, then the command that analyses the sweep. ``run.py`` prints it."""

    sweep_dir: Optional[Path] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepSummary.sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()


def sweep_summary(sweep_dir: Path) -> str:
    """The sweep's runs in job order (folder names compared as numbers: 2 before 10), each
    with its state, its final score as the analysis computes it (:func:`trpo.scores.
    final_score`) and the overrides that set it apart from the sweep's other runs."""
    from trpo.io.run_folder import find_run_folders
    from trpo.scores import FINAL_WINDOW, final_score_of_rows

    folders = find_run_folders([sweep_dir]) if sweep_dir.is_dir() else []
    if not folders:
        return f"sweep {sweep_dir}: no runs"
    rows = []
    for folder in sorted(folders, key=lambda f: natural_key(str(f.path))):
        score = final_score_of_rows(folder.progress.read().rows)
        rows.append((folder.state(), "-" if math.isnan(score) else f"{score:.1f}",
                     folder.path.relative_to(sweep_dir), read_overrides(folder.path)))
    shared = set.intersection(*(set(overrides) for *_, overrides in rows))
    named = [(state, score, str(path), " ".join(o for o in overrides if o not in shared))
             for state, score, path, overrides in rows]
    counts = {s: sum(r[0] == s for r in named) for s in dict.fromkeys(r[0] for r in named)}
    width = max(3, *(len(r[2]) for r in named))
    lines = [f"sweep {sweep_dir}: {len(rows)} runs, "
             + ", ".join(f"{n} {state}" for state, n in counts.items()),
             f"  {'run':<{width}}  {'state':<11} {'final score':<11}  overrides",
             *(f"  {path:<{width}}  {state:<11} {score:<11}  {overrides}"
               for state, score, path, overrides in named),
             f"final score: the mean evaluation return over a run's last {FINAL_WINDOW:.0%} of "
             "steps, as the analysis computes it",
             f"analyse it: python -m analysis {sweep_dir} --out {sweep_dir}/analysis"]
    return "\n".join(lines)


def natural_key(text: str) -> list:
    """``text`` split into numbers and the rest, so that ``run2`` sorts before ``run10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", text)]


def read_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides a run recorded in ``.hydra/overrides.yaml`` (none if it has
    none or they cannot be read)."""
    try:
        recorded = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    except Exception:  # no such file or not YAML: the run is listed without them
        return []
    return [str(o) for o in recorded] if OmegaConf.is_list(recorded) else []


def print_sweep_summary() -> None:
    if SweepSummary.sweep_dir is not None:
        print(sweep_summary(SweepSummary.sweep_dir), file=sys.stderr, flush=True)
