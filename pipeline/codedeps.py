"""Which `pipeline/` files a module or a `ham` command runs, found by reading the code (no import).

`closure(modules)` is the transitive closure of the package's modules that the given modules import: relative
and absolute imports (`from .x import y`, `from . import sources`, `import pipeline.x`), imports inside
functions too (a lazy import runs when the function does), every package's `__init__` on the way to a module,
and the readers a registry loads by name (`importlib.import_module(f"{__name__}.{name}")` with the names taken
from the module's literal registry dict, e.g. `sources.KINDS`). An import made some other way at run time is an
error here rather than a silent gap.

Two uses keep code and data in step:
- `code_version(module)` hashes the closure's files (path and bytes): the code part of per-image cache keys, so
  editing any file a stage's per-image work runs (e.g. `imaging.py` for standardise) invalidates its cache.
- `stage_files(cmd)` gives the files `ham <command> ...` runs (cli.py's module-level imports, which run for every
  command, plus the command function's own lazy imports, and their closure); `stage_dep_problems` compares them
  with a stage's `deps` in `dvc.yaml` (tests/test_dvc_graph.py runs it on every stage).
"""
from __future__ import annotations

import ast
import hashlib
import shlex
from pathlib import Path, PurePosixPath
from types import ModuleType

import yaml

PACKAGE_ROOT = Path(__file__).resolve().parent  # looked up at call time, so a test can point it at a copy
CLI_MODULE = "cli"
CLICK_SUFFIXES = ("command", "cmd", "group", "grp")  # click drops these from a function name ('-' + suffix)


class CodeDepsError(Exception):
    """The code cannot be analysed (an import made by a name computed at run time, an unknown command...)."""


# --- modules and their imports ---------------------------------------------------------------------------------


def _root(root: Path | None) -> Path:
    return Path(root) if root is not None else PACKAGE_ROOT


def module_file(name: str, root: Path | None = None) -> Path | None:
    """The file of module `name` ('pipeline.sources.export'), or None when the package has no such module."""
    root = _root(root)
    parts = name.split(".")
    if parts[0] != root.name:
        return None
    base = root.joinpath(*parts[1:])
    for path in (base / "__init__.py", base.with_suffix(".py") if len(parts) > 1 else None):
        if path is not None and path.is_file():
            return path
    return None


def _is_package(name: str, root: Path) -> bool:
    path = module_file(name, root)
    return path is not None and path.name == "__init__.py"


def _parse(name: str, root: Path) -> ast.Module:
    path = module_file(name, root)
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as error:
        raise CodeDepsError(f"{path}:{error.lineno}: cannot parse ({error.msg})") from None


def _own_package(name: str, root: Path) -> str:
    return name if _is_package(name, root) else name.rpartition(".")[0]


def _from_import_targets(node: ast.ImportFrom, name: str, root: Path) -> set[str]:
    if node.level:
        base = _own_package(name, root).split(".")
        if node.level > len(base):
            raise CodeDepsError(f"{module_file(name, root)}:{node.lineno}: relative import beyond the package")
        base = ".".join(base[:len(base) - node.level + 1])
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    if target.split(".")[0] != root.name:
        return set()
    found = {target}
    for alias in node.names:  # `from . import sources`: a submodule, not only a name of the package
        if module_file(f"{target}.{alias.name}", root):
            found.add(f"{target}.{alias.name}")
    return found


def _is_import_module_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return called in ("import_module", "__import__")


def _registry_modules(tree: ast.Module, name: str, root: Path) -> set[str]:
    """Submodules named by the module's literal registry dicts: values `(module, function, ...)`."""
    found = set()
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if not (isinstance(value, ast.Dict) and value.values and all(
                isinstance(entry, ast.Tuple) and entry.elts and isinstance(entry.elts[0], ast.Constant)
                and isinstance(entry.elts[0].value, str) for entry in value.values)):
            continue
        for entry in value.values:
            submodule = f"{name}.{entry.elts[0].value}"
            if module_file(submodule, root) is None:
                raise CodeDepsError(f"{module_file(name, root)}:{entry.lineno}: registry names module "
                                    f"'{entry.elts[0].value}', which {name} does not have")
            found.add(submodule)
    return found


def _dynamic_imports(node: ast.Call, tree: ast.Module, name: str, root: Path) -> set[str]:
    """`import_module(f"{__name__}.{x}")` in a package: the modules its registry names. Anything else: an error."""
    where = f"{module_file(name, root)}:{node.lineno}"
    arg = node.args[0] if node.args else None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value} if arg.value.split(".")[0] == root.name else set()
    if (isinstance(arg, ast.JoinedStr) and len(arg.values) >= 2 and isinstance(arg.values[0], ast.FormattedValue)
            and isinstance(arg.values[0].value, ast.Name) and arg.values[0].value.id == "__name__"
            and isinstance(arg.values[1], ast.Constant) and arg.values[1].value == "."
            and _is_package(name, root)):
        found = _registry_modules(tree, name, root)
        if found:
            return found
    raise CodeDepsError(f"{where}: imports a module by a name computed at run time; keep the names in a literal "
                        f"registry dict of (module, function) and import f\"{{__name__}}.{{module}}\"")


