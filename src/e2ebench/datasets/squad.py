"""SQuAD v1.1: reader with a per-question byte index, official metrics, and a synthetic generator.

The SQuAD v1.1 format (``dev-v1.1.json``) is one JSON document::

    {"version": "1.1",
     "data": [{"title": "...",
               "paragraphs": [{"context": "...",
                               "qas": [{"id": "56be4db0acb8001400a502ec",
                                        "question": "...",
                                        "answers": [{"answer_start": 177, "text": "Denver Broncos"}, ...]}]}]}]}

**Per-request I/O.**  One request of the question-answering app is one question with its paragraph.
So that reading a request is real per-request I/O (and not one big read of the whole file that the
first request pays for), :func:`index_squad_file` records, for every question, the byte range of the
JSON object of its *paragraph* (``{"context": ..., "qas": [...]}``) inside the unchanged standard file.
Reading a request is then one ``pread`` of a few kilobytes (the context and its questions), which is
parsed on its own by :func:`parse_question`.  No sidecar files are needed, so the real
``dev-v1.1.json`` works exactly like the synthetic one.

Byte offsets are found with a structure-aware scan of the file decoded as Latin-1 (one character per
byte, so a character index *is* a byte offset; JSON's structural characters are ASCII, so the scan is
exact for UTF-8 files); the JSON values themselves are parsed from the UTF-8 bytes.

**Metrics** (:func:`normalize_answer`, :func:`exact_match_score`, :func:`f1_score`) follow the official
``evaluate-v1.1.py`` script: lower case, remove punctuation, remove the articles a/an/the, collapse
white space; F1 over the bag of normalised tokens; the best score over all ground-truth answers.

**Synthetic data** (:func:`make_squad_dataset`): deterministic (``numpy.random.default_rng(seed)``)
English-like paragraphs built from word lists with sentence structure; each question is generated
from a fact sentence of its paragraph and its answer is a span of that paragraph, with a correct
``answer_start``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import string
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

SQUAD_DEV_FILE_NAME = "dev-v1.1.json"


class SquadFormatError(ValueError):
    """A SQuAD file or entry does not follow the SQuAD v1.1 format.  The message says what is wrong."""


# =====================================================================================================
# Reading
# =====================================================================================================


@dataclasses.dataclass(frozen=True)
class SquadAnswer:
    text: str
    start_char: int  # answer_start: character offset of the answer inside the context


@dataclasses.dataclass(frozen=True)
class SquadQuestion:
    """One validated question with its paragraph."""

    question_id: str
    question: str
    context: str
    answers: tuple[SquadAnswer, ...]


@dataclasses.dataclass(frozen=True)
class SquadIndexEntry:
    """Where one question lives in a SQuAD file.

    ``offset_bytes``/``length_bytes`` delimit the JSON object of the question's paragraph (or of its
    article when the article itself is malformed).  ``question_index`` is the position of the question
    in the paragraph's ``qas`` list.  ``problem`` is set when the index already knows that the entry is
    malformed (an article without a ``paragraphs`` list, a paragraph without a ``qas`` list): such an
    entry is still a request, which fails when it is pre-processed.
    """

    question_id: str
    question_index: int | None
    offset_bytes: int
    length_bytes: int
    answers: tuple[str, ...]
    problem: str | None = None


def resolve_squad_files(data: Path) -> list[Path]:
    """The SQuAD JSON files of ``data``: the file itself, or ``dev-v1.1.json`` in a folder, else its ``*.json``."""
    data = Path(data)
    if data.is_file():
        return [data]
    if data.is_dir():
        dev_file = data / SQUAD_DEV_FILE_NAME
        if dev_file.is_file():
            return [dev_file]
        files = sorted(p for p in data.glob("*.json") if p.is_file())
        if files:
            return files
        raise SquadFormatError(f"{data}: no {SQUAD_DEV_FILE_NAME} and no *.json file in this folder")
    raise SquadFormatError(f"{data}: no such file or folder")


_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip_whitespace(text: str, position: int) -> int:
    return _JSON_WHITESPACE.match(text, position).end()


def _skip_value(text: str, position: int) -> int:
    return _DECODER.raw_decode(text, position)[1]


def _walk_object(text: str, position: int, on_member: Callable[[str, int], int]) -> int:
    """Walk the object starting at ``position``; ``on_member(key, value_start)`` returns the value's end."""
    position = _skip_whitespace(text, position + 1)
    if text[position] == "}":
        return position + 1
    while True:
        key, position = json.decoder.scanstring(text, position + 1)
        position = _skip_whitespace(text, position)
        position = _skip_whitespace(text, position + 1)  # the ':'
        position = _skip_whitespace(text, on_member(key, position))
        if text[position] == "}":
            return position + 1
        position = _skip_whitespace(text, position + 1)  # the ','


