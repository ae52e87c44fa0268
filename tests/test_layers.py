"""The layering README's module diagram states: every import (lazy and type-only ones too)
points down or sideways, never up; only render prints with rich; no CLI module edits a
loaded checkpoint."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ckpt_tool"

# Bottom first. A module may import its own layer and the layers below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "keys", "memory", "progress", "reports")),
    ("formats", ("formats",)),
    ("readers", ("checkpoint", "tensors")),
    ("surgery", ("surgery",)),
    (
        "library",
        (
            "inspection",
            "edit",
            "apply",
            "casting",
            "compare",
            "lora",
            "transplanting",
            "archs",
            "seed_models",
            "scanning",
            "stats",
            "train",
            "train_dist",
        ),
    ),
    ("output", ("output",)),
    ("api", ("api", "demo")),
    ("render", ("render",)),
    ("cli", ("cli", "entry", "__main__", "__init__")),
]


def _layer(module: str) -> int:
    """Layer index of a dotted module name inside ckpt_tool ('formats.writer' -> 1)."""
    head = module.split(".")[0]
    for i, (_, members) in enumerate(LAYERS):
        if head in members:
            return i
    raise AssertionError(f"ckpt_tool.{module} is in no layer of tests/test_layers.py")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """ckpt_tool modules imported anywhere in the file (functions, TYPE_CHECKING too)."""
    package = module.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith("ckpt_tool"):
                target = node.module.removeprefix("ckpt_tool").lstrip(".")
            else:
                continue
            if not target:  # `from ckpt_tool import x`: x is the module
                found += [(a.name, node.lineno) for a in node.names]
            else:
                found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ckpt_tool."):
                    found.append((alias.name.removeprefix("ckpt_tool."), node.lineno))
    return found


def test_every_module_has_a_layer() -> None:
    for module, _ in _modules():
        _layer(module or "__init__")


def test_no_import_points_up() -> None:
    up = []
    for module, path in _modules():
        mine = _layer(module or "__init__")
        for target, line in _imports(module, path):
            if target.split(".")[0] in {m for _, ms in LAYERS for m in ms}:
                theirs = _layer(target)
                if theirs > mine:
                    up.append(
                        f"{path.relative_to(PACKAGE.parent)}:{line}: {module or '__init__'} "
                        f"({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})"
                    )
    assert not up, "imports pointing up a layer:\n" + "\n".join(up)


def test_only_render_imports_rich() -> None:
    offenders = []
    for module, path in _modules():
        if module.split(".")[0] == "render":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            if any(n == "rich" or n.startswith("rich.") for n in names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders


@pytest.mark.parametrize("path", sorted((PACKAGE / "cli").glob("*.py")), ids=lambda p: p.name)
def test_cli_never_assigns_to_a_checkpoint(path: Path) -> None:
    """CLI modules parse, call the library and render; state never flows through them."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                # a decorator may set a function's __signature__ (the shared write options)
                if isinstance(t, ast.Attribute) and t.attr == "__signature__":
                    continue
                # the CLI's own objects (the lazy command group) keep their own state
                if isinstance(t, ast.Attribute) and ast.unparse(t.value) == "self":
                    continue
                assert not isinstance(t, ast.Attribute), (
                    f"{path.name}:{node.lineno}: assigns to an attribute"
                )
