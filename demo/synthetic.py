"""Encode frames into real video files with PyAV: for tests, benchmarks and the demo dataset."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from sact.common.files import atomic_path, write_text_atomic

CODECS = {".mp4": "libx264", ".webm": "libvpx-vp9", ".mkv": "libx264", ".avi": "mpeg4"}
CONTAINERS = {".mp4": "mp4", ".webm": "webm", ".mkv": "matroska", ".avi": "avi"}


def encode_video(
    path: Path, frames: np.ndarray, *, fps: int = 12, options: Mapping[str, object] | None = None
) -> Path:
    """Write ``frames`` (T, H, W, 3) uint8 RGB to ``path``; the codec follows the suffix.
    ``options`` are the encoder's (FFmpeg's names: ``crf``, ``preset``, ...); by default VP9
    encodes at realtime speed and the others at their codec's defaults.

    H and W must be even (yuv420p). The file is written next to its final name and renamed, so a
    killed run never leaves a half-written video behind. The same frames give the same file.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    codec = CODECS.get(path.suffix)
    if codec is None:
        raise ValueError(f"no codec for {path.suffix!r}; use one of {', '.join(CODECS)}")
    _, height, width, _ = frames.shape
    with (
        atomic_path(path) as partial,
        av.open(str(partial), mode="w", format=CONTAINERS[path.suffix]) as container,
    ):
        stream = container.add_stream(codec, rate=fps)
        if not isinstance(stream, av.VideoStream):
            raise ValueError(f"{codec} is not a video codec")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # One encoder thread: x264's threaded encoder was seen to give different frames for the
        # same input on a busy machine, and tests compare runs bit for bit.
        stream.codec_context.thread_count = 1
        if options is not None:
            stream.options = dict(options)
        elif codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ---- synthetic few-shot action datasets with known answers ----
#
# Every video shows one object of random size and position over a random textured background with
# a static distractor shape. What defines its class depends on the task (TASKS below):
#
#   motion      the way the object moves; its shape and colour are random (the demo's task).
#               Support and query videos of a class share nothing but the motion, which is the
#               spatial misalignment SA-CT is built for.
#   appearance  the object's identity (shape and colour); it moves in a random one of the motions.
#   order       the order in which a static object of random shape takes four colours: every
#               class shows the same colours for as long, only their order differs.
#   clutter     the object's identity, as in appearance, among three more moving objects whose
#               identities are drawn from all the task's classes.
#
# Coordinates are fractions of the frame side; y grows downwards.

SHAPES = ("circle", "square", "diamond", "triangle", "cross", "ring")
# Shapes whose rotation changes the picture; rotating classes draw only these.
ORIENTED_SHAPES = ("square", "triangle", "cross")

OBJECT_RADIUS = 0.11  # of the frame side
DISTRACTOR_RADIUS = 0.07
MARGIN = 0.14  # the object's centre stays this far from the frame's border
SLIDE = 0.45  # distance travelled by sliding classes
TURN = np.pi / 2  # rotation over a whole video


@dataclass(frozen=True)
class Trajectory:
    """Per-frame pose of the moving object; offsets are relative to a random anchor."""

    dx: np.ndarray  # (F,)
    dy: np.ndarray  # (F,)
    angle: np.ndarray  # (F,) radians, counter-clockwise on screen
    scale: np.ndarray  # (F,) multiplies the object's radius
    visible: np.ndarray  # (F,) bool


def _triangle_wave(phase: np.ndarray) -> np.ndarray:
    """1 at whole cycles, -1 at half cycles, linear in between."""
    return 1.0 - 4.0 * np.abs(phase - np.floor(phase + 0.5))


def _pose(
    t: np.ndarray,
    *,
    dx: np.ndarray | float = 0.0,
    dy: np.ndarray | float = 0.0,
    angle: np.ndarray | float = 0.0,
    scale: np.ndarray | float = 1.0,
    visible: np.ndarray | bool = True,
) -> Trajectory:
    def full(value, dtype=np.float64):
        return np.broadcast_to(np.asarray(value, dtype=dtype), t.shape).copy()

    return Trajectory(full(dx), full(dy), full(angle), full(scale), full(visible, dtype=bool))


