"""``python -m analysis --videos``: the best seed of each group plays an episode into an MP4
and a strip of frames; a video that cannot be made here is a warning only."""

import logging
import math

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from analysis import videos
from analysis.__main__ import main
from analysis.load import load_runs
from analysis.report import final_score, make_groups
from tests.conftest import TINY
from tests.run_folders import write_run
from trpo.video import VideoError

TASK = "CartPole-v1"
# The line's name: runs trained by train() alone record no group choices (run.py's do).
LABEL = "runs"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A folder of two finished two-iteration CartPole runs, seeds 0 and 1 (trained once)."""
    from trpo.config import compose
    from trpo.train import train

    root = tmp_path_factory.mktemp("sweep")
    for seed in (0, 1):
        train(compose(["env=cartpole", *TINY, f"seed={seed}"]), root / str(seed))
    return root


def scores(root):
    """Each run's final score, by seed."""
    return {run.seed: final_score(run.progress) for run in load_runs([root]).runs}


def test_the_best_seed_plays_into_an_mp4_and_a_strip_of_frames(sweep, tmp_path, caplog):
    by_seed = scores(sweep)
    assert by_seed[0] != by_seed[1]  # else the choice would not be tested
    best = max(by_seed, key=by_seed.get)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="analysis"):
        assert main([str(sweep), "--out", str(out), "--videos", "--reps", "10"]) == 0
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("video of")]
    assert chosen == [f"video of {TASK}/{LABEL}: seed {best}, the best final eval_return_mean "
                      f"({by_seed[best]:.4g}) of 2 runs: {sweep / str(best)}"]
    mp4, png = out / "videos" / f"{TASK}_{LABEL}.mp4", out / "videos" / f"{TASK}_{LABEL}_frames.png"
    reader = imageio.get_reader(mp4)
    try:
        count = reader.count_frames()
        last = reader.get_data(count - 1)
    finally:
        reader.close()
    assert count > 6 and last.shape == (400, 600, 3)
    with Image.open(png) as image:
        strip = np.asarray(image.convert("RGB"))
    # Six frames of 240x160 (CartPole's 600x400 scaled down), 4 grey columns between two.
    assert strip.shape == (160, 6 * 240 + 5 * 4, 3)
    np.testing.assert_allclose(strip[:, -240:].astype(float),
                               np.asarray(Image.fromarray(last).resize((240, 160))), atol=40)
    assert strip[:, :240].std() > 10  # drawn, not blank
    assert (strip[:, 240:244] == videos.STRIP_GAP_GREY).all()


def test_a_video_that_cannot_be_made_is_one_warning_and_the_rest_is_written(
        sweep, tmp_path, caplog, monkeypatch):
    message = "MP4 videos need imageio and imageio-ffmpeg (No module named 'imageio'): " \
              "pip install -e '.[video]'"

    def fail(self, path, fps):
        raise VideoError(message)

    monkeypatch.setattr("trpo.video.VideoWriter.__init__", fail)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="analysis"):
        assert main([str(sweep), "--out", str(out), "--videos", "--reps", "10"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and not r.getMessage().startswith("fewer than 5 seeds")]  # a 1-2 seed sweep
    assert warnings == [f"no video of {TASK}/{LABEL}: {message}"]
    assert (out / "final.md").exists() and (out / "curves.png").exists()
    assert list((out / "videos").iterdir()) == []


def test_a_run_without_an_agent_is_warned_about_by_path_and_the_rest_is_written(tmp_path,
                                                                                caplog):
    run = write_run(tmp_path / "sweep", "0", env="cartpole")  # progress, no agent.pt
    out = tmp_path / "out"
    assert main([str(tmp_path / "sweep"), "--out", str(out), "--videos", "--reps", "10"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and not r.getMessage().startswith("fewer than 5 seeds")]  # a 1-2 seed sweep
    assert warnings == [f"no video of {TASK}/trpo: {run} has no agent.pt or checkpoint yet: "
                        "the run has not reached its first checkpoint"]
    assert (out / "final.md").exists() and list((out / "videos").iterdir()) == []


def test_videos_are_off_by_default(sweep, tmp_path):
    assert main([str(sweep), "--out", str(tmp_path), "--reps", "10"]) == 0
    assert not (tmp_path / "videos").exists()


def test_the_best_run_has_the_highest_final_score_and_runs_without_one_are_passed_over(tmp_path):
    for seed, returns in enumerate([(1.0, 5.0), (9.0, 7.0), (0.0, math.nan), (2.0, 7.0)]):
        write_run(tmp_path, f"{seed}", env="cartpole", seed=seed, returns=returns)
    (group,) = make_groups(load_runs([tmp_path]).runs, [])
    run, score = videos.best_run(group, "eval_return_mean")
    assert (run.seed, score) == (1, 7.0)  # seed 3 ties at 7 and comes later by path


def test_no_run_with_a_score_gives_no_best_run(tmp_path):
    write_run(tmp_path, "0", env="cartpole", returns=(math.nan,))
    (group,) = make_groups(load_runs([tmp_path]).runs, [])
    assert videos.best_run(group, "eval_return_mean") is None


@pytest.mark.parametrize("task, label, stem", [
    ("Hopper-v5", "trpo", "Hopper-v5_trpo"),
    ("Hopper-v5", "trpo, gae", "Hopper-v5_trpo_gae"),
    ("Hopper-v5", "solver.max_kl=0.05", "Hopper-v5_solver.max_kl=0.05"),
    ("Hopper-v5", "network=[64, 64]/x", "Hopper-v5_network=_64_64_x")])
def test_a_label_becomes_a_file_name(task, label, stem):
    assert videos.file_stem(task, label) == stem


@pytest.mark.parametrize("count, total, expected", [
    (6, 51, [0, 10, 20, 30, 40, 50]), (6, 3, [0, 1, 2]), (6, 1, [0])])
def test_strip_frames_are_evenly_spaced_from_first_to_last(count, total, expected):
    assert videos.evenly_spaced(count, total).tolist() == expected
