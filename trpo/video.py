"""Videos of episodes: frames rendered offscreen (no display needed) into an MP4 or GIF file.

MuJoCo renders through OpenGL. Without a display it needs a software or headless GL, chosen
with ``MUJOCO_GL`` before the first frame: ``egl`` (Mesa's libegl-mesa0, or a GPU driver) or
``osmesa`` (Debian's libosmesa6, with PyOpenGL). :func:`choose_mujoco_gl` picks the first that
works here when ``MUJOCO_GL`` is unset and there is no display, each tried in a subprocess (a
process can load only one OpenGL platform). The classic-control tasks draw with pygame.

MP4 needs the ``video`` extra (``pip install -e '.[video]'``): imageio, with imageio-ffmpeg's own
ffmpeg binary; GIF is written with Pillow.
"""

from __future__ import annotations

import ctypes.util
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

# The formats a video may have, by file extension.
FORMATS = {".mp4": "MP4 (H.264)", ".gif": "GIF"}
# Frames per second at most: a faster task (Hopper renders at 125) keeps every k-th frame.
# GIF players cannot show frames shorter than 20 ms.
MAX_FPS = 50
# The offscreen OpenGL back ends MuJoCo can use without a display, in the order tried.
HEADLESS_GL = ("egl", "osmesa")
# What each needs from the system, as ctypes names it.
GL_LIBRARIES = {"egl": "EGL", "osmesa": "OSMesa"}
INSTALL_VIDEO = "pip install -e '.[video]'"
INSTALL_OSMESA = ("on Debian/Ubuntu: apt-get install libosmesa6 and pip install PyOpenGL, then "
                  "run with MUJOCO_GL=osmesa")


class VideoError(RuntimeError):
    """A video cannot be made here. ``str(error)`` is one line saying what to install."""


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def probe_gl(backend: str) -> Optional[str]:
    """Whether MuJoCo can make an OpenGL context with ``MUJOCO_GL=backend`` here: ``None`` if
    it can, else a one-line reason. Tried in a subprocess (about half a second)."""
    if ctypes.util.find_library(GL_LIBRARIES[backend]) is None:
        return f"lib{GL_LIBRARIES[backend]} is not installed"
    env = {k: v for k, v in os.environ.items() if k != "PYOPENGL_PLATFORM"}
    env["MUJOCO_GL"] = backend
    code = (f"from mujoco.{backend} import GLContext\n"
            "context = GLContext(16, 16)\ncontext.make_current()\ncontext.free()\n")
    try:
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "making a context did not finish in 60 s"
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"


def choose_mujoco_gl(probe: Callable[[str], Optional[str]] = probe_gl) -> Optional[str]:
    """Set ``MUJOCO_GL`` for offscreen MuJoCo rendering; returns the back end used.

    A ``MUJOCO_GL`` already set is kept; with a display, ``None`` leaves the choice to
    MuJoCo (a GLFW window context). Otherwise the first of :data:`HEADLESS_GL` that works
    (only ``PYOPENGL_PLATFORM``'s, if that is set) is set. Raises :class:`VideoError` saying
    what to install if none works.
    """
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    if has_display():
        return None
    platform = os.environ.get("PYOPENGL_PLATFORM", "").lower()
    reasons = {}
    for backend in (platform,) if platform in HEADLESS_GL else HEADLESS_GL:
        reason = probe(backend)
        if reason is None:
            os.environ["MUJOCO_GL"] = backend
            return backend
        reasons[backend] = reason
    raise VideoError(no_gl_message(reasons))


def no_gl_message(reasons: dict[str, str]) -> str:
    """One line: which ``MUJOCO_GL`` back ends failed, why, and what to install."""
    tried = "; ".join(f"MUJOCO_GL={backend}: {reason}" for backend, reason in reasons.items())
    return f"MuJoCo cannot render offscreen here ({tried}); {INSTALL_OSMESA}"


def is_mujoco(env) -> bool:
    try:
        from gymnasium.envs.mujoco import MujocoEnv
    except ImportError:
        return False
    return isinstance(env.unwrapped, MujocoEnv)


def prepare_rendering(env) -> None:
    """Make ``env`` (made with ``render_mode="rgb_array"``) ready to render without a display:
    the OpenGL back end for MuJoCo, SDL's dummy video driver for pygame."""
    if is_mujoco(env):
        choose_mujoco_gl()
        follow_the_agent(env)
    elif not has_display():
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws without a window


