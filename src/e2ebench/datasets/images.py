"""ImageNet-like image data: a deterministic synthetic generator and a reader of ImageNet-val style folders.

Generated set (``write_synthetic_imagenet``)::

    OUT/ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_<count>.JPEG
    OUT/val_map.txt     "ILSVRC2012_val_00000001.JPEG 417" lines (file name, class id 0..999), as MLPerf reads it
    OUT/classes.txt     1000 lines, one class name per line ("synthetic class 0" ...)

Every image has its own random stream, ``numpy.random.default_rng([seed, index])``, so image *i* is the same
whatever ``count`` is, and the same seed gives byte-identical files (with the same OpenCV / libjpeg build).
Each side is drawn independently from 300..600 px and the JPEG quality from 75..95 (ImageNet validation
images are mostly 500x375 / 375x500 at quality ~90, ~110 KB on average).  Content is image-like rather than flat:
a sum of coloured linear gradients, a smooth low-frequency colour field, random filled ellipses, polygons,
rectangles and lines with anti-aliased edges, a striped texture, multi-scale and per-pixel noise, a camera-like Gaussian
blur and fine sensor noise.  That gives the JPEG decoder and the resize realistic work; it is not meant to
be classifiable (labels are random).

We cannot ship or download ImageNet or its class names: a real set is used by pointing ``samples`` at a folder of
ILSVRC2012 validation JPEGs with its ``val_map.txt`` (and a ``classes.txt`` for names, if you have one).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

#: File extensions (lower-cased) that make a file in a data folder a sample.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: Label files looked for in a data folder, first found wins.
LABEL_FILE_NAMES = ("val_map.txt", "val.txt")
CLASS_NAMES_FILE = "classes.txt"
NUM_CLASSES = 1000

MIN_SIDE_PX = 300
MAX_SIDE_PX = 600
MIN_JPEG_QUALITY = 75
MAX_JPEG_QUALITY = 95


class DataSetError(ValueError):
    """The data set cannot be used at all (missing, empty, malformed label or class file)."""


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One image of a data set: its file and its ground-truth class id (None when unknown)."""

    path: Path
    label: int | None


def val_file_name(index: int) -> str:
    """ImageNet validation file name of the 0-based ``index``: ``ILSVRC2012_val_00000001.JPEG`` for 0."""
    return f"ILSVRC2012_val_{index + 1:08d}.JPEG"


# -- reading -----------------------------------------------------------------------------------------------

