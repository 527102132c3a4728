"""The package's modules use each other only through public names.

A name with a leading underscore is private to its module: no other daskgen module
imports it (``from .x import _name``) or reaches for it (``module._name``). A helper
that two modules need lives where both can import it publicly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import daskgen

PACKAGE = Path(daskgen.__file__).parent


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _violations(module: str, path: Path, modules: dict[str, Path]) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found, aliases = [], {}  # local name -> daskgen module it names
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node)
            if not source.startswith("daskgen"):
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in modules:  # a submodule imported by name
                    aliases[alias.asname or alias.name] = target
                    if _private(alias.name) and source != module.rpartition(".")[0]:
                        found.append(f"{path.name}:{node.lineno} imports module {target}")
                elif _private(alias.name) and source != module:
                    found.append(f"{path.name}:{node.lineno} from {source} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("daskgen"):
                    aliases[alias.asname or alias.name.split(".")[0]] = (alias.asname and alias.name) or "daskgen"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
            target = aliases.get(node.value.id)
            if target is not None and target != module:
                found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr} ({target})")
    return found


def test_no_private_names_cross_modules():
    modules = _modules()
    bad = [f"{name}: {v}" for name, path in modules.items() for v in _violations(name, path, modules)]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_the_scan_sees_a_private_import(tmp_path):
    modules = {"daskgen.a": tmp_path / "a.py", "daskgen.b": tmp_path / "b.py"}
    (tmp_path / "b.py").write_text("from .a import _hidden, shown\nfrom . import a\na._inner()\n")
    found = _violations("daskgen.b", tmp_path / "b.py", modules)
    assert len(found) == 2 and "_hidden" in found[0] and "a._inner" in found[1]
