"""The recommendation application ``rs``: DLRM shape, Criteo parsing and indexing, AUC, generator, end to end.

Everything runs the ``tiny`` DLRM except the parameter count of the full model, which is taken on the
"meta" device (no memory)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from e2ebench.apps import create_app, get_app_class
from e2ebench.apps.base import AppError, SampleError, SampleRef
from e2ebench.apps.recommendation import Recommendation, roc_auc
from e2ebench.datasets import criteo
from e2ebench.models import dlrm

KAGGLE = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
          27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)


def make_row(label="0", dense=None, categorical=None) -> str:
    dense = dense if dense is not None else [""] * 13
    categorical = categorical if categorical is not None else [""] * 26
    return "\t".join([label, *dense, *categorical])


def write_rows(path: Path, rows: list[str], final_newline: bool = True) -> Path:
    path.write_text("\n".join(rows) + ("\n" if final_newline else ""), encoding="ascii")
    return path


@pytest.fixture(scope="module")
def tiny_app() -> Recommendation:
    app = create_app("rs", variant="tiny", options={"rows_per_request": 32, "top_k": 5})
    app.load("cpu", 1, None)
    return app


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return Recommendation.make_data(tmp_path_factory.mktemp("criteo"), count=6, seed=3, rows_per_request=32)


# ------------------------------------------------------------------------------------------- model
def test_full_model_parameter_count_with_default_cap_on_meta_device():
    model = dlrm.build_dlrm("full", device="meta")
    assert dlrm.DEFAULT_MAX_ROWS_PER_TABLE == 3_000_000 == Recommendation.options[1].default
    assert dlrm.CRITEO_KAGGLE_CARDINALITIES == KAGGLE
    assert model.config.table_rows == tuple(min(c, 3_000_000) for c in KAGGLE)
    assert [t.num_embeddings for t in model.emb_l] == [min(c, 3_000_000) for c in KAGGLE]
    assert all(t.embedding_dim == 16 and t.mode == "sum" for t in model.emb_l)
    count = sum(p.numel() for p in model.parameters())
    assert count == 236_826_449 == dlrm.DEFAULT_PARAMETER_COUNT == model.config.parameter_count()
    assert count * 4 == 947_305_796 < 2 * 10**9          # fp32 bytes
    assert sum(model.config.table_rows) == 14_771_904
    mlp = [(l.in_features, l.out_features) for l in model.bot_l if isinstance(l, torch.nn.Linear)]
    assert mlp == [(13, 512), (512, 256), (256, 64), (64, 16)]
    top = [(l.in_features, l.out_features) for l in model.top_l if isinstance(l, torch.nn.Linear)]
    assert top == [(367, 512), (512, 256), (256, 1)]


def test_uncapped_and_custom_cap_table_sizes():
    uncapped = dlrm.build_dlrm("full", max_rows_per_table=0, device="meta")
    assert uncapped.config.table_rows == KAGGLE
    assert sum(p.numel() for p in uncapped.parameters()) == sum(KAGGLE) * 16 + 475_985 == 540_677_217
    capped = dlrm.dlrm_config("full", 1000)
    assert capped.table_rows == tuple(min(c, 1000) for c in KAGGLE)
    app = create_app("rs", options={"max_rows_per_table": "250000"})    # CLI options arrive as strings
    assert tuple(int(r) for r in app.table_rows) == tuple(min(c, 250_000) for c in KAGGLE)


def test_interaction_is_367_wide_and_is_the_lower_triangle_of_dot_products():
    model = dlrm.build_dlrm("tiny", seed=1)
    assert model.config.interaction_dim == 367
    assert model.config.table_rows == tuple(min(c, 1000) for c in KAGGLE)
    generator = torch.Generator().manual_seed(0)
    dense_vector = torch.randn(3, 16, generator=generator)
    embedded = [torch.randn(3, 16, generator=generator) for _ in range(26)]
    out = model.interact(dense_vector, embedded)
    assert out.shape == (3, 367)
    vectors = [dense_vector, *embedded]
    expected = [(vectors[i] * vectors[j]).sum(dim=1) for i in range(27) for j in range(i)]
    torch.testing.assert_close(out[:, :16], dense_vector)
    torch.testing.assert_close(out[:, 16:], torch.stack(expected, dim=1))
    logits = model(torch.rand(4, 13), torch.zeros(26, 4, dtype=torch.long))
    assert logits.shape == (4,)


def test_random_weights_are_seeded():
    a = dlrm.build_dlrm("tiny", seed=7).state_dict()
    b = dlrm.build_dlrm("tiny", seed=7).state_dict()
    c = dlrm.build_dlrm("tiny", seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["emb_l.0.weight"], c["emb_l.0.weight"])
    bound = math.sqrt(1 / 1000)
    assert a["emb_l.0.weight"].abs().max() <= bound


# ------------------------------------------------------------------------------------------- parsing
def test_parser_handles_empty_fields_negative_integers_and_hashes_modulo_table_rows():
    rows = [
        make_row("1", ["5", "", "-2"] + [""] * 10, ["0000000a", "", "FFFFFFFF"] + ["1"] * 23),
        make_row("0", ["0"] * 13, [""] * 26),
    ]
    raw = ("\r\n".join(rows) + "\r\n").encode()
    table_rows = np.array([7, 5, 1000] + [3] * 23)
    parsed = criteo.parse_rows(raw, table_rows, first_line=1, expected_rows=2)
    assert parsed.labels.tolist() == [1, 0]
    assert parsed.dense.dtype == np.float32 and parsed.dense.shape == (2, 13)
    np.testing.assert_allclose(parsed.dense[0, :3], [math.log(6), 0.0, 0.0], rtol=1e-6)   # -2 -> 0 -> log(1)
    assert np.all(parsed.dense[1] == 0)
    assert parsed.sparse.dtype == np.int64 and parsed.sparse.shape == (26, 2)
    assert parsed.sparse[:, 0].tolist()[:4] == [10 % 7, 0, 0xFFFFFFFF % 1000, 1 % 3]
    assert np.all(parsed.sparse[:, 1] == 0)                   # missing -> value 0 -> row 0
    assert parsed.sparse.flags["C_CONTIGUOUS"]


def test_vectorised_and_per_row_parsing_agree(generated):
    raw = (generated / "train.txt").read_bytes()
    lines = criteo.split_lines(raw)
    fast = criteo._split_common_case(lines)
    assert fast is not None                                    # generated rows take the vectorised path
    checked = criteo._split_checked(lines, 1)
    for a, b in zip(fast, checked):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    odd = make_row("1", ["-7", "", "12"] + ["3"] * 10, ["ABCDEF12", "1f"] + ["0"] * 24)   # short hex
    assert criteo._split_common_case([odd.encode()]) is None
    for bad_integer in ("-", "5-3", "--3", "7-"):
        assert criteo._split_common_case([make_row("1", ["1", bad_integer] + [""] * 11).encode()]) is None
    assert criteo._split_common_case([make_row("1", [""] * 12 + ["-"]).encode()]) is None
    negative = criteo._split_common_case([make_row("1", ["-3", "0", "-12"] + [""] * 10).encode()])
    assert negative is not None and negative[1][0, :3].tolist() == [-3, 0, -12]
    assert criteo._split_common_case([(odd + "\t").encode(), odd.encode()[:-2]]) is None   # 41 + 39 columns


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ("\t".join(["0"] + [""] * 38), "expected 40 tab-separated columns"),
        (make_row("0", ["1"] * 12 + ["x7"]), "I13"),
        (make_row("0", ["1.5"] + [""] * 12), "I1"),
        (make_row("0", None, ["zz"] + [""] * 25), "C1"),
        (make_row("0", None, [""] * 25 + ["0x1f"]), "C26"),
        (make_row("2"), "label"),
        ("", "empty line"),
        (make_row("0", ["1"] * 13, ["abcdef01"] * 26) + "\t", "got 41"),
        (make_row("0", ["-"] + [""] * 12), "I1"),
        (make_row("0", ["1 "] + [""] * 12), "I1"),
        (make_row("0", None, ["abcdef0g"] + [""] * 25), "C1"),
    ],
)
def test_malformed_rows_fail_the_request_with_file_and_line(tmp_path, bad_row, message):
    app = create_app("rs", variant="tiny", options={"rows_per_request": 4})
    good = make_row("0", ["1"] * 13, ["abcdef01"] * 26)
    path = write_rows(tmp_path / "train.txt", [good] * 5 + [bad_row] + [good] * 2)
    refs = app.samples(path)
    assert [ref.locator[2] for ref in refs] == [1, 5]
    app.preprocess(refs[0], app.read(refs[0]))                 # lines 1-4 are fine
    with pytest.raises(SampleError) as info:
        app.preprocess(refs[1], app.read(refs[1]))
    assert info.value.where == f"{path}:6"
    assert message in info.value.message


# ------------------------------------------------------------------------------------------- AUC
def test_auc_against_hand_computed_values_including_ties():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # positives {0.5, 0.9}, negatives {0.5, 0.5}: pairs 0.5|0.5 twice count 1/2 each, 0.9 beats both -> 3/4
    assert roc_auc([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.75)
    assert roc_auc([0.3, 0.3, 0.3], [1, 0, 0]) == pytest.approx(0.5)
    assert roc_auc([0.9, 0.1], [1, 0]) == 1.0 and roc_auc([0.9, 0.1], [0, 1]) == 0.0
    # 3 positives, 3 negatives, one tie across classes: 8 wins + 0.5 tie out of 9 pairs
    assert roc_auc([0.2, 0.6, 0.6, 0.9, 0.1, 0.7], [0, 1, 0, 1, 0, 1]) == pytest.approx(8.5 / 9)
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [1, 1])


# ------------------------------------------------------------------------------------------- generator
def test_generator_is_deterministic_and_criteo_like(tmp_path):
    a = (Recommendation.make_data(tmp_path / "a", count=40, seed=0) / "train.txt").read_bytes()
    b = (Recommendation.make_data(tmp_path / "b", count=40, seed=0) / "train.txt").read_bytes()
    c = (Recommendation.make_data(tmp_path / "c", count=40, seed=1) / "train.txt").read_bytes()
    shorter = (Recommendation.make_data(tmp_path / "d", count=3, seed=0, rows_per_request=50)
               / "train.txt").read_bytes()
    assert a == b and a != c
    assert a.startswith(shorter)                               # a file is a prefix of a longer one
    lines = a.decode("ascii").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 40 * 128
    fields = [line.split("\t") for line in lines[:-1]]
    assert {len(f) for f in fields} == {40}
    labels = np.array([f[0] == "1" for f in fields])
    assert set(f[0] for f in fields) == {"0", "1"}
    assert 0.015 <= labels.mean() <= 0.06                     # ~3% clicks
    missing = np.array([[v == "" for v in f[1:]] for f in fields]).mean(axis=0)
    assert 0.38 <= missing[0] <= 0.52                          # I1 ~45% empty
    assert missing[1] == 0.0                                   # I2 never empty
    assert 0.70 <= missing[11] <= 0.84                         # I12 ~77%
    assert 0.70 <= missing[13 + 21] <= 0.82                    # C22 ~76%
    assert missing[13] == 0.0                                  # C1 never empty
    assert any(f[2].startswith("-") for f in fields)           # some negative I2 counts
    dense_i5 = np.array([int(f[5]) for f in fields if f[5]])
    assert np.median(dense_i5) > 500 and dense_i5.max() > 20 * np.median(dense_i5)   # heavy tail
    hex_values = [v for f in fields for v in f[14:] if v]
    assert all(len(v) == 8 and int(v, 16) >= 0 for v in hex_values[:5000])
    c1 = [f[14] for f in fields]
    counts = sorted(np.unique(c1, return_counts=True)[1], reverse=True)
    assert counts[0] > 5 * counts[min(20, len(counts) - 1)]   # Zipf-skewed frequencies
    criteo.parse_rows(a, dlrm.dlrm_config("tiny").table_rows, expected_rows=40 * 128)   # the parser accepts it


# ------------------------------------------------------------------------------------------- index + read
def test_read_returns_exactly_the_requested_rows(tiny_app, generated):
    refs = tiny_app.samples(generated)
    assert len(refs) == 6 and [r.index for r in refs] == list(range(6))
    lines = (generated / "train.txt").read_bytes().split(b"\n")
    for ref in (refs[0], refs[2], refs[5]):
        start, end, first_line = ref.locator
        raw = tiny_app.read(ref)
        assert len(raw) == end - start
        assert raw == b"\n".join(lines[first_line - 1:first_line - 1 + 32]) + b"\n"
    assert refs[1].locator[0] == refs[0].locator[1]            # groups are contiguous


def test_index_handles_folders_of_days_missing_final_newline_and_partial_tail(tmp_path):
    app = create_app("rs", variant="tiny", options={"rows_per_request": 3})
    rows = [make_row(str(i % 2), [str(i)] * 13, [f"{i:08x}"] * 26) for i in range(8)]
    folder = tmp_path / "days"
    folder.mkdir()
    write_rows(folder / "day_10", rows[:3])
    write_rows(folder / "day_2", rows, final_newline=False)      # 8 rows: 2 requests, 2 rows unused
    refs = app.samples(folder)
    assert [(Path(r.path).name, r.locator[2]) for r in refs] == [("day_2", 1), ("day_2", 4), ("day_10", 1)]
    write_rows(tmp_path / "exact.txt", rows[:6], final_newline=False)
    exact = app.samples(tmp_path / "exact.txt")
    assert len(exact) == 2 and exact[1].locator[1] == (tmp_path / "exact.txt").stat().st_size
    parsed = app.preprocess(exact[1], app.read(exact[1]))
    assert parsed.rows == 3 and parsed.first_line == 4
    write_rows(tmp_path / "short.txt", rows[:2])
    with pytest.raises(AppError, match="no complete request"):
        app.samples(tmp_path / "short.txt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "day_0.gz").write_bytes(b"")
    with pytest.raises(AppError, match="train.txt or day_0 .. day_23 .*decompress"):
        app.samples(tmp_path / "empty")
    with pytest.raises(AppError, match="does not exist"):
        app.samples(tmp_path / "absent")


# ------------------------------------------------------------------------------------------- end to end
def test_end_to_end_through_the_interface(generated):
    assert get_app_class("rs") is Recommendation
    assert (Recommendation.name, Recommendation.input_kind, Recommendation.model_name) == ("rs", "tabular", "DLRM")
    app = create_app("rs", variant="tiny", options={"rows_per_request": 32, "top_k": 5, "seed": 4})
    app.load("cpu", 1, None)
    refs = app.samples(generated)
    answers = []
    for start in (0, 4):                                       # batches of 4 and 2 requests
        items = [app.preprocess(ref, app.read(ref)) for ref in refs[start:start + 4]]
        batch = app.collate(items)
        assert batch.dense.shape == (32 * len(items), 13) and batch.sparse.shape == (26, 32 * len(items))
        answers += app.postprocess(app.infer(batch), batch)
    assert len(answers) == 6
    json.dumps(answers)
    file_lines = (generated / "train.txt").read_text().split("\n")
    for ref, answer in zip(refs, answers):
        first_line = ref.locator[2]
        assert (answer["file"], answer["first_line"]) == (ref.path, first_line)
        assert answer["label"] == [int(line[0]) for line in file_lines[first_line - 1:first_line - 1 + 32]]
        ctrs = [ctr for _, ctr in answer["top_k"]]
        assert len(answer["top_k"]) == 5 and ctrs == sorted(ctrs, reverse=True)
        assert all(first_line <= line < first_line + 32 for line, _ in answer["top_k"])
        assert len(answer["ctr"]) == 32 and all(0.0 < c < 1.0 for c in answer["ctr"])
        assert answer["top_k"][0][1] == max(answer["ctr"])
        assert answer["ctr"][answer["top_k"][0][0] - first_line] == answer["top_k"][0][1]
    # one request alone gives the same CTRs as inside a batch: the offsets split the batch back correctly
    alone = app.collate([app.preprocess(refs[5], app.read(refs[5]))])
    np.testing.assert_allclose(app.postprocess(app.infer(alone), alone)[0]["ctr"], answers[5]["ctr"], rtol=1e-5)
    quality = app.quality(answers, refs)
    assert quality["auc_rows"] == 6 * 32 and 0.0 <= quality["click_rate"] <= 1.0
    assert quality["auc_meaningful"] is False
    if "auc" in quality:
        assert 0.0 <= quality["auc"] <= 1.0
    assert app.quality(answers[::-1], refs) == quality          # needs only the answers, in any order
    assert app.quality([None] * 6, refs) == {}
    all_ctr = [c for a in answers for c in a["ctr"]]
    all_labels = [l for a in answers for l in a["label"]]
    if 0 < sum(all_labels) < len(all_labels):
        assert quality["auc"] == pytest.approx(roc_auc(all_ctr, all_labels))


def test_weights_round_trip_and_clear_mismatch_errors(tmp_path, tiny_app, generated):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in tiny_app.model.state_dict().items()}
    torch.save({"epoch": 1, "state_dict": state}, tmp_path / "reference-style.pt")
    save_file(state, str(tmp_path / "tiny.safetensors"))
    refs = tiny_app.samples(generated)
    batch = tiny_app.collate([tiny_app.preprocess(refs[0], tiny_app.read(refs[0]))])
    expected = tiny_app.infer(batch)
    for name in ("reference-style.pt", "tiny.safetensors"):
        app = create_app("rs", variant="tiny", options={"rows_per_request": 32, "seed": 99})
        app.load("cpu", 1, tmp_path / name)
        torch.testing.assert_close(app.infer(batch), expected)
        assert app.quality(app.postprocess(app.infer(batch), batch), refs[:1])["auc_meaningful"] is True

    smaller_cap = create_app("rs", variant="tiny", options={"max_rows_per_table": 500})
    with pytest.raises(AppError, match=r"bigger than the row cap.*max_rows_per_table=1000"):
        smaller_cap.load("cpu", 1, tmp_path / "tiny.safetensors")
    save_file(dlrm.build_dlrm("tiny", max_rows_per_table=500, seed=0).state_dict(), str(tmp_path / "cap500.safetensors"))
    with pytest.raises(AppError, match=r"smaller than the model's \(table 0 has 500 rows.*max_rows_per_table=500"):
        create_app("rs", variant="tiny").load("cpu", 1, tmp_path / "cap500.safetensors")
    broken = dict(state)
    broken.pop("top_l.2.bias")
    broken["bot_l.0.weight"] = torch.zeros(3, 3)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(AppError, match=r"missing 1 tensors \(top_l\.2\.bias\).*bot_l\.0\.weight"):
        create_app("rs", variant="tiny").load("cpu", 1, tmp_path / "broken.pth")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AppError, match="cannot read weights file"):
        create_app("rs", variant="tiny").load("cpu", 1, tmp_path / "garbage.pt")
    with pytest.raises(AppError, match="does not exist"):
        create_app("rs", variant="tiny").load("cpu", 1, tmp_path / "absent.pt")


def test_listing_the_app_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from e2ebench.apps import get_app_class; cls = get_app_class('rs'); "
            "print(cls.title, [o.name for o in cls.options], 'torch' in sys.modules)")
    source_root = str(Path(criteo.__file__).resolve().parents[2])      # the folder holding e2ebench/
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (source_root, os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                            env=env)
    assert result.stdout.strip() == ("Recommendation (DLRM, Criteo) "
                                     "['seed', 'max_rows_per_table', 'rows_per_request', 'top_k'] False")


def test_options_are_validated():
    with pytest.raises(AppError, match="unknown option"):
        create_app("rs", options={"rows": 3})
    with pytest.raises(AppError, match="rows_per_request must be >= 1"):
        create_app("rs", options={"rows_per_request": 0})
    with pytest.raises(AppError, match="top_k must be an integer"):
        create_app("rs", options={"top_k": "ten"})
    with pytest.raises(AppError, match="unknown option"):
        Recommendation.make_data(Path("/nonexistent"), 1, colour="red")
    assert SampleRef(0, "x", (0, 1, 1)).where == "x:(0, 1, 1)"