def _walk_array(text: str, position: int, on_element: Callable[[int, int], int]) -> int:
    """Walk the array starting at ``position``; ``on_element(index, value_start)`` returns the value's end."""
    position = _skip_whitespace(text, position + 1)
    if text[position] == "]":
        return position + 1
    index = 0
    while True:
        position = _skip_whitespace(text, on_element(index, position))
        if text[position] == "]":
            return position + 1
        position = _skip_whitespace(text, position + 1)
        index += 1


def _object_spans(text: str, start: int) -> tuple[dict[int, tuple[int, int]], dict[tuple[int, int], tuple[int, int]]]:
    """Byte spans of every article (``data[i]``) and paragraph (``data[i].paragraphs[j]``) of a valid JSON text.

    ``text`` is the file decoded as Latin-1 so that indexes are byte offsets.  The text has already been
    validated by ``json.loads``, so the walk meets only well-formed JSON.  When a key occurs twice in an
    object, the last occurrence wins, as in ``json.loads``.
    """
    article_spans: dict[int, tuple[int, int]] = {}
    paragraph_spans: dict[tuple[int, int], tuple[int, int]] = {}

    def on_article(article_index: int, article_start: int) -> int:
        if text[article_start] != "{":
            end = _skip_value(text, article_start)
        else:

            def on_article_member(key: str, value_start: int) -> int:
                if key != "paragraphs":
                    return _skip_value(text, value_start)
                for key_pair in [k for k in paragraph_spans if k[0] == article_index]:
                    del paragraph_spans[key_pair]
                if text[value_start] != "[":
                    return _skip_value(text, value_start)

                def on_paragraph(paragraph_index: int, paragraph_start: int) -> int:
                    paragraph_end = _skip_value(text, paragraph_start)
                    paragraph_spans[(article_index, paragraph_index)] = (paragraph_start, paragraph_end)
                    return paragraph_end

                return _walk_array(text, value_start, on_paragraph)

            end = _walk_object(text, article_start, on_article_member)
        article_spans[article_index] = (article_start, end)
        return end

    def on_top_member(key: str, value_start: int) -> int:
        if key != "data" or text[value_start] != "[":
            return _skip_value(text, value_start)
        article_spans.clear()
        paragraph_spans.clear()
        return _walk_array(text, value_start, on_article)

    position = _skip_whitespace(text, start)
    _walk_object(text, position, on_top_member)
    return article_spans, paragraph_spans


