"""Application registry: the four built-in MLPerf applications plus third-party ones.

Third-party apps register an :class:`~e2ebench.apps.base.App` subclass under the entry-point
group ``e2ebench.apps``::

    [project.entry-points."e2ebench.apps"]
    myapp = "mypackage.myapp:MyApp"
"""

from __future__ import annotations

import importlib
from importlib import metadata

from e2ebench.apps.base import App, AppError, SampleError, SampleRef

BUILTIN_APPS: dict[str, str] = {
    "ic": "e2ebench.apps.image_classification:ImageClassification",
    "sr": "e2ebench.apps.speech_recognition:SpeechRecognition",
    "nlp": "e2ebench.apps.question_answering:QuestionAnswering",
    "rs": "e2ebench.apps.recommendation:Recommendation",
}

ENTRY_POINT_GROUP = "e2ebench.apps"


class UnknownAppError(AppError):
    pass


def _targets() -> dict[str, str]:
    targets = dict(BUILTIN_APPS)
    try:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            targets.setdefault(ep.name, ep.value)
    except Exception:  # pragma: no cover - broken third-party metadata must not break the built-ins
        pass
    return targets


def app_names() -> list[str]:
    return list(_targets())


def get_app_class(name: str) -> type[App]:
    targets = _targets()
    key = name.strip().lower()
    if key not in targets:
        raise UnknownAppError(f"unknown application {name!r}; known applications: {', '.join(targets)}")
    module_name, _, attr = targets[key].partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, App)):
        raise UnknownAppError(f"{targets[key]} is not an e2ebench App subclass")
    return cls


def create_app(name: str, variant: str = "full", backend: str = "torch", options: dict | None = None) -> App:
    return get_app_class(name)(variant=variant, backend=backend, options=options)


__all__ = ["App", "AppError", "SampleError", "SampleRef", "UnknownAppError", "app_names", "get_app_class", "create_app"]
