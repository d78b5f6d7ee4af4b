"""Readable output everywhere (issue 10, parts 4 and 5): `apps` shows every option whole, `study` prints one plain
line per finished run when its output is not a terminal, and `show`, `report` and `recommend` read the ad-hoc runs
of `e2ebench run`."""

from __future__ import annotations

import json
import re

from conftest import run_cli, run_json

from e2ebench.apps import app_names, get_app_class

# ---------------------------------------------------------------------------------------------
# apps


def test_apps_shows_every_option_name_whole_at_80_columns():
    proc = run_cli(["apps"], env={"COLUMNS": "80"})           # captured: not a terminal
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "…" not in out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    for name in app_names():
        cls = get_app_class(name)
        assert re.search(rf"^{name} — {re.escape(cls.title)}$", out, re.M), cls.title
        for option in cls.options:
            assert re.search(rf"(?<![\w…]){option.name}(?![\w…])", out), option.name
    assert "e2ebench apps APP" in out


def test_apps_app_shows_each_option_with_meaning_type_and_default():
    proc = run_cli(["apps", "sr"], env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())                      # the help is wrapped at spaces
    cls = get_app_class("sr")
    for option in cls.options:
        assert f"{option.name} type: {option.type_name}; default: {option.default}" in text, option.name
        assert " ".join(option.help.split()) in text
    assert "type: integer >= 1, or auto; default: auto" in text
    proc = run_cli(["apps", "nlp"], env={"COLUMNS": "80"})
    assert "vocab type: path; default: none" in " ".join(proc.stdout.split())
    proc = run_cli(["apps", "no-such-app"])
    assert proc.returncode == 2 and "unknown application" in proc.stderr


def test_apps_json_keeps_its_keys_and_adds_types():
    rc, rows, _ = run_json(["apps"])
    assert rc == 0 and [r["name"] for r in rows] == list(app_names())
    for row in rows:
        assert {"name", "title", "model", "input", "backends", "default_requests", "default_batch_size",
                "options"} <= set(row)
        for option in row["options"]:
            assert {"name", "default", "help", "type"} <= set(option)
    rc, row, _ = run_json(["apps", "rs"])
    assert rc == 0 and row == next(r for r in rows if r["name"] == "rs")
    assert {o["name"]: o["type"] for o in row["options"]}["max_rows_per_table"] == "integer"
    json.dumps(row)