def follow_the_agent(env) -> None:
    """Make a MuJoCo task's camera track its agent. Gymnasium's renderer passes camera id -1
    at every frame, which resets the camera to a free one, so a task's ``trackbodyid`` is
    ignored and a hopper runs out of the frame. Here the camera tracks that body (the task's
    root body, 1, if it names none), at the task's distance and angle. A camera the user chose
    (``camera_id``/``camera_name``) is left alone. Call before the first frame."""
    import mujoco

    renderer = env.unwrapped.mujoco_renderer
    if renderer.camera_id not in (None, -1):
        return
    config = dict(renderer.default_cam_config or {})
    config.setdefault("trackbodyid", 1)
    config["type"] = mujoco.mjtCamera.mjCAMERA_TRACKING
    renderer.default_cam_config = config
    renderer.camera_id = None  # the viewer then keeps the camera type set above


def render(env) -> np.ndarray:
    """One RGB frame, ``[H, W, 3]`` uint8; raises :class:`VideoError` saying what is missing."""
    previous_hook = sys.unraisablehook
    # gymnasium's MuJoCo viewer, half made when its OpenGL context failed, raises in __del__
    # once the error is dropped (it has no context to free): not a second message to show.
    sys.unraisablehook = lambda unraisable: None if (
        isinstance(unraisable.exc_value, AttributeError)
        and "opengl_context" in str(unraisable.exc_value)) else previous_hook(unraisable)
    try:
        try:
            return np.asarray(env.render())
        except Exception as error:
            first = str(error).splitlines()[0] if str(error) else ""
            reason = f"{type(error).__name__}: {first}".rstrip(": ")
    finally:
        sys.unraisablehook = previous_hook
    if is_mujoco(env):
        raise VideoError(no_gl_message({os.environ.get("MUJOCO_GL", "unset"): reason}))
    raise VideoError(f"{env.spec.id if env.spec else 'the task'} cannot render here ({reason}); "
                     f"{INSTALL_VIDEO}")


def check_video_path(path: Path) -> None:
    """Raise ``ValueError`` (one line) unless ``path`` has a video extension and its folder
    exists and takes a new file (checked by making and removing an empty one beside it)."""
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: a video must end in {' or '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise ValueError(f"{path}: its folder {path.parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"{path}: its folder {path.parent} takes no new file "
                         f"({error.strerror})") from None


def frame_step(fps: float) -> int:
    """Keep every k-th frame so that the video has at most :data:`MAX_FPS` frames a second."""
    return max(1, math.ceil(fps / MAX_FPS))


class VideoWriter:
    """Frames into ``path``, MP4 or GIF by its extension, at ``fps`` frames a second.

    MP4 frames go to ffmpeg (imageio-ffmpeg's binary) as they come. A GIF is written at
    :meth:`close` (Pillow writes one at once); until then its frames are held with a palette
    of 256 colours each, a byte a pixel (a 1,000-step Hopper episode: 333 frames, 77 MB).
    """

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.frames = Path(path), fps, 0
        check_video_path(self.path)
        self._gif: Optional[list] = None
        if self.path.suffix.lower() == ".gif":
            self._gif = []
            return
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401  (ships the ffmpeg binary)
        except ImportError as error:
            raise VideoError(f"MP4 videos need imageio and imageio-ffmpeg ({error}): "
                             f"{INSTALL_VIDEO}") from error
        # macro_block_size=2: H.264 in yuv420p needs even sizes, nothing more (imageio's
        # default of 16 would rescale CartPole's 600x400).
        self._mp4 = imageio.get_writer(self.path, format="FFMPEG", fps=fps, codec="libx264",
                                       pixelformat="yuv420p", macro_block_size=2,
                                       ffmpeg_log_level="error")

    def add(self, frame: np.ndarray) -> None:
        """One ``[H, W, 3]`` uint8 frame."""
        if self._gif is not None:
            from PIL import Image

            self._gif.append(Image.fromarray(np.ascontiguousarray(frame)).quantize(
                256, method=Image.Quantize.FASTOCTREE))  # 4x faster than median cut
        else:
            self._mp4.append_data(frame)
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        """Finish the file; ``keep=False`` (after a failure) removes whatever was written."""
        if self._gif is None:
            self._mp4.close()
        else:
            if self._gif and keep:
                first, *rest = self._gif
                first.save(self.path, save_all=True, append_images=rest, loop=0,
                           duration=1000.0 / self.fps)
            self._gif.clear()
        if not keep:
            self.path.unlink(missing_ok=True)
