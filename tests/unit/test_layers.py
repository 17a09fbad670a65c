"""The import graph keeps to the layers of DESIGN section 1 (docs/architecture.md).

Every module under ``src/edgelink`` is parsed with `ast`; every import of an
``edgelink`` module counts, at module level, inside functions and under
``TYPE_CHECKING`` alike (a type-only import upwards still ties the lower
layer to the upper one's names). A module may import its own layer and the
layers below it, never above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "edgelink"

#: The test kit (``sim``, ``testing``): may import anything but the faces.
KIT = 7
#: The faces: ``api``, ``ui``, ``cli``. Nothing imports them.
FACES = 8

#: Module (or package prefix) -> layer, bottom to top. The longest prefix wins.
LAYERS: dict[str, int] = {
    # 1. pure: no I/O of their own (documents only reads and writes one file)
    "edgelink.errors": 1,
    "edgelink.state": 1,
    "edgelink.backoff": 1,
    "edgelink.events": 1,
    "edgelink.clock": 1,
    "edgelink.lifecycle": 1,
    "edgelink._deadline": 1,
    "edgelink.redact": 1,
    "edgelink.dampening": 1,
    "edgelink.looplag": 1,
    "edgelink.gcpolicy": 1,
    "edgelink.settings": 1,
    "edgelink._documents": 1,
    "edgelink._validation": 1,
    "edgelink._tasks": 1,
    "edgelink.cpuaccount": 1,
    "edgelink.bms": 1,
    # 2. a driver knows the base class hooks, nothing more
    "edgelink.connection": 2,
    "edgelink.drivers": 2,
    "edgelink.subscriptions": 2,
    # 3. one connection's life; isolation runs a driver in a child process
    "edgelink.supervisor": 3,
    "edgelink.isolation": 3,
    "edgelink.isolation.spec": 1,
    "edgelink.isolation.limits": 1,
    "edgelink.isolation.ipc": 2,
    # the child process's program builds drivers from the registry
    "edgelink.isolation.child": 5,
    "edgelink.isolation.safe": 5,
    # 4. knows connections only through a writer function it is given
    "edgelink.router": 4,
    # 5. the library's top: the manager and what hands it its parts
    "edgelink": 5,
    "edgelink.manager": 5,
    "edgelink.pool": 5,
    "edgelink.sync": 5,
    "edgelink.config": 5,
    "edgelink.registry": 5,
    # 6. targets and storage plugged into the router and the bus
    "edgelink.bridge": 6,
    "edgelink.store": 6,
    # 7. a running gateway assembled from a config folder, and the test kit
    "edgelink.service": 7,
    "edgelink.sim": KIT,
    "edgelink.testing": KIT,
    # 8. faces of the service
    "edgelink.api": FACES,
    "edgelink.ui": FACES,
    "edgelink.cli": FACES,
}

#: Upward imports allowed on purpose: (importer, imported) -> why. Keep it empty.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int:
    """Return the layer of ``module`` by its longest known prefix.

    Raises:
        KeyError: for a module no entry of `LAYERS` covers (add it there).
    """
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(module)


def module_name(path: Path) -> str:
    """Return the dotted name of a source file (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """Return ``(line, module)`` for every ``edgelink`` import in a file, wherever it stands.

    ``name`` is the file's module name (default: from its place under ``src``).
    """
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # ``from edgelink import sync`` imports the submodule when there is one.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (SRC / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    SRC / Path(*sub.split("."))
                ).is_dir()
                found.append((node.lineno, sub if is_module else target))
    return [(line, mod) for line, mod in found if mod.split(".")[0] == "edgelink"]


def upward_imports(files: dict[Path, str] | None = None) -> list[str]:
    """Return one line per import that goes up a layer: ``file:line: a (n) imports b (m)``.

    ``files`` maps each file to check to its module name (default: every module).
    """
    if files is None:
        files = {path: module_name(path) for path in sorted(PACKAGE.rglob("*.py"))}
    problems = []
    for path, importer in files.items():
        own = layer_of(importer)
        for line, imported in imports_of(path, importer):
            theirs = layer_of(imported)
            if importer.startswith(("edgelink.sim", "edgelink.testing")):
                allowed = theirs < FACES
            else:
                allowed = theirs <= own
            if not allowed and (importer, imported) not in EXCEPTIONS:
                problems.append(
                    f"{path}:{line}: {importer} (layer {own}) imports {imported} (layer {theirs})"
                )
    return problems


def test_every_module_has_a_layer() -> None:
    """Test that the table covers every module, so a new package must be placed."""
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


def test_no_module_imports_upwards() -> None:
    """Test that no module imports from a layer above its own (DESIGN section 1)."""
    assert upward_imports() == []


