"""Rerun inputs derived from the code: each step's import closure, hashed over its syntax tree.

A workflow rule passes ``code=code_hash(...)`` as a ``params:`` value, so Snakemake's params
rerun trigger (on by default) reruns exactly the rules whose code changed. The closure of a
step is every `zoommil` module its entry imports, directly or through others, at module level
or inside functions (``import``/``from`` statements found with `ast`; the parent packages'
``__init__`` files count, since importing a module runs them). Each module counts by its
normalised syntax tree (``ast.dump`` without docstrings or positions), so a comment, a
docstring or a reformatting changes nothing and a behaviour edit changes the hash of exactly
the steps that import the module.

Imports by a computed name count too: ``importlib.import_module(f"zoommil.pkg.{name}")`` (the
encoder registry loads ``zoommil.features.encoders.vit`` that way) adds every module of
``zoommil.pkg`` and a constant name adds that module. ``import_module(TABLE[name])`` over a
module-level dict of constant names is a package's lazy exports (``zoommil``'s Python API,
``zoommil.training``'s): the package adds none of them by itself, and a module that takes a
name from it (``from zoommil.training import evaluate_checkpoint``, or ``zoommil.training.train``
after ``import zoommil.training``) adds the module the table names for it. Why per name: every
module imports ``zoommil``, so its table of the whole API made each step's hash depend on
every model and the trainer, and an edit of TransMIL redid a cohort's tissue, tiles and
features. Any other computed name is an error naming the module and line, never a module
silently left out of the hash. The one exception is the CLI's loop over ``zoommil.commands``,
which adds nothing: a command is an entry, and a step hashes the one it runs.

Entries are `zoommil` command names (``"features"`` -> ``zoommil.commands.features`` plus
``zoommil.cli``, which runs it) or script files (``scripts/qc_slides.py``: the script itself
and its imports).
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import cache
from pathlib import Path

PACKAGE = "zoommil"
#: Packages whose modules are imported by a computed name yet count only as entries:
#: `zoommil.cli` imports every command to build its parser, but a step runs the one it names.
ENTRY_PACKAGES = frozenset({f"{PACKAGE}.commands"})
#: Suffix of a name in `_imported_names` that stands for every module of a package.
_ANY_MODULE = ".*"


def _module_file(root: Path, name: str) -> Path | None:
    """The source file of module ``name`` (``zoommil.x.y``) under the package ``root``."""
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_modules(root: Path, package: str) -> list[str]:
    """Every module and subpackage directly in ``package`` (``zoommil.x``) under ``root``."""
    folder = root.joinpath(*package.split(".")[1:])
    if not folder.is_dir():
        return []
    names = [f"{package}.{f.stem}" for f in folder.glob("*.py") if f.stem != "__init__"]
    names += [f"{package}.{d.name}" for d in folder.iterdir() if (d / "__init__.py").is_file()]
    return sorted(names)


def _name_tables(tree: ast.Module) -> dict[str, dict[str, str]]:
    """Module-level dicts of constant strings: ``{table: {key: value}}``."""
    tables: dict[str, dict[str, str]] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        value = getattr(node, "value", None)
        if not isinstance(value, ast.Dict) or not value.values:
            continue
        pairs = [
            (k.value, v.value)
            for k, v in zip(value.keys, value.values, strict=True)
            if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
        ]
        if len(pairs) == len(value.values) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in pairs
        ):
            for target in targets:
                if isinstance(target, ast.Name):
                    tables[target.id] = dict(pairs)
    return tables


def _import_call(node: ast.AST) -> ast.expr | None:
    """The name argument of an ``import_module(...)``/``__import__(...)`` call, else None."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return node.args[0] if name in ("import_module", "__import__") else None


def lazy_exports(tree: ast.Module) -> dict[str, str]:
    """A module's lazy exports: name -> module of the tables its ``import_module(TABLE[name])``
    calls read (empty for a module without)."""
    tables = _name_tables(tree)
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        arg = _import_call(node)
        if isinstance(arg, ast.Subscript) and isinstance(arg.value, ast.Name):
            out.update(tables.get(arg.value.id, {}))
    return out


