"""Imports only go downward (issue 12): the library never imports the task registrations
(``tasks``, which import the library), and the modules of ``glauber_jax`` and ``tasks`` import
each other without a cycle, function-local imports included."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import subprocess
import sys
import textwrap
from typing import Iterator, Mapping, Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("glauber_jax", "tasks")

#: The command-line modules of ``glauber_jax`` that may import ``tasks`` (the task registrations
#: gin files name), each with the top-level functions or classes whose bodies may hold the
#: import; ``None``: anywhere in the module. Every other module of ``glauber_jax`` is library
#: code and never imports ``tasks``.
TASK_IMPORTERS: dict[str, Optional[frozenset[str]]] = {
    "glauber_jax.train": frozenset({"main"}),
    "glauber_jax.infer": frozenset({"main"}),
    "glauber_jax.eval": frozenset({"main"}),
    "glauber_jax.data.__main__": frozenset({"main"}),
    "glauber_jax.zero_shot.__main__": frozenset({"main"}),
    # The testbed's command line: its main passes tasks.registry to the runner.
    "glauber_jax.testbed.__main__": frozenset({"main"}),
    # The quick start's main passes tasks.registry to the synthetic pipeline's exact judge.
    "glauber_jax.quickstart": frozenset({"main"}),
}

#: Third-party packages a module may need that an installation can lack: a module failing to
#: import for one of these is skipped, not failed.
OPTIONAL_DEPENDENCIES = ("tensorflow", "seqio", "torch", "transformers", "mauve")


@dataclasses.dataclass(frozen=True)
class Import:
  """One import statement's target module.

  Attributes:
    target: the imported module of the scanned packages (the longest one the name names).
    line: where the statement is.
    scope: the top-level function or class around it (None at module level).
  """

  target: str
  line: int
  scope: Optional[str]


def module_files(root: pathlib.Path, packages: Sequence[str]) -> dict[str, pathlib.Path]:
  """Every module of ``packages`` under ``root``, by dotted name (a package by its own name)."""
  modules = {}
  for package in packages:
    for path in sorted((root / package).rglob("*.py")):
      parts = path.relative_to(root).with_suffix("").parts
      modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return modules


def _statements(tree: ast.Module) -> Iterator[tuple[Optional[str], ast.AST]]:
  """Every node of the module with the top-level function or class it sits in."""
  for statement in tree.body:
    scope = (statement.name if isinstance(
        statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else None)
    for node in ast.walk(statement):
      yield scope, node


def _known(name: str, modules: Mapping[str, pathlib.Path]) -> Optional[str]:
  """The longest module of ``modules`` that ``name`` is or lies in, if any."""
  parts = name.split(".")
  for end in range(len(parts), 0, -1):
    if ".".join(parts[:end]) in modules:
      return ".".join(parts[:end])
  return None


def imports_of(module: str, modules: Mapping[str, pathlib.Path]) -> list[Import]:
  """The imports of ``module`` that land in ``modules``, wherever they are in the file."""
  path = modules[module]
  tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = []
  for scope, node in _statements(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
      names = [f"{base}.{alias.name}" for alias in node.names]  # A submodule, else a name.
    else:
      continue
    for name in names:
      target = _known(name, modules)
      if target is not None:
        found.append(Import(target, node.lineno, scope))
  return found


def import_graph(modules: Mapping[str, pathlib.Path]) -> dict[str, set[str]]:
  """``module -> the modules it imports``. A module importing itself (the command lines'
  ``if __name__ == "__main__"`` re-entry, so gin sees one module) is no edge."""
  return {module: {i.target for i in imports_of(module, modules)} - {module}
          for module in modules}


def find_cycle(graph: Mapping[str, set[str]]) -> Optional[list[str]]:
  """One import cycle of ``graph`` (its first module repeated at the end), or None."""
  done: set[str] = set()
  path: list[str] = []
  on_path: set[str] = set()

  def visit(module: str) -> Optional[list[str]]:
    path.append(module)
    on_path.add(module)
    for target in sorted(graph.get(module, ())):
      if target in on_path:
        return path[path.index(target):] + [target]
      if target not in done:
        cycle = visit(target)
        if cycle:
          return cycle
    path.pop()
    on_path.remove(module)
    done.add(module)
    return None

  for module in sorted(graph):
    if module not in done:
      cycle = visit(module)
      if cycle:
        return cycle
  return None


def test_the_scan_sees_function_local_imports_and_reports_a_cycle(
    tmp_path: pathlib.Path) -> None:
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "__init__.py").write_text("")
  (tmp_path / "pkg" / "a.py").write_text("def main():\n  from pkg import b\n")
  (tmp_path / "pkg" / "b.py").write_text("from . import c\n")
  (tmp_path / "pkg" / "c.py").write_text("import pkg.a as a\nimport pkg.c\n")
  modules = module_files(tmp_path, ["pkg"])
  assert imports_of("pkg.a", modules) == [Import("pkg.b", 2, "main")]
  assert find_cycle(import_graph(modules)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
  (tmp_path / "pkg" / "c.py").write_text("import pkg\n")
  assert find_cycle(import_graph(module_files(tmp_path, ["pkg"]))) is None


def test_the_library_never_imports_tasks() -> None:
  modules = module_files(ROOT, PACKAGES)
  assert set(TASK_IMPORTERS) <= set(modules), "an allow-listed module no longer exists"
  offending = []
  for module in sorted(m for m in modules if m.startswith("glauber_jax")):
    allowed = TASK_IMPORTERS.get(module, frozenset())
    for found in imports_of(module, modules):
      if found.target.split(".")[0] == "tasks" and allowed is not None and (
          found.scope not in allowed):
        offending.append(f"{modules[module].relative_to(ROOT)}:{found.line} imports "
                         f"{found.target} (in {found.scope or 'module-level code'})")
  assert not offending, (
      "library modules import the task registrations, which import the library: "
      + "; ".join(offending) + ". Pass what they need in from a command line's main "
      "(TASK_IMPORTERS lists the command lines) or move it into glauber_jax.")


def test_no_import_cycle() -> None:
  cycle = find_cycle(import_graph(module_files(ROOT, PACKAGES)))
  assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_every_module_imports_in_a_fresh_interpreter() -> None:
  modules = [m for m in module_files(ROOT, ["glauber_jax"]) if not m.endswith(".__main__")]
  code = textwrap.dedent("""
      import importlib, sys, traceback
      optional, failed = set(sys.argv[1].split(",")), 0
      for name in sys.argv[2:]:
        try:
          importlib.import_module(name)
        except ModuleNotFoundError as error:
          if (error.name or "").split(".")[0] not in optional:
            failed += 1
            traceback.print_exc()
          else:
            print(f"skipped {name}: {error.name} is not installed")
        except Exception:  # pylint: disable=broad-except
          failed += 1
          traceback.print_exc()
      sys.exit(failed)
  """)
  result = subprocess.run(
      [sys.executable, "-c", code, ",".join(OPTIONAL_DEPENDENCIES), *modules, "tasks"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
