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


@pytest.mark.parametrize("task", ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Ant-v5",
                                  "Swimmer-v5"])
def test_the_camera_follows_the_agent_across_an_episode(task):
    """Before: Gymnasium's renderer reset its camera to a free one at every frame, and a
    hopper left the picture by frame 48 of 152, the rest empty floor. The agent is
    carried 20 m along the track and the camera must look at it."""
    import gymnasium as gym
    import mujoco

    env = gym.make(task, render_mode="rgb_array", width=64, height=64)
    video.prepare_rendering(env)
    env.reset(seed=0)
    unwrapped = env.unwrapped
    viewer_cam = None
    for step in range(12):
        if step % 3 == 0:  # teleport along x, as a fast run would carry it
            qpos = unwrapped.data.qpos.copy()
            qpos[0] += 5.0
            unwrapped.set_state(qpos, unwrapped.data.qvel)
        env.step(env.action_space.sample())
        frame = video.render(env)
        viewer_cam = unwrapped.mujoco_renderer._get_viewer("rgb_array").cam
        body = viewer_cam.trackbodyid
        assert viewer_cam.type == mujoco.mjtCamera.mjCAMERA_TRACKING
        assert abs(viewer_cam.lookat[0] - unwrapped.data.subtree_com[body][0]) < 0.5, step
    assert frame.shape == (64, 64, 3) and viewer_cam.lookat[0] > 15
    env.close()
