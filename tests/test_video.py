"""Videos: the offscreen OpenGL chosen for MuJoCo, and the MP4 and GIF writers."""

import os

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from trpo import video


def frames(count, height=64, width=96):
    """``count`` distinct RGB frames: a bar moving across a grey ground."""
    out = np.full((count, height, width, 3), 60, np.uint8)
    for i in range(count):
        out[i, :, (i * 5) % width:(i * 5) % width + 8] = (250, 120, 20)
    return out


def test_an_mp4_holds_every_frame_at_its_size_and_rate(tmp_path):
    writer = video.VideoWriter(tmp_path / "a.mp4", fps=25)
    for frame in frames(30):
        writer.add(frame)
    writer.close()
    reader = imageio.get_reader(tmp_path / "a.mp4")
    try:
        assert reader.count_frames() == 30 == writer.frames
        assert reader.get_meta_data()["fps"] == 25
        # H.264 is lossy (colour at half resolution blurs the bar's edges): close on average.
        assert np.abs(reader.get_data(7).astype(int) - frames(30)[7]).mean() < 5
    finally:
        reader.close()


def test_a_gif_holds_every_frame_at_its_duration(tmp_path):
    writer = video.VideoWriter(tmp_path / "a.gif", fps=50)
    for frame in frames(12):
        writer.add(frame)
    writer.close()
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 12 and gif.size == (96, 64)
        assert gif.info["duration"] == 20 and gif.info["loop"] == 0
        gif.seek(5)
        np.testing.assert_allclose(np.asarray(gif.convert("RGB")), frames(12)[5], atol=8)


@pytest.mark.parametrize("fps, step", [(30, 1), (50, 1), (60, 2), (125, 3)])
def test_a_fast_task_keeps_every_kth_frame_for_at_most_50_fps(fps, step):
    assert video.frame_step(fps) == step and fps / step <= video.MAX_FPS


@pytest.mark.parametrize("name, message", [
    ("a.avi", "a video must end in .mp4 or .gif"), ("no/a.mp4", "its folder")])
def test_a_video_path_must_be_an_mp4_or_gif_in_a_folder_that_exists(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        video.check_video_path(tmp_path / name)


def clear_gl_environment(monkeypatch):
    """Unset the variables that choose an OpenGL, restored after the test (also when the code
    under test sets them)."""
    for name in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY", "PYOPENGL_PLATFORM"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.mark.parametrize("environment, works, chosen", [
    ({"MUJOCO_GL": "glfw"}, (), "glfw"),  # the user's choice is kept
    ({"DISPLAY": ":0"}, (), None),  # a display: MuJoCo's own choice (a window context)
    ({}, ("egl", "osmesa"), "egl"),
    ({}, ("osmesa",), "osmesa"),
    ({"PYOPENGL_PLATFORM": "osmesa"}, ("egl", "osmesa"), "osmesa"),
])
def test_the_offscreen_opengl_is_the_first_that_works(monkeypatch, environment, works, chosen):
    clear_gl_environment(monkeypatch)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert video.choose_mujoco_gl(lambda b: None if b in works else "fails") == chosen
    assert os.environ.get("MUJOCO_GL") == (chosen or None)


def test_no_offscreen_opengl_names_the_package_and_the_variable(monkeypatch):
    clear_gl_environment(monkeypatch)
    with pytest.raises(video.VideoError) as error:
        video.choose_mujoco_gl(lambda backend: f"lib{backend} is not installed")
    assert str(error.value) == (
        "MuJoCo cannot render offscreen here (MUJOCO_GL=egl: libegl is not installed; "
        "MUJOCO_GL=osmesa: libosmesa is not installed); on Debian/Ubuntu: apt-get install "
        "libosmesa6 and pip install PyOpenGL, then run with MUJOCO_GL=osmesa")
    assert "MUJOCO_GL" not in os.environ
