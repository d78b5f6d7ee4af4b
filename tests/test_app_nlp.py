"""Tests of the question-answering app (nlp): BERT on SQuAD v1.1, with the real tokenizer and real files.

Everything runs the tiny BERT variant except the parameter count of BERT-Large (built on the meta device).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from e2ebench.apps import create_app
from e2ebench.apps.base import AppError, SampleError, SampleRef
from e2ebench.apps.question_answering import (
    FeatureBuilder,
    QuestionAnswering,
    QuestionLocator,
    best_answer_span,
    build_tokenizer,
)
from e2ebench.datasets import squad

BERT_LARGE_QA_PARAMETERS = 334_094_338  # BertForQuestionAnswering(bert-large-uncased): no pooler, 2-way qa head


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def builder(tokenizer):
    return FeatureBuilder(tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("squad")
    QuestionAnswering.make_data(folder, 40, seed=3)
    return folder


@pytest.fixture(scope="module")
def tiny_app(generated) -> QuestionAnswering:
    app = create_app("nlp", variant="tiny")
    app.load("cpu", 1, None)
    return app


def _long_paragraph(document: dict) -> tuple[str, dict]:
    """The longest paragraph of a generated document and one of its questions."""
    paragraphs = [p for article in document["data"] for p in article["paragraphs"]]
    paragraph = max(paragraphs, key=lambda p: len(p["context"]))
    return paragraph["context"], paragraph["qas"][0]


def _write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- model


def test_bert_large_parameter_count_is_exact():
    import torch
    from transformers import BertForQuestionAnswering

    app = QuestionAnswering("full")
    config = app.model_config()
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (24, 1024, 16)
    assert (config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (4096, 30522, 512)
    with torch.device("meta"):
        model = BertForQuestionAnswering(config)
    assert sum(p.numel() for p in model.parameters()) == BERT_LARGE_QA_PARAMETERS


def test_class_attributes_and_options():
    assert QuestionAnswering.name == "nlp"
    assert QuestionAnswering.input_kind == "text"
    assert QuestionAnswering.model_name == "BERT-Large"
    defaults = {o.name: o.default for o in QuestionAnswering.options}
    assert defaults == {"seed": 0, "vocab": None, "max_seq_length": 384, "doc_stride": 128,
                        "max_query_length": 64, "n_best": 20, "max_answer_length": 30}
    with pytest.raises(AppError, match="max_seq_length"):
        QuestionAnswering("tiny", options={"max_seq_length": 1024})
    with pytest.raises(AppError, match="not an integer"):
        QuestionAnswering("tiny", options={"doc_stride": "wide"})
    with pytest.raises(AppError, match="unknown option"):
        QuestionAnswering("tiny", options={"beam": 4})


# ----------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_has_the_bert_uncased_vocabulary(tokenizer):
    assert len(tokenizer) == 30522
    encoded = tokenizer("Hello World", add_special_tokens=True)["input_ids"]
    assert encoded == [101, 7592, 2088, 102]  # [CLS] hello world [SEP]: lower-cased WordPieces


def test_missing_or_wrong_vocabulary_is_an_app_error(tmp_path):
    with pytest.raises(AppError, match="does not exist"):
        build_tokenizer(tmp_path / "absent.txt")
    short_vocab = tmp_path / "vocab.txt"
    short_vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n", encoding="utf-8")
    with pytest.raises(AppError, match="30522"):
        build_tokenizer(short_vocab)
    app = QuestionAnswering("tiny", options={"vocab": str(tmp_path / "absent.txt")})
    with pytest.raises(AppError):
        app.load("cpu", 1, None)


# ----------------------------------------------------------------------------------------------- features


def _google_doc_spans(paragraph_tokens: int, capacity: int, doc_stride: int) -> list[tuple[int, int]]:
    """Window (start, length) list exactly as Google's run_squad.py computes it."""
    spans, start = [], 0
    while start < paragraph_tokens:
        length = min(paragraph_tokens - start, capacity)
        spans.append((start, length))
        if start + length == paragraph_tokens:
            break
        start += min(length, doc_stride)
    return spans


def _google_is_max_context(spans: list[tuple[int, int]], span_index: int, position: int) -> bool:
    best_score, best_index = None, None
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, index
    return best_index == span_index


