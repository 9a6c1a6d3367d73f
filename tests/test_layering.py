"""The architecture as a test: who may import whom, no import cycle, and every third-party import declared.

Layers, top to bottom. A module imports only from its own unit or from a lower layer; units on the same line are
independent siblings and never import each other. ``spie_hub/__init__.py`` imports nothing.

Every import counts for the layering, wherever it is written: module level, inside a function (a lazy import is
still a dependency), and under ``if TYPE_CHECKING:`` (a type annotation naming an upper layer is a dependency on
it too). The cycle check is about what Python executes when a module is imported: the module-level graph, without
function-level imports and without ``TYPE_CHECKING`` blocks (which never run).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("spie_hub", "connectors", "consent", "schemas", "dags")

LAYERS: list[tuple[str, ...]] = [
    ("dags", "spie_hub.cli"),
    ("spie_hub.demo",),  # the demonstration, reached from the CLI's ``demo`` verb only
    ("spie_hub.airflow", "spie_hub.dpo"),
    ("spie_hub.run",),
    ("consent",),
    ("spie_hub.registry",),
    ("spie_hub.audit", "spie_hub.mapping", "connectors"),
    ("spie_hub.privacy",),
    ("spie_hub.store",),
    ("spie_hub.core",),
    ("schemas",),
]
LAYER_OF = {unit: number for number, units in enumerate(LAYERS, start=1) for unit in units}

#: What the run may know of formats and transports: their interfaces and registries, never a concrete one.
RUN_ALLOWED_CONNECTORS = {
    "connectors.formats.base", "connectors.formats.registry",
    "connectors.transports.base", "connectors.transports.registry",
    # The hub's own small reports to people (rejections): one French CSV dialect, not a format a flow declares.
    "connectors.formats.reports",
    # Data dictionaries: generated from the shared schema for any output format (its ``dictionary()`` entries).
    "connectors.formats.dictionary",
}
#: One exception, the hub's private folders (archive, quarantine, the scratch area of stores): they live under
#: SPIE_HUB_HOME whatever transport a flow declares, so the run reaches them through the local-folder transport
#: directly — but only through ``deliver.hub_folder``. A partner's folder (inbox, recipient, sender's returns) is
#: always opened through the transport registry, from what flows.yaml declares.
RUN_PRIVATE_FOLDERS = {"connectors.transports.local": {"LocalFolder", "clean_scratch"}}
HUB_FOLDER_FUNCTION = "hub_folder"


# -- reading the tree ----------------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_files() -> dict[str, Path]:
    files = {}
    for top in FIRST_PARTY:
        for path in sorted((REPO / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                files[_module_name(path)] = path
    return files


MODULES = _source_files()
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a first-party module of the tree, or the dotted name as written for anything else
    line: int
    module_level: bool  # executed when the importer is imported (not in a function, not under TYPE_CHECKING)
    names: tuple[str, ...] = ()  # ``from target import names``


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nearest_module(dotted: str) -> str:
    """The longest prefix of ``dotted`` that is a module of the tree (``a.b.C`` → ``a.b``)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return dotted


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield (_nearest_module(alias.name) if alias.name.split(".")[0] in FIRST_PARTY else alias.name), ()
        return
    base = node.module or ""
    if node.level:  # relative: resolved against the importer's package
        package = importer if importer in PACKAGES else importer.rpartition(".")[0]
        anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    if base.split(".")[0] not in FIRST_PARTY:
        yield base, tuple(alias.name for alias in node.names)
        return
    for alias in node.names:
        # ``from package import submodule`` imports the submodule; ``from module import name`` the module.
        if f"{base}.{alias.name}" in MODULES:
            yield f"{base}.{alias.name}", ()
        else:
            yield _nearest_module(base), (alias.name,)


def _walk(node: ast.AST, importer: str, module_level: bool) -> Iterator[Import]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            for target, names in _targets(child, importer):
                yield Import(importer, target, child.lineno, module_level, names)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, importer, False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), importer, False)
            for statement in child.orelse:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), importer, module_level)
        else:  # class bodies, try/except, plain if: executed with the module
            yield from _walk(child, importer, module_level)


def all_imports() -> list[Import]:
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found.extend(_walk(tree, name, True))
    return found


IMPORTS = all_imports()


def unit_of(module: str) -> str | None:
    """The unit owning a first-party module: the longest unit name that is the module or one of its parents."""
    candidates = [u for u in LAYER_OF if module == u or module.startswith(u + ".")]
    return max(candidates, key=len) if candidates else None


