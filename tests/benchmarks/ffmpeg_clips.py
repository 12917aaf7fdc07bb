"""Motion clips drawn and encoded by ffmpeg alone: the "clips drawn by other tools" of issue 2.

Nothing of ours draws or encodes them. Backgrounds are lavfi sources (``color``, ``gradients``, ``color`` with
fresh ``noise`` every frame, ``smptehdbars``); the object is a source too (``testsrc``, ``rgbtestsrc``,
``smptebars``, ``gradients``, or a flat square with a box in one corner), half the time masked to a disc
(``geq``). ``overlay`` moves it, ``rotate`` turns it and ``scale`` zooms it, frame by frame, and the ffmpeg CLI
encodes the result (libx264 ``medium``, CRF 18-28, its default GOP). Every range is the issue's: frames
160-640 x 120-480, 40-120 frames at 15-30 fps, 0.3-1.5 % of the frame width a frame (travel at most half of
0.85 of the short side), 1-6 degrees a frame, zoom 0.8-2.5 % a frame (3x at most), objects 15-45 % of the
short side. With ``centred`` the object's path stays in the centre square (0.85 of the short side) that our
own generator keeps it in; without, it may be anywhere in the frame.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = ("moving_left", "moving_right", "moving_up", "moving_down", "rotating_clockwise",
           "rotating_counterclockwise", "zooming_in", "zooming_out")
_DIRECTIONS = {"moving_left": (-1, 0), "moving_right": (1, 0), "moving_up": (0, -1), "moving_down": (0, 1)}


def _colour(rng: np.random.Generator) -> str:
    return "0x" + "".join(f"{int(v):02x}" for v in rng.integers(0, 256, 3))


def _gradients(rng: np.random.Generator, w: int, h: int, fps: int) -> str:
    # the slowest speed ffmpeg allows: still over a clip
    return f"gradients=s={w}x{h}:r={fps}:c0={_colour(rng)}:c1={_colour(rng)}:speed=0.00001:seed={rng.integers(1 << 30)}"


def _background(rng: np.random.Generator, w: int, h: int, fps: int) -> str:
    kind = rng.choice(["color", "gradients", "noise", "bars"])
    if kind == "color":
        return f"color=c={_colour(rng)}:s={w}x{h}:r={fps}"
    if kind == "gradients":
        return _gradients(rng, w, h, fps)
    if kind == "noise":
        return f"color=c={_colour(rng)}:s={w}x{h}:r={fps},noise=alls={rng.integers(5, 20)}:allf=t+u"
    return f"smptehdbars=s={w}x{h}:r={fps}"


def _sprite(rng: np.random.Generator, d: int, fps: int) -> str:
    kind = rng.choice(["testsrc", "rgbtestsrc", "smptebars", "marked", "gradients"])
    if kind == "marked":
        m = max(2, d // 4)
        src = f"color=c={_colour(rng)}:s={d}x{d}:r={fps},drawbox=x={d // 8}:y={d // 8}:w={m}:h={m}:"
        src += f"c={_colour(rng)}:t=fill"
    elif kind == "gradients":
        src = _gradients(rng, d, d, fps)
    else:
        src = f"{kind}=s={d}x{d}:r={fps}"
    src += ",format=rgba"
    if rng.random() < 0.5:  # a disc: nothing in its outline shows a turn
        src += ",geq=r='r(X,Y)':g='g(X,Y)':b='b(X,Y)':a='255*lte(hypot(X-W/2+0.5,Y-H/2+0.5),W/2)'"
    return src


def _motion(name: str, rng: np.random.Generator, w: int, t_count: int, d: int, short: int
            ) -> tuple[str, str, float, float, int]:
    """(angle expression, size expression, x speed, y speed, largest size) of class ``name``."""
    mid = (t_count - 1) / 2
    a0 = rng.uniform(0, 2 * math.pi)
    if name.startswith("rotating"):
        rate = math.radians(rng.uniform(1, 6)) * (1 if name == "rotating_clockwise" else -1)  # ffmpeg: + is clockwise
        return f"{a0:.4f}+{rate:.5f}*n", f"{d}", 0.0, 0.0, d
    if name.startswith("zooming"):
        z = min(rng.uniform(0.008, 0.025), 3 ** (1 / (t_count - 1)) - 1)
        sign = 1 if name == "zooming_in" else -1
        size = f"max(4\\,trunc({d}*pow({1 + z:.5f}\\,{sign}*(n-{mid}))/2)*2)"
        return f"{a0:.4f}", size, 0.0, 0.0, 2 * math.ceil(d * (1 + z) ** mid / 2)
    speed = min(rng.uniform(0.003, 0.015) * w, 0.5 * 0.85 * short / (t_count - 1))
    dx, dy = _DIRECTIONS[name]
    return f"{a0:.4f}", f"{d}", speed * dx, speed * dy, d


def clip_command(name: str, rng: np.random.Generator, out: Path, centred: bool) -> list[str]:
    """The ffmpeg command line that writes one clip of class ``name`` to ``out``."""
    w, h = 2 * int(rng.integers(80, 321)), 2 * int(rng.integers(60, 241))
    t_count, fps = int(rng.integers(40, 121)), int(rng.integers(15, 31))
    short = min(w, h)
    d = 2 * max(4, round(short * math.exp(rng.uniform(math.log(0.15), math.log(0.45))) / 2))
    angle, size, vx, vy, big = _motion(name, rng, w, t_count, d, short)
    pad = 2 * math.ceil(big * 1.42 / 2) + 2  # room for the largest size at any angle
    half = (abs(vx) * (t_count - 1) / 2, abs(vy) * (t_count - 1) / 2)
    ex, ey = (0.85 * short, 0.85 * short) if centred else (w, h)
    centre = [(full - extent) / 2 + rng.uniform(*sorted((min(extent / 2, big / 2 + travel),
                                                         max(extent / 2, extent - big / 2 - travel))))
              for full, extent, travel in ((w, ex, half[0]), (h, ey, half[1]))]
    mid = (t_count - 1) / 2
    sprite = _sprite(rng, big, fps)  # drawn at its largest, scaled down
    background = _background(rng, w, h, fps)
    graph = (f"{sprite},scale=w='{size}':h='{size}':eval=frame,"
             f"pad=w={pad}:h={pad}:x='(ow-iw)/2':y='(oh-ih)/2':color=black@0:eval=frame,"
             f"rotate=a='{angle}':c=none:ow={pad}:oh={pad}[o];"
             f"[0][o]overlay=x='{centre[0]:.2f}+{vx:.4f}*(n-{mid})-{pad // 2}':"
             f"y='{centre[1]:.2f}+{vy:.4f}*(n-{mid})-{pad // 2}':eval=frame:shortest=1,format=yuv420p")
    return ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", background, "-filter_complex", graph,
            "-frames:v", str(t_count), "-c:v", "libx264", "-preset", "medium", "-crf", str(int(rng.integers(18, 29))),
            "-r", str(fps), str(out)]


def make_clips(folder: Path, per_class: int, seed: int, centred: bool) -> list[tuple[Path, int]]:
    """``per_class`` clips of each class in ``folder`` (made again only if missing): [(path, label)]."""
    if shutil.which("ffmpeg") is None:
        raise SystemExit("this benchmark needs the ffmpeg command-line tool: apt-get install ffmpeg")
    clips, commands = [], []
    for i in range(per_class * len(CLASSES)):
        label = i % len(CLASSES)
        path = folder / CLASSES[label] / f"ff_{i:05d}.mp4"
        command = clip_command(CLASSES[label], np.random.default_rng([seed, i]), path, centred)
        clips.append((path, label))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            commands.append([*command[:-1], str(path.with_suffix(".part.mp4"))])
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for command, done in zip(commands, pool.map(lambda c: subprocess.run(c, capture_output=True, text=True),
                                                    commands), strict=True):
            if done.returncode:
                raise RuntimeError(f"ffmpeg failed on {command[-1]}: {done.stderr[-500:]}")
            Path(command[-1]).rename(command[-1].replace(".part.mp4", ".mp4"))
    return clips