def test_long_paragraph_gives_overlapping_windows_like_the_reference(builder):
    document = squad.generate_squad_document(40, seed=3)
    context, qa = _long_paragraph(document)
    features = builder.build(qa["id"], qa["question"], context)
    assert features.window_count > 1
    assert features.input_ids.shape == (features.window_count, 384)
    assert features.attention_mask.sum(axis=1).max() == 384  # full windows are not padded

    question, capacity, step = builder.window_layout(qa["question"])
    paragraph_tokens = len(builder.plain_tokenizer.encode(context, add_special_tokens=False).ids)
    spans = _google_doc_spans(paragraph_tokens, capacity, 128)
    assert features.window_count == len(spans)
    assert step == 128

    context_positions = [np.flatnonzero(features.context_offsets[w, :, 0] >= 0) for w in range(features.window_count)]
    assert [len(p) for p in context_positions] == [length for _, length in spans]
    # Window 1 starts 128 paragraph tokens after window 0: same token ids and same character offsets.
    first, second = context_positions[0], context_positions[1]
    overlap = len(first) - 128
    assert overlap > 0
    np.testing.assert_array_equal(features.input_ids[0, first[128:]], features.input_ids[1, second[:overlap]])
    np.testing.assert_array_equal(features.context_offsets[0, first[128:]], features.context_offsets[1, second[:overlap]])

    # Max-context flags equal Google's _check_is_max_context; each paragraph token is max-context exactly once.
    for window, (start, _) in enumerate(spans):
        expected = [_google_is_max_context(spans, window, start + k) for k in range(len(context_positions[window]))]
        assert features.token_is_max_context[window, context_positions[window]].tolist() == expected
    assert int(features.token_is_max_context.sum()) == paragraph_tokens


def test_long_question_is_truncated_to_max_query_length(builder):
    question = "Which " + " ".join(["remarkable"] * 100) + " bridge?"
    features = builder.build("q", question, "The bridge was built in 1850.")
    question_tokens = int(((features.token_type_ids[0] == 0) & (features.attention_mask[0] == 1)).sum()) - 2
    assert question_tokens == 64


# ----------------------------------------------------------------------------------------------- post-processing


def _token_span(features, start_char: int, end_char: int) -> tuple[int, int, int]:
    """(window, start token, end token) of a character span in the window where it starts with max context."""
    for window in range(features.window_count):
        starts = np.flatnonzero((features.context_offsets[window, :, 0] == start_char)
                                & features.token_is_max_context[window])
        ends = np.flatnonzero(features.context_offsets[window, :, 1] == end_char)
        if len(starts) and len(ends):
            return window, int(starts[0]), int(ends[0])
    raise AssertionError("span not found")


def test_forced_logits_map_back_to_the_exact_context_span(builder):
    document = squad.generate_squad_document(40, seed=3)
    context, qa = _long_paragraph(document)
    features = builder.build(qa["id"], qa["question"], context)
    # An answer near the end of the paragraph: it lies in a later window.
    answer = qa["answers"][0]
    target_start = context.rindex(" ", 0, len(context) - 40) + 1
    target_end = context.index(" ", target_start + 1)
    target_end = context.index(" ", target_end + 1)  # two words
    expected = context[target_start:target_end].rstrip(".,")
    target_end = target_start + len(expected)
    window, start_token, end_token = _token_span(features, target_start, target_end)
    assert window >= 1

    start_logits = np.full((features.window_count, 384), -100.0, dtype=np.float32)
    end_logits = np.full_like(start_logits, -100.0)
    start_logits[window, start_token] = 10.0
    end_logits[window, end_token] = 9.0
    # Higher-scoring but invalid candidates: inside the question, end before start, too long.
    start_logits[0, 1] = 50.0
    end_logits[0, 2] = 50.0
    first_context = int(np.flatnonzero(features.context_offsets[0, :, 0] >= 0)[0])
    start_logits[0, first_context + 40] = 30.0
    end_logits[0, first_context + 5] = 30.0   # before the start
    end_logits[0, first_context + 80] = 29.0  # 41 tokens: longer than max_answer_length
    span = best_answer_span(features, start_logits, end_logits, n_best=20, max_answer_length=30)
    assert span.text == expected
    assert (span.start_char, span.end_char, span.window) == (target_start, target_end, window)
    assert span.score == pytest.approx(19.0)
    # The ground truth of the generated question is a span of the same context.
    assert context[answer["answer_start"]:answer["answer_start"] + len(answer["text"])] == answer["text"]


def test_no_valid_candidate_gives_an_empty_answer(builder):
    features = builder.build("q", "Who built it?", "Anna Keller built the bridge.")
    start_logits = np.zeros((1, 384), dtype=np.float32)
    end_logits = np.zeros_like(start_logits)
    start_logits[0, :5] = 10.0  # only question/special tokens among the top starts
    end_logits[0, :5] = 10.0
    span = best_answer_span(features, start_logits, end_logits, n_best=5, max_answer_length=30)
    assert span.text == "" and span.start_char is None


