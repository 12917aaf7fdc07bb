"""Synthetic motion clips rendered with PIL: eight classes defined by motion alone.

One object translates, rotates or zooms. Its look (shape, colours, texture), size, orientation and
position, the background, a distractor and the sensor noise are random and independent of the class,
and trajectories are centred on the middle frame, so the frames of a clip taken together have the same
statistics for opposite classes (left and right, in and out, ...): only temporal modelling can tell them
apart. ``training.synthetic`` writes these clips as MP4 files with list files.
"""

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CLASSES: tuple[str, ...] = (
    "moving_left",
    "moving_right",
    "moving_up",
    "moving_down",
    "rotating_clockwise",
    "rotating_counterclockwise",
    "zooming_in",
    "zooming_out",
)
# Unit direction on screen (image y axis points down) of the translation classes.
_DIRECTIONS = {"moving_left": (-1, 0), "moving_right": (1, 0), "moving_up": (0, -1), "moving_down": (0, 1)}
_SHAPES = ("rectangle", "ellipse", "triangle", "polygon", "star", "blob", "glyph")
_TEXTURES = ("flat", "stripes", "checker", "noise", "gradient")
_GLYPHS = "FGJLPRQK47"  # no rotational symmetry, so a rotation is never ambiguous
_BILINEAR = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class SyntheticSpec:
    """Ranges a clip is drawn from; every range is inclusive and sampled uniformly unless noted.

    Frame sizes are pixels (drawn as even numbers for H.264), fps is whole frames per second. Speeds are fractions of
    the frame's short side per frame, rotation degrees per frame, zoom the relative scale change per frame (the scale
    multiplies by 1 ± zoom). ``plain`` renders a flat background and a flat object (plus its orientation marker),
    with no distractor, background motion or noise, so tests can measure the motion from the pixels.
    """

    min_width: int = 160
    max_width: int = 640
    min_height: int = 120
    max_height: int = 480
    min_frames: int = 40
    max_frames: int = 120
    min_fps: int = 15
    max_fps: int = 30
    min_speed: float = 0.003
    max_speed: float = 0.015
    min_rotation: float = 1.0
    max_rotation: float = 6.0
    min_zoom: float = 0.008
    max_zoom: float = 0.025
    min_size: float = 0.15  # object diameter / short side at the middle frame, log-uniform
    max_size: float = 0.45
    view_frac: float = 0.85  # the object stays in the central square of this side / short side: survives a centre crop
    max_travel: float = 0.5  # translation over a clip / that square's side: caps the speed of long clips
    max_zoom_factor: float = 3.0  # largest / smallest scale within a clip: caps the zoom of long clips
    max_noise: float = 6.0  # sensor noise standard deviation, grey levels
    distractor_prob: float = 0.5
    moving_bg_prob: float = 0.5
    max_bg_speed: float = 0.0025  # slow, in a random direction, so the background never hints at the class
    plain: bool = False

    def __post_init__(self) -> None:
        pairs = [("width", 16), ("height", 16), ("frames", 2), ("fps", 1), ("speed", 0), ("rotation", 0)]
        pairs += [("zoom", 0), ("size", 0.01)]
        for name, floor in pairs:
            lo, hi = getattr(self, f"min_{name}"), getattr(self, f"max_{name}")
            if not floor <= lo <= hi:
                raise ValueError(f"need {floor} <= min_{name} <= max_{name}, got {lo}, {hi}")
        if not 0 < self.view_frac <= 1 or self.max_zoom_factor < 1:
            raise ValueError("view_frac must be in (0, 1] and max_zoom_factor >= 1")


@dataclass(frozen=True)
class _Sprite:
    """An RGBA object image with its mip levels (each half the previous); it rotates about its mask centroid."""

    levels: list[Image.Image]
    diameter: int  # level-0 size the class scale refers to, pixels
    centre: tuple[float, float]  # mask centroid (x, y), level-0 pixels, continuous coordinates
    radius: float  # farthest object pixel from the centre, level-0 pixels


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None, min_dist: float = 110.0) -> np.ndarray:
    """A random RGB colour, float64 [3] in 0..255, at least ``min_dist`` (Euclidean) from ``avoid``."""
    c = rng.uniform(0, 255, 3)
    for _ in range(50):
        if avoid is None or np.linalg.norm(c - avoid) >= min_dist:
            break
        c = rng.uniform(0, 255, 3)
    return c