def _slide(degrees: float) -> MotionFn:
    def motion(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
        distance = SLIDE * rng.uniform(0.8, 1.1) * t
        direction = np.deg2rad(degrees)
        return _pose(t, dx=distance * np.cos(direction), dy=-distance * np.sin(direction))

    return motion


def _rotate(sign: float) -> MotionFn:
    def motion(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
        return _pose(t, angle=sign * TURN * rng.uniform(0.8, 1.2) * t)

    return motion


def _resize(start: float, end: float) -> MotionFn:
    def motion(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
        return _pose(t, scale=start + (end - start) * t)

    return motion


def _pulse(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
    return _pose(t, scale=1.0 + 0.45 * _triangle_wave(2.0 * t))


def _bounce(axis: str) -> MotionFn:
    def motion(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
        offset = 0.2 * rng.uniform(0.85, 1.15) * _triangle_wave(2.0 * t)
        return _pose(t, **{axis: offset})

    return motion


def _zigzag(axis: str) -> MotionFn:
    across = {"dx": "dy", "dy": "dx"}[axis]

    def motion(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
        along = SLIDE * rng.uniform(0.8, 1.1) * t
        wiggle = 0.12 * _triangle_wave(2.0 * t + 0.25)
        return _pose(t, **{axis: along, across: wiggle})

    return motion


def _circle(sign: float) -> MotionFn:
    def motion(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
        radius = 0.2 * rng.uniform(0.85, 1.15)
        phase = rng.uniform(0.0, 2.0 * np.pi) + sign * 2.0 * np.pi * t
        return _pose(t, dx=radius * np.cos(phase), dy=-radius * np.sin(phase))

    return motion


def _appear(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
    return _pose(t, visible=t >= rng.uniform(0.35, 0.6))


def _disappear(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
    return _pose(t, visible=t < rng.uniform(0.4, 0.65))


def _blink(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
    return _pose(t, visible=np.floor(4.0 * t) % 2 == 0)


def _fall(sign: float) -> MotionFn:
    def motion(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
        return _pose(t, dy=sign * 0.5 * rng.uniform(0.85, 1.1) * t**2)

    return motion


def _jitter(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
    return _pose(t, dx=rng.normal(0.0, 0.04, t.shape), dy=rng.normal(0.0, 0.04, t.shape))


def _static(t: np.ndarray, rng: np.random.Generator) -> Trajectory:
    return _pose(t)


MotionFn = Callable[[np.ndarray, np.random.Generator], Trajectory]


@dataclass(frozen=True)
class Identity:
    """What an object looks like: a shape and a colour (RGB, 0-255)."""

    shape: str
    colour: tuple[float, float, float]


@dataclass(frozen=True)
class ActionClass:
    """One class of a task: what its videos share, and which split part it belongs to."""

    name: str
    part: str  # "train", "val" or "test"
    motion: MotionFn | None = None  # None: each video moves in a random one of RANDOM_MOTIONS
    oriented: bool = False  # draw only shapes whose rotation shows
    identity: Identity | None = None  # None: each video draws a random shape and colour
    colour_order: tuple[str, ...] = ()  # PHASE_COLOURS the object takes in turn, if any
    clutter: int = 0  # further moving objects, their identities drawn from CLUTTER_IDENTITIES


# Classes are grouped into disjoint parts so that every test motion has relatives among the training
# ones (another direction, the opposite rotation, the reverse size change) but never itself.
ACTION_CLASSES = (
    ActionClass("slide-right", "train", _slide(0)),
    ActionClass("slide-up", "train", _slide(90)),
    ActionClass("slide-down-right", "train", _slide(-45)),
    ActionClass("slide-up-left", "train", _slide(135)),
    ActionClass("rotate-cw", "train", _rotate(-1.0), oriented=True),
    ActionClass("grow", "train", _resize(0.55, 1.5)),
    ActionClass("pulse", "train", _pulse),
    ActionClass("bounce-horizontal", "train", _bounce("dx")),
    ActionClass("zigzag-right", "train", _zigzag("dx")),
    ActionClass("circle-cw", "train", _circle(-1.0)),
    ActionClass("appear", "train", _appear),
    ActionClass("blink", "train", _blink),
    ActionClass("fall", "train", _fall(1.0)),
    ActionClass("static", "train", _static),
    ActionClass("slide-down", "val", _slide(-90)),
    ActionClass("slide-up-right", "val", _slide(45)),
    ActionClass("bounce-vertical", "val", _bounce("dy")),
    ActionClass("disappear", "val", _disappear),
    ActionClass("rise", "val", _fall(-1.0)),
    ActionClass("slide-left", "test", _slide(180)),
    ActionClass("slide-down-left", "test", _slide(-135)),
    ActionClass("rotate-ccw", "test", _rotate(1.0), oriented=True),
    ActionClass("shrink", "test", _resize(1.5, 0.55)),
    ActionClass("zigzag-down", "test", _zigzag("dy")),
    ActionClass("circle-ccw", "test", _circle(1.0)),
    ActionClass("jitter", "test", _jitter),
)
# the motions the appearance and clutter tasks draw from, so that motion says nothing of the class
RANDOM_MOTIONS: tuple[MotionFn, ...] = tuple(
    action.motion for action in ACTION_CLASSES if action.motion is not None and not action.oriented
)

# Saturated colours far apart in hue, bright against the dim backgrounds: the order task's
# phases, and with magenta the identity tasks' colours.
PHASE_COLOURS = {
    "red": (230.0, 40.0, 40.0),
    "green": (40.0, 210.0, 60.0),
    "blue": (60.0, 100.0, 245.0),
    "yellow": (235.0, 220.0, 40.0),
}
IDENTITY_COLOURS = {**PHASE_COLOURS, "magenta": (220.0, 50.0, 220.0)}
COLOUR_JITTER = 0.1  # each video scales its identity colour by 1 ± this
IDENTITIES = {
    f"{colour}-{shape}": Identity(shape, rgb)
    for shape in SHAPES
    for colour, rgb in IDENTITY_COLOURS.items()
}
CLUTTER_OBJECTS = 3
ORDER_PARTS = {"train": 14, "val": 5, "test": 5}
ORDER_PART_SEED = 0


def _identity_part(identity: Identity) -> str:
    """Shape i and colour j are val when (i - j) mod 6 = 4, test when it is 5, else train: each
    held-out identity is a new pair of a shape and a colour that training shows in other pairs
    (30 identities: 20 train, 5 val, 5 test)."""
    diagonal = SHAPES.index(identity.shape) - list(IDENTITY_COLOURS.values()).index(identity.colour)
    return {4: "val", 5: "test"}.get(diagonal % len(SHAPES), "train")


def _identity_classes(*, clutter: int) -> tuple[ActionClass, ...]:
    return tuple(
        ActionClass(name, _identity_part(identity), identity=identity, clutter=clutter)
        for name, identity in IDENTITIES.items()
    )


def _order_classes() -> tuple[ActionClass, ...]:
    orders = {
        "order-" + "".join(colour[0] for colour in order): order
        for order in itertools.permutations(PHASE_COLOURS)
    }
    # which orders are train, val and test: a fixed seeded permutation (every order shows the
    # same four colours, so nothing is unseen but the order itself)
    names = list(orders)
    shuffled = [names[i] for i in np.random.default_rng(ORDER_PART_SEED).permutation(len(names))]
    bounds = np.cumsum([0, *ORDER_PARTS.values()])
    part = {
        name: part
        for part, start, end in zip(ORDER_PARTS, bounds[:-1], bounds[1:], strict=True)
        for name in shuffled[start:end]
    }
    return tuple(
        ActionClass(name, part[name], motion=_static, colour_order=order)
        for name, order in orders.items()
    )


TASKS: dict[str, tuple[ActionClass, ...]] = {
    "appearance": _identity_classes(clutter=0),
    "order": _order_classes(),
    "motion": ACTION_CLASSES,
    "clutter": _identity_classes(clutter=CLUTTER_OBJECTS),
}


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A distance in the object's own frame that is 1 on the shape's outline, < 1 inside."""
    if shape == "circle":
        return np.hypot(u, v)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) * 1.15
    if shape == "diamond":
        return np.abs(u) + np.abs(v)
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.7) / 0.3
    if shape == "cross":
        bar = 0.38
        return np.minimum(
            np.maximum(np.abs(u), np.abs(v) / bar), np.maximum(np.abs(u) / bar, np.abs(v))
        )
    if shape == "triangle":  # equilateral, circumradius 1, one vertex pointing up at angle 0
        normals = np.deg2rad([90.0, 210.0, 330.0]) + np.pi
        sides = [np.cos(a) * u + np.sin(a) * v for a in normals]
        return np.maximum.reduce(sides) / 0.5
    raise ValueError(f"unknown shape {shape!r}")


def _paint(
    canvas: np.ndarray,
    *,
    shape: str,
    colour: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    angle: float,
) -> None:
    """Draw one anti-aliased shape onto ``canvas`` (H, W, 3) float, in place."""
    size = canvas.shape[0]
    coords = (np.arange(size) + 0.5) / size  # pixel centres, as fractions of the side
    x = (coords[None, :] - centre[0]) / radius  # (1, W)
    y = (centre[1] - coords[:, None]) / radius  # (H, 1), up is positive in the object frame
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * x + sin * y, -sin * x + cos * y  # (H, W) each: rotate by -angle
    distance = _shape_distance(shape, u, v)
    coverage = np.clip((1.0 - distance) * radius * size + 0.5, 0.0, 1.0)[..., None]  # (H, W, 1)
    canvas *= 1.0 - coverage
    canvas += coverage * colour


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A dim, smoothly shaded random background: (H, W, 3) float."""
    base = rng.uniform(10.0, 90.0, size=3)
    coords = np.linspace(0.0, 1.0, size)
    gx, gy = rng.uniform(-25.0, 25.0, size=(2, 3))
    shade = coords[None, :, None] * gx + coords[:, None, None] * gy  # (H, W, 3)
    return np.clip(base + shade, 0.0, 255.0)


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour that stands out against the dim backgrounds."""
    colour = rng.uniform(0.0, 120.0, size=3)
    colour[rng.integers(3)] = rng.uniform(200.0, 255.0)
    colour[rng.integers(3)] = max(colour.max(), rng.uniform(150.0, 255.0))
    return colour


@dataclass(frozen=True)
class Sprite:
    """One object over all frames of a video."""

    shape: str
    colours: np.ndarray  # (F, 3)
    centres: np.ndarray  # (F, 2)
    radii: np.ndarray  # (F,)
    angles: np.ndarray  # (F,)
    visible: np.ndarray  # (F,) bool


def _sprite(
    t: np.ndarray,
    rng: np.random.Generator,
    *,
    motion: MotionFn | None,
    identity: Identity | None,
    oriented: bool = False,
    colour_order: tuple[str, ...] = (),
) -> Sprite:
    """An object moving by `motion` (a random one if None) from a random anchor that keeps its
    whole path inside the frame; looking like `identity` (random if None)."""
    if motion is None:
        motion = RANDOM_MOTIONS[rng.integers(len(RANDOM_MOTIONS))]
    pose = motion(t, rng)
    if identity is None:
        shape = str(rng.choice(ORIENTED_SHAPES if oriented else SHAPES))
        colour = _bright_colour(rng)
    else:
        shape = identity.shape
        jitter = rng.uniform(1 - COLOUR_JITTER, 1 + COLOUR_JITTER)
        colour = np.clip(np.array(identity.colour) * jitter, 0.0, 255.0)
    radius = OBJECT_RADIUS * rng.uniform(0.85, 1.15)
    start_angle = rng.uniform(0.0, 2.0 * np.pi)
    low_x, high_x = MARGIN - pose.dx.min(), 1.0 - MARGIN - pose.dx.max()
    low_y, high_y = MARGIN - pose.dy.min(), 1.0 - MARGIN - pose.dy.max()
    anchor = (rng.uniform(low_x, max(low_x, high_x)), rng.uniform(low_y, max(low_y, high_y)))
    colours = np.broadcast_to(colour, (len(t), 3)).copy()  # (F, 3)
    if colour_order:  # equal phases: phase j covers t in [j/n, (j+1)/n)
        phase = np.minimum((t * len(colour_order)).astype(int), len(colour_order) - 1)
        colours = np.array([PHASE_COLOURS[colour_order[j]] for j in phase])  # (F, 3)
    return Sprite(
        shape=shape,
        colours=colours,
        centres=np.stack([anchor[0] + pose.dx, anchor[1] + pose.dy], axis=1),  # (F, 2)
        radii=radius * pose.scale,
        angles=start_angle + pose.angle,
        visible=pose.visible,
    )


def render_action(
    action: ActionClass, *, frames: int, size: int, distractors: int, rng: np.random.Generator
) -> np.ndarray:
    """One video of ``action`` as (F, size, size, 3) uint8 RGB; every draw comes from ``rng``."""
    t = np.linspace(0.0, 1.0, frames)
    sprites = [
        _sprite(
            t,
            rng,
            motion=action.motion,
            identity=action.identity,
            oriented=action.oriented,
            colour_order=action.colour_order,
        )
    ]
    others = [name for name, identity in IDENTITIES.items() if identity != action.identity]
    for _ in range(action.clutter):
        identity = IDENTITIES[others[rng.integers(len(others))]]
        sprites.append(_sprite(t, rng, motion=None, identity=identity))

    background = _background(size, rng)
    for _ in range(distractors):
        _paint(
            background,
            shape=str(rng.choice(SHAPES)),
            colour=_bright_colour(rng) * 0.6,
            centre=(rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)),
            radius=DISTRACTOR_RADIUS * rng.uniform(0.8, 1.2),
            angle=rng.uniform(0.0, 2.0 * np.pi),
        )
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    noise = rng.normal(0.0, 3.0, size=video.shape)
    for index in range(frames):
        canvas = background.copy()
        for sprite in sprites:
            if sprite.visible[index]:
                _paint(
                    canvas,
                    shape=sprite.shape,
                    colour=sprite.colours[index],
                    centre=tuple(sprite.centres[index]),
                    radius=sprite.radii[index],
                    angle=sprite.angles[index],
                )
        video[index] = np.clip(canvas + noise[index], 0.0, 255.0).astype(np.uint8)
    return video


@dataclass(frozen=True)
class SyntheticDatasetConfig:
    """A synthetic few-shot action dataset; the same config always gives the same pixels."""

    root: Path
    videos_per_class: int = 20
    frames: int = 16
    size: int = 112
    distractors: int = 1
    suffix: str = ".mp4"
    seed: int = 0
    task: str = "motion"  # one of TASKS: what defines a class
    classes: tuple[str, ...] | None = None  # None: every class of the task


@dataclass(frozen=True)
class SyntheticDataset:
    videos: Path  # <videos>/<class>/<video id><suffix>
    splits: Path  # holds trainlist.txt, vallist.txt, testlist.txt
    parts: dict[str, list[str]]  # part -> "class/video_id" lines


def task_classes(config: SyntheticDatasetConfig) -> tuple[ActionClass, ...]:
    """The classes of the config's task, all of them or those `classes` names."""
    if config.task not in TASKS:
        raise ValueError(f"unknown synthetic task {config.task!r}; known: {', '.join(TASKS)}")
    by_name = {action.name: action for action in TASKS[config.task]}
    if config.classes is None:
        return TASKS[config.task]
    unknown = [name for name in config.classes if name not in by_name]
    if unknown:
        raise ValueError(f"unknown synthetic classes {unknown}; known: {', '.join(by_name)}")
    return tuple(by_name[name] for name in config.classes)


def synthetic_video_ids(config: SyntheticDatasetConfig) -> list[tuple[ActionClass, str]]:
    return [
        (action, f"{action.name}-{index:03d}")
        for action in task_classes(config)
        for index in range(config.videos_per_class)
    ]


def video_seed(config: SyntheticDatasetConfig, action: ActionClass, index: int) -> list[int]:
    """The seed of one video's generator: (seed, class, index), and the task for all but motion,
    so that the motion task keeps the videos it had before there were other tasks."""
    tasks = list(TASKS)
    class_number = [a.name for a in TASKS[config.task]].index(action.name)
    task_number = [] if config.task == "motion" else [tasks.index(config.task)]
    return [config.seed, class_number, index, *task_number]


def make_synthetic_dataset(
    config: SyntheticDatasetConfig, *, on_video: Callable[[str], None] | None = None
) -> SyntheticDataset:
    """Write the dataset's videos and split lists under ``config.root``.

    Each video draws from its own generator, seeded by (seed, class, index), so a run that was
    killed and started again skips the videos already written and produces the same dataset.
    """
    if config.videos_per_class < 1 or config.frames < 2 or config.size < 16 or config.size % 2:
        raise ValueError("need videos_per_class >= 1, frames >= 2 and an even size >= 16")
    videos = config.root / "videos"
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for action, video_id in synthetic_video_ids(config):
        path = videos / action.name / f"{video_id}{config.suffix}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            video_index = int(video_id.rsplit("-", 1)[1])
            rng = np.random.default_rng(video_seed(config, action, video_index))
            frames = render_action(
                action,
                frames=config.frames,
                size=config.size,
                distractors=config.distractors,
                rng=rng,
            )
            encode_video(path, frames)
        parts[action.part].append(f"{action.name}/{video_id}")
        if on_video is not None:
            on_video(video_id)
    for part, lines in parts.items():
        write_text_atomic(config.root / f"{part}list.txt", "".join(f"{line}\n" for line in lines))
    return SyntheticDataset(videos=videos, splits=config.root, parts=parts)