# ----------------------------------------------------------------------------------------------- metrics


def test_official_normalisation_exact_match_and_f1():
    assert squad.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert squad.normalize_answer("an apple, a pear") == "apple pear"
    assert squad.exact_match_score("the Denver Broncos.", "Denver Broncos")
    assert not squad.exact_match_score("Denver", "Denver Broncos")
    assert squad.f1_score("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    assert squad.f1_score("Carolina Panthers", "Denver Broncos") == 0.0
    assert squad.best_over_ground_truths(squad.f1_score, "Broncos", ["Carolina", "Denver Broncos"]) == pytest.approx(2 / 3)
    app = QuestionAnswering("tiny")
    refs = [SampleRef(0, "f.json", "a", ("Denver Broncos",)), SampleRef(1, "f.json", "b", ("1850", "in 1850"))]
    answers = [{"id": "a", "text": "the Denver Broncos"}, {"id": "b", "text": "1851"}]
    metrics = app.quality(answers, refs)
    assert metrics["exact_match_pct"] == pytest.approx(50.0)
    assert metrics["f1_pct"] == pytest.approx(50.0)
    assert metrics["note"] == "meaningless with random weights"


# ----------------------------------------------------------------------------------------------- data: reading


def test_samples_index_byte_ranges_of_paragraphs(tiny_app, generated):
    refs = tiny_app.samples(generated)
    assert len(refs) == 40
    assert all(Path(r.path).name == "dev-v1.1.json" for r in refs)
    document = json.loads((generated / "dev-v1.1.json").read_text(encoding="utf-8"))
    truth = {qa["id"]: (p["context"], [a["text"] for a in qa["answers"]])
             for article in document["data"] for p in article["paragraphs"] for qa in p["qas"]}
    assert [str(r.locator) for r in refs] == list(truth)
    for ref in refs:
        raw = tiny_app.read(ref)
        paragraph = json.loads(raw)  # the request's own bytes: exactly its paragraph object
        assert paragraph["context"] == truth[str(ref.locator)][0]
        assert str(ref.locator) in [qa["id"] for qa in paragraph["qas"]]
        assert list(ref.label) == truth[str(ref.locator)][1]
        assert len(raw) < (generated / "dev-v1.1.json").stat().st_size / 3
    assert any(len(ref.locator.encode()) and any(ord(c) > 127 for c in json.loads(tiny_app.read(ref))["context"])
               for ref in refs)  # non-ASCII text: byte offsets, not character offsets
    assert refs[0].where == f"{refs[0].path}:{refs[0].locator}"
    copy = pickle.loads(pickle.dumps(refs[5]))
    assert copy == refs[5] and copy.locator.offset_bytes == refs[5].locator.offset_bytes


def test_pretty_printed_file_with_byte_order_mark_is_indexed_the_same(tiny_app, generated, tmp_path):
    document = json.loads((generated / "dev-v1.1.json").read_text(encoding="utf-8"))
    path = tmp_path / "pretty.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\r\n")
    compact = tiny_app.samples(generated)
    pretty = tiny_app.samples(path)
    assert [str(r.locator) for r in pretty] == [str(r.locator) for r in compact]
    assert [r.label for r in pretty] == [r.label for r in compact]
    for ref_pretty, ref_compact in zip(pretty[::7], compact[::7]):
        assert json.loads(tiny_app.read(ref_pretty)) == json.loads(tiny_app.read(ref_compact))


def test_a_plain_question_id_locator_reads_the_whole_file(tiny_app, generated):
    ref = tiny_app.samples(generated)[7]
    plain = SampleRef(index=0, path=ref.path, locator=str(ref.locator), label=ref.label)
    features = tiny_app.preprocess(plain, tiny_app.read(plain))
    indexed = tiny_app.preprocess(ref, tiny_app.read(ref))
    assert features.question_id == indexed.question_id
    np.testing.assert_array_equal(features.input_ids, indexed.input_ids)


def test_data_path_may_be_the_file_or_a_folder_of_json_files(tiny_app, generated, tmp_path):
    assert len(tiny_app.samples(generated / "dev-v1.1.json")) == 40
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.json").write_bytes((generated / "dev-v1.1.json").read_bytes())
    (other / "b.json").write_bytes((generated / "dev-v1.1.json").read_bytes())
    refs = tiny_app.samples(other)
    assert len(refs) == 80 and [r.index for r in refs] == list(range(80))
    with pytest.raises(AppError, match="no dev-v1.1.json"):
        tiny_app.samples(tmp_path / "other" / "..")
    with pytest.raises(AppError, match="no such file"):
        tiny_app.samples(tmp_path / "absent")


