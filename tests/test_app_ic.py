"""Image classification app (ResNet50-v1.5): model, pre/post-processing, data generator, backends, weights.

Everything runs the real code on real files; the full-size network is only built on the "meta" device.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from e2ebench.apps import create_app
from e2ebench.apps.base import AppError, SampleError, SampleRef
from e2ebench.apps.image_classification import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageClassification,
    jpeg_is_complete,
)
from e2ebench.datasets import images as image_data
from e2ebench.models import resnet


# -- helpers -----------------------------------------------------------------------------------------------

def normalised(value_0_255: float, channel: int) -> float:
    """What pre-processing must turn one RGB channel value into, computed by hand."""
    return (value_0_255 / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]


def write_png(path: Path, picture_rgb: np.ndarray) -> Path:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(picture_rgb[:, :, ::-1]))  # OpenCV writes BGR
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def quantisation_tables(jpeg: bytes) -> bytes:
    """The payloads of all DQT segments: what the JPEG quality setting decides (independent of content)."""
    tables = b""
    position = 2
    while position + 4 <= len(jpeg) and jpeg[position] == 0xFF:
        marker = jpeg[position + 1]
        length = int.from_bytes(jpeg[position + 2 : position + 4], "big")
        if marker == 0xDB:
            tables += jpeg[position + 4 : position + 2 + length]
        if marker == 0xDA:  # start of scan: no more tables before the entropy-coded data
            break
        position += 2 + length
    return tables


def jpeg_quality(jpeg: bytes) -> int | None:
    """The libjpeg quality whose tables this file carries (encode a probe at each quality and compare)."""
    probe = np.zeros((16, 16, 3), np.uint8)
    found = quantisation_tables(jpeg)
    for quality in range(1, 101):
        ok, encoded = cv2.imencode(".jpg", probe, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if quantisation_tables(encoded.tobytes()) == found:
            return quality
    return None


def run_pipeline(app: ImageClassification, refs: list[SampleRef]):
    items = [app.preprocess(ref, app.read(ref)) for ref in refs]
    batch = app.collate(items)
    output = app.infer(batch)
    return batch, output, app.postprocess(output, batch)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return ImageClassification.make_data(tmp_path_factory.mktemp("ic-data"), 4, seed=7)


@pytest.fixture
def onnx_cache(tmp_path):
    """Point E2EBENCH_CACHE at a fresh folder for one test, then restore the environment."""
    before = os.environ.get("E2EBENCH_CACHE")
    os.environ["E2EBENCH_CACHE"] = str(tmp_path / "cache")
    yield tmp_path / "cache"
    if before is None:
        os.environ.pop("E2EBENCH_CACHE", None)
    else:
        os.environ["E2EBENCH_CACHE"] = before


@pytest.fixture(scope="module")
def tiny_torch_app(generated) -> ImageClassification:
    app = ImageClassification(variant="tiny")
    app.load("cpu", 1, None)
    return app


# -- model -------------------------------------------------------------------------------------------------

def test_full_model_has_resnet50_parameter_count_and_v15_layout():
    model = resnet.build_resnet50("full", device="meta")
    assert sum(p.numel() for p in model.parameters()) == 25_557_032 == resnet.RESNET50_PARAMETER_COUNT
    state = model.state_dict()
    assert len(state) == 320  # torchvision resnet50: 161 parameters + 159 BN buffers
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert state["fc.weight"].shape == (1000, 2048)
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3, model.layer4)] == [3, 4, 6, 3]
    first_of_stage2 = model.layer2[0]
    assert first_of_stage2.conv1.stride == (1, 1) and first_of_stage2.conv2.stride == (2, 2)  # v1.5


def test_app_class_attributes():
    cls = ImageClassification
    assert (cls.name, cls.title, cls.input_kind, cls.model_name) == (
        "ic", "Image classification (ResNet50-v1.5)", "image", "ResNet50-v1.5")
    assert cls.backends == ("torch", "onnxruntime")
    assert (cls.default_requests, cls.default_batch_size) == (64, 8)
    assert {o.name: o.default for o in cls.options}["seed"] == 0
    assert isinstance(create_app("ic", variant="tiny"), ImageClassification)
    with pytest.raises(AppError, match="seed"):
        ImageClassification(options={"seed": "many"})


# -- pre-processing ------------------------------------------------------------------------------------------

def test_preprocess_solid_colour_gives_hand_computed_values(tmp_path, tiny_torch_app):
    colour_rgb = (255, 128, 0)
    picture = np.empty((300, 500, 3), np.uint8)
    picture[:] = colour_rgb
    path = write_png(tmp_path / "solid.png", picture)
    ref = SampleRef(0, str(path))
    item = tiny_torch_app.preprocess(ref, tiny_torch_app.read(ref))
    assert item.pixels.shape == (3, 224, 224) and item.pixels.dtype == np.float32
    for channel, value in enumerate(colour_rgb):
        np.testing.assert_allclose(item.pixels[channel], normalised(value, channel), atol=1e-5)


def test_preprocess_keeps_aspect_ratio_crops_centre_and_swaps_bgr(tmp_path, tiny_torch_app):
    # 300 x 600: left half red, right half blue.  Resize -> 256 x 512, centre crop starts at column 144,
    # so the colour edge (column 256 after resizing) falls on column 112 of the 224-wide crop.
    picture = np.zeros((300, 600, 3), np.uint8)
    picture[:, :300] = (255, 0, 0)
    picture[:, 300:] = (0, 0, 255)
    path = write_png(tmp_path / "two-colour.png", picture)
    item = tiny_torch_app.preprocess(SampleRef(0, str(path)), path.read_bytes())
    red, blue = (255, 0, 0), (0, 0, 255)
    for channel in range(3):
        np.testing.assert_allclose(item.pixels[channel, :, :110], normalised(red[channel], channel), atol=1e-5)
        np.testing.assert_allclose(item.pixels[channel, :, 114:], normalised(blue[channel], channel), atol=1e-5)


def test_corrupt_images_are_sample_errors_naming_the_file(tmp_path, generated, tiny_torch_app):
    app = tiny_torch_app
    random_bytes = tmp_path / "noise.JPEG"
    random_bytes.write_bytes(np.random.default_rng(3).bytes(20_000))
    whole = (generated / image_data.val_file_name(0)).read_bytes()
    truncated = tmp_path / "truncated.JPEG"
    truncated.write_bytes(whole[: len(whole) // 2])
    no_end_marker = tmp_path / "no-eoi.JPEG"
    no_end_marker.write_bytes(whole[:-2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path in (random_bytes, truncated, no_end_marker, empty):
        ref = SampleRef(0, str(path))
        with pytest.raises(SampleError) as caught:
            app.preprocess(ref, app.read(ref))
        assert caught.value.where == str(path)
    # Whatever the OpenCV version, the marker walk tells whole from cut-short JPEGs.
    assert jpeg_is_complete(whole) and jpeg_is_complete(whole + b"\xff\xda trailer \x00\x01")
    assert not jpeg_is_complete(whole[: len(whole) // 2]) and not jpeg_is_complete(whole[:-2])
    assert not jpeg_is_complete(whole[:300]) and not jpeg_is_complete(whole[:3])
    with pytest.raises(SampleError, match="cannot read"):
        app.read(SampleRef(0, str(tmp_path / "missing.JPEG")))


# -- data --------------------------------------------------------------------------------------------------

def test_generated_data_is_deterministic_and_imagenet_like(tmp_path, generated):
    again = ImageClassification.make_data(tmp_path / "again", 4, seed=7)
    names = sorted(p.name for p in generated.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert names[:4] == [f"ILSVRC2012_val_0000000{i}.JPEG" for i in range(1, 5)]
    assert set(names[4:]) == {"classes.txt", "val_map.txt"}
    for name in names:
        assert (generated / name).read_bytes() == (again / name).read_bytes(), name

    other_seed = ImageClassification.make_data(tmp_path / "other", 2, seed=8)
    assert (other_seed / names[0]).read_bytes() != (generated / names[0]).read_bytes()

    qualities = set()
    for name in names[:4]:
        jpeg = (generated / name).read_bytes()
        picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        height, width = picture.shape[:2]
        assert 300 <= height <= 600 and 300 <= width <= 600
        quality = jpeg_quality(jpeg)
        assert quality is not None and 75 <= quality <= 95
        qualities.add(quality)
        # Not flat: edges and texture everywhere.
        assert picture.std() > 10
        assert np.abs(np.diff(picture.astype(np.int16), axis=1)).mean() > 2
    assert len(qualities) > 1

    labels = [line.split() for line in (generated / "val_map.txt").read_text().splitlines()]
    assert [row[0] for row in labels] == names[:4]
    assert all(0 <= int(row[1]) < 1000 for row in labels)
    classes = (generated / "classes.txt").read_text().splitlines()
    assert len(classes) == 1000 and classes[3] == "synthetic class 3"

    with pytest.raises(AppError, match="other images"):
        ImageClassification.make_data(generated, 2, seed=7)


def test_samples_index_folder_labels_and_bad_files(tmp_path, generated, tiny_torch_app):
    app = ImageClassification(variant="tiny")
    refs = app.samples(generated)
    labels = dict(line.split() for line in (generated / "val_map.txt").read_text().splitlines())
    assert [Path(r.path).name for r in refs] == sorted(labels)
    assert [r.label for r in refs] == [int(labels[Path(r.path).name]) for r in refs]
    assert [r.index for r in refs] == [0, 1, 2, 3]
    assert app.class_names[5] == "synthetic class 5"

    # A label file as the data argument; a folder with val.txt, a fake image and no classes.txt.
    assert [r.path for r in app.samples(generated / "val_map.txt")] == [r.path for r in refs]
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "b.jpg").write_bytes((generated / image_data.val_file_name(1)).read_bytes())
    (folder / "a.jpeg").write_bytes(b"this is text, not an image")
    (folder / "notes.txt").write_text("ignored")
    (folder / "val.txt").write_text("b.jpg 17\n")
    plain_app = ImageClassification(variant="tiny")
    mixed = plain_app.samples(folder)
    assert [(Path(r.path).name, r.label) for r in mixed] == [("a.jpeg", None), ("b.jpg", 17)]
    assert plain_app.class_names[0] == "class 0"
    with pytest.raises(SampleError):
        tiny_torch_app.preprocess(mixed[0], tiny_torch_app.read(mixed[0]))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AppError, match="no \\*.jpg"):
        app.samples(empty)
    with pytest.raises(AppError, match="does not exist"):
        app.samples(tmp_path / "nowhere")
    (folder / "val.txt").write_text("b.jpg seventeen\n")
    with pytest.raises(AppError, match="val.txt:1"):
        app.samples(folder)


# -- end to end ----------------------------------------------------------------------------------------------

def test_end_to_end_through_the_interface(generated, tiny_torch_app):
    app = tiny_torch_app
    refs = app.samples(generated)
    batch, output, answers = run_pipeline(app, refs)
    assert tuple(batch.pixels.shape) == (4, 3, 224, 224) and batch.pixels.dtype == torch.float32
    assert tuple(output.shape) == (4, 1000)
    assert len(answers) == 4
    json.dumps(answers)
    for ref, answer in zip(refs, answers):
        probabilities = [row[1] for row in answer["top5"]]
        assert len(probabilities) == 5
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0 < p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-6
        assert all(row[2] == f"synthetic class {row[0]}" for row in answer["top5"])
        assert answer["label"] == ref.label
    # Batching does not change the answer: one request alone gives the same top-5.
    _, _, single = run_pipeline(app, refs[:1])
    assert [row[0] for row in single[0]["top5"]] == [row[0] for row in answers[0]["top5"]]
    np.testing.assert_allclose([r[1] for r in single[0]["top5"]], [r[1] for r in answers[0]["top5"]], atol=1e-5)

    quality = app.quality(answers, refs)
    assert set(quality) == {"top1_accuracy", "top5_accuracy", "labelled_requests", "note"}
    assert quality["labelled_requests"] == 4 and 0 <= quality["top1_accuracy"] <= quality["top5_accuracy"] <= 1
    assert app.quality(answers, [SampleRef(i, r.path) for i, r in enumerate(refs)]) == {}

    threads = app.library_threads()
    assert threads["opencv"] == 1 and "torch_intra_op" in threads
    assert app.parameter_count() == 385_392


def test_unavailable_cuda_is_an_app_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(AppError, match="cuda"):
        ImageClassification(variant="tiny").load("cuda", 1, None)


def test_onnxruntime_matches_torch(onnx_cache, generated, tiny_torch_app):
    refs = tiny_torch_app.samples(generated)
    _, torch_logits, torch_answers = run_pipeline(tiny_torch_app, refs)

    onnx_app = ImageClassification(variant="tiny", backend="onnxruntime")
    onnx_app.load("cpu", 2, None)
    onnx_app.samples(generated)
    _, onnx_logits, onnx_answers = run_pipeline(onnx_app, refs)
    np.testing.assert_allclose(
        torch.softmax(onnx_logits, 1).numpy(), torch.softmax(torch_logits, 1).numpy(), atol=1e-3
    )
    np.testing.assert_allclose(onnx_logits.numpy(), torch_logits.numpy(), atol=1e-3, rtol=1e-3)
    assert [a["top5"][0][0] for a in onnx_answers] == [a["top5"][0][0] for a in torch_answers]

    cached = list((onnx_cache / "onnx").glob("*.onnx"))
    assert cached == [onnx_app.onnx_path]
    threads = onnx_app.library_threads()
    assert threads["onnxruntime_intra_op"] == 2 and threads["onnxruntime_inter_op"] == 1
    assert onnx_app.parameter_count() == tiny_torch_app.parameter_count()
    assert onnx_app.describe()["execution_providers"] == ["CPUExecutionProvider"]

    # A second load reuses the cached export; another seed gets its own file.
    modified_ns = cached[0].stat().st_mtime_ns
    ImageClassification(variant="tiny", backend="onnxruntime").load("cpu", 1, None)
    assert cached[0].stat().st_mtime_ns == modified_ns
    ImageClassification(variant="tiny", backend="onnxruntime", options={"seed": 1}).load("cpu", 1, None)
    assert len(list((onnx_cache / "onnx").glob("*.onnx"))) == 2

    # A cache that cannot be written (here: its path is a file) falls back to a private temporary folder.
    onnx_cache.joinpath("onnx").rename(onnx_cache.parent / "old-onnx")
    onnx_cache.joinpath("onnx").write_text("not a folder")
    private = ImageClassification(variant="tiny", backend="onnxruntime")
    private.load("cpu", 1, None)
    assert private.onnx_path.is_file() and onnx_cache not in private.onnx_path.parents
    _, private_logits, _ = run_pipeline(private, refs)
    np.testing.assert_allclose(private_logits.numpy(), onnx_logits.numpy(), atol=1e-5)


# -- weights -----------------------------------------------------------------------------------------------

def test_state_dict_round_trip_and_mismatch_errors(tmp_path, generated, tiny_torch_app):
    from safetensors.torch import save_file

    refs = tiny_torch_app.samples(generated)[:2]
    batch = tiny_torch_app.collate([tiny_torch_app.preprocess(r, tiny_torch_app.read(r)) for r in refs])
    reference = tiny_torch_app.infer(batch)
    state = {k: v.clone() for k, v in tiny_torch_app.model.state_dict().items()}
    pth = tmp_path / "tiny.pth"
    torch.save(state, pth)
    safetensors_file = tmp_path / "tiny.safetensors"
    save_file(state, str(safetensors_file))

    other_seed = ImageClassification(variant="tiny", options={"seed": 1})
    other_seed.load("cpu", 1, None)
    assert not torch.allclose(other_seed.infer(batch), reference)
    for weights in (pth, safetensors_file):
        loaded = ImageClassification(variant="tiny", options={"seed": 1})
        loaded.load("cpu", 1, weights)
        assert torch.equal(loaded.infer(batch), reference)
        assert loaded.describe()["weights"] == str(weights)

    broken = dict(state)
    del broken["layer2.0.conv2.weight"]
    broken["head.weight"] = torch.zeros(3)
    broken["fc.bias"] = torch.zeros(10)
    bad = tmp_path / "bad.pth"
    torch.save(broken, bad)
    with pytest.raises(AppError) as caught:
        ImageClassification(variant="tiny").load("cpu", 1, bad)
    message = str(caught.value)
    assert "layer2.0.conv2.weight" in message and "head.weight" in message and "fc.bias (10,)" in message
    with pytest.raises(AppError, match="does not fit"):
        ImageClassification(variant="full").load("cpu", 1, pth)
    not_weights = tmp_path / "text.pt"
    not_weights.write_text("hello")
    with pytest.raises(AppError, match="cannot read weights"):
        ImageClassification(variant="tiny").load("cpu", 1, not_weights)