def _imports_in(nodes, tree: ast.Module, name: str, root: Path) -> set[str]:
    found = set()
    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.split(".")[0] == root.name}
            elif isinstance(node, ast.ImportFrom):
                found |= _from_import_targets(node, name, root)
            elif _is_import_module_call(node):
                found |= _dynamic_imports(node, tree, name, root)
    return found


def direct_imports(name: str, root: Path | None = None) -> set[str]:
    """The package's modules that module `name` imports anywhere in its code (functions included)."""
    root = _root(root)
    path = module_file(name, root)
    stat = path.stat() if path is not None else None
    stamp = (name, str(root), str(path), stat and (stat.st_mtime_ns, stat.st_size, stat.st_ino))
    if stamp not in _IMPORTS_SEEN:  # parsed once a process while the file is unchanged (code_version runs often)
        tree = _parse(name, root)
        _IMPORTS_SEEN[stamp] = frozenset(_imports_in([tree], tree, name, root))
    return set(_IMPORTS_SEEN[stamp])


_IMPORTS_SEEN: dict[tuple, frozenset] = {}


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _module_name(module: ModuleType | str, root: Path) -> str:
    name = module.__name__ if isinstance(module, ModuleType) else module
    if module_file(name, root) is None:
        raise CodeDepsError(f"{name}: not a module of package {root.name} ({root})")
    return name


def closure(modules, root: Path | None = None) -> set[str]:
    """Every module of the package that importing (and running) `modules` may execute, themselves included."""
    root = _root(root)
    todo = [name for module in modules for name in _with_parents(_module_name(module, root))]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root)
        if path is None:
            continue  # `from .common import PipelineError` also names an attribute: not a module, no file
        seen.add(name)
        for imported in direct_imports(name, root):
            todo.extend(_with_parents(imported))
    return seen


def relative_path(name: str, root: Path | None = None) -> str:
    """'pipeline/sources/__init__.py': the module's file relative to the folder holding the package."""
    root = _root(root)
    return module_file(name, root).relative_to(root.parent).as_posix()


def closure_files(modules, root: Path | None = None) -> list[str]:
    root = _root(root)
    return sorted(relative_path(name, root) for name in closure(modules, root))