def test_malformed_entries_fail_per_request_with_file_and_id(tiny_app, tmp_path):
    document = {"version": "1.1", "data": [
        {"title": "t", "paragraphs": [
            {"context": "Paris is the capital of France.", "qas": [
                {"id": "good", "question": "What is the capital of France?",
                 "answers": [{"text": "Paris", "answer_start": 0}]},
                {"id": "text-not-string", "question": "Capital?", "answers": [{"text": 42, "answer_start": 0}]},
                {"id": "start-out-of-range", "question": "Country?",
                 "answers": [{"text": "France", "answer_start": 400}]},
                {"id": "no-question", "answers": []},
            ]},
            {"qas": [{"id": "no-context", "question": "Where?", "answers": []}]},
            {"context": "Some text.", "qas": "not a list"},
        ]},
        "not an article",
    ]}
    path = _write_json(tmp_path / "dev-v1.1.json", document)
    refs = tiny_app.samples(path)
    outcome = {}
    for ref in refs:
        try:
            tiny_app.preprocess(ref, tiny_app.read(ref))
            outcome[str(ref.locator)] = "ok"
        except SampleError as exc:
            assert exc.where == f"{path}:{ref.locator}"
            assert str(path) in str(exc)
            outcome[str(ref.locator)] = exc.message
    assert outcome["good"] == "ok"
    assert "'text' is not a string" in outcome["text-not-string"]
    assert "out of range" in outcome["start-out-of-range"]
    assert "'question'" in outcome["no-question"]
    assert "no 'context'" in outcome["no-context"]
    assert "'qas' list" in outcome["data[0].paragraphs[2]"]
    assert "'paragraphs' list" in outcome["data[1]"]


def test_corrupted_paragraph_bytes_fail_only_their_requests(tiny_app, generated, tmp_path):
    path = tmp_path / "dev-v1.1.json"
    path.write_bytes((generated / "dev-v1.1.json").read_bytes())
    refs = tiny_app.samples(path)
    victim = refs[-1]
    data = bytearray(path.read_bytes())
    data[victim.locator.offset_bytes] = ord("#")  # same length: other byte ranges stay valid
    path.write_bytes(bytes(data))
    with pytest.raises(SampleError, match="bad JSON") as error:
        tiny_app.preprocess(victim, tiny_app.read(victim))
    assert error.value.where == f"{path}:{victim.locator}"
    assert tiny_app.preprocess(refs[0], tiny_app.read(refs[0])).question_id == str(refs[0].locator)


def test_bad_json_file_is_an_app_error_with_line_and_column(tiny_app, tmp_path):
    path = tmp_path / "dev-v1.1.json"
    path.write_text('{"version": "1.1", "data": [{"title": "t",\n "paragraphs": [}]}', encoding="utf-8")
    with pytest.raises(AppError, match=r"line 2, column \d+"):
        tiny_app.samples(path)
    _write_json(path, {"version": "1.1", "articles": []})
    with pytest.raises(AppError, match="'data' list"):
        tiny_app.samples(path)


# ----------------------------------------------------------------------------------------------- data: generator


def test_generator_is_deterministic_and_answers_are_spans(tmp_path, tokenizer):
    first = QuestionAnswering.make_data(tmp_path / "a", 60, seed=11)
    second = QuestionAnswering.make_data(tmp_path / "b", 60, seed=11)
    other = QuestionAnswering.make_data(tmp_path / "c", 60, seed=12)
    first_bytes = (first / "dev-v1.1.json").read_bytes()
    assert first_bytes == (second / "dev-v1.1.json").read_bytes()
    assert first_bytes != (other / "dev-v1.1.json").read_bytes()

    document = json.loads(first_bytes)
    paragraphs = [p for article in document["data"] for p in article["paragraphs"]]
    questions = [qa for p in paragraphs for qa in p["qas"]]
    assert len(questions) == 60
    assert len({qa["id"] for qa in questions}) == 60
    for paragraph in paragraphs:
        context = paragraph["context"]
        assert 120 <= len(context.split()) <= 520
        for qa in paragraph["qas"]:
            assert qa["question"].endswith("?")
            assert 1 <= len(qa["answers"]) <= 3
            for answer in qa["answers"]:
                start = answer["answer_start"]
                assert context[start:start + len(answer["text"])] == answer["text"]
    word_counts = [len(p["context"].split()) for p in paragraphs]
    assert any(count >= 350 for count in word_counts)  # some paragraphs need more than one window
    assert sum(count <= 300 for count in word_counts) > len(word_counts) / 2