def load_squad_document(path: Path) -> tuple[bytes, Any, int]:
    """Read and parse a whole SQuAD file: ``(raw bytes, parsed document, offset of the JSON text)``.

    Raises :class:`SquadFormatError` naming the line and column of a JSON syntax error.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SquadFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    bom_bytes = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = raw[bom_bytes:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SquadFormatError(f"{path}: not UTF-8 text (byte {exc.start + bom_bytes})") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SquadFormatError(f"{path}: bad JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    return raw, document, bom_bytes


def _answer_texts(qa: Any) -> tuple[str, ...]:
    answers = qa.get("answers") if isinstance(qa, dict) else None
    if not isinstance(answers, list):
        return ()
    return tuple(a["text"] for a in answers if isinstance(a, dict) and isinstance(a.get("text"), str))


def index_squad_file(path: Path) -> list[SquadIndexEntry]:
    """One :class:`SquadIndexEntry` per question of the SQuAD file at ``path``, in file order.

    Raises :class:`SquadFormatError` when the file is not JSON or not SQuAD at all (no ``data`` list);
    malformed entries inside a valid file are indexed and fail later, one request at a time.
    """
    raw, document, bom_bytes = load_squad_document(path)
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise SquadFormatError(f"{path}: not a SQuAD file: expected a JSON object with a 'data' list")
    article_spans, paragraph_spans = _object_spans(raw.decode("latin-1"), bom_bytes)

    entries: list[SquadIndexEntry] = []
    for article_index, article in enumerate(document["data"]):
        article_start, article_end = article_spans[article_index]
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            entries.append(SquadIndexEntry(
                question_id=f"data[{article_index}]", question_index=None,
                offset_bytes=article_start, length_bytes=article_end - article_start, answers=(),
                problem="article is not an object with a 'paragraphs' list"))
            continue
        for paragraph_index, paragraph in enumerate(paragraphs):
            start, end = paragraph_spans[(article_index, paragraph_index)]
            where = f"data[{article_index}].paragraphs[{paragraph_index}]"
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                entries.append(SquadIndexEntry(
                    question_id=where, question_index=None, offset_bytes=start, length_bytes=end - start,
                    answers=(), problem="paragraph is not an object with a 'qas' list"))
                continue
            for question_index, qa in enumerate(qas):
                question_id = qa.get("id") if isinstance(qa, dict) else None
                if not isinstance(question_id, str) or not question_id:
                    question_id = f"{where}.qas[{question_index}]"
                entries.append(SquadIndexEntry(
                    question_id=question_id, question_index=question_index, offset_bytes=start,
                    length_bytes=end - start, answers=_answer_texts(qa)))
    return entries


def _find_question_in_document(document: dict, question_id: str) -> tuple[dict, int]:
    for article in document.get("data") or []:
        for paragraph in (article.get("paragraphs") or []) if isinstance(article, dict) else []:
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            for question_index, qa in enumerate(qas if isinstance(qas, list) else []):
                if isinstance(qa, dict) and qa.get("id") == question_id:
                    return paragraph, question_index
    raise SquadFormatError(f"question id {question_id!r} not found")


def parse_question(raw: bytes, question_id: str, question_index: int | None) -> SquadQuestion:
    """Parse and validate one question from the bytes of its paragraph object (or of a whole SQuAD file).

    ``question_index`` is the question's position in the paragraph's ``qas`` list; ``None`` looks the
    question up by ``question_id``.  Raises :class:`SquadFormatError` saying what is wrong.
    """
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SquadFormatError(f"bad JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise SquadFormatError("paragraph is not a JSON object")
    if "data" in parsed and "context" not in parsed:
        parsed, question_index = _find_question_in_document(parsed, question_id)
    paragraph = parsed

    qas = paragraph.get("qas")
    if not isinstance(qas, list):
        raise SquadFormatError("paragraph has no 'qas' list")
    if question_index is None:
        found = [k for k, qa in enumerate(qas) if isinstance(qa, dict) and qa.get("id") == question_id]
        if not found:
            raise SquadFormatError(f"question id {question_id!r} not found in its paragraph")
        question_index = found[0]
    if not 0 <= question_index < len(qas):
        raise SquadFormatError("question no longer in its paragraph (file changed since it was indexed?)")
    qa = qas[question_index]
    if not isinstance(qa, dict):
        raise SquadFormatError("question entry is not a JSON object")
    stored_id = qa.get("id")
    if not isinstance(stored_id, str) or not stored_id:
        raise SquadFormatError("question has no 'id' string")
    if stored_id != question_id:
        raise SquadFormatError(f"question id is {stored_id!r}, expected {question_id!r} (file changed since it was indexed?)")

    context = paragraph.get("context")
    if "context" not in paragraph:
        raise SquadFormatError("paragraph has no 'context'")
    if not isinstance(context, str):
        raise SquadFormatError(f"'context' is a {type(context).__name__}, not a string")
    if not context.strip():
        raise SquadFormatError("'context' is empty")
    question = qa.get("question")
    if not isinstance(question, str):
        raise SquadFormatError("'question' is missing or not a string")
    if not question.strip():
        raise SquadFormatError("'question' is empty")

    answers_field = qa.get("answers", [])
    if not isinstance(answers_field, list):
        raise SquadFormatError("'answers' is not a list")
    answers: list[SquadAnswer] = []
    for answer_number, answer in enumerate(answers_field):
        if not isinstance(answer, dict):
            raise SquadFormatError(f"answer {answer_number} is not a JSON object")
        text = answer.get("text")
        if not isinstance(text, str):
            raise SquadFormatError(f"answer {answer_number}: 'text' is not a string")
        start_char = answer.get("answer_start")
        if not isinstance(start_char, int) or isinstance(start_char, bool):
            raise SquadFormatError(f"answer {answer_number}: 'answer_start' is not an integer")
        if start_char < 0 or start_char + len(text) > len(context):
            raise SquadFormatError(
                f"answer {answer_number}: answer_start {start_char} + {len(text)} characters is out of range "
                f"for a context of {len(context)} characters")
        answers.append(SquadAnswer(text=text, start_char=start_char))
    return SquadQuestion(question_id=question_id, question=question, context=context, answers=tuple(answers))


# =====================================================================================================
# Official SQuAD v1.1 metrics
# =====================================================================================================

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, remove punctuation, articles and extra white space (official SQuAD v1.1 normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Harmonic mean of token precision and recall over normalised tokens, in [0, 1]."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    same_tokens = sum(common.values())
    if same_tokens == 0:
        return 0.0
    precision = same_tokens / len(prediction_tokens)
    recall = same_tokens / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def best_over_ground_truths(metric: Callable[[str, str], float], prediction: str, ground_truths: Iterable[str]) -> float:
    return max((float(metric(prediction, truth)) for truth in ground_truths), default=0.0)


# =====================================================================================================
# Synthetic generator
# =====================================================================================================

_FIRST_NAMES = (
    "Anna", "Thomas", "Maria", "James", "Elena", "Robert", "Sofia", "Henry", "Clara", "William", "Laura",
    "Edward", "Helen", "George", "Marta", "Charles", "Alice", "Frederick", "Irene", "Louis", "José",
    "Zoë", "Björn", "Amélie", "Søren", "Margaret", "Victor", "Isabel", "Arthur", "Julia",
)
_LAST_NAMES = (
    "Hartmann", "Collins", "Moreau", "Fischer", "Bennett", "Novak", "Lindqvist", "Romano", "Walker",
    "Dubois", "Keller", "Morgan", "Castillo", "Weber", "Sullivan", "Brandt", "Ferreira", "Nakamura",
    "Müller", "Gómez", "Carter", "Olsen", "Hughes", "Marchetti", "Schneider", "Foster",
)
_PLACES = (
    "Lyon", "Zürich", "Kraków", "São Paulo", "Boston", "Edinburgh", "Vienna", "Porto", "Seville", "Gdańsk",
    "Toronto", "Munich", "Bristol", "Geneva", "Bologna", "Montreal", "Dublin", "Rotterdam", "Valencia",
    "Helsinki", "Chicago", "Melbourne", "Antwerp", "Salzburg", "Córdoba", "Oslo",
)
_INSTITUTIONS = (
    "Academy", "Society", "Museum", "University", "Council", "Observatory", "Library", "Conservatory",
    "Institute", "Company", "Hospital", "Orchestra", "Railway", "Gallery", "Assembly", "Guild",
)
_FIELDS = (
    "astronomy", "botany", "architecture", "medicine", "music", "mathematics", "chemistry", "trade",
    "shipbuilding", "geology", "philosophy", "printing", "engineering", "painting", "agriculture", "law",
)
_NOUNS = (
    "river", "bridge", "harbor", "tower", "garden", "market", "church", "castle", "village", "valley",
    "station", "factory", "school", "library", "theater", "square", "canal", "road", "wall", "palace",
    "mill", "forest", "island", "lake", "hill", "port", "district", "hall", "farm", "mine", "railway",
    "treaty", "charter", "festival", "manuscript", "painting", "statue", "clock", "engine", "ship",
    "collection", "archive", "council", "government", "army", "court", "guild", "company", "community",
    "population", "economy", "climate", "industry", "tradition", "language", "system", "region", "century",
)
_ADJECTIVES = (
    "old", "new", "large", "small", "ancient", "modern", "northern", "southern", "eastern", "western",
    "famous", "important", "local", "royal", "public", "private", "historic", "major", "early", "late",
    "central", "rural", "coastal", "narrow", "wide", "wealthy", "popular", "rare", "complex", "simple",
    "original", "main", "independent", "national", "regional", "quiet", "busy", "remarkable",
)
_VERBS = (  # (base form, past tense)
    ("build", "built"), ("restore", "restored"), ("describe", "described"), ("design", "designed"),
    ("visit", "visited"), ("found", "founded"), ("publish", "published"), ("discover", "discovered"),
    ("replace", "replaced"), ("expand", "expanded"), ("protect", "protected"), ("study", "studied"),
    ("support", "supported"), ("finance", "financed"), ("document", "documented"), ("rebuild", "rebuilt"),
    ("connect", "connected"), ("acquire", "acquired"), ("measure", "measured"), ("record", "recorded"),
)
_PREPOSITIONS = ("near", "along", "behind", "across", "beside", "beyond", "around", "within", "above", "below")
_CONNECTIVES = ("However, ", "Later, ", "In addition, ", "At that time, ", "Meanwhile, ", "Over the years, ",
                "According to local records, ", "By contrast, ", "")
_EVENTS = ("the great flood", "the war", "the revolution", "the election", "the fire", "the merger",
           "the harvest festival", "the plague", "the earthquake", "the reform")


def _capitalize_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _plural(noun: str) -> str:
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    return noun + "s"


class _SquadTextGenerator:
    """Sentences and questions from word lists; every question's answer is a tracked span of its sentence."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, words: tuple) -> Any:
        return words[int(self.rng.integers(len(words)))]

    def person(self) -> str:
        return f"{self.pick(_FIRST_NAMES)} {self.pick(_LAST_NAMES)}"

    def organisation(self) -> str:
        return f"the {self.pick(_INSTITUTIONS)} of {self.pick(_PLACES)}"

    def thing(self) -> str:
        return f"the {self.pick(_ADJECTIVES)} {self.pick(_NOUNS)}"

    def year(self) -> str:
        return str(int(self.rng.integers(1450, 2021)))

    def filler_sentence(self) -> str:
        """A sentence with no question about it (subject, verb, object, optional place and clause)."""
        verb_past = self.pick(_VERBS)[1]
        connective = self.pick(_CONNECTIVES)
        subject = self.thing() if connective else _capitalize_first(self.thing())
        parts = [connective + subject, verb_past, self.thing()]
        shape = int(self.rng.integers(4))
        if shape == 0:
            parts += [self.pick(_PREPOSITIONS), self.thing()]
        elif shape == 1:
            parts += ["in", self.pick(_PLACES) + ",", "which", self.pick(_VERBS)[1], self.thing()]
        elif shape == 2:
            parts += ["after", self.pick(_EVENTS) + ",", "and", "many", _plural(self.pick(_NOUNS)), "were",
                      self.pick(_VERBS)[1], "by", self.person()]
        else:
            parts += ["for", "the", f"{self.pick(_ADJECTIVES)}", "study", "of", self.pick(_FIELDS)]
        return " ".join(parts) + "."

    def fact_sentence(self) -> tuple[str, list[tuple[str, int, int]]]:
        """A sentence and its possible questions: ``[(question, answer_start_in_sentence, answer_length)]``."""
        kind = int(self.rng.integers(6))
        slots: dict[str, str]
        if kind == 0:
            slots = {"org": self.organisation(), "person": self.person(), "year": self.year()}
            template = "{Org} was founded by {person} in {year}."
            questions = [("Who founded {org}?", "person"), ("In what year was {org} founded?", "year")]
        elif kind == 1:
            base, past = self.pick(_VERBS)
            slots = {"person": self.person(), "thing": self.thing(), "place": self.pick(_PLACES),
                     "year": self.year(), "past": past, "base": base}
            template = "In {year}, {person} {past} {thing} in {place}."
            questions = [(f"Who {past} {{thing}} in {{place}}?", "person"),
                         (f"When did {{person}} {base} {{thing}}?", "year"),
                         (f"Where did {{person}} {base} {{thing}} in {{year}}?", "place")]
        elif kind == 2:
            field = self.pick(_FIELDS)
            slots = {"place": self.pick(_PLACES), "noun": self.pick(_NOUNS), "field": field,
                     "tradition": f"{self.pick(_ADJECTIVES)} tradition of {field}"}
            template = "The {noun} of {place} is known for its {tradition}."
            questions = [("What is the {noun} of {place} known for?", "tradition")]
        elif kind == 3:
            slots = {"person": self.person(), "place": self.pick(_PLACES), "event": self.pick(_EVENTS),
                     "org": self.organisation()}
            template = "After {event}, {person} moved to {place} and joined {org}."
            questions = [("Where did {person} move after {event}?", "place"),
                         ("Which institution did {person} join in {place}?", "org")]
        elif kind == 4:
            count = int(self.rng.integers(12, 4000))
            slots = {"number": f"{count:,}", "noun_plural": _plural(self.pick(_NOUNS)), "place": self.pick(_PLACES),
                     "year": self.year()}
            template = "By {year}, the district around {place} had about {number} {noun_plural}."
            questions = [("How many {noun_plural} did the district around {place} have by {year}?", "number")]
        else:
            slots = {"person": self.person(), "thing": self.thing(), "field": self.pick(_FIELDS),
                     "org": self.organisation()}
            template = "{Person}, a professor of {field} at {org}, documented {thing}."
            questions = [("Who documented {thing}?", "person"),
                         ("What did {person} teach at {org}?", "field")]
        sentence, spans = self._render(template, slots)
        rendered = []
        for question_template, answer_slot in questions:
            question = _capitalize_first(question_template.format(**slots))
            start, length = spans[answer_slot]
            rendered.append((question, start, length))
        return sentence, rendered

    @staticmethod
    def _render(template: str, slots: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
        """Fill ``{slot}`` (or ``{Slot}``: capitalised) and return where each slot's text ended up."""
        pieces: list[str] = []
        spans: dict[str, tuple[int, int]] = {}
        position = 0
        for literal, field, _spec, _conversion in string.Formatter().parse(template):
            pieces.append(literal)
            position += len(literal)
            if field is None:
                continue
            value = slots[field] if field in slots else _capitalize_first(slots[field[0].lower() + field[1:]])
            key = field if field in slots else field[0].lower() + field[1:]
            spans[key] = (position, len(value))
            pieces.append(value)
            position += len(value)
        return "".join(pieces), spans


def _question_id(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        candidate = "".join("0123456789abcdef"[int(d)] for d in rng.integers(0, 16, 24))
        if candidate not in taken:
            taken.add(candidate)
            return candidate


def generate_squad_document(question_count: int, seed: int = 0, *, paragraphs_per_article: int = 5) -> dict:
    """A SQuAD v1.1 document with exactly ``question_count`` questions (deterministic for a seed).

    Paragraphs have 120–300 words, except one paragraph per article (at a random position; 20 % with the
    default 5 paragraphs per article) with 350–500 words, which needs more than one 384-token window.
    Each paragraph asks 1–5 questions; each answer is a span
    of the paragraph (1–3 ground-truth answers per question, the extra ones shorter spans of the first,
    like the several annotators of the dev set).
    """
    rng = np.random.default_rng(seed)
    writer = _SquadTextGenerator(rng)
    taken_ids: set[str] = set()
    articles: list[dict] = []
    remaining = question_count
    while remaining > 0:
        article_title = f"{writer.pick(_PLACES)}_{writer.pick(_NOUNS)}".replace(" ", "_")
        article = {"title": article_title, "paragraphs": []}
        long_paragraph_position = int(rng.integers(paragraphs_per_article))
        for position in range(paragraphs_per_article):
            if remaining <= 0:
                break
            long_paragraph = position == long_paragraph_position
            target_words = int(rng.integers(350, 501) if long_paragraph else rng.integers(120, 301))
            question_slots = min(remaining, int(rng.integers(1, 6)))
            paragraph = _generate_paragraph(writer, rng, target_words, question_slots, taken_ids)
            remaining -= len(paragraph["qas"])
            article["paragraphs"].append(paragraph)
        articles.append(article)
    return {"version": "1.1", "data": articles}


def _generate_paragraph(writer: _SquadTextGenerator, rng: np.random.Generator, target_words: int,
                        question_count: int, taken_ids: set[str]) -> dict:
    facts = [writer.fact_sentence() for _ in range(question_count)]
    filler_words_needed = max(0, target_words - sum(len(sentence.split()) for sentence, _ in facts))
    fillers: list[str] = []
    while filler_words_needed > 0:
        sentence = writer.filler_sentence()
        fillers.append(sentence)
        filler_words_needed -= len(sentence.split())
    # Place the fact sentences at random positions among the filler sentences.
    sentences: list[tuple[str, list | None]] = [(s, None) for s in fillers]
    for sentence, questions in facts:
        sentences.insert(int(rng.integers(len(sentences) + 1)), (sentence, questions))

    context_parts: list[str] = []
    position = 0
    qas: list[dict] = []
    for sentence, questions in sentences:
        if context_parts:
            context_parts.append(" ")
            position += 1
        if questions is not None:
            question, start_in_sentence, answer_length = questions[int(rng.integers(len(questions)))]
            answer_start = position + start_in_sentence
            answer_text = sentence[start_in_sentence:start_in_sentence + answer_length]
            qas.append({"question": question, "id": _question_id(rng, taken_ids),
                        "answers": _annotator_answers(rng, answer_text, answer_start)})
        context_parts.append(sentence)
        position += len(sentence)
    return {"context": "".join(context_parts), "qas": qas}


def _annotator_answers(rng: np.random.Generator, text: str, start: int) -> list[dict]:
    """1–3 answers: the span itself, repeated or shortened by leading words (still spans of the context)."""
    answers = [{"answer_start": start, "text": text}]
    for _ in range(int(rng.integers(0, 3))):
        words = text.split(" ")
        if len(words) > 1 and rng.random() < 0.5:
            dropped = int(rng.integers(1, len(words)))
            prefix = " ".join(words[:dropped]) + " "
            answers.append({"answer_start": start + len(prefix), "text": text[len(prefix):]})
        else:
            answers.append({"answer_start": start, "text": text})
    return answers


def make_squad_dataset(out: Path, count: int, seed: int = 0) -> Path:
    """Write ``count`` synthetic questions as ``out/dev-v1.1.json`` (SQuAD v1.1, UTF-8); return that file."""
    if count < 1:
        raise ValueError("count must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = generate_squad_document(count, seed)
    path = out / SQUAD_DEV_FILE_NAME
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path