def _where(item: Import) -> str:
    return f"{MODULES[item.importer].relative_to(REPO)}:{item.line}"


def _first_party(target: str) -> bool:
    return target.split(".")[0] in FIRST_PARTY


# -- (a) layering --------------------------------------------------------------------------------------------------
def layering_violations() -> list[str]:
    problems = []
    for item in IMPORTS:
        if not _first_party(item.target):
            continue
        if item.importer == "spie_hub":
            problems.append(f"{_where(item)} spie_hub → {item.target} (spie_hub/__init__.py n'importe rien)")
            continue
        source, target = unit_of(item.importer), unit_of(item.target)
        if source is None or target is None:
            problems.append(f"{_where(item)} {item.importer} → {item.target} (module hors des couches déclarées)")
            continue
        if source == target:
            continue
        x, y = LAYER_OF[source], LAYER_OF[target]
        if y < x:
            kind = "vers le haut"
        elif y == x:
            kind = "entre voisins"
        else:
            continue
        problems.append(f"{_where(item)} {item.importer} → {item.target} (couche {x} → couche {y}, {kind})")
    return problems


def test_every_first_party_module_belongs_to_a_declared_unit() -> None:
    orphans = [name for name in MODULES if name != "spie_hub" and unit_of(name) is None]
    assert not orphans, "modules sans couche (à ajouter à LAYERS) :\n" + "\n".join(orphans)


def test_the_root_package_imports_nothing() -> None:
    assert [i.target for i in IMPORTS if i.importer == "spie_hub" and i.target != "__future__"] == []


def test_no_module_imports_an_upper_layer_or_a_sibling_unit() -> None:
    problems = layering_violations()
    assert not problems, f"{len(problems)} import(s) contraire(s) aux couches :\n" + "\n".join(problems)


def test_the_checker_sees_lazy_and_type_checking_imports() -> None:
    # Guards the guard: imports in functions and under TYPE_CHECKING are seen, and not as module-level ones.
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from spie_hub.run.flow_run import RunContext\n"
              "def f():\n    from spie_hub import cli\nfrom ..core import errors\n")
    seen = {(i.target, i.module_level) for i in _walk(ast.parse(source), "spie_hub.store.guards", True)}
    assert seen == {("typing", True), ("spie_hub.run.flow_run", False), ("spie_hub.cli", False),
                    ("spie_hub.core.errors", True)}
    # ... and the CLI's imports, all inside functions, reach every layer below it.
    assert {unit_of(i.target) for i in IMPORTS if i.importer == "spie_hub.cli" and _first_party(i.target)} >= {
        "spie_hub.run", "consent", "spie_hub.registry", "spie_hub.audit", "spie_hub.core"}


