"""Can training start data-loader processes with the "spawn" method from this process?

A spawned process re-runs the main script (as ``__mp_main__``) before it can
unpickle its work. napari examples are often scripts without an ``if __name__ ==
"__main__":`` guard; re-running one opens a second viewer in the worker and
blocks in ``napari.run()``, so the data loader never delivers a batch and
training waits forever. :func:`unguarded_main_script` detects that case so the
Train widget can make the data in its own process instead. No Qt here.
"""

from __future__ import annotations

import ast
import os
import sys
from types import ModuleType

__all__ = ["runs_code_on_import", "unguarded_main_script"]

#: Top-level statements that do nothing but define names when a script is imported.
_DEFINITIONS = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Pass,
)


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, *test.comparators]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1


def _has_call(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.Call, ast.Await)) for n in ast.walk(node))


def runs_code_on_import(source: str) -> bool:
    """Whether importing a script with this source does more than define names.

    Imports, function and class definitions, docstrings, assignments without
    calls and ``if __name__ == "__main__":`` blocks are harmless; anything
    else (``viewer = napari.Viewer()``, ``napari.run()``) runs again in every
    spawned process. Source that does not parse counts as unsafe.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return True
    for node in tree.body:
        if isinstance(node, _DEFINITIONS) or _is_main_guard(node):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and not _has_call(node):
            continue
        return True
    return False


def unguarded_main_script(main: ModuleType | None = None) -> str | None:
    """The main script that spawned processes would re-run with side effects, or None.

    Follows :mod:`multiprocessing.spawn`: a main module run with ``-m`` is
    re-imported by name (unless it is a package's ``__main__``), a script by
    path (unless it is IPython); interactive sessions re-run nothing.

    Parameters
    ----------
    main : module, optional
        The ``__main__`` module to judge (default: this process's).
    """
    main = sys.modules.get("__main__") if main is None else main
    if main is None:
        return None
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None:
        if name == "__main__" or name.endswith(".__main__"):
            return None
        path = getattr(spec, "origin", None)
    else:
        path = getattr(main, "__file__", None)
        if path is not None and os.path.splitext(os.path.basename(path))[0].lower() == "ipython":
            return None
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            source = fh.read()
    except (OSError, UnicodeDecodeError):
        return path
    return path if runs_code_on_import(source) else None
