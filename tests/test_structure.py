"""The package's shape: no import circle, small modules, and the process boundary in the
tree (the child's code never reaches into the parent's, the parent never imports torch)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "worker"
# No line cap: a module is as long as its one concept needs (a cap split the supervisor
# into pieces that shared state they did not own). Each module says its concept first.
# The one module of the parent that may use multiprocess (and its internals), the one of
# the child, and the one of the forkserver (its door: the listener it guards).
LAUNCHER = "worker.parent.mp_launcher"
CHILD_MP = "worker.child.entry"
FORKSERVER_MP = "worker.child.forkserver_door"
SHARED = {"worker.protocol", "worker.jobs", "worker.config", "worker.targets",
          "worker.version", "worker.logs", "worker.jsonlimits", "worker.gpus",
          "worker.tracing", "worker.redraws", "worker.hardening", "worker.redaction",
          "worker.procfs"}
# The SDK's helpers (worker.serverless.*: logger, fitness registry, utils) serve both sides.
HELPERS = "worker.serverless."


def _modules() -> dict:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imported_names(path: Path) -> set:
    """Every module name this file imports (any package), at the top or in a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
    return found


def _imports(name: str, path: Path, known: set) -> set:
    """Modules of the package this one imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def cycles(g: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert cycles(graph()) == []


def test_the_checker_finds_a_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert "worker.parent.core" in graph()["worker.parent.supervisor"]


def test_every_module_says_its_concept_first():
    missing = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" and not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []


# What the parent calls a child record (child.Child) and a slot (slots.Slot) when it holds
# one: each is changed by its own module's methods only.
_OWNERS = {"child.py": {"child", "spare", "active", "old", "c", "other", "lost", "gone"},
           "slots.py": {"slot", "slots", "other"}}


def _writes(tree, names: set) -> list:
    """Assignments to a field of something given one of `names` (`child.x = ...`,
    `slot.child.x += ...`, `other.out, y = ...`, `setattr(child, ...)`)."""
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            targets = [t for tgt in targets for t in (tgt.elts if isinstance(
                tgt, ast.Tuple) else [tgt])]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr":
            targets = [ast.Attribute(value=node.args[0], attr="?")] if node.args else []
        for t in targets:
            if isinstance(t, ast.Subscript):
                t = t.value
            if not isinstance(t, ast.Attribute):
                continue
            owner = t.value
            while isinstance(owner, ast.Subscript):
                owner = owner.value
            name = owner.id if isinstance(owner, ast.Name) else \
                owner.attr if isinstance(owner, ast.Attribute) else None
            if name in names:
                out.append(f"{name}.{t.attr} (line {node.lineno})")
    return out


def test_a_child_and_a_slot_are_changed_only_by_their_own_module():
    """A child's fields are written by its own methods (parent/child.py), a slot's by its
    own (parent/slots.py); nothing else in the parent reaches in."""
    found = {}
    for path in (PACKAGE / "parent").glob("*.py"):
        for owner, names in _OWNERS.items():
            if path.name != owner:
                hits = _writes(ast.parse(path.read_text()), names)
                if hits:
                    found[f"{path.name} -> {owner}"] = hits
    assert found == {}


def test_the_writer_check_finds_a_write():
    tree = ast.parse("slot.child.phase = 1\nchild.jobs[3] = t\nold.role, x = 1, 2\n"
                     "tracked.started = 0\nself.child = None\ncore.slots[0].out = 'x'\n")
    assert _writes(tree, _OWNERS["child.py"]) == [
        "child.phase (line 1)", "child.jobs (line 2)", "old.role (line 3)"]
    assert _writes(tree, {"slots"}) == ["slots.out (line 6)"]


def test_the_child_never_imports_the_parent_side():
    g = graph()
    for name, deps in g.items():
        if name.startswith("worker.child"):
            allowed = {d for d in deps
                       if d.startswith(("worker.child", HELPERS)) or d in SHARED}
            assert deps == allowed, f"{name} imports {deps - allowed}"


def test_the_parent_reaches_the_child_only_through_its_entry_point():
    g = graph()
    for name, deps in g.items():
        if name.startswith(("worker.parent", "worker.sources")):
            into_child = {d for d in deps if d.startswith("worker.child")}
            assert into_child <= {"worker.child.boot"}, (name, into_child)


def test_the_parent_never_imports_torch_or_cuda():
    for path in list((PACKAGE / "parent").rglob("*.py")) + list((PACKAGE / "sources").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {n for n in names if n.split(".")[0] in ("torch", "cupy", "jax")}, path


def test_the_sdk_helpers_stay_out_of_both_sides():
    for name, deps in graph().items():
        if name.startswith(HELPERS):
            assert not {d for d in deps if d.startswith(("worker.parent", "worker.sources",
                                                          "worker.child"))}, (name, deps)


def _users_of(top: str) -> set:
    return {name for name, path in _modules().items()
            if any(m.split(".")[0] == top for m in _imported_names(path))}


def test_multiprocess_is_used_by_one_module_on_each_side():
    """Its internals (the forkserver's, the resource tracker's, get_preparation_data) are
    checked in one place: the launcher module; the child's one use is in its entry; the
    forkserver's, in its door (which the child also calls to undo it)."""
    users = _users_of("multiprocess")
    assert {u for u in users if u.startswith(("worker.parent", "worker.sources"))} \
        == {LAUNCHER}
    assert {u for u in users if u.startswith("worker.child")} == {CHILD_MP, FORKSERVER_MP}
    assert users <= {LAUNCHER, CHILD_MP, FORKSERVER_MP}, users


