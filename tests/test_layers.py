"""The daemon's layering, read from its imports (ast; nothing is imported or run).

The rules the modules' docstrings and docs/architecture.md state:

- every daemon module has a layer, and imports only from layers below its own (so no
  import cycle either); the vocabulary (``vocab``, ``names``, ``counts``, ``errors``,
  ``backoff``) imports nothing else of the daemon;
- a sink module never reaches sideways into another sink or up into config;
- a package with a facade (the journal, delivery) is used through it, never through its
  parts; the session and the backfill see the receiving side (``ingest``) only;
- each outside library that does I/O has its owners (websockets: the session; sqlite3: the
  journal; redis: the Redis sink; httpx: those that talk HTTP);
- the emulator is an independent implementation of the platform: it imports nothing of
  the daemon, and only ``cli`` (to dispatch) and ``demo`` import it;
- every module says what it exports (``__all__``), and no module imports another's
  private name or a name the other does not export.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "daemon" / "a2pd"

#: module → layer; a module imports only from lower layers
LAYERS: dict[str, float] = {
    # the vocabulary: imports nothing else of the daemon
    "a2pd": 0, "a2pd.vocab": 0, "a2pd.names": 0, "a2pd.counts": 0, "a2pd.errors": 0,
    "a2pd.backoff": 0,
    # pure models and leaf services
    "a2pd.events.models": 1, "a2pd.events.codec": 1.1, "a2pd.events.keys": 1.1,
    "a2pd.events": 1.2, "a2pd.observe": 1, "a2pd.logging": 1, "a2pd.notify": 2,
    "a2pd.persist": 2, "a2pd.protocol": 2, "a2pd.router": 2, "a2pd.statedir": 2,
    # the sink interface, then the sinks
    "a2pd.sinks": 3, "a2pd.sinks.templates": 3, "a2pd.sinks.files": 3,
    "a2pd.sinks.credentials": 3.2, "a2pd.sinks.postgres_schema": 3.2,
    "a2pd.sinks.postgres_rows": 3.3,
    "a2pd.sinks.http_options": 3.5, "a2pd.sinks.redis_options": 3.5,
    "a2pd.sinks.postgres_options": 3.5, "a2pd.testing": 4,
    "a2pd.sinks.stdout": 4, "a2pd.sinks.file": 4, "a2pd.sinks.http": 4,
    "a2pd.sinks.redis": 4, "a2pd.sinks.postgres": 4,
    # configuration: knows the sinks' options, never the other way round
    "a2pd.config.sections": 4.5, "a2pd.config.problems": 4.5, "a2pd.config": 5,
    # the platform; the journal, a package behind its facade (a2pd.journal)
    "a2pd.auth.tokens": 1, "a2pd.auth.rest": 5.5, "a2pd.auth": 6,
    "a2pd.session.state": 5.5, "a2pd.session.connection": 5.6,
    "a2pd.session": 6,
    "a2pd.journal.model": 6.1, "a2pd.journal.db": 6.1, "a2pd.journal.recent": 6.2,
    "a2pd.journal.store": 6.2, "a2pd.journal.gaps": 6.3, "a2pd.journal.letters": 6.3,
    "a2pd.journal.committer": 6.4, "a2pd.journal": 6.5,
    # delivery, a package behind its facade; the receiving side; both wired together
    "a2pd.delivery.arrivals": 6.6, "a2pd.delivery.decoded": 6.6,
    "a2pd.delivery.reader": 6.7, "a2pd.delivery": 6.8, "a2pd.ingest": 6.9,
    "a2pd.pipeline": 7,
    # sessions back to back
    "a2pd.supervisor": 7,
    "a2pd.sinkset": 7.5,
    "a2pd.backfill.records": 1, "a2pd.backfill.lists": 7.6, "a2pd.backfill": 8,
    # the daemon: its parts, what it says about itself, reload, its lifetime; its commands
    "a2pd.ops": 8, "a2pd.sessions": 8.1, "a2pd.parts": 8.2, "a2pd.snapshot": 8.3,
    "a2pd.reload": 8.3, "a2pd.admin": 9, "a2pd.app": 9, "a2pd.check": 9,
    "a2pd.status": 10, "a2pd.demo": 10,
    "a2pd.cli": 11, "a2pd.__main__": 12,
}
VOCABULARY = {name for name, layer in LAYERS.items() if layer == 0}
#: outside libraries that do I/O → the daemon modules that may import them
OWNERS: dict[str, set[str]] = {
    "websockets": {"a2pd.session.connection"},
    "sqlite3": {name for name in LAYERS if name.startswith("a2pd.journal")},
    "redis": {"a2pd.sinks.redis"},
    "psycopg": {"a2pd.sinks.postgres"},
    "psycopg_pool": {"a2pd.sinks.postgres"},
    # the platform (auth, backfill, check; parts opens the client they share), webhook
    # receivers (the http sink), a2pd's own ops endpoint (status, cli)
    "httpx": {"a2pd.auth", "a2pd.auth.rest", "a2pd.backfill", "a2pd.backfill.lists",
              "a2pd.check", "a2pd.parts", "a2pd.sinks.http", "a2pd.status", "a2pd.cli"},
    "h11": {"a2pd.ops"},
    "prometheus_client": {"a2pd.ops"},
    "starlette": set(),
    "uvicorn": set(),
}
EMULATOR_USERS = {"a2pd.cli", "a2pd.demo"}
#: packages used through their facade only: nothing outside imports their parts
FACADES = ("a2pd.events", "a2pd.config", "a2pd.auth", "a2pd.session", "a2pd.journal",
           "a2pd.delivery", "a2pd.backfill")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (a2pd.x, or an outside top-level package)
    names: tuple[str, ...]  # names taken from it (``from target import names``)
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and \
        ast.unparse(node.test).endswith("TYPE_CHECKING")


def imports(name: str, path: Path, known: set[str]) -> Iterator[Import]:
    """Every import of a module, wherever it stands (functions too), but those under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            skip |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, _resolve(alias.name, known), (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = tuple(alias.name for alias in node.names)
            # ``from a2pd import counts``: a submodule, imported whole
            submodules = [n for n in names if f"{base}.{n}" in known]
            for sub in submodules:
                yield Import(name, f"{base}.{sub}", (), node.lineno)
            rest = tuple(n for n in names if n not in submodules)
            if rest or not submodules:
                yield Import(name, _resolve(base, known), rest, node.lineno)


def _resolve(target: str, known: set[str]) -> str:
    """The a2pd module ``target`` names (its longest known prefix), else its top package."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return parts[0]


def all_imports() -> list[Import]:
    found = modules()
    known = set(found)
    return [imp for name, path in found.items() for imp in imports(name, path, known)]


def _daemon(module: str) -> bool:
    return module == "a2pd" or (module.startswith("a2pd.")
                                and not module.startswith("a2pd.emulator"))


def test_every_daemon_module_has_a_layer() -> None:
    daemon = {name for name in modules() if _daemon(name)}
    assert sorted(daemon - set(LAYERS)) == [], "give each new module a layer in LAYERS"
    assert sorted(set(LAYERS) - daemon) == [], "LAYERS names a module that is gone"


def test_imports_go_down_the_layers() -> None:
    """Only lower layers: no module reaches up or sideways, so there is no cycle (today's
    ``config`` → ``sinks`` → ``sinks.file`` → ``config`` would fail here)."""
    wrong = sorted(
        f"{imp.module}:{imp.line} imports {imp.target} "
        f"(layer {LAYERS[imp.module]} → {LAYERS[imp.target]})"
        for imp in all_imports()
        if imp.module in LAYERS and imp.target in LAYERS and imp.target != "a2pd"
        and LAYERS[imp.target] >= LAYERS[imp.module])
    assert wrong == []


def test_the_vocabulary_imports_nothing_of_the_daemon() -> None:
    wrong = sorted(f"{imp.module}:{imp.line} imports {imp.target}" for imp in all_imports()
                   if imp.module in VOCABULARY and imp.target.startswith("a2pd")
                   and not (imp.target == "a2pd" and imp.module == "a2pd"))
    assert wrong == []


def test_sinks_reach_neither_sideways_nor_up() -> None:
    sinks = {name for name in LAYERS if name.startswith("a2pd.sinks.")} - \
        {"a2pd.sinks.templates", "a2pd.sinks.files", "a2pd.sinks.http_options",
         "a2pd.sinks.redis_options", "a2pd.sinks.credentials", "a2pd.sinks.postgres_options",
         "a2pd.sinks.postgres_schema", "a2pd.sinks.postgres_rows"}
    wrong = sorted(f"{imp.module}:{imp.line} imports {imp.target}" for imp in all_imports()
                   if imp.module in sinks and imp.target in sinks)
    assert wrong == []


def test_packages_are_used_through_their_facade() -> None:
    wrong = sorted(f"{imp.module}:{imp.line} imports {imp.target}" for imp in all_imports()
                   for facade in FACADES
                   if imp.target.startswith(f"{facade}.")
                   and imp.module != facade and not imp.module.startswith(f"{facade}."))
    assert wrong == []


def test_the_session_and_the_backfill_see_only_the_receiving_side() -> None:
    """They hand events to ``a2pd.ingest``; delivery is none of their business."""
    wrong = sorted(f"{imp.module}:{imp.line} imports {imp.target}" for imp in all_imports()
                   if imp.module.startswith(("a2pd.supervisor", "a2pd.session", "a2pd.backfill"))
                   and (imp.target in ("a2pd.pipeline", "a2pd.delivery", "a2pd.app")
                        or imp.target.startswith("a2pd.delivery.")))
    assert wrong == []


def test_outside_libraries_doing_io_have_their_owners() -> None:
    wrong = sorted(
        f"{imp.module}:{imp.line} imports {imp.target} (owners: "
        f"{', '.join(sorted(OWNERS[imp.target])) or 'the emulator only'})"
        for imp in all_imports()
        if _daemon(imp.module) and imp.target in OWNERS
        and imp.module not in OWNERS[imp.target])
    assert wrong == []


def test_the_emulator_is_independent_of_the_daemon() -> None:
    wrong = []
    for imp in all_imports():
        emulated = imp.module.startswith("a2pd.emulator")
        if emulated and _daemon(imp.target) and imp.target != "a2pd":
            wrong.append(f"{imp.module}:{imp.line} imports {imp.target}")
        if not emulated and imp.target.startswith("a2pd.emulator") and \
                imp.module not in EMULATOR_USERS:
            wrong.append(f"{imp.module}:{imp.line} imports the emulator")
    assert sorted(wrong) == []


def exported(path: Path) -> set[str] | None:
    """A module's ``__all__``, or None when it has none."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                assert node.value is not None
                return set(ast.literal_eval(node.value))
    return None


def test_modules_say_what_they_export_and_take_only_that() -> None:
    found = modules()
    missing = sorted(name for name, path in found.items()
                     if _daemon(name) and name not in ("a2pd", "a2pd.__main__")
                     and exported(path) is None)
    assert missing == [], "add __all__"
    wrong = []
    for imp in all_imports():
        if not (_daemon(imp.module) and _daemon(imp.target)) or imp.target == "a2pd":
            continue
        public = exported(found[imp.target]) or set()
        for name in imp.names:
            if name.startswith("_") or name not in public:
                wrong.append(f"{imp.module}:{imp.line} takes {name} from {imp.target}")
    assert sorted(wrong) == []


def test_each_module_exports_what_it_defines() -> None:
    """``__all__`` lists names the module has (a stale entry would break ``import *``)."""
    for name, path in modules().items():
        public = exported(path)
        if public is None:
            continue
        tree = ast.parse(path.read_text())
        defined = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.alias):
                defined.add((node.asname or node.name).split(".")[0])
        assert sorted(public - defined) == [], name
