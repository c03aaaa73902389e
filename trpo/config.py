"""Config schemas: one dataclass per config group, registered in Hydra's ConfigStore.

Each YAML under ``conf/`` starts with ``defaults: [/schema/<group>/<schema>@_here_, _self_]``, so
a misspelt key or a wrong type fails when Hydra composes the config. Ranges that a type cannot
express (``solver.max_kl > 0``, ``advantage.lam`` in [0, 1], ...) are checked by
:func:`validate_config`, which the runner calls before it builds any environment; it raises a
:class:`ConfigError` whose message is one line naming the key and what is allowed. What needs
Gymnasium to check (a registered id, the task's spaces, the backend) is
:func:`trpo.envs.checks.check_envs`'s, called right after: this module imports no Gymnasium.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value outside its allowed range. ``str(error)`` is one line naming the key."""

    def __init__(self, key: str, allowed: str, value: Any):
        self.key, self.allowed, self.value = key, allowed, value
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")

    def under(self, group: str) -> "ConfigError":
        """The same error with its key prefixed by the config group it came from."""
        return ConfigError(f"{group}.{self.key}", self.allowed, self.value)


def require(condition: bool, key: str, allowed: str, value: Any) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, allowed, value)


def _positive_int(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        require(value > 0, name, "must be a positive integer", value)


# Bounds on values that pass their type but cannot train: a trust region of more than 1 nat per
# update bounds nothing (the TRPO paper's is 0.01); σ = e^±10 spans any action scale, and
# beyond it exp overflows or vanishes in float32; a batch of 10^6 steps holds gigabytes of
# observations for Ant's 105 dimensions; 1,000 evaluation episodes already take longer than a
# run's training; layers of 10^4 units are far past what the MuJoCo tasks use (64-256).
MAX_KL_BOUND = 1.0
LOG_STD_BOUND = 10.0
MAX_STEPS_PER_ITERATION = 1_000_000
MAX_EVAL_EPISODES = 1000
MAX_WIDTH = 10_000


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        require(math.isfinite(value) and value > 0, name, "must be a finite number > 0", value)


# --------------------------------------------------------------------------------------- enums


class Activation(Enum):
    """Hidden-layer non-linearity of the policy and value MLPs."""

    tanh = "tanh"
    relu = "relu"
    elu = "elu"


class Init(Enum):
    """Weight initialisation of the MLPs.

    ``orthogonal``: orthogonal weights, gain √2 in hidden layers, 0.01 on the policy output and 1 on
    the value output, zero biases (OpenAI baselines; SB3's ``ortho_init``; Engstrom et al. 2020).
    ``default``: PyTorch's default ``nn.Linear`` initialisation.
    """

    orthogonal = "orthogonal"
    default = "default"


# How the training environments of one process are stepped: ``sync`` in turn in this process,
# ``async`` in subprocesses. (The functional form, because ``async`` is a Python keyword.)
VectorMode = Enum("VectorMode", {"sync": "sync", "async": "async"})


class FisherProduct(Enum):
    """How NPG and TRPO multiply a vector by the Fisher matrix F of the mean KL at θ_old.

    ``analytic``: F v = Jᵀ M J v, with J the Jacobian of the distribution's parameters (Gaussian
    mean and log σ, or Categorical logits) and M their Fisher in closed form (TRPO paper,
    appendix C.1): two first-order passes per product (J v, then Jᵀ w), no second derivatives.
    ``double_backprop``: the Hessian of the mean KL, its gradient differentiated again (modular_rl,
    OpenAI baselines). The two are the same matrix; they differ in rounding and cost.
    """

    analytic = "analytic"
    double_backprop = "double_backprop"


class WandbMode(Enum):
    """W&B mode. ``offline`` writes the run under the run directory; ``wandb sync`` uploads it."""

    online = "online"
    offline = "offline"


# ------------------------------------------------------------------------------------- env group


def _optional_max_kl(obj: Any) -> None:
    """A task's own δ (``obj.max_kl``): null, or in (0, MAX_KL_BOUND]."""
    if obj.max_kl is not None:
        _positive(obj, "max_kl")
        require(obj.max_kl <= MAX_KL_BOUND, "max_kl", f"must be at most {MAX_KL_BOUND}",
                obj.max_kl)


@dataclass
class TaskTuning:
    """Values a tuning chose for one task, which its env option sets as ``env.tuned`` (RESULTS.md
    names the tuning and the study that adopted them). The options read them through
    ``task_setting`` as they read the task's own settings, so an explicit override still wins;
    null leaves a value to its option."""

    # GAE λ (advantage=gae), for every solver.
    lam: Optional[float] = None
    # The value fit's Adam learning rate and passes over each batch (critic.lr, critic.epochs).
    critic_lr: Optional[float] = None
    critic_epochs: Optional[int] = None
    # δ and the CG iterations of TRPO and natural PG (solver.max_kl, solver.cg_iters).
    max_kl: Optional[float] = None
    cg_iters: Optional[int] = None

    def validate(self) -> None:
        if self.lam is not None:
            require(0.0 <= self.lam <= 1.0, "lam", "must be in [0, 1] or null", self.lam)
        if self.critic_lr is not None:
            _positive(self, "critic_lr")
        _optional_max_kl(self)
        for name in ("critic_epochs", "cg_iters"):
            if getattr(self, name) is not None:
                _positive_int(self, name)


@dataclass
class EnvConfig:
    """One Gymnasium task. Each option's YAML (``conf/env/``) gives its values and sources."""

    # Gymnasium id; ``module:Id`` imports ``module`` first (it registers ``Id``).
    id: str = MISSING
    # Environment steps of a run on this task unless ``total_steps`` is overridden.
    default_steps: int = MISSING
    # Time limit in steps; null keeps the limit registered with the id (1000 for MuJoCo tasks).
    max_episode_steps: Optional[int] = None
    # Keyword arguments passed to ``gymnasium.make``.
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # What steps the training envs, a row of trpo.envs.BACKENDS: gymnasium (Gymnasium's own
    # environments) or mujoco (Gymnasium's MuJoCo v5 locomotion tasks with their physics
    # stepped as one batch on threads: the same transitions bit for bit, the default of those
    # env options). Evaluation plays on the same backend.
    backend: str = "gymnasium"
    # Returns that normalise scores across envs in the analysis, (R − random) / (reference −
    # random): D4RL's random and expert returns (Fu et al. 2020) where published, else null
    # (the analysis then normalises by the min and max over the runs compared, and says so).
    random_return: Optional[float] = None
    reference_return: Optional[float] = None
    # The task's own discount γ and trust region δ, where the reference settings tune them per
    # task (rl-baselines3-zoo's TRPO for MuJoCo: Swimmer γ 0.9999, HalfCheetah target_kl 0.04);
    # null leaves them to the advantage and solver options. Those read them through
    # ``${task_setting:gamma,0.99}``, so an explicit advantage.gamma or solver.max_kl still wins.
    gamma: Optional[float] = None
    max_kl: Optional[float] = None
    # The task's own initial log σ of the Gaussian policy, where its action cost makes the
    # network option's σ a poor start; null leaves it to the network option, which reads it
    # through ``task_setting`` (conf/shared/mlp.yaml; an explicit network.log_std_init wins).
    log_std_init: Optional[float] = None
    # The task's own CG damping rule for TRPO and natural PG: true scales solver.cg_damping by
    # the action's dimensions (solver.cg_damping_per_action_dim); null leaves it to the solver.
    cg_damping_per_action_dim: Optional[bool] = None
    # The task's own environment steps per update (steps_per_iteration), where twice the updates
    # per million steps learn it better; null leaves it to steps_per_iteration's default.
    steps_per_iteration: Optional[int] = None
    # A tuning's values for this task (TaskTuning), which take precedence over the settings
    # above; null: none.
    tuned: Optional[TaskTuning] = None

    def validate(self) -> None:
        _positive_int(self, "default_steps")
        if self.tuned is not None:
            try:
                self.tuned.validate()
            except ConfigError as error:
                raise error.under("tuned") from None
        if self.gamma is not None:
            require(0.0 < self.gamma <= 1.0, "gamma", "must be in (0, 1] or null", self.gamma)
        _optional_max_kl(self)
        if self.log_std_init is not None:
            require(math.isfinite(self.log_std_init) and abs(self.log_std_init) <= LOG_STD_BOUND,
                    "log_std_init", f"must be in [-{LOG_STD_BOUND:g}, {LOG_STD_BOUND:g}] or null",
                    self.log_std_init)
        if self.max_episode_steps is not None:
            _positive_int(self, "max_episode_steps")
        if self.steps_per_iteration is not None:
            _positive_int(self, "steps_per_iteration")
        if self.random_return is not None and self.reference_return is not None:
            require(self.reference_return > self.random_return, "reference_return",
                    f"must be greater than random_return={self.random_return}",
                    self.reference_return)


# ---------------------------------------------------------------------------------- network group


@dataclass
class NetworkConfig:
    """Policy and value MLPs (separate networks, as in the TRPO and GAE papers); values and their
    sources in ``conf/network/``."""

    # Hidden layer widths of the policy's MLP (the Gaussian's mean, or the Categorical's logits).
    policy_hidden: List[int] = MISSING
    # Hidden layer widths of the value function.
    value_hidden: List[int] = MISSING
    activation: Activation = MISSING
    init: Init = MISSING
    # Initial log standard deviation of the Gaussian policy (state-independent).
    log_std_init: float = MISSING

    def validate(self) -> None:
        for name in ("policy_hidden", "value_hidden"):
            widths = list(getattr(self, name))
            require(len(widths) > 0 and all(0 < w <= MAX_WIDTH for w in widths), name,
                    f"must be a non-empty list of widths in [1, {MAX_WIDTH}]", widths)
        require(math.isfinite(self.log_std_init) and abs(self.log_std_init) <= LOG_STD_BOUND,
                "log_std_init", f"must be in [-{LOG_STD_BOUND:g}, {LOG_STD_BOUND:g}]",
                self.log_std_init)


# -------------------------------------------------------------------------------- advantage group


@dataclass
class EstimatorConfig:
    """Fields every advantage estimator has; values and sources in ``conf/advantage/``."""

    _target_: str = MISSING
    # Discount factor γ.
    gamma: float = MISSING
    # Standardise advantages per batch before the policy update.
    normalize: bool = MISSING

    def validate(self) -> None:
        require(0.0 < self.gamma <= 1.0, "gamma", "must be in (0, 1]", self.gamma)


@dataclass
class GAEConfig(EstimatorConfig):
    _target_: str = "trpo.advantages.GAE"
    # GAE λ: 0 is the one-step TD residual, 1 the Monte-Carlo return minus V.
    lam: float = MISSING

    def validate(self) -> None:
        super().validate()
        require(0.0 <= self.lam <= 1.0, "lam", "must be in [0, 1]", self.lam)


@dataclass
class TDConfig(EstimatorConfig):
    _target_: str = "trpo.advantages.td"


@dataclass
class MonteCarloConfig(EstimatorConfig):
    _target_: str = "trpo.advantages.monte_carlo"


# ----------------------------------------------------------------------------------- solver group


@dataclass
class NaturalGradientConfig:
    """The natural-gradient direction shared by NPG and TRPO; values and their sources in
    ``conf/solver/trpo.yaml`` and ``npg.yaml``."""

    _target_: str = "trpo.solvers.NaturalPolicyGradient"
    # Trust region δ on the mean KL(old ‖ new).
    max_kl: float = MISSING
    # δ at the last update, reached linearly from max_kl over total_steps; null keeps δ = max_kl.
    max_kl_final: Optional[float] = MISSING
    # Conjugate-gradient iterations for x ≈ F⁻¹g.
    cg_iters: int = MISSING
    # Damping added to the Fisher-vector product, F + λI.
    cg_damping: float = MISSING
    # true: λ = cg_damping × the action's dimensions, the damping sb3-contrib's TRPO applies,
    # since it averages the KL over action dimensions where this solver sums them (1 for a
    # Discrete action).
    cg_damping_per_action_dim: bool = MISSING
    # CG stops early once the squared residual falls below this.
    cg_residual_tol: float = MISSING
    # k: Fisher-vector products use len(batch) // k states drawn at random, anew each update,
    # from the solver's generator (seeded by the run's seed); 1 uses all states and draws nothing.
    fvp_subsample: int = MISSING
    # The Fisher-vector product, the same matrix either way: analytic, Jᵀ M J v in closed form,
    # or double_backprop, the Hessian of the mean KL.
    fvp: FisherProduct = MISSING

    def validate(self) -> None:
        for name in ("max_kl", "max_kl_final"):
            if getattr(self, name) is not None:
                _positive(self, name)
                require(getattr(self, name) <= MAX_KL_BOUND, name,
                        f"must be at most {MAX_KL_BOUND}", getattr(self, name))
        _positive_int(self, "cg_iters", "fvp_subsample")
        require(math.isfinite(self.cg_damping) and self.cg_damping >= 0, "cg_damping",
                "must be a finite number >= 0", self.cg_damping)
        require(self.cg_residual_tol >= 0, "cg_residual_tol", "must be >= 0", self.cg_residual_tol)


@dataclass
class NPGConfig(NaturalGradientConfig):
    _target_: str = "trpo.solvers.NaturalPolicyGradient"
    # Fixed step α on the natural gradient, θ += α F⁻¹g (Kakade 2001); null scales the step to the
    # trust region √(2δ / gᵀF⁻¹g) instead (Rajeswaran et al. 2017).
    step_size: Optional[float] = MISSING

    def validate(self) -> None:
        super().validate()
        if self.step_size is not None:
            _positive(self, "step_size")


@dataclass
class TRPOConfig(NaturalGradientConfig):
    _target_: str = "trpo.solvers.TRPO"
    # Each backtracking step of the line search shrinks the step by this factor.
    backtrack_factor: float = MISSING
    # Candidate steps tried before the update is rejected.
    max_backtracks: int = MISSING

    def validate(self) -> None:
        super().validate()
        require(0 < self.backtrack_factor < 1, "backtrack_factor", "must be in (0, 1)",
                self.backtrack_factor)
        _positive_int(self, "max_backtracks")


@dataclass
class FirstOrderConfig:
    """Adam on a policy loss over shuffled minibatches: the first-order solvers; values and
    their sources in each option's YAML."""

    _target_: str = MISSING
    # Adam learning rate.
    lr: float = MISSING
    # Passes over the batch per update.
    epochs: int = MISSING
    # Samples per Adam step; null: the whole batch.
    minibatch_size: Optional[int] = MISSING
    # Clip the gradient's global norm to this before each Adam step; null: no clipping.
    max_grad_norm: Optional[float] = MISSING

    def validate(self) -> None:
        _positive(self, "lr")
        _positive_int(self, "epochs")
        if self.minibatch_size is not None:
            _positive_int(self, "minibatch_size")
        if self.max_grad_norm is not None:
            _positive(self, "max_grad_norm")


@dataclass
class KLPenaltyConfig(FirstOrderConfig):
    """Adam on the surrogate minus β·KL: the adaptive-KL-penalty objective of the PPO paper."""

    _target_: str = "trpo.solvers.KLPenalty"
    # KL target d_targ of the adaptive β.
    target_kl: float = MISSING
    # Initial β.
    beta: float = MISSING
    # Adapt β after each update: ×2 when KL > 1.5·target, ÷2 when KL < target/1.5 (PPO paper, §4).
    adaptive: bool = MISSING

    def validate(self) -> None:
        super().validate()
        _positive(self, "target_kl", "beta")


@dataclass
class PPOClipConfig(FirstOrderConfig):
    """Adam on the clipped surrogate (PPO paper, eq. 7)."""

    _target_: str = "trpo.solvers.PPOClip"
    # ε of clip(r, 1 − ε, 1 + ε).
    clip_range: float = MISSING

    def validate(self) -> None:
        super().validate()
        require(0 < self.clip_range < 1, "clip_range", "must be in (0, 1)", self.clip_range)


@dataclass
class VPGConfig(FirstOrderConfig):
    """Vanilla policy gradient: Adam steps on mean[log π · A]."""

    _target_: str = "trpo.solvers.VanillaPolicyGradient"


@dataclass
class SB3TRPOConfig:
    """sb3-contrib's TRPO as a reference baseline: rl-baselines3-zoo's settings for MuJoCo, trained
    by :class:`experiments.sb3_baseline.SB3Learner` in a run folder like any other (values and
    sources in ``conf/solver/sb3_trpo.yaml``; needs the ``bench`` extra). It shares the run's env,
    network, advantage (γ, λ, standardised), critic (lr, epochs, minibatch), observation and
    reward normalisation, num_envs, steps_per_iteration and evaluation settings."""

    # What trains a run of this option instead of trpo.learner.OnPolicyLearner.
    learner: str = "experiments.sb3_baseline.SB3Learner"
    # δ enforced by the line search on sb3-contrib's mean KL, which averages KL(π_new ‖ π_old)
    # over the action's dimensions as well as the states: about dims × δ on the whole KL that
    # solver.max_kl bounds for trpo (RESULTS.md, The MuJoCo suite).
    target_kl: float = MISSING
    # Conjugate-gradient iterations, and the damping added to the Fisher-vector product.
    cg_max_steps: int = MISSING
    cg_damping: float = MISSING
    # The line search shrinks the step by this factor, at most this many times.
    line_search_shrinking_factor: float = MISSING
    line_search_max_iter: int = MISSING
    # Fisher-vector products on every k-th state.
    sub_sampling_factor: int = MISSING

    def validate(self) -> None:
        _positive_int(self, "cg_max_steps", "line_search_max_iter", "sub_sampling_factor")
        _positive(self, "target_kl", "cg_damping")
        require(0 < self.line_search_shrinking_factor < 1, "line_search_shrinking_factor",
                "must be in (0, 1)", self.line_search_shrinking_factor)
        require(importlib.util.find_spec("sb3_contrib") is not None, "learner",
                "needs sb3-contrib: pip install -c constraints.txt -e '.[bench]'", self.learner)


# ----------------------------------------------------------------------------------- logger group


@dataclass
class WandbConfig:
    """The W&B writer's settings (``logger.wandb``)."""

    # offline works with no account or network, and ``wandb sync <run dir>/wandb`` uploads the
    # run (one W&B run, however often it was resumed); online needs ``wandb login``.
    mode: WandbMode = MISSING
    # W&B project and entity (null: the account's default entity).
    project: str = MISSING
    entity: Optional[str] = None
    # Runs of one experiment share a W&B group.
    group: str = II("name")
    tags: List[str] = field(default_factory=list)
    # Show W&B's own console messages (where the run is saved, how to sync it); off, the run's
    # lines are the only ones.
    messages: bool = False


@dataclass
class LoggerConfig:
    """Where each iteration's row goes: ``progress.csv`` and the console always, and the writers
    listed (checked against :mod:`trpo.io.logger`'s writers before a run starts)."""

    # Writers beside progress.csv and the console: wandb (W&B), tensorboard (scalars under
    # <run dir>/tensorboard/, x-axis env_steps; the tensorboard extra); [] for neither.
    writers: List[str] = MISSING
    # Console line every this many iterations.
    console_every: int = 1
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> None:
        _positive_int(self, "console_every")
        require(len(set(self.writers)) == len(self.writers), "writers",
                "must name each writer once", list(self.writers))


@dataclass
class TrialConfig:
    """Which tuning trial a run is: set by the tuning sweeper (``hydra/sweeper=tune``,
    :mod:`trpo.tuning`) on each run it launches, null otherwise. A trial's run reports each
    evaluation to its study and stops, ``pruned``, when the study's pruner says so."""

    # The study's journal file (Optuna's JournalFileBackend), its name there, the trial's number.
    storage: Optional[str] = None
    study: Optional[str] = None
    number: Optional[int] = None

    def validate(self) -> None:
        given = [value is not None for value in (self.storage, self.study, self.number)]
        require(all(given) or not any(given), "storage",
                "storage, study and number are set together (by the tuning sweeper) or not at all",
                self.storage)
        require(self.number is None or self.number >= 0, "number", "must be at least 0",
                self.number)


# ------------------------------------------------------------------------------------ top level


@dataclass
class CriticConfig:
    """Regression of the value network on its targets (returns = advantages + values)."""

    # Adam's learning rate for the value net: rl-baselines3-zoo's tuned sb3-contrib TRPO for
    # MuJoCo (learning_rate 1e-3); a task may set its own (env.tuned.critic_lr).
    lr: float = II("task_setting:critic_lr,1e-3")
    # Passes over each batch: the zoo's n_critic_updates; a task may set its own.
    epochs: int = II("task_setting:critic_epochs,20")
    # States per Adam step: the zoo's batch_size.
    minibatch_size: int = 128
    # Regress the value net on returns standardised by their running mean and std, V = mean +
    # std · MLP (Andrychowicz et al. 2021); off, as in rl-baselines3-zoo's settings, whose
    # reward scaling (normalize_reward) already keeps returns near unit scale.
    normalize_targets: bool = False
    # Fit in a worker process, on another core, while the next rollout steps the environments
    # (the same result). null: when this run has two cores or more (trpo.envs.cores_for_this_run;
    # so not in the jobs of a parallel sweep, which share the cores), else in this process.
    background: Optional[bool] = None

    def validate(self) -> None:
        _positive(self, "lr")
        _positive_int(self, "epochs", "minibatch_size")


@dataclass
class TrainConfig:
    """The whole experiment: four composed groups plus the runner's own settings."""

    env: EnvConfig = MISSING
    network: NetworkConfig = MISSING
    advantage: Any = MISSING
    solver: Any = MISSING
    logger: LoggerConfig = MISSING
    critic: CriticConfig = field(default_factory=CriticConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)

    # Experiment name: the W&B group and the first part of output folder names.
    name: str = "default"
    # Seeds every random stream of the run, each its own (trpo.seeding): environment resets,
    # action sampling, evaluation episodes, minibatch orders.
    seed: int = 0
    # Environment steps after which the run ends (the env's ``default_steps`` unless overridden).
    total_steps: int = II("env.default_steps")
    # Environment steps per policy update, over all parallel envs: 2048, as in rl-baselines3-zoo's
    # sb3-contrib TRPO for MuJoCo (2 envs × 1024 steps) and the PPO paper; a task may set its own
    # (env.steps_per_iteration).
    steps_per_iteration: int = II("task_setting:steps_per_iteration,2048")
    # Parallel training environments in one process, stepped as one batch (a speed setting: the
    # batch per update stays steps_per_iteration; 8 × 256 steps instead of the zoo's 2 × 1024).
    num_envs: int = 8
    # How they are stepped: sync in this process (exact resume), async in subprocesses.
    vector_mode: VectorMode = VectorMode.sync
    # Cores that step the training envs, with the same transitions however many: the MuJoCo
    # batch's threads (env.backend=mujoco), or processes that each step a share of Gymnasium's
    # sync envs. null: with mujoco, the cores this run may use (all of a single run's; one per
    # job of a parallel sweep; SLURM's CPUs per task); with Gymnasium, 1, this process (worker
    # processes measured slower on 2 cores: README, Speed).
    env_workers: Optional[int] = None
    # Running mean/std observation normalisation (SB3 VecNormalize, as in the zoo's TRPO settings).
    normalize_obs: bool = True
    # Normalised observations are clipped to ±obs_clip (SB3 VecNormalize's clip_obs).
    obs_clip: float = 10.0
    # Scale training rewards by a running std of the discounted return (SB3 VecNormalize's
    # norm_reward; Engstrom et al. 2020). On, as in rl-baselines3-zoo's TRPO settings for MuJoCo
    # (``normalize: true`` turns on VecNormalize's defaults, observations and rewards).
    # Evaluation returns are always the environment's own rewards.
    normalize_reward: bool = True
    # Deterministic evaluation (the policy's mean action) every this many iterations and after
    # the last: every 20,480 steps by default, 49 points on a 1M-step curve.
    eval_every: int = 10
    # Episodes per evaluation, each on an environment of its own, seeded per evaluation.
    eval_episodes: int = 5
    # Torch intra-op threads per run; 1 keeps parallel jobs of a sweep from oversubscribing cores.
    torch_threads: int = 1
    # Save a checkpoint every this many iterations (and after the last); a few hundred KB, a few
    # ms. Started again in the same run directory, a run resumes from its last checkpoint.
    checkpoint_every: int = 10
    # false: an existing run directory is left alone and the run starts afresh beside it.
    resume: bool = True
    # A folder searched, with its subfolders, for a finished run whose config computes what this
    # one would (names and logging aside; same total_steps). Its checkpoint and progress.csv are
    # copied here instead of training again. ``python -m experiments`` sets it to ``multirun/``,
    # so the runs that studies share (each study's default TRPO) are trained once. Like resuming,
    # it assumes the code has not changed what a config computes since that run was trained.
    reuse_from: Optional[str] = None
    # Stop after this many policy updates in a row were rejected for NaN/inf values.
    max_rejected_updates: int = 10
    # A study's further sweeps into its folder, each a list of overrides on top of the study's
    # own (conf/experiment/): ``python -m experiments STUDY`` runs them after its sweep.
    also_sweep: List[List[str]] = field(default_factory=list)
    # A study's tunings, each a list of overrides (``[solver=trpo, env=hopper]``), all under the
    # budget ``tune_budget`` (``[total_steps=500000, hydra.sweeper.trials=20]``): ``python -m
    # experiments STUDY`` tunes each (hydra/sweeper=tune) before its sweep, then sweeps each best
    # configuration over the study's seeds as ``ablation=tuned`` (experiments/tuned.py).
    tune_first: List[List[str]] = field(default_factory=list)
    tune_budget: List[str] = field(default_factory=list)

    def validate(self) -> None:
        _positive_int(self, "total_steps", "steps_per_iteration", "num_envs", "eval_every",
                      "eval_episodes", "torch_threads", "checkpoint_every",
                      "max_rejected_updates")
        _positive(self, "obs_clip")
        require(self.steps_per_iteration <= MAX_STEPS_PER_ITERATION, "steps_per_iteration",
                f"must be at most {MAX_STEPS_PER_ITERATION:,}", self.steps_per_iteration)
        require(self.eval_episodes <= MAX_EVAL_EPISODES, "eval_episodes",
                f"must be at most {MAX_EVAL_EPISODES}", self.eval_episodes)
        require(self.steps_per_iteration % self.num_envs == 0, "steps_per_iteration",
                f"must be a multiple of num_envs={self.num_envs}", self.steps_per_iteration)
        require(0 <= self.seed < 2**32, "seed", "must be an integer in [0, 2**32)", self.seed)
        require(self.env_workers is None or self.env_workers > 0, "env_workers",
                "must be a positive integer or null", self.env_workers)
        require(self.env_workers in (None, 1) or self.vector_mode is VectorMode.sync,
                "env_workers", "must be 1 or null with vector_mode=async (one process per env "
                "already)", self.env_workers)
        require(self.reuse_from is None or Path(self.reuse_from).is_dir(), "reuse_from",
                "must be an existing folder or null", self.reuse_from)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists become tuples (hashable)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


# Config keys whose values do not change what a run computes: a run may resume with them
# changed, studies leave them out of run folder names, and the analysis never draws a line
# per value. A key ending in "." stands for every key below it. Both env backends step
# Gymnasium's transitions bit for bit (tests/test_mujoco_backend.py). A task's own settings
# (env.gamma, env.max_kl, env.log_std_init, env.cg_damping_per_action_dim,
# env.steps_per_iteration, env.tuned) act only through the keys that read them, which are
# compared: a run with Ant-v5's σ set by its option trains what one with the same
# network.log_std_init set by hand trains. A tuning trial (trial.) computes the rows of the same
# run without it; its pruner may only stop it sooner.
RESULT_NEUTRAL_KEYS = ("logger.", "name", "resume", "reuse_from", "checkpoint_every",
                       "torch_threads", "max_rejected_updates", "critic.background",
                       "env_workers", "also_sweep", "tune_first", "tune_budget",
                       "env.random_return", "env.reference_return",
                       "env.backend", "env.gamma", "env.max_kl", "env.log_std_init",
                       "env.cg_damping_per_action_dim", "env.steps_per_iteration", "env.tuned",
                       "env.tuned.", "trial.")

def is_result_neutral(key: str) -> bool:
    """Whether changing ``key`` (a flattened config key, ``solver.max_kl``) leaves results alone."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESULT_NEUTRAL_KEYS)


def result_neutral_keys() -> list[str]:
    """Every config key, spelled out, that :data:`RESULT_NEUTRAL_KEYS` names (``logger.``
    becomes ``logger.writers``, ``logger.wandb.mode``, ...)."""

    def keys_of(schema: type, prefix: str) -> list[str]:
        return [key for f in fields(schema) for key in
                (keys_of(f.default_factory, f"{prefix}{f.name}.")
                 if is_dataclass(f.default_factory) else [f"{prefix}{f.name}"])]

    sections = {"logger": LoggerConfig, "critic": CriticConfig, "trial": TrialConfig,
                "env.tuned": TaskTuning}
    return [spelled for key in RESULT_NEUTRAL_KEYS for spelled in
            (keys_of(sections[key[:-1]], key) if key.endswith(".") else [key])]


def resumable_changes(current: DictConfig) -> tuple[str, ...]:
    """Keys that may differ between a checkpoint's config and ``current``: the result-neutral
    ones and ``total_steps`` (to extend a run), unless δ's schedule is spread over it."""
    if current.solver.get("max_kl_final") is not None:
        return ()
    return ("total_steps",)


def trains_the_same(saved: dict[str, Any], current: DictConfig) -> bool:
    """Whether a finished run with config ``saved`` (resolved, nested) is the run ``current``
    asks for, so that it can be copied rather than trained again: the same total_steps and no
    change but result-neutral keys."""
    return twin_test(current)(saved)


def twin_test(current: DictConfig) -> Callable[[dict[str, Any]], bool]:
    """:func:`trains_the_same` against ``current`` for many saved configs: ``current`` is
    resolved once, as resolving its interpolations costs far more than a comparison and a
    search for a finished twin compares hundreds of runs."""
    after, allowed = resolved_flat(current), resumable_changes(current)
    return lambda saved: (saved.get("total_steps") == after["total_steps"]
                          and next(differing_keys(flatten(saved), after, allowed), None) is None)


def config_changes(saved: dict[str, Any], current: DictConfig) -> list[str]:
    """The keys whose values differ between a checkpoint's config and ``current`` and may not."""
    return sorted(differing_keys(flatten(saved), resolved_flat(current),
                                 resumable_changes(current)))


def resolved_flat(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` with its interpolations resolved, flattened as :func:`flatten` does."""
    return flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def differing_keys(before: dict[str, Any], after: dict[str, Any],
                   allowed: Sequence[str]) -> Iterator[str]:
    """The flattened keys whose values differ, but result-neutral ones and ``allowed``."""
    return (k for k in before.keys() | after.keys()
            if before.get(k) != after.get(k) and not is_result_neutral(k) and k not in allowed)


# Sections of the config that hold a schema of their own: the five groups, ``critic``, ``trial``.
SECTIONS = ("env", "network", "advantage", "solver", "logger", "critic", "trial")

GROUP_SCHEMAS = {
    "env": {"env": EnvConfig},
    "network": {"mlp": NetworkConfig},
    "advantage": {"gae": GAEConfig, "td": TDConfig, "mc": MonteCarloConfig},
    "solver": {"trpo": TRPOConfig, "npg": NPGConfig, "kl_penalty": KLPenaltyConfig,
               "ppo_clip": PPOClipConfig, "vpg": VPGConfig, "sb3_trpo": SB3TRPOConfig},
    "logger": {"default": LoggerConfig},
}


def register_configs() -> None:
    """Register the schemas: ``train_schema`` at the top and ``schema/<group>/<name>`` per group."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, schema in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


def validate_config(cfg: DictConfig) -> None:
    """Check every key and every value's range; raise :class:`ConfigError` naming the first bad
    key (a key no schema has, added with ``+``, included)."""
    for group in SECTIONS:
        schema = OmegaConf.get_type(cfg[group])
        if is_dataclass(schema):
            names = [f.name for f in fields(schema)]
            for key in cfg[group]:
                if key not in names:
                    close = difflib.get_close_matches(key, names, n=1)
                    hint = f"did you mean {group}.{close[0]}? " if close else ""
                    raise ConfigError(f"{group}.{key}", f"{schema.__name__} has no such setting; "
                                      f"{hint}(settings: {', '.join(names)})", cfg[group][key])
        try:
            OmegaConf.to_object(cfg[group]).validate()
        except ConfigError as error:
            raise error.under(group) from None
    top_level = {f.name: cfg[f.name] for f in fields(TrainConfig) if f.name not in SECTIONS}
    TrainConfig(**top_level).validate()
    mode = getattr(cfg.vector_mode, "value", cfg.vector_mode)
    if OmegaConf.get_type(cfg.solver) is SB3TRPOConfig:
        # What sb3-contrib's loop cannot do: say so rather than ignore the setting.
        require(cfg.advantage._target_ == GAEConfig._target_, "advantage",
                "must be gae with solver=sb3_trpo (sb3-contrib estimates GAE only)",
                cfg.advantage._target_)
        require(mode == "sync" and cfg.env_workers in (None, 1), "vector_mode",
                "must be sync, with env_workers null or 1, with solver=sb3_trpo (sb3-contrib "
                "steps its environments in this process)", mode)


def task_setting(key: str, default: Any, *, _root_: DictConfig) -> Any:
    """``${task_setting:gamma,0.99}``: the env option's tuned value ``env.tuned.<key>`` where it
    has one, else its own ``env.<key>`` where it sets one, else ``default`` (the option's value,
    stated there)."""
    tuned = _root_.env.get("tuned")
    value = tuned.get(key) if tuned is not None else None
    if value is None:
        value = _root_.env.get(key)
    return default if value is None else value


# The project's config folder: conf/config.yaml and one YAML per option, conf/<group>/<option>.yaml.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The config ``python run.py OVERRIDES`` trains with, composed outside a Hydra app (tests,
    studies, the benchmark); with ``return_hydra_config``, Hydra's own node too."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides),
                                 return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()


register_configs()
OmegaConf.register_new_resolver("task_setting", task_setting, replace=True)
