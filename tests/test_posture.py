"""experiments.posture on committed agents: one HalfCheetah-v5 seed that runs on its back and
one that runs upright (their final scores, 1,889 and 4,710, do not say which)."""

from pathlib import Path

import numpy as np
import pytest

from experiments.posture import main, play_posture, wrapped_pitch

RUNS = Path(__file__).resolve().parents[1] / "experiments" / "runs" / "mujoco_suite"


def test_pitch_wraps_whole_turns_to_0_to_180_degrees():
    np.testing.assert_allclose(wrapped_pitch(np.array([0.0, np.pi, -np.pi / 2, 2 * np.pi + 0.1,
                                                       -3 * np.pi])),
                               [0.0, 180.0, 90.0, np.degrees(0.1), 180.0], atol=1e-9)


@pytest.mark.parametrize("seed, on_its_back", [(0, True), (1, False)])
def test_halfcheetah_agents_are_told_apart_by_their_pitch(seed, on_its_back):
    posture = play_posture(RUNS / f"env=halfcheetah,seed={seed}")
    assert posture.length == 1000
    assert (posture.pitch_deg > 120) == on_its_back and (posture.upside_down > 0.5) == on_its_back
    assert posture.speed > 1.5  # both run forward; upright about twice as fast
    assert (posture.episode_return > 3000) != on_its_back


def test_a_task_that_is_not_planar_is_one_line_and_exit_2(tmp_path, capsys):
    swimmer = RUNS / "env=swimmer,seed=0"
    assert main([str(swimmer)]) == 2
    out, err = capsys.readouterr()
    assert "Swimmer-v5 is not a planar task (Hopper, Walker2d, HalfCheetah)" in err and not out
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"error: not a folder: {tmp_path / 'nowhere'}\n"