# -- (b) no cycle at import time -----------------------------------------------------------------------------------
def import_graph() -> dict[str, set[str]]:
    """Module-level imports between first-party modules. Importing ``a.b.c`` also runs ``a/__init__`` and
    ``a/b/__init__``: those edges are added, except towards the importer's own parent packages (already running)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for item in IMPORTS:
        if not item.module_level or not _first_party(item.target) or item.target not in MODULES:
            continue
        parts = item.target.split(".")
        own_parents = {".".join(item.importer.split(".")[:n]) for n in range(1, item.importer.count(".") + 1)}
        for end in range(1, len(parts) + 1):
            module = ".".join(parts[:end])
            if module in MODULES and module != item.importer and (module == item.target or module not in own_parents):
                graph[item.importer].add(module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_module_level_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "cycle d'imports au chargement : " + " → ".join(cycle or [])


def test_the_cycle_finder_reports_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# -- the run knows interfaces, not concrete formats or transports --------------------------------------------------
def _run_concrete_imports() -> list[str]:
    problems = []
    for i in IMPORTS:
        if unit_of(i.importer) != "spie_hub.run" or unit_of(i.target) != "connectors" or i.target in RUN_ALLOWED_CONNECTORS:
            continue
        if i.target in RUN_PRIVATE_FOLDERS and i.names and set(i.names) <= RUN_PRIVATE_FOLDERS[i.target]:
            continue
        problems.append(f"{_where(i)} {i.importer} → {i.target}" + (f" ({', '.join(i.names)})" if i.names else ""))
    return problems


def _local_folder_uses() -> list[str]:
    """Every use of ``LocalFolder`` in the run outside ``hub_folder``: a partner's folder built by hand."""
    problems = []

    def visit(node: ast.AST, path: Path, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            named = (isinstance(child, ast.Name) and child.id == "LocalFolder") or (
                isinstance(child, ast.Attribute) and child.attr == "LocalFolder")
            if named and function != HUB_FOLDER_FUNCTION:
                problems.append(f"{path.relative_to(REPO)}:{child.lineno} LocalFolder dans {function or 'le module'}")
            visit(child, path, inner)

    for name, path in MODULES.items():
        if unit_of(name) == "spie_hub.run":
            visit(ast.parse(path.read_text(encoding="utf-8")), path, None)
    return problems


def test_the_run_imports_no_concrete_format_or_transport() -> None:
    problems = _run_concrete_imports()
    assert not problems, "l'exécution importe un format ou un transport concret :\n" + "\n".join(problems)


def test_the_run_reaches_local_folders_only_for_the_hubs_private_folders() -> None:
    problems = _local_folder_uses()
    assert not problems, ("dossier local construit hors de deliver.hub_folder (un dossier de partenaire s'ouvre par "
                          "le registre des transports) :\n" + "\n".join(problems))


# -- dependencies: what is imported is declared --------------------------------------------------------------------
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

#: Declared but imported by none of the packages above, each for a stated reason.
DECLARED_WITHOUT_IMPORT = {
    "psycopg": "pilote PostgreSQL, choisi par SQLAlchemy d'après l'URL postgresql+psycopg://",
    "requests": "notificateur Airflow (spie_hub/airflow/notify.py)",
    "asyncpg": "pilote asynchrone qu'Airflow 3 exige pour une base de métadonnées PostgreSQL",
    "celery": "épinglé : la 5.7.0 que choisirait le fournisseur Celery fait planter ordonnanceur et workers",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return _normalise(match.group(1))


def declared() -> set[str]:
    return {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}


def _meta_packages_expanded(names: set[str], providers: dict[str, list[str]]) -> set[str]:
    """A declared meta-package (``apache-airflow``: no code of its own) stands for what it requires unconditionally
    (``apache-airflow-core``, ``apache-airflow-task-sdk``, which hold the ``airflow`` package)."""
    with_code = {_normalise(d) for dists in providers.values() for d in dists}
    expanded = set(names)
    for name in names - with_code:
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        expanded |= {_requirement_name(r) for r in requires if "extra ==" not in r}
    return expanded


def third_party_imports() -> dict[str, list[str]]:
    """Top-level import name → where it is imported (every import, lazy ones included)."""
    found: dict[str, list[str]] = {}
    for item in IMPORTS:
        top = item.target.split(".")[0]
        if not top or _first_party(top) or top in sys.stdlib_module_names:
            continue
        found.setdefault(top, []).append(_where(item))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    providers = importlib.metadata.packages_distributions()
    names = _meta_packages_expanded(declared(), providers)
    problems = []
    for top, places in sorted(third_party_imports().items()):
        distributions = {_normalise(d) for d in providers.get(top, [])}
        if not distributions:
            problems.append(f"{top} : aucune distribution installée ne le fournit ({places[0]})")
        elif not distributions & names:
            problems.append(f"{top} : fourni par {', '.join(sorted(distributions))}, non déclaré ({places[0]})")
    assert not problems, "dépendances importées mais non déclarées dans pyproject.toml :\n" + "\n".join(problems)


def test_every_declared_dependency_is_imported_or_has_a_stated_reason() -> None:
    providers = importlib.metadata.packages_distributions()
    imported = {_normalise(d) for top in third_party_imports() for d in providers.get(top, [])}
    unused = {name for name in declared() - set(DECLARED_WITHOUT_IMPORT)
              if not _meta_packages_expanded({name}, providers) & imported}
    assert not unused, f"déclarées dans pyproject.toml mais importées nulle part : {sorted(unused)}"


def test_every_declared_dependency_is_pinned_in_the_constraints() -> None:
    pins = {_requirement_name(line) for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")}
    wanted = declared() | {_requirement_name(r) for extra in PYPROJECT["project"]["optional-dependencies"].values()
                           for r in extra}
    assert not wanted - pins, f"sans version figée dans constraints.txt : {sorted(wanted - pins)}"


def test_every_package_of_the_tree_is_listed_for_setuptools() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert not PACKAGES - listed, f"paquets absents de [tool.setuptools] packages : {sorted(PACKAGES - listed)}"
