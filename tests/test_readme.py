"""The README's first-hour commands run as written, with tiny budgets, so the README cannot drift
from the code."""

import re
import shlex
import subprocess
import sys

from tests.conftest import ROOT

# Budget keys set on every run.py command; the rest of each command stays as the README has it.
TINY_BUDGET = {"total_steps": "512", "steps_per_iteration": "256", "num_envs": "2",
               "eval_every": "1", "eval_episodes": "1", "critic.epochs": "1",
               "logger.writers": "[]"}


def setup_run() -> str:
    """The run the set-up's first command ends with (after its ``pip install``)."""
    text = (ROOT / "README.md").read_text()
    first = re.findall(r"```bash\n(.*?)```", text.split("## Set-up", 1)[1], re.S)[0]
    run = first.strip().split(" && ")[-1]
    assert run.startswith("python run.py"), f"the set-up's first command ends with {run!r}"
    return run


def readme_commands() -> list[str]:
    """The shell lines of the README's ``bash`` blocks between its readme-commands markers."""
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- readme-commands: begin -->")[1].split(
        "<!-- readme-commands: end -->")[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def with_tiny_budget(argv: list[str]) -> list[str]:
    if argv[:2] == ["python", "run.py"]:
        kept = [a for a in argv[2:] if a.split("=", 1)[0] not in TINY_BUDGET]
        seeds = [a for a in kept if a.startswith("seed=")]
        kept = [a if a not in seeds else "seed=0,1" for a in kept]  # a shorter sweep
        return [sys.executable, str(ROOT / "run.py"), *kept,
                *(f"{k}={v}" for k, v in TINY_BUDGET.items())]
    assert argv[0] == "python", f"a README command this test does not know: {argv}"
    return [sys.executable, *argv[1:]]


def test_the_first_hour_commands_run_as_the_readme_gives_them(tmp_path):
    commands = [setup_run(), *readme_commands()]
    assert any("trpo.evaluate" in c for c in commands) and any(" -m " in c for c in commands)
    for command in commands:
        result = subprocess.run(with_tiny_budget(shlex.split(command)), cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        if command.startswith("python run.py") and " -m " not in command:
            assert result.stdout.splitlines()[-1].split(" - ")[-1].startswith("finished: ")
    assert (tmp_path / "runs" / "cartpole" / "agent.pt").exists()
    assert (tmp_path / "runs" / "cartpole.mp4").stat().st_size > 0
    assert (tmp_path / "runs" / "hopper" / "agent.pt").exists()
    assert (tmp_path / "figures" / "example" / "curves.png").exists()
    assert list((tmp_path / "figures" / "example" / "videos").glob("Hopper-v5_*.mp4"))
    # The Python example, on the agent the first command trained.
    [example] = [b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(),
                                       re.S) if "load_agent" in b]
    result = subprocess.run([sys.executable, "-c", example + "\nprint(env.action_space.contains("
                             "action))"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.split()[-1] == "True", result.stderr[-2000:]