def test_one_front_door_runs_uvicorn_with_no_subclass_of_its_server():
    """The local API and the gateway share one server runner (front_door.Server), which
    keeps uvicorn off the signals through its documented behaviour, not by overriding its
    methods."""
    assert _users_of("uvicorn") == {"worker.front_door"}
    subclasses = [(name, node.name) for name, path in _modules().items()
                  for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.ClassDef) and any(
                      ast.unparse(base).endswith("Server") and "HTTP" not in ast.unparse(base)
                      for base in node.bases)]
    assert subclasses == [], subclasses


# Every HTTP client in the worker: requests, except where an exception's reason holds
# (docs/architecture.md, "HTTP clients"). A new use of http.client, urllib.request or
# any other client library fails here until it is named with its reason.
HTTP_CLIENT = "requests"
HTTP_EXCEPTIONS = {
    "worker.sources.runpod_take": "http.client: the take's socket is ours to cut at a "
                                  "signal (an abortable long-poll)",
    "worker.sources.webhook_post": "http.client: the connection goes to the address that "
                                   "was checked (pinned; resolving again reopens DNS "
                                   "rebinding)",
    "worker.serverless.utils.rp_ssrf": "http.client: the pinned connection itself",
    "worker.serverless.utils.rp_download": "http.client: downloads over the pinned, checked "
                                           "address (rp_ssrf)",
    "worker.sources.job_store": "http.client: only its exception class, for webhook_post's "
                                "errors",
}
_CLIENTS = {"requests", "http.client", "urllib.request", "urllib3", "httpx", "aiohttp",
            "pycurl", "httplib2"}


def _client_imports(path: Path) -> set:
    """The HTTP client libraries a file imports, however spelt (`from http import
    client`, `import urllib3.util`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {lib for lib in _CLIENTS for n in names if n == lib or n.startswith(lib + ".")}


def test_the_client_check_sees_every_spelling(tmp_path):
    spelt = tmp_path / "m.py"
    spelt.write_text("from http import client\nfrom urllib import request\n"
                     "import urllib3.util\nimport requests.adapters\n")
    assert _client_imports(spelt) == {"http.client", "urllib.request", "urllib3",
                                      "requests"}


def test_one_http_client_and_each_exception_named_with_its_reason():
    users: dict = {}
    for name, path in _modules().items():
        for lib in _client_imports(path):
            users.setdefault(lib, set()).add(name)
    others = {lib: mods for lib, mods in users.items() if lib != HTTP_CLIENT}
    assert set(others) <= {"http.client"}, others
    assert others.get("http.client", set()) == set(HTTP_EXCEPTIONS), others


def test_the_core_does_no_io_and_owns_no_process():
    """The decisions (the core, its slots, children, spares, fate, recovery) import no
    I/O of ours and nothing that starts, watches or signals a process."""
    g = graph()
    io = {"worker.parent.supervisor", "worker.parent.child_host", "worker.parent.mp_launcher",
          "worker.parent.launcher", "worker.parent.channel", "worker.parent.output",
          "worker.parent.commands", "worker.parent.metrics", "worker.parent.health_file"}
    for name in ("worker.parent.core", "worker.parent.slots", "worker.parent.fate",
                 "worker.parent.child", "worker.parent.causes", "worker.parent.spares",
                 "worker.parent.recovery", "worker.parent.jobbook", "worker.parent.dispatch"):
        assert not (g[name] & io), (name, g[name] & io)
        names = {m.split(".")[0] for m in _imported_names(_modules()[name])}
        assert not names & {"os", "socket", "selectors", "subprocess", "threading",
                            "multiprocess", "psutil"}, (name, names)


def test_the_architecture_file_map_names_every_module_and_only_those():
    """docs/architecture.md has one line per module; it must stay true as modules come
    and go (the SDK's helpers under serverless/ are one line for the folder)."""
    import re
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    section = doc[doc.index("## Where things are"):doc.index("## A job's path")]
    listed = set(re.findall(r"^\s+(?:\S+\.py\s+)*?(\w+\.py)\b", section, re.M))
    listed |= set(re.findall(r"^\s+(\w+\.py)\s", section, re.M))
    ours = {p for p in PACKAGE.rglob("*.py") if "serverless" not in p.parts
            and (p.name != "__init__.py" or p.parent == PACKAGE)}
    missing = {str(p.relative_to(PACKAGE)) for p in ours
               if not re.search(rf"(?m)^\s+{re.escape(p.name)}\s", section)}
    assert missing == set(), f"modules missing from the file map: {missing}"
    names = {p.name for p in PACKAGE.rglob("*.py")}
    assert listed <= names, f"the file map names modules that do not exist: {listed - names}"