def test_the_exceptions_are_still_needed() -> None:
    """Test that every listed exception is still an import somewhere (else drop it)."""
    present = {
        (module_name(path), imported)
        for path in PACKAGE.rglob("*.py")
        for _line, imported in imports_of(path)
    }
    assert [pair for pair in EXCEPTIONS if pair not in present] == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from edgelink.api.app import create_app\n", "edgelink.api.app"),
        ("def f():\n    from edgelink.api import server\n", "edgelink.api.server"),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from edgelink.service.gateway import Gateway\n",
            "edgelink.service.gateway",
        ),
        ("import edgelink.cli\n", "edgelink.cli"),
        ("from ..service import gateway\n", "edgelink.service.gateway"),
    ],
)
def test_the_check_sees_every_kind_of_import(tmp_path: Path, source: str, expected: str) -> None:
    """Test that module-level, in-function, TYPE_CHECKING and relative imports are all seen."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    name = "edgelink.bridge.probe"
    assert [mod for _line, mod in imports_of(path, name)] == [expected]
    (problem,) = upward_imports({path: name})
    assert f"edgelink.bridge.probe (layer 6) imports {expected} (layer" in problem


#: Faces that must not import each other: the API never knows the UI, and the UI
#: acts through the gateway, not through the API's routes.
SEPARATE_FACES = (("edgelink.api", "edgelink.ui"), ("edgelink.ui", "edgelink.api"))
#: HTTP clients: the UI calls the gateway's methods, never the API over HTTP.
HTTP_CLIENTS = ("httpx", "aiohttp", "requests", "urllib.request", "http.client", "websockets")


def face_imports(files: dict[Path, str] | None = None) -> list[str]:
    """Return one line per import of one face by the other (`SEPARATE_FACES`)."""
    if files is None:
        files = {path: module_name(path) for path in sorted(PACKAGE.rglob("*.py"))}
    problems = []
    for path, importer in files.items():
        for line, imported in imports_of(path, importer):
            for face, other in SEPARATE_FACES:
                if importer.startswith(face) and (imported + ".").startswith(other + "."):
                    problems.append(f"{path}:{line}: {importer} imports {imported}")
    return problems


def private_reaches(path: Path) -> list[str]:
    """Return ``file:line: x._name`` for every private attribute a module reads of another object.

    ``self._x`` and ``cls._x`` are a class's own; dunders are Python's.
    """
    problems = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        problems.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return problems


def http_client_imports(path: Path) -> list[str]:
    """Return ``file:line: module`` for every HTTP client a module imports."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        problems += [
            f"{path}:{node.lineno}: {name}"
            for name in names
            if any(name == c or name.startswith(c + ".") for c in HTTP_CLIENTS)
        ]
    return problems


def test_the_api_and_the_ui_do_not_import_each_other() -> None:
    """Test that the API never imports the UI, nor the UI the API (DESIGN section 10)."""
    assert face_imports() == []


def test_the_ui_reads_no_private_attribute_and_calls_no_http() -> None:
    """Test that the UI uses the gateway's public methods only, never the API over HTTP."""
    ui_files = sorted((PACKAGE / "ui").rglob("*.py"))
    assert ui_files
    assert [p for path in ui_files for p in private_reaches(path)] == []
    assert [p for path in ui_files for p in http_client_imports(path)] == []


@pytest.mark.parametrize(
    ("source", "name", "check", "expected"),
    [
        ("from edgelink.ui import mount_ui\n", "edgelink.api.app", "faces", "edgelink.ui"),
        ("def f():\n    from edgelink.api import auth\n", "edgelink.ui.x", "faces", "api.auth"),
        ("def f(gw):\n    return gw._manager\n", "edgelink.ui.x", "private", "gw._manager"),
        ("import httpx\n", "edgelink.ui.x", "http", "httpx"),
        ("from urllib.request import urlopen\n", "edgelink.ui.x", "http", "urllib.request"),
    ],
)
def test_the_face_checks_see_what_they_forbid(
    tmp_path: Path, source: str, name: str, check: str, expected: str
) -> None:
    """Test that each face rule reports a module that breaks it."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    if check == "faces":
        found = face_imports({path: name})
    elif check == "private":
        found = private_reaches(path)
    else:
        found = http_client_imports(path)
    assert len(found) == 1
    assert expected in found[0]


def test_own_private_attributes_and_dunders_are_allowed(tmp_path: Path) -> None:
    """Test that ``self._x``, ``cls._x`` and ``obj.__class__`` are not reported."""
    path = tmp_path / "probe.py"
    path.write_text("class A:\n    def f(self):\n        return self._a, type(self).__name__\n")
    assert private_reaches(path) == []