def _dynamic_import(node: ast.Call, tables: dict[str, dict[str, str]], where: str) -> set[str]:
    """The modules an ``import_module(...)``/``__import__(...)`` call may load (empty for any
    other call, and for a lazy export ``TABLE[name]``, which the modules that take the name
    count: `_taken_names`): its constant name, or ``"pkg.*"`` for an f-string
    ``f"pkg.{...}"`` (any module of ``pkg``). Any other argument is an error: a module the
    hash cannot see would stop its edits from rerunning the steps."""
    arg = _import_call(node)
    if arg is None:
        return set()
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value}
    if isinstance(arg, ast.JoinedStr) and arg.values:
        head = arg.values[0]
        if isinstance(head, ast.Constant) and str(head.value).endswith("."):
            return {str(head.value)[:-1] + _ANY_MODULE}
    if isinstance(arg, ast.Subscript) and isinstance(arg.value, ast.Name):
        if arg.value.id in tables:
            return set()
    raise ValueError(
        f"code_hash: cannot tell which module {ast.unparse(node)} loads ({where}, line "
        f"{node.lineno}); use a constant name, an f-string 'zoommil.pkg.{{...}}' or a "
        "module-level dict of constant names"
    )


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of an attribute chain on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _taken_names(tree: ast.Module, module: str, is_package: bool) -> set[tuple[str, str]]:
    """(package, name) of every name a module may take from a `zoommil` package: ``from
    package import name``, and ``package.name`` (``alias.name``) after ``import package``."""
    taken: set[tuple[str, str]] = set()
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = imported_from(node, module, is_package)
            taken.update((base, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:  # `import a.b` binds a; `import a.b as x` binds x to a.b
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[alias.name.split(".")[0]] = ""
    if not aliases:
        return taken
    for node in ast.walk(tree):
        dotted = _dotted(node) if isinstance(node, ast.Attribute) else None
        if dotted is None:
            continue
        head, *rest = dotted.split(".")
        if head not in aliases or not rest:
            continue
        # `import a.b` binds `a`, and `a.b.c` is name c of package a.b; `import a.b as x` binds x
        parts = [aliases[head]] if aliases[head] else [head]
        for i, part in enumerate(rest):
            taken.add((".".join(parts + rest[:i]), part))
    return {(p, n) for p, n in taken if p == PACKAGE or p.startswith(PACKAGE + ".")}


def imported_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name of the module a ``from ... import`` statement of ``module`` imports
    from (relative ones: from the module's package upwards)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Every module name an ``import``/``from`` statement or an ``import_module`` call of
    ``tree`` may load (absolute; ``"pkg.*"``: any module of ``pkg``)."""
    names: set[str] = set()
    tables = _name_tables(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            names.update(_dynamic_import(node, tables, module))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = imported_from(node, module, is_package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


@cache
def _parse(path: Path, mtime_ns: int) -> tuple[ast.Module, str]:
    """(tree, normalised dump) of a source file; cached per modification time. The tree is
    the one dumped, docstrings stripped: no import hides in a docstring, and parsing once
    halves the cost."""
    tree = _strip_docstrings(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return tree, ast.dump(tree)


@cache
def _module_imports(
    path: Path, mtime_ns: int, module: str, is_package: bool
) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """(`_imported_names`, `_taken_names`) of a source file, cached like `_parse`: the
    workflow's 16 closures visit the same ~115 modules 550 times, and walking their trees
    each time was most of the 2 s every job spends loading the workflow."""
    tree = _parse(path, mtime_ns)[0]
    return (
        frozenset(_imported_names(tree, module, is_package)),
        frozenset(_taken_names(tree, module, is_package)),
    )


def _source(path: Path) -> tuple[ast.Module, str]:
    return _parse(path, path.stat().st_mtime_ns)


def entry_files(root: str | Path, entry: str, basedir: str | Path = ".") -> tuple[str, Path]:
    """(label, file) of an entry: a command name or a script path relative to ``basedir``."""
    root = Path(root)
    if entry.endswith(".py"):
        path = Path(basedir) / entry
        if not path.is_file():
            raise FileNotFoundError(f"code_hash: script {path} not found")
        return entry, path
    name = f"{PACKAGE}.commands.{entry}"
    path = _module_file(root, name)
    if path is None:
        raise FileNotFoundError(f"code_hash: no command module {name} under {root}")
    return name, path


def closure(root: str | Path, entries: Iterable[str], basedir: str | Path = ".") -> dict[str, Path]:
    """Module name (or script label) -> file of everything the entries import from `zoommil`."""
    root = Path(root)
    found: dict[str, Path] = {}
    todo: list[tuple[str, Path]] = []
    for entry in entries:
        todo.append(entry_files(root, entry, basedir))
        if not entry.endswith(".py"):
            todo.append((f"{PACKAGE}.cli", root / "cli.py"))  # the `zoommil` program runs it
    while todo:
        name, path = todo.pop()
        if name in found:
            continue
        found[name] = path
        is_package = path.name == "__init__.py"
        module = name if name.startswith(PACKAGE) else PACKAGE  # scripts import absolutely
        imported, taken_names = _module_imports(path, path.stat().st_mtime_ns, module, is_package)
        imported_names = set(imported)
        for package, taken in taken_names:
            file = _module_file(root, package)
            if file is not None and file.name == "__init__.py":
                exported = lazy_exports(_source(file)[0]).get(taken)
                if exported is not None:
                    imported_names.add(exported)
        for imported in imported_names:
            package = imported.removesuffix(_ANY_MODULE)
            if package in ENTRY_PACKAGES:
                continue
            candidates = _with_parents(package)
            if imported.endswith(_ANY_MODULE):
                candidates += _package_modules(root, package)
            for candidate in candidates:
                if candidate not in found:
                    file = _module_file(root, candidate)
                    if file is not None:
                        todo.append((candidate, file))
    return dict(sorted(found.items()))


def code_hash(root: str | Path, entries: Iterable[str], basedir: str | Path = ".") -> str:
    """sha256 (first 16 hex digits) of the normalised trees of the entries' import closure."""
    digest = hashlib.sha256()
    for name, path in closure(root, entries, basedir).items():
        digest.update(name.encode() + b"\0" + _source(path)[1].encode() + b"\0")
    return digest.hexdigest()[:16]
