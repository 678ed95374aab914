"""Notebook parameters: what the ``parameters`` cell declares, and checking ``-p key=value`` against it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

RESERVED = ("profile",)  # set with --profile, never with -p
_BARE = re.compile(r"^[A-Za-z_][\w.\-:/+]*$")


class ParameterError(ValueError):
    """A ``-p`` override names an undeclared parameter, or its value does not parse."""


def read_notebook(path: Path | str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def parameters_cell(nb: dict) -> dict | None:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def declared_parameters(nb: dict, where: str = "notebook") -> dict[str, Any]:
    """Names and default values assigned in the cell tagged ``parameters`` (literals only)."""
    cell = parameters_cell(nb)
    if cell is None:
        raise ParameterError(f"{where}: no code cell tagged 'parameters'")
    declared: dict[str, Any] = {}
    for node in ast.parse(cell_source(cell)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, value = node.target.id, node.value
        else:
            continue
        try:
            declared[target] = ast.literal_eval(value)
        except ValueError:
            raise ParameterError(f"{where}: parameter {target!r} must have a literal default") from None
    return declared


def parse_value(raw: str) -> Any:
    """A Python literal (``3``, ``1e-3``, ``[64, 256]``, ``None``, ``'x'``) or a bare word (``cuda``)."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if _BARE.match(raw):
            return raw
        raise ParameterError(f"value {raw!r} does not parse as a Python literal") from None


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ParameterError(f"-p {item!r}: expected key=value")
        if key in RESERVED:
            raise ParameterError(f"-p {key}=...: use --{key} instead")
        try:
            out[key] = parse_value(raw.strip())
        except ParameterError as exc:
            raise ParameterError(f"-p {key}: {exc}") from None
    return out


def _compatible(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_overrides(declared: dict[str, Any], overrides: dict[str, Any], where: str) -> None:
    for key, value in overrides.items():
        if key not in declared:
            known = ", ".join(k for k in declared if k not in RESERVED)
            raise ParameterError(f"{where}: -p {key}: the notebook declares no such parameter (it has: {known})")
        if not _compatible(declared[key], value):
            raise ParameterError(f"{where}: -p {key}={value!r}: expected a value like its default "
                                 f"{declared[key]!r} ({type(declared[key]).__name__})")
