"""Image classification (IC): MLPerf ResNet50-v1.5 on JPEG images.

One request is one image file.  Its phases:

* **io** (``App.read``, the default): read the whole file.
* **pre-processing** (``preprocess``): decode with OpenCV (``cv2.imdecode``, BGR -> RGB), resize so that the
  shorter side is 256 px keeping the aspect ratio (``cv2.INTER_AREA``, as MLPerf's reference
  ``pre_process_vgg`` does), centre-crop 224x224, float32 in [0, 1], normalise with the ImageNet mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), HWC -> CHW.  ``collate`` stacks requests into a
  (B, 3, 224, 224) float32 tensor.
  MLPerf's ONNX/TF ResNet50 subtracts per-channel means on the 0..255 scale without dividing by the std;
  we use the torchvision convention because the weights we load are in torchvision's format.  The cost of
  the two is the same.
* **inference** (``infer``): the network's forward pass on ``self.device`` (host -> device copy of the
  batch and the device -> host copy of the logits included), under ``torch.inference_mode`` or in an
  onnxruntime session.
* **post-processing** (``postprocess``): softmax, top-5 class ids and probabilities, class names.

Backends: ``torch`` (eager PyTorch) and ``onnxruntime`` (the same network and weights exported once to
ONNX with the TorchScript exporter, cached under ``$E2EBENCH_CACHE/onnx`` or ``~/.cache/e2ebench/onnx``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from e2ebench.apps.base import App, AppError, AppOption, SampleError, SampleRef
from e2ebench.datasets import images as image_data

RESIZE_SHORTER_SIDE_PX = 256      # MLPerf: int(100 * 224 / 87.5)
CROP_SIDE_PX = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: A decoded image whose long side would exceed this after the resize is refused (memory guard).
MAX_RESIZED_LONG_SIDE_PX = 16 * RESIZE_SHORTER_SIDE_PX
TOP_K = 5
ONNX_OPSET = 17
ONNX_INPUT_NAME = "images"
ONNX_OUTPUT_NAME = "logits"
#: Bump when the export changes in a way the cache key would not see.
ONNX_EXPORT_FORMAT = 1

# x_normalised = (x_uint8 / 255 - mean) / std = x_uint8 * PIXEL_SCALE - PIXEL_SHIFT, per RGB channel.
_PIXEL_SCALE = (1.0 / (255.0 * np.asarray(IMAGENET_STD, np.float64))).astype(np.float32)
_PIXEL_SHIFT = (np.asarray(IMAGENET_MEAN, np.float64) / np.asarray(IMAGENET_STD, np.float64)).astype(np.float32)


def e2ebench_cache_dir() -> Path:
    """Where e2ebench caches derived artefacts: ``$E2EBENCH_CACHE`` if set, else ``~/.cache/e2ebench``."""
    configured = os.environ.get("E2EBENCH_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "e2ebench"


# -- pre-processing as plain functions (used by the app, testable alone) -----------------------------------

# In entropy-coded data 0xFF followed by 0x00 (stuffing), a restart marker or another 0xFF (fill) is data.
_JPEG_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_is_complete(raw: bytes) -> bool:
    """False for a JPEG cut short: walking its markers reaches the end of the data before end-of-image (EOI).

    Segments are skipped by their length (so an EXIF thumbnail's own EOI does not count) and entropy-coded
    data is scanned for the next real marker (0xFF followed by 0x00 or a restart marker is data).  Bytes after
    the EOI (phone trailers, motion-photo videos) are not looked at.  Non-JPEG input returns True.
    """
    size = len(raw)
    if not raw.startswith(b"\xff\xd8"):
        return True
    position = 2
    while True:
        if position + 2 > size:
            return False
        if raw[position] != 0xFF:
            return True  # malformed rather than truncated: the decoder decides
        marker = raw[position + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        if position + 4 > size:
            return False
        position += 2 + int.from_bytes(raw[position + 2 : position + 4], "big")
        if marker != 0xDA:
            continue
        next_marker = _JPEG_MARKER_IN_SCAN.search(raw, position)  # skip the entropy-coded data
        if next_marker is None:
            return False
        position = next_marker.start()


@functools.cache
def _decoder_accepts_truncated_jpeg() -> bool:
    """OpenCV 5 refuses a truncated JPEG itself; OpenCV 4 decodes it and fills the missing rows with grey."""
    import cv2

    return int(cv2.__version__.split(".")[0]) < 5


def decode_image(raw: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes to an (H, W, 3) uint8 **BGR** array; ValueError if they are not a whole image."""
    import cv2

    if not raw:
        raise ValueError("empty file")
    if _decoder_accepts_truncated_jpeg() and not jpeg_is_complete(raw):
        raise ValueError("truncated JPEG (the data ends before the end-of-image marker)")
    try:
        picture = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ValueError(f"OpenCV cannot decode it: {exc}") from exc
    if picture is None or picture.ndim != 3 or picture.shape[2] != 3 or min(picture.shape[:2]) < 1:
        raise ValueError(f"not a decodable image ({len(raw)} bytes; starts with {raw[:8].hex()})")
    return picture


def resize_shorter_side(picture: np.ndarray, shorter_side_px: int = RESIZE_SHORTER_SIDE_PX) -> np.ndarray:
    """Resize keeping the aspect ratio so that the shorter side is ``shorter_side_px`` (MLPerf's rounding)."""
    import cv2

    height, width = picture.shape[:2]
    if height > width:
        new_width, new_height = shorter_side_px, int(shorter_side_px * height / width)
    else:
        new_width, new_height = int(shorter_side_px * width / height), shorter_side_px
    if max(new_width, new_height) > MAX_RESIZED_LONG_SIDE_PX:
        raise ValueError(f"aspect ratio {width}x{height} too extreme to resize (long side > {MAX_RESIZED_LONG_SIDE_PX} px)")
    return cv2.resize(picture, (new_width, new_height), interpolation=cv2.INTER_AREA)


def center_crop(picture: np.ndarray, side_px: int = CROP_SIDE_PX) -> np.ndarray:
    """The centred ``side_px`` x ``side_px`` window (MLPerf's ``center_crop`` arithmetic)."""
    height, width = picture.shape[:2]
    left = int((width - side_px) / 2)
    top = int((height - side_px) / 2)
    return picture[top : top + side_px, left : left + side_px]


def normalize_to_chw(picture_bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR (H, W, 3) -> float32 RGB (3, H, W): ``(x / 255 - mean) / std`` per channel, contiguous."""
    rgb = picture_bgr[:, :, ::-1]
    normalised = rgb.astype(np.float32) * _PIXEL_SCALE - _PIXEL_SHIFT
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def preprocess_image(raw: bytes) -> np.ndarray:
    """Encoded image bytes -> the (3, 224, 224) float32 network input.  ValueError for a bad image."""
    return normalize_to_chw(center_crop(resize_shorter_side(decode_image(raw))))


# -- what flows between the phases -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PreprocessedImage:
    """One request after pre-processing: its reference and its (3, 224, 224) float32 normalised pixels."""

    ref: SampleRef
    pixels: np.ndarray


@dataclasses.dataclass(frozen=True)
class ImageBatch:
    """Collated requests: their references (in order) and a (B, 3, 224, 224) float32 CPU tensor."""

    refs: list[SampleRef]
    pixels: Any  # torch.Tensor


class ImageClassification(App):
    name = "ic"
    title = "Image classification (ResNet50-v1.5)"
    input_kind = "image"
    model_name = "ResNet50-v1.5"
    backends = ("torch", "onnxruntime")
    default_requests = 64
    default_batch_size = 8
    options = (
        AppOption("seed", 0, "seed of the random weights (torch.manual_seed) when no weights file is given"),
    )

    def __init__(self, variant: str = "full", backend: str = "torch", options: dict | None = None):
        super().__init__(variant=variant, backend=backend, options=options)
        try:
            self.seed = int(self.opts["seed"])
        except (TypeError, ValueError) as exc:
            raise AppError(f"ic: option seed must be an integer, got {self.opts['seed']!r}") from exc
        self.model = None
        self.session = None
        self.weights: Path | None = None
        self.onnx_path: Path | None = None
        self._parameter_count = 0
        self._temporary_onnx_dir: tempfile.TemporaryDirectory | None = None
        self.class_names: list[str] = image_data.generic_class_names()
        self.class_names_source = "generic"

    # -- life cycle ---------------------------------------------------------------------------------------
    def load(self, device: str, threads: int | None, weights: Path | None) -> None:
        import cv2
        import torch

        from e2ebench.models import resnet

        self.device = device
        self.threads = threads
        if threads is not None:         # None: OpenCV keeps its own pool size
            cv2.setNumThreads(threads)
        model = resnet.build_resnet50(self.variant, seed=self.seed)
        if weights is not None:
            try:
                resnet.load_weights(model, Path(weights))
            except resnet.WeightsError as exc:
                raise AppError(f"ic: {exc}") from exc
            self.weights = Path(weights)
        self._parameter_count = sum(p.numel() for p in model.parameters())
        if self.backend == "torch":
            try:
                self.model = model.to(torch.device(device))
            except (RuntimeError, AssertionError) as exc:
                raise AppError(f"ic: cannot move the model to device {device!r}: {exc}") from exc
        else:
            self.onnx_path = self._export_onnx(model)
            self.session = self._onnx_session(self.onnx_path, device, threads)

    def _onnx_cache_key(self) -> str:
        """Names the exported file: variant, weights file identity (path, size, mtime), seed, torch version."""
        import torch

        weights_identity = None
        if self.weights is not None:
            stat = self.weights.stat()
            weights_identity = [str(self.weights.resolve()), stat.st_size, stat.st_mtime_ns]
        facts = {
            "model": "resnet50-v1.5",
            "variant": self.variant,
            "weights": weights_identity,
            "seed": self.seed,
            "torch": torch.__version__,
            "opset": ONNX_OPSET,
            "format": ONNX_EXPORT_FORMAT,
        }
        digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
        return f"ic-resnet50-v1.5-{self.variant}-{digest}"

    def _export_onnx(self, model) -> Path:
        """Export ``model`` once (dynamic batch axis) and return the cached file; a temp dir if the cache is read-only."""
        key = self._onnx_cache_key()
        cache_dir = e2ebench_cache_dir() / "onnx"
        target = cache_dir / f"{key}.onnx"
        if target.is_file():
            return target
        partial = cache_dir / f"{key}.{os.getpid()}.partial"
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            self._write_onnx(model, partial)
            os.replace(partial, target)  # atomic: concurrent workers never see half a file
            return target
        except OSError:
            # Read-only home (e.g. inside a VM with the host root shared read-only): export privately.
            self._temporary_onnx_dir = tempfile.TemporaryDirectory(prefix="e2ebench-onnx-")
            target = Path(self._temporary_onnx_dir.name) / f"{key}.onnx"
            self._write_onnx(model, target)
            return target
        finally:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)

    @staticmethod
    def _write_onnx(model, path: Path) -> None:
        import torch

        example = torch.zeros(1, 3, CROP_SIDE_PX, CROP_SIDE_PX)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of dynamo
            torch.onnx.export(
                model.cpu().eval(),
                (example,),
                str(path),
                input_names=[ONNX_INPUT_NAME],
                output_names=[ONNX_OUTPUT_NAME],
                dynamic_axes={ONNX_INPUT_NAME: {0: "batch"}, ONNX_OUTPUT_NAME: {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )

    @staticmethod
    def _onnx_session(path: Path, device: str, threads: int | None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:         # None: 0, ONNX Runtime sizes its pools itself
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise AppError(
                    "ic: device cuda asked for, but this onnxruntime has no CUDAExecutionProvider "
                    f"(available: {', '.join(onnxruntime.get_available_providers())}); install onnxruntime-gpu"
                )
            device_id = int(device.partition(":")[2] or 0)
            providers: list = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
            preload = getattr(onnxruntime, "preload_dlls", None)     # ORT >= 1.21: CUDA/cuDNN from the nvidia-* wheels
            if preload is not None:
                with contextlib.suppress(Exception):
                    preload()
        else:
            providers = ["CPUExecutionProvider"]
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
        # ONNX Runtime falls back to the CPU, with only a logged warning, when the CUDA provider cannot load (its CUDA
        # or cuDNN libraries missing or of another major version): a GPU run must not quietly measure the CPU.
        if device.startswith("cuda") and session.get_providers()[0] != "CUDAExecutionProvider":
            raise AppError(
                "ic: device cuda asked for, but ONNX Runtime's CUDAExecutionProvider did not load (it runs on "
                f"{', '.join(session.get_providers())}): the CUDA/cuDNN libraries onnxruntime-gpu "
                f"{onnxruntime.__version__} was built for are not there; see ONNX Runtime's CUDA requirements"
            )
        return session

    def samples(self, data: Path) -> Sequence[SampleRef]:
        """Images of a folder (or listed in a val_map.txt); class names from ``classes.txt`` beside them if present."""
        data = Path(data)
        folder = data if data.is_dir() else data.parent
        try:
            entries = image_data.index_images(data)
            names = image_data.read_class_names(folder)
        except image_data.DataSetError as exc:
            raise AppError(f"ic: {exc}") from exc
        if names is not None:
            self.class_names = names
            self.class_names_source = str(folder / image_data.CLASS_NAMES_FILE)
        return [SampleRef(index=i, path=str(entry.path), label=entry.label) for i, entry in enumerate(entries)]

    # -- the timed phases ---------------------------------------------------------------------------------
    def preprocess(self, ref: SampleRef, raw: bytes) -> PreprocessedImage:
        try:
            return PreprocessedImage(ref=ref, pixels=preprocess_image(raw))
        except ValueError as exc:
            raise SampleError(ref.where, str(exc)) from exc

    def collate(self, items: list[PreprocessedImage]) -> ImageBatch:
        import torch

        pixels = torch.from_numpy(np.stack([item.pixels for item in items]))
        return ImageBatch(refs=[item.ref for item in items], pixels=pixels)

    def infer(self, batch: ImageBatch):
        """Logits (B, 1000) as a float32 CPU tensor; a GPU run includes both copies (and so the sync)."""
        import torch

        if self.backend == "torch":
            if self.model is None:
                raise AppError("ic: infer called before load")
            with torch.inference_mode():
                logits = self.model(batch.pixels.to(self.device))
                return logits.float().cpu()
        if self.session is None:
            raise AppError("ic: infer called before load")
        (logits,) = self.session.run([ONNX_OUTPUT_NAME], {ONNX_INPUT_NAME: batch.pixels.numpy()})
        return torch.from_numpy(logits)

    def postprocess(self, output, batch: ImageBatch) -> list[dict]:
        """``{"top5": [[class id, probability, name], ...] (most probable first), "label": id or None}`` per request."""
        import torch

        probabilities = torch.softmax(output.float(), dim=1)
        top = torch.topk(probabilities, k=min(TOP_K, probabilities.shape[1]), dim=1)
        answers = []
        for ref, ids, values in zip(batch.refs, top.indices.tolist(), top.values.tolist()):
            answers.append(
                {
                    "top5": [[class_id, prob, self.class_names[class_id]] for class_id, prob in zip(ids, values)],
                    "label": ref.label,
                }
            )
        return answers

    # -- reporting ----------------------------------------------------------------------------------------
    def quality(self, answers: list[Any], refs: list[SampleRef]) -> dict:
        """Top-1 / top-5 accuracy over the answered requests that have a label."""
        top1_hits = top5_hits = labelled = 0
        for answer, ref in zip(answers, refs):
            if ref.label is None or not isinstance(answer, dict) or "top5" not in answer:
                continue
            labelled += 1
            predicted = [row[0] for row in answer["top5"]]
            top1_hits += int(bool(predicted) and predicted[0] == ref.label)
            top5_hits += int(ref.label in predicted)
        if labelled == 0:
            return {}
        result: dict = {
            "top1_accuracy": top1_hits / labelled,
            "top5_accuracy": top5_hits / labelled,
            "labelled_requests": labelled,
        }
        if self.weights is None:
            result["note"] = (
                f"random weights (seed {self.seed}): accuracy is chance level and says nothing about the model; "
                "pass a torchvision ResNet50 checkpoint as weights for a meaningful figure"
            )
        return result

    def parameter_count(self) -> int:
        return self._parameter_count

    def library_threads(self) -> dict[str, int]:
        import cv2

        threads = super().library_threads()
        threads["opencv"] = cv2.getNumThreads()
        if self.session is not None:
            options = self.session.get_session_options()
            threads["onnxruntime_intra_op"] = options.intra_op_num_threads
            threads["onnxruntime_inter_op"] = options.inter_op_num_threads
        return threads

    def describe(self) -> dict:
        info = super().describe()
        info["weights"] = str(self.weights) if self.weights is not None else f"random (seed {self.seed})"
        info["class_names"] = self.class_names_source
        info["preprocessing"] = (
            f"cv2.imdecode BGR->RGB, resize shorter side to {RESIZE_SHORTER_SIDE_PX} px (INTER_AREA), "
            f"center crop {CROP_SIDE_PX}, /255, ImageNet mean/std, CHW float32"
        )
        if self.session is not None:
            info["onnx_model"] = str(self.onnx_path)
            info["execution_providers"] = self.session.get_providers()
        return info

    # -- data ---------------------------------------------------------------------------------------------
    @classmethod
    def make_data(cls, out: Path, count: int, seed: int = 0, **options: Any) -> Path:
        """Synthetic ImageNet-val style JPEGs + ``val_map.txt`` + ``classes.txt`` (see ``datasets/images.py``)."""
        if options:
            raise AppError(f"ic: make_data takes no options, got {', '.join(options)}")
        try:
            return image_data.write_synthetic_imagenet(Path(out), count, seed)
        except image_data.DataSetError as exc:
            raise AppError(f"ic: {exc}") from exc