def _texture(kind: str, h: int, w: int, c1: np.ndarray, c2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uint8 [h, w, 3] image mixing colours ``c1`` and ``c2`` (float [3], 0..255) in the pattern ``kind``."""
    if kind == "flat":
        mix = np.zeros((h, w), np.float32)
    elif kind == "noise":  # smooth blobs: a small random grid upsampled, plus fine grain
        grid = rng.integers(0, 256, (rng.integers(2, 9), rng.integers(2, 9)), dtype=np.uint8)
        mix = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), np.float32) / 255
        mix += rng.normal(0, 0.05, (h, w)).astype(np.float32)
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0, np.pi)
        u, v = xx * math.cos(a) + yy * math.sin(a), yy * math.cos(a) - xx * math.sin(a)
        period = rng.uniform(4, max(6.0, min(h, w) / 3))
        if kind == "gradient":
            mix = (u - u.min()) / (np.ptp(u) + 1e-6)
        elif kind == "stripes":
            mix = (u // period) % 2
        else:
            mix = (u // period + v // period) % 2
    rgb = c1 + (c2 - c1) * np.clip(mix, 0, 1)[..., None]
    return rgb.astype(np.uint8)


def _polygon(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Vertex polar angles (radians) and radii (fraction of the canvas radius) of a polygon-like shape."""
    if kind == "rectangle":
        half = rng.uniform(0.35, 1.2)  # half the angle the long side subtends: sets the aspect
        return np.array([half, np.pi - half, np.pi + half, 2 * np.pi - half]), np.ones(4)
    if kind == "triangle":
        gaps = rng.uniform(0.5, 1.5, 3)
        return np.cumsum(gaps / gaps.sum() * 2 * np.pi), np.ones(3)
    if kind == "polygon":
        n = int(rng.integers(5, 9))
        return np.arange(n) * 2 * np.pi / n, np.ones(n)
    if kind == "star":
        n = int(rng.integers(5, 8))
        return np.arange(2 * n) * np.pi / n, np.tile([1.0, rng.uniform(0.4, 0.6)], n)
    n = int(rng.integers(6, 11))  # blob: irregular polygon
    return np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(0.55, 1.0, n)


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=128)


