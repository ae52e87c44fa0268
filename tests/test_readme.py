"""README.md cannot drift: every example reruns, numbers and all (docs/readme_examples.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from conftest import REPO


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "readme_examples", REPO / "docs" / "readme_examples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_examples"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_readme_example_reruns_exactly(tmp_path: Path) -> None:
    rx = _module()
    found = rx.examples(rx.README.read_text().splitlines())
    assert len(found) >= 20, "README lost its examples"
    rx.make_inputs(tmp_path)
    problems = rx.check(tmp_path)
    assert not problems, "README drifted; rerun `python docs/readme_examples.py --update`:\n\n" + (
        "\n\n".join(problems)
    )


def test_matching_rules() -> None:
    rx = _module()
    assert rx.matches(["a", "b"], ["a", "b"])
    assert not rx.matches(["a", "b"], ["a", "c"])
    assert rx.matches(["...", "z"], ["x", "y", "z"])
    assert rx.matches(["a", "...", "m", "...", "z"], ["a", "b", "m", "n", "z"])
    assert not rx.matches(["a", "...", "q", "...", "z"], ["a", "b", "m", "n", "z"])
    assert rx.updated(["h", "...", "t"], ["h", "1", "2", "t"]) == ["h", "...", "t"]
