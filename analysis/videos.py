"""``--videos``: an episode of each group's best run, as an MP4 and a strip of frames.

For each task × group, the run with the highest final score (:func:`analysis.report.final_score`)
plays one deterministic episode (:func:`trpo.evaluate.evaluate_agent`, seed 0), written to
``OUT/videos/<task>_<label>.mp4``; ``<task>_<label>_frames.png`` beside it is a strip of
:data:`STRIP_FRAMES` frames evenly spaced over that episode, each :data:`STRIP_HEIGHT` pixels
high, small enough for a results page.

A video that cannot be made here (:class:`trpo.video.VideoError`: no offscreen OpenGL, the
``video`` extra missing) or an agent that cannot be loaded is a warning, not an error: the rest
of the analysis goes on. Torch and the agent are imported only when videos are asked for.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from analysis.load import Run
from analysis.report import Group, final_score

log = logging.getLogger("analysis")

# Frames in a strip, evenly spaced from the episode's first frame to its last.
STRIP_FRAMES = 6
# Height in pixels of each frame of a strip (CartPole's 600x400 becomes 240x160).
STRIP_HEIGHT = 160
# Grey columns between two frames of a strip (white would vanish against CartPole's sky).
STRIP_GAP = 4
STRIP_GAP_GREY = 160


def file_stem(task: str, label: str) -> str:
    """``<task>_<label>`` as a file name: runs of characters other than letters, digits, ``.``,
    ``-`` and ``=`` become one ``_`` (``Hopper-v5`` and ``trpo, solver.max_kl=0.05`` ->
    ``Hopper-v5_trpo_solver.max_kl=0.05``)."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", f"{task}_{label}").strip("_.")


def best_run(group: Group, metric: str) -> Optional[tuple[Run, float]]:
    """The run of ``group`` with the highest final ``metric`` and that score; of equal scores,
    the first by path (the group's order). ``None`` if no run has a score (all NaN)."""
    scored = [(final_score(run.progress, metric), run) for run in group.runs]
    scored = [(score, run) for score, run in scored if not math.isnan(score)]
    if not scored:
        return None
    score, run = max(scored, key=lambda pair: pair[0])  # max keeps the first of equals
    return run, score


def frame_strip(frames: np.ndarray, height: int = STRIP_HEIGHT, gap: int = STRIP_GAP
                ) -> np.ndarray:
    """``frames`` (``[N, H, W, 3]`` uint8) side by side, each resized to ``height`` pixels
    high (keeping its aspect ratio), ``gap`` grey columns between two: ``[height, W', 3]``."""
    from PIL import Image

    width = max(1, round(frames.shape[2] * height / frames.shape[1]))
    resized = [np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS))
               for frame in frames]
    grey = np.full((height, gap, 3), STRIP_GAP_GREY, np.uint8)
    pieces = [piece for frame in resized for piece in (frame, grey)][:-1]
    return np.concatenate(pieces, axis=1)


def evenly_spaced(count: int, total: int) -> np.ndarray:
    """``count`` indices (fewer if ``total`` is smaller) from 0 to ``total - 1``, evenly spaced."""
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


def read_frames(video: Path, count: int = STRIP_FRAMES) -> np.ndarray:
    """``count`` frames evenly spaced over the MP4 ``video``, first and last included:
    ``[count, H, W, 3]`` uint8."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(video)
    try:
        total = reader.count_frames()
        return np.stack([reader.get_data(int(i)) for i in evenly_spaced(count, total)])
    finally:
        reader.close()


def write_video(run: Run, path: Path, allow_modules: Sequence[str] = ()) -> tuple[float, int]:
    """One deterministic episode (seed 0) of ``run``'s agent into the MP4 ``path`` and its
    strip of frames into ``<path stem>_frames.png``; the episode's return and length (a task
    ``module:Id`` only if ``allow_modules`` names the module).
    Raises :class:`trpo.video.VideoError` or :class:`trpo.agent.AgentLoadError` (one line)."""
    from PIL import Image

    from trpo import load_agent
    from trpo.evaluate import evaluate_agent

    returns, lengths, _ = evaluate_agent(load_agent(run.path, allow_modules=allow_modules), 1,
                                        video=path)
    strip = frame_strip(read_frames(path))
    Image.fromarray(strip).save(path.with_name(f"{path.stem}_frames.png"))
    return float(returns[0]), int(lengths[0])


def write_videos(groups: list[Group], metric: str, out: Path,
                 allow_modules: Sequence[str] = ()) -> list[Path]:
    """For each group, a video of its best run by final ``metric`` and its strip of frames in
    ``out/videos/`` (:func:`write_video`); the MP4s written. Each choice is logged with the
    run's path; a group whose video cannot be made is left out with a warning, one line per
    distinct reason naming the groups it stopped."""
    from trpo.agent import AgentLoadError
    from trpo.video import VideoError

    folder = out / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    written, failed = [], defaultdict(list)  # reason -> the groups it stopped
    stems: set[str] = set()
    for group in groups:
        name = f"{group.env}/{group.label}"
        best = best_run(group, metric)
        if best is None:
            log.warning("no video of %s: no run has a final %s", name, metric)
            continue
        run, score = best
        stem = file_stem(group.env, group.label)
        while stem in stems:  # two labels alike but for the characters a file name drops
            stem += "_"
        stems.add(stem)
        path = folder / f"{stem}.mp4"
        log.info("video of %s: seed %d, the best final %s (%.4g) of %d run%s: %s", name,
                 run.seed, metric, score, group.seeds, "s" * (group.seeds > 1), run.path)
        try:
            episode_return, length = write_video(run, path, allow_modules)
        except (VideoError, AgentLoadError) as error:
            failed[str(error)].append(name)
            continue
        log.info("wrote %s (return %.4g over %d steps) and its frames", path, episode_return,
                 length)
        written.append(path)
    for reason, names in failed.items():
        log.warning("no video of %s: %s", ", ".join(names), reason)
    return written