# ----------------------------------------------------------------------------------------------- end to end


def test_end_to_end_through_the_interface_with_the_tiny_model(tiny_app, generated):
    refs = tiny_app.samples(generated)[:6]
    answers = []
    for batch_refs in (refs[:4], refs[4:]):
        items = [tiny_app.preprocess(ref, tiny_app.read(ref)) for ref in batch_refs]
        batch = tiny_app.collate(items)
        assert batch.input_ids.shape == (sum(i.window_count for i in items), 384)
        output = tiny_app.infer(batch)
        assert output.start_logits.shape == tuple(batch.input_ids.shape)
        answers += tiny_app.postprocess(output, batch)
    json.dumps(answers)
    assert [a["id"] for a in answers] == [str(r.locator) for r in refs]
    contexts = {str(r.locator): json.loads(tiny_app.read(r))["context"] for r in refs}
    for answer in answers:
        if answer["text"]:
            assert contexts[answer["id"]][answer["start_char"]:answer["end_char"]] == answer["text"]
    metrics = tiny_app.quality(answers, refs)
    assert set(metrics) == {"exact_match_pct", "f1_pct", "questions_scored", "note"}
    assert metrics["questions_scored"] == 6
    assert tiny_app.library_threads()["tokenizers_rayon"] == 1

    # Same seed, same answers; the inference-only path accepts any list of items.
    again = create_app("nlp", variant="tiny")
    again.load("cpu", 1, None)
    batch = again.collate([again.preprocess(r, again.read(r)) for r in refs])
    assert again.postprocess(again.infer(batch), batch) == answers
    empty = again.collate([])
    assert again.postprocess(again.infer(empty), empty) == []


def test_weights_from_a_model_folder_or_a_state_dict_file(tiny_app, generated, tmp_path):
    import torch
    from safetensors.torch import save_file

    source = QuestionAnswering("tiny", options={"seed": 7}).build_model().eval()
    source.save_pretrained(tmp_path / "hf")
    torch.save(source.state_dict(), tmp_path / "model.pt")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))

    refs = tiny_app.samples(generated)[:2]
    batch = tiny_app.collate([tiny_app.preprocess(r, tiny_app.read(r)) for r in refs])
    with torch.inference_mode():
        expected = source(input_ids=batch.input_ids, token_type_ids=batch.token_type_ids,
                          attention_mask=batch.attention_mask).start_logits.numpy()
    assert not np.allclose(tiny_app.infer(batch).start_logits, expected)  # seed 0 differs from seed 7
    for weights in (tmp_path / "hf", tmp_path / "model.pt", tmp_path / "model.safetensors"):
        app = QuestionAnswering("tiny")
        app.load("cpu", 1, weights)
        np.testing.assert_allclose(app.infer(batch).start_logits, expected, rtol=1e-5, atol=1e-5)
        assert app.weights_loaded
        assert "note" not in app.quality([{"text": "x"}], [SampleRef(0, "f", "q", ("x",))])

    state = source.state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("qa_outputs")}, tmp_path / "no_head.pt")
    wrong = {k: (v[:, :64] if v.dim() == 2 and v.shape[1] == 128 else v) for k, v in state.items()}
    torch.save(wrong, tmp_path / "wrong_shape.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "empty_folder").mkdir()
    for weights, message in ((tmp_path / "no_head.pt", "missing"), (tmp_path / "wrong_shape.pt", "another shape"),
                             (tmp_path / "garbage.pt", "cannot read"), (tmp_path / "empty_folder", "config.json"),
                             (tmp_path / "absent", "do not exist")):
        with pytest.raises(AppError, match=message):
            QuestionAnswering("tiny").load("cpu", 1, weights)
    with pytest.raises(AppError, match="does not match the full"):
        QuestionAnswering("full").load("cpu", 1, tmp_path / "hf")


def test_locator_is_the_question_id_string():
    locator = QuestionLocator("56be4db0acb8001400a502ec", 120, 2048, 3)
    assert locator == "56be4db0acb8001400a502ec"
    assert json.dumps(locator) == '"56be4db0acb8001400a502ec"'
    assert pickle.loads(pickle.dumps(locator)).length_bytes == 2048