def read_label_file(path: Path) -> list[tuple[str, int]]:
    """``(file name, class id)`` pairs of a ``val_map.txt`` style file ("name label" per line, '#' comments)."""
    pairs: list[tuple[str, int]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataSetError(f"cannot read label file {path}: {exc}") from exc
    for line_number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataSetError(f"{path}:{line_number}: expected 'filename label', got {line!r}")
        pairs.append((parts[0], int(parts[1])))
    return pairs


def find_label_file(folder: Path) -> Path | None:
    for name in LABEL_FILE_NAMES:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def index_images(data: Path) -> list[ImageEntry]:
    """The images of a data set, in a stable order, with labels when a label file exists.

    ``data`` is either a folder (every ``*.jpg`` / ``*.jpeg`` / ``*.png`` file in it, any letter case, sorted by
    name; labels from ``val_map.txt`` or ``val.txt`` beside them when present) or a label file itself (the files
    it lists, in its order, relative to its folder).  Files are not opened: a corrupt or missing image is a
    per-request error later, not an error here.
    """
    data = Path(data)
    if data.is_file():
        pairs = read_label_file(data)
        if not pairs:
            raise DataSetError(f"label file {data} lists no images")
        return [ImageEntry(data.parent / name, label) for name, label in pairs]
    if not data.is_dir():
        raise DataSetError(f"image data {data} does not exist (expected a folder of JPEG images or a val_map.txt)")
    images = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not images:
        raise DataSetError(
            f"image data folder {data} holds no *.jpg / *.jpeg / *.png files "
            f"(create a synthetic set with: e2ebench data make ic {data} --count N)"
        )
    labels: dict[str, int] = {}
    label_file = find_label_file(data)
    if label_file is not None:
        labels = dict(read_label_file(label_file))
    return [ImageEntry(path, labels.get(path.name)) for path in images]


def read_class_names(folder: Path, num_classes: int = NUM_CLASSES) -> list[str] | None:
    """Class names from ``folder/classes.txt`` (one per line, line *i* names class *i*); None if absent."""
    path = Path(folder) / CLASS_NAMES_FILE
    if not path.is_file():
        return None
    try:
        names = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataSetError(f"cannot read class names {path}: {exc}") from exc
    while names and not names[-1].strip():
        names.pop()
    if len(names) != num_classes:
        raise DataSetError(f"{path} has {len(names)} class names; expected {num_classes}, one per line")
    return [name.strip() for name in names]


def generic_class_names(num_classes: int = NUM_CLASSES) -> list[str]:
    return [f"class {i}" for i in range(num_classes)]


# -- generating --------------------------------------------------------------------------------------------

def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def synthetic_image(rng: np.random.Generator, height_px: int, width_px: int) -> np.ndarray:
    """An image-like (height, width, 3) uint8 BGR picture drawn from ``rng``; see the module docstring."""
    import cv2

    ys, xs = np.mgrid[0:height_px, 0:width_px].astype(np.float32)
    canvas = np.zeros((height_px, width_px, 3), np.float32)
    # Background: a few coloured linear gradients in random directions, summed with random weights.
    gradient_count = int(rng.integers(2, 4))
    weights = rng.dirichlet(np.ones(gradient_count))
    for weight in weights:
        angle = rng.uniform(0, 2 * math.pi)
        ramp = xs * math.cos(angle) + ys * math.sin(angle)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
        start = rng.uniform(0, 255, size=3).astype(np.float32)
        end = rng.uniform(0, 255, size=3).astype(np.float32)
        canvas += weight * (start + ramp[..., None] * (end - start))
    # A smooth low-frequency colour field (clouds / lighting).
    coarse = rng.normal(0, 30, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3)).astype(np.float32)
    canvas += cv2.resize(coarse, (width_px, height_px), interpolation=cv2.INTER_CUBIC)
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    # Objects: filled ellipses, polygons, rectangles and lines with anti-aliased edges.
    scale = min(height_px, width_px)
    for _ in range(int(rng.integers(4, 14))):
        kind = rng.integers(0, 4)
        colour = _random_colour(rng)
        centre = (int(rng.integers(0, width_px)), int(rng.integers(0, height_px)))
        if kind == 0:
            axes = (int(rng.integers(scale // 20, scale // 2)), int(rng.integers(scale // 20, scale // 2)))
            cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            vertex_count = int(rng.integers(3, 8))
            radius = rng.uniform(scale / 15, scale / 2.5)
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=vertex_count))
            radii = radius * rng.uniform(0.4, 1.0, size=vertex_count)
            points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)
            cv2.fillPoly(canvas, [points.astype(np.int32)], colour, cv2.LINE_AA)
        elif kind == 2:
            corner = (int(rng.integers(0, width_px)), int(rng.integers(0, height_px)))
            cv2.rectangle(canvas, centre, corner, colour, int(rng.choice([-1, 2, 5])), cv2.LINE_AA)
        else:
            end = (int(rng.integers(0, width_px)), int(rng.integers(0, height_px)))
            cv2.line(canvas, centre, end, colour, int(rng.integers(1, 9)), cv2.LINE_AA)
    # Texture: stripes blended into one random region, then per-pixel noise.
    pixels = canvas.astype(np.float32)
    period_px = rng.uniform(3, 14)
    angle = rng.uniform(0, math.pi)
    stripes = 25 * np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period_px))
    mask = np.zeros((height_px, width_px), np.float32)
    cv2.circle(mask, (int(rng.integers(0, width_px)), int(rng.integers(0, height_px))),
               int(rng.integers(scale // 8, scale // 2)), 1.0, -1, cv2.LINE_AA)
    pixels += (stripes * mask)[..., None]
    # Multi-scale noise (foliage, fur, grain): octaves from coarse to per-pixel, each resized to full size.
    for cell_px, amplitude in ((16, rng.uniform(6, 16)), (4, rng.uniform(6, 16)), (2, rng.uniform(4, 12))):
        octave = rng.normal(0, amplitude, size=(height_px // cell_px + 1, width_px // cell_px + 1, 3))
        pixels += cv2.resize(octave.astype(np.float32), (width_px, height_px), interpolation=cv2.INTER_LINEAR)
    pixels += rng.normal(0, rng.uniform(4, 14), size=pixels.shape).astype(np.float32)
    # Camera-like softening, then fine sensor noise.
    pixels = cv2.GaussianBlur(pixels, (0, 0), sigmaX=float(rng.uniform(0.4, 1.0)))
    pixels += rng.normal(0, rng.uniform(1.5, 4), size=pixels.shape).astype(np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class SyntheticImageSpec:
    """What image ``index`` of a synthetic set looks like: size in pixels, JPEG quality (1..100), class id."""

    index: int
    height_px: int
    width_px: int
    jpeg_quality: int
    label: int


def synthetic_jpeg(seed: int, index: int) -> tuple[SyntheticImageSpec, bytes]:
    """Image ``index`` of the set with ``seed``: its spec and its JPEG bytes (deterministic)."""
    import cv2

    rng = np.random.default_rng([seed, index])
    spec = SyntheticImageSpec(
        index=index,
        height_px=int(rng.integers(MIN_SIDE_PX, MAX_SIDE_PX + 1)),
        width_px=int(rng.integers(MIN_SIDE_PX, MAX_SIDE_PX + 1)),
        jpeg_quality=int(rng.integers(MIN_JPEG_QUALITY, MAX_JPEG_QUALITY + 1)),
        label=int(rng.integers(0, NUM_CLASSES)),
    )
    picture = synthetic_image(rng, spec.height_px, spec.width_px)
    ok, encoded = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR image
        raise DataSetError(f"OpenCV could not encode synthetic image {index}")
    return spec, encoded.tobytes()


def write_synthetic_imagenet(out: Path, count: int, seed: int = 0) -> Path:
    """Write ``count`` synthetic ImageNet-val style JPEGs, ``val_map.txt`` and ``classes.txt`` into ``out``.

    Refuses a folder that already holds other images (they would silently join the set).  Returns ``out``.
    """
    if count < 1:
        raise DataSetError(f"count must be at least 1, got {count}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [val_file_name(i) for i in range(count)]
    wanted = set(names)
    strangers = sorted(p.name for p in out.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.name not in wanted)
    if strangers:
        shown = ", ".join(strangers[:3]) + (f" and {len(strangers) - 3} more" if len(strangers) > 3 else "")
        raise DataSetError(f"{out} already holds other images ({shown}); use an empty folder")
    label_lines = []
    for index, name in enumerate(names):
        spec, jpeg = synthetic_jpeg(seed, index)
        (out / name).write_bytes(jpeg)
        label_lines.append(f"{name} {spec.label}\n")
    (out / "val_map.txt").write_text("".join(label_lines), encoding="utf-8")
    (out / CLASS_NAMES_FILE).write_text(
        "".join(f"synthetic class {i}\n" for i in range(NUM_CLASSES)), encoding="utf-8"
    )
    return out