def _shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Antialiased uint8 [size, size] mask (255 inside) of a random shape inscribed in the canvas circle."""
    m = 2 * size  # drawn at twice the size and halved: smooth edges
    img = Image.new("L", (m, m), 0)
    draw = ImageDraw.Draw(img)
    c, r = m / 2, m / 2 - 2
    if kind == "ellipse":
        b = r * rng.uniform(0.45, 0.9)
        draw.ellipse((c - r, c - b, c + r, c + b), fill=255)
    elif kind == "glyph":
        text = Image.new("L", (220, 220), 0)
        ImageDraw.Draw(text).text(
            (110, 110), str(rng.choice(list(_GLYPHS))), 255, _font(), "mm", stroke_width=7, stroke_fill=255
        )
        text = text.crop(text.getbbox())
        k = r * math.sqrt(2) / max(text.size)  # fits the square inscribed in the circle
        text = text.resize((max(1, round(text.width * k)), max(1, round(text.height * k))), _BILINEAR)
        img.paste(text, (round(c - text.width / 2), round(c - text.height / 2)))
    else:
        angles, radii = _polygon(kind, rng)
        angles = angles + rng.uniform(0, 2 * np.pi)
        draw.polygon(
            [(c + r * q * math.cos(a), c + r * q * math.sin(a)) for a, q in zip(angles, radii, strict=True)], fill=255
        )
    return np.asarray(img.reduce(2))


def _make_sprite(diameter: int, rng: np.random.Generator, plain: bool, avoid: np.ndarray) -> _Sprite:
    """A random object ``diameter`` pixels across, coloured away from ``avoid`` (the background's mean colour)."""
    d = max(8, diameter)
    p = d + 4  # transparent border: bilinear sampling never reaches outside the canvas
    mask = np.zeros((p, p), np.uint8)
    mask[2 : 2 + d, 2 : 2 + d] = _shape_mask(str(rng.choice(_SHAPES)), d, rng)
    c1 = _colour(rng, avoid)
    kind = "flat" if plain else str(rng.choice(_TEXTURES))
    rgb = _texture(kind, p, p, c1, _colour(rng, c1, 60.0), rng)
    ys, xs = np.nonzero(mask > 127)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    dist = np.hypot(xs + 0.5 - cx, ys + 0.5 - cy)
    radius = float(dist.max()) + 1.5
    # An off-centre marker in a contrasting colour breaks every symmetry: rotations and their sense stay visible.
    far = np.flatnonzero((dist > 0.35 * radius) & (dist < 0.75 * radius))
    j = int(rng.choice(far)) if far.size else int(np.argmax(dist))
    mr = max(1.0, 0.2 * radius)
    img = Image.fromarray(rgb)
    marker = tuple(int(v) for v in _colour(rng, c1, 150.0))
    ImageDraw.Draw(img).ellipse((xs[j] - mr, ys[j] - mr, xs[j] + mr, ys[j] + mr), fill=marker)
    img.putalpha(Image.fromarray(mask))
    levels = [img]
    while levels[-1].width >= 24:
        levels.append(levels[-1].reduce(2))
    return _Sprite(levels, d, (cx, cy), radius)


def _paste(frame: Image.Image, sprite: _Sprite, x: float, y: float, scale: float, angle: float) -> None:
    """Composite ``sprite`` onto ``frame`` centred at (x, y) frame pixels (sub-pixel), ``scale`` frame pixels per
    level-0 pixel (≤ 1), rotated ``angle`` degrees counter-clockwise as seen on screen."""
    level = min(len(sprite.levels) - 1, max(0, math.floor(-math.log2(scale)))) if scale < 1 else 0
    img, f = sprite.levels[level], 2**level
    k = 1 / (scale * f)  # level pixels per frame pixel, in [1, 2): cheap and free of aliasing
    half = math.ceil(sprite.radius * scale) + 2
    x0, y0 = math.floor(x) - half, math.floor(y) - half
    ox, oy = x - x0, y - y0
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    a, b, d, e = k * cos, -k * sin, k * sin, k * cos  # frame -> sprite: screen rotation by -angle (y axis down)
    cx, cy = sprite.centre[0] / f, sprite.centre[1] / f
    coeffs = (a, b, cx - a * ox - b * oy, d, e, cy - d * ox - e * oy)
    out = img.transform((2 * half + 1, 2 * half + 1), Image.Transform.AFFINE, coeffs, _BILINEAR)
    frame.paste(out, (x0, y0), out)


def _trajectory(name: str, t_count: int, w: int, h: int, rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    """Per-frame object state float64 [T, 4]: centre x, centre y (pixels), diameter (pixels), angle (degrees ccw)."""
    short, steps = min(w, h), max(t_count - 1, 1)
    view = spec.view_frac * short
    t = np.arange(t_count) - (t_count - 1) / 2  # centred: opposite classes mirror each other in time
    diam = short * math.exp(rng.uniform(math.log(spec.min_size), math.log(spec.max_size))) * np.ones(t_count)
    angle = rng.uniform(0, 360) + 0 * t
    vel = np.zeros(2)
    if name.startswith("zooming"):
        sign = 1 if name == "zooming_in" else -1
        cap = spec.max_zoom_factor ** (1 / steps)
        z_cap = cap - 1 if sign > 0 else 1 - 1 / cap
        diam = diam * (1 + sign * rng.uniform(spec.min_zoom, max(spec.min_zoom, min(spec.max_zoom, z_cap)))) ** t
    elif name.startswith("rotating"):
        sign = -1 if name == "rotating_clockwise" else 1  # angles count counter-clockwise
        angle = angle + sign * rng.uniform(spec.min_rotation, spec.max_rotation) * t
    else:
        speed = min(rng.uniform(spec.min_speed, spec.max_speed) * short, spec.max_travel * view / steps)
        vel = speed * np.array(_DIRECTIONS[name], np.float64)
    margin = min(0.3 * diam.max(), view / 2)  # centre this far inside the square: most of the object stays in view
    centre = []
    for axis, extent in enumerate((w, h)):
        half_travel = abs(vel[axis]) * steps / 2
        lo, hi = (extent - view) / 2 + margin + half_travel, (extent + view) / 2 - margin - half_travel
        centre.append((rng.uniform(lo, hi) if hi > lo else extent / 2) + vel[axis] * t)
    return np.stack([centre[0], centre[1], diam, angle], axis=1)


def _background(
    w: int, h: int, t_count: int, rng: np.random.Generator, spec: SyntheticSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(canvas uint8 [H', W', 3] ≥ the frame, per-frame window offsets int [T, 2] (x, y), mean colour float [3])."""
    c1 = _colour(rng)
    if spec.plain:
        return _texture("flat", h, w, c1, c1, rng), np.zeros((t_count, 2), int), c1
    c2 = _colour(rng)
    vel = np.zeros(2)
    if rng.random() < spec.moving_bg_prob:
        a = rng.uniform(0, 2 * np.pi)
        vel = rng.uniform(0, spec.max_bg_speed * min(w, h)) * np.array([math.cos(a), math.sin(a)])
    travel = np.abs(vel) * (t_count - 1)
    extra = np.ceil(travel).astype(int)
    canvas = _texture(str(rng.choice(_TEXTURES)), h + extra[1], w + extra[0], c1, c2, rng)
    start = np.where(vel < 0, travel, 0.0)
    offsets = np.clip(np.rint(start + vel * np.arange(t_count)[:, None]), 0, extra).astype(int)
    return canvas, offsets, (c1 + c2) / 2


def render_clip(label: int, rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, float]:
    """One random clip of class ``CLASSES[label]``: (RGB frames uint8 [T, H, W, 3], fps in frames per second)."""
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label {label} is not in 0..{len(CLASSES) - 1}")
    w = 2 * int(rng.integers(math.ceil(spec.min_width / 2), spec.max_width // 2 + 1))
    h = 2 * int(rng.integers(math.ceil(spec.min_height / 2), spec.max_height // 2 + 1))
    t_count = int(rng.integers(spec.min_frames, spec.max_frames + 1))
    fps = float(rng.integers(spec.min_fps, spec.max_fps + 1))
    canvas, offsets, bg_mean = _background(w, h, t_count, rng, spec)
    traj = _trajectory(CLASSES[label], t_count, w, h, rng, spec)
    sprite = _make_sprite(math.ceil(traj[:, 2].max()), rng, spec.plain, bg_mean)
    distractor = None
    if not spec.plain and rng.random() < spec.distractor_prob:
        # Smaller, static but for a slight random walk: it never moves in a way that could be a class.
        distractor = _make_sprite(round(min(w, h) * rng.uniform(0.1, 0.25)), rng, False, bg_mean)
        d_pos = rng.uniform((0, 0), (w, h)) + np.cumsum(rng.normal(0, 0.3, (t_count, 2)), axis=0)
        d_angle = rng.uniform(0, 360)
    sigma = 0.0 if spec.plain else rng.uniform(0, spec.max_noise)
    # Noise is drawn once and shifted randomly per frame: fresh Gaussian noise per frame would cost ~2 ms.
    bank = np.rint(rng.normal(0, sigma, (h + 8, w + 8, 3))).astype(np.int16) if sigma >= 0.5 else None
    frames = np.empty((t_count, h, w, 3), np.uint8)
    for i in range(t_count):
        ox, oy = offsets[i]
        img = Image.fromarray(np.ascontiguousarray(canvas[oy : oy + h, ox : ox + w]))
        if distractor is not None:
            _paste(img, distractor, d_pos[i, 0], d_pos[i, 1], 1.0, d_angle)
        x, y, diam, angle = traj[i]
        _paste(img, sprite, x, y, diam / sprite.diameter, angle)
        if bank is None:
            frames[i] = np.asarray(img)
        else:
            dy, dx = rng.integers(0, 9, 2)
            noisy = np.asarray(img).astype(np.int16) + bank[dy : dy + h, dx : dx + w]
            frames[i] = np.clip(noisy, 0, 255, out=noisy)
    return frames, fps