def code_version(*modules: ModuleType | str, root: Path | None = None) -> str:
    """Hash of the files in the modules' closure (sorted, path and bytes): the code part of per-image cache keys."""
    root = _root(root)
    digest = hashlib.sha256()
    this = f"{root.name}/{Path(__file__).name}"  # computes the key, shapes no cached bytes
    for path in (path for path in closure_files(modules, root) if path != this):
        data = (root.parent / path).read_bytes()
        digest.update(f"{path}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


# --- `ham` commands ---------------------------------------------------------------------------------------------


def _click_name(function: str) -> str:
    name = function.lower().replace("_", "-")
    left, sep, suffix = name.rpartition("-")
    return left if sep and suffix in CLICK_SUFFIXES else name


def _command_name(decorator: ast.AST, function: str) -> str | None:
    """The command name when `decorator` makes a command (`@<group>.command(...)`, or a factory of the module
    whose name ends in `command`, e.g. `@stage_command("ingest")`), else None."""
    call = decorator if isinstance(decorator, ast.Call) else None
    func = call.func if call else decorator
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if not called.endswith("command"):
        return None
    if call and call.args and isinstance(call.args[0], ast.Constant):
        return call.args[0].value
    for keyword in call.keywords if call else ():
        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return _click_name(function)


def commands(root: Path | None = None) -> dict[str, ast.FunctionDef | None]:
    """`ham` command name -> its function in cli.py (None for a command added from another module, whose code
    is among cli.py's module-level imports)."""
    root = _root(root)
    tree = _parse(f"{root.name}.{CLI_MODULE}", root)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    found: dict[str, ast.FunctionDef | None] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                name = _command_name(decorator, node.name)
                if name:
                    found[name] = node
        elif (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
              and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "add_command"):
            call = node.value
            name = (call.args[1].value if len(call.args) > 1 and isinstance(call.args[1], ast.Constant)
                    else _click_name(call.args[0].id) if call.args and isinstance(call.args[0], ast.Name) else None)
            if name:
                local = call.args[0].id if call.args and isinstance(call.args[0], ast.Name) else None
                found[name] = functions.get(local)
    return found


def _called_names(nodes) -> set[str]:
    """Names called in `nodes` (`f(...)`), and bare decorators (`@f`), which are called too."""
    names = set()
    for top in nodes:
        if isinstance(top, ast.Name):
            names.add(top.id)
        for node in ast.walk(top):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names.add(node.func.id)
    return names


def command_modules(command: str, root: Path | None = None) -> set[str]:
    """The modules `ham <command>` runs: cli.py's module-level imports (with those of its functions called at
    import time, e.g. a decorator factory), the imports inside the command's function and inside the functions of
    cli.py it names (helpers, decorators), and their closure."""
    root = _root(root)
    cli = f"{root.name}.{CLI_MODULE}"
    tree = _parse(cli, root)
    known = commands(root)
    if command not in known:
        raise CodeDepsError(f"ham {command}: no such command in {relative_path(cli, root)} "
                            f"(known: {', '.join(sorted(known))})")
    functions = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    module_level = [node for node in tree.body if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    # A module-level function's decorators run at import time, and so do the module's functions they call.
    module_level += [decorator for node in functions.values() for decorator in node.decorator_list]
    imported = _imports_in(module_level, tree, cli, root)
    at_import = [functions[name] for name in _called_names(module_level) if name in functions]

    def follow(todo: list, seen: set) -> set[str]:
        """Imports inside the given functions and inside the module's functions they name, transitively."""
        found = set()
        while todo:
            function = todo.pop()
            if function.name in seen:
                continue
            seen.add(function.name)
            found |= _imports_in([function], tree, cli, root)
            todo.extend(functions[node.id] for node in ast.walk(function)
                        if isinstance(node, ast.Name) and node.id in functions)
        return found

    imported |= follow(at_import, set())
    imported |= follow([known[command]] if known[command] else [], set())
    # cli.py itself is not followed as a whole: its other commands' lazy imports are not this command's.
    return closure(imported, root) | _with_parents(cli)


def stage_files(cmd: str, root: Path | None = None) -> list[str]:
    """The package files a dvc.yaml `cmd` ('ham <command> ...') runs, relative to the folder holding the package."""
    words = shlex.split(cmd)
    if len(words) < 2 or words[0] != "ham":
        raise CodeDepsError(f"cmd '{cmd}': expected 'ham <command> ...'")
    root = _root(root)
    return sorted(relative_path(name, root) for name in command_modules(words[1], root))


# --- dvc.yaml ----------------------------------------------------------------------------------------------------


def _covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep + "/")


def stage_dep_problems(dvc_yaml: Path, root: Path | None = None) -> list[str]:
    """One line per stage dependency problem in `dvc_yaml`: a package file the stage's command runs that no dep
    covers (an edit to it would not rebuild the stage), or a dep under the package that covers a Python file
    the command does not run (deps stay honest). Data files inside the package (e.g. rules/) are left alone."""
    root = _root(root)
    stages = (yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")) or {}).get("stages") or {}
    package = root.name
    problems = []
    for stage, spec in stages.items():
        deps = [str(dep).rstrip("/") for dep in spec.get("deps") or []]
        try:
            needed = stage_files(spec["cmd"], root)
        except CodeDepsError as error:
            problems.append(f"stage {stage}: {error}")
            continue
        command = " ".join(shlex.split(spec["cmd"])[:2])
        for path in needed:
            if not any(_covers(dep, path) for dep in deps):
                problems.append(f"stage {stage}: {path} runs in `{command}` but no dep covers it")
        for dep in deps:
            if not _covers(package, dep):
                continue
            on_disk = root.parent / dep
            python = ([dep] if dep.endswith(".py") else
                      sorted(PurePosixPath(dep, p.relative_to(on_disk).as_posix()).as_posix()
                             for p in on_disk.rglob("*.py")) if on_disk.is_dir() else [])
            unused = [path for path in python if path not in needed]
            if dep.endswith(".py") and unused:
                problems.append(f"stage {stage}: dep {dep} is not code `{command}` runs")
            elif unused:
                problems.append(f"stage {stage}: dep {dep} covers {', '.join(unused)}, not code `{command}` runs")
    return problems


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.codedeps [dvc.yaml]`: print each stage dependency problem; exit 1 if there is one."""
    import sys

    path = Path((argv if argv is not None else sys.argv[1:] or ["dvc.yaml"])[0])
    if not path.is_file():
        print(f"{path}: file not found", file=sys.stderr)
        return 1
    problems = stage_dep_problems(path)
    print("\n".join(problems) if problems else f"{path}: every stage's deps cover exactly the code it runs")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
