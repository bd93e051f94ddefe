"""The architecture's promises about the core, checked on the source itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "retrain"

# A string naming a module of workers/ ("workers.base", "workers.benchmarks.", "workers.app:x"):
# what importlib.import_module, __import__ or a "module:attr" path would load.
_WORKERS_NAME = re.compile(r"^workers(\.\w+)*\.?(:[\w.]+)?$")

#: The only places retrain/ reaches workers/, and why each must. The CLI is the operator's one
#: command, and these three commands need Celery itself, which retrain/ never imports.
WORKERS_ALLOWED: dict[str, dict[str, str]] = {
    "cli/__init__.py": {
        "workers.demo": "`retrain demo` runs the loop through an in-process Celery worker",
        "workers.benchmarks": "`retrain bench NAME` runs the benchmarks that need real Celery workers",
    },
    "cli/commands/common.py": {
        "workers.base": "a command that changed state publishes its outbox at once through the Celery app",
    },
}


def _modules():
    return sorted(p for p in CORE.rglob("*.py") if "migrations" not in p.parts)


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _workers_references(tree: ast.AST) -> set[str]:
    """Modules of workers/ that ``tree`` imports, by statement or by name in a string."""
    found = {n for n in _imports(tree) if n == "workers" or n.startswith("workers.")}
    found |= {node.value.split(":")[0].rstrip(".") for node in ast.walk(tree)
              if isinstance(node, ast.Constant) and isinstance(node.value, str) and _WORKERS_NAME.match(node.value)}
    return found


def test_the_core_reaches_workers_only_where_the_allow_list_says_why():
    # Given every module under retrain/, When their imports and the module names in their strings are read
    found = {str(p.relative_to(CORE)): refs for p in _modules()
             if (refs := _workers_references(ast.parse(p.read_text())))}
    # Then each reference to workers/ is on the allow-list with its reason, and every entry is still needed
    assert found == {path: set(refs) for path, refs in WORKERS_ALLOWED.items()}


def test_no_core_module_imports_celery():
    # Given every module under retrain/, When their imports are read, Then none is Celery
    offenders = [str(p.relative_to(CORE)) for p in _modules()
                 if any(n == "celery" or n.startswith("celery.") for n in _imports(ast.parse(p.read_text())))]
    assert offenders == []


def test_only_the_clock_module_reads_the_wall_clock():
    offenders = []
    for p in _modules():
        if p.name == "clock.py" or "benchmarks" in p.parts:
            continue
        src = p.read_text()
        for needle in ("datetime.now(", "datetime.utcnow(", "time.time(", "date.today("):
            if needle in src:
                offenders.append(f"{p.relative_to(CORE)}: {needle}")
    assert offenders == []


def test_client_public_api_is_pinned():
    import retrain.client as client

    assert sorted(client.__all__) == ["ClientStats", "RetrainClient", "Sender", "kombu_sender"]
    names = {n for n in dir(client.RetrainClient) if not n.startswith("_")}
    assert {"report_prediction", "report_outcome", "report", "request_retraining", "flush", "close",
            "stats"} <= names


# ---------------------------------------------------------------------------- the layers
#: What each folder of retrain/ may import from the others (statements and module names in
#: strings alike). "services" are the top-level modules: wiring (config, settings, context,
#: queues, tasks) and services over a unit of work (registry, slots, waiting, outbox, report,
#: artifacts). A "layer:module" entry allows that one module only.
LAYERS_ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "storage": {"core", "storage"},
    "migrations": {"core", "storage", "services:retrain.settings"},
    "client": {"core", "client", "services:retrain.queues", "services:retrain.tasks"},
    "serving": {"core", "serving", "storage", "services:retrain.artifacts"},
    "services": {"core", "services", "storage"},
    "steps": {"core", "services", "steps"},
    "examples": {"core", "examples"},
    # The outer ring: the backtester, the benchmarks and the CLI may use every layer.
    "backtest": {"*"}, "benchmarks": {"*"}, "cli": {"*"},
}
#: Single modules that may reach further than their folder, and why.
MODULE_EXTRA: dict[str, set[str]] = {
    # The task table names each task's step ("retrain.steps.train:train_run"), resolved when run.
    "tasks.py": {"steps"},
}
_FOLDERS = {"core", "storage", "migrations", "client", "serving", "steps", "examples", "backtest", "benchmarks", "cli"}
_RETRAIN_NAME = re.compile(r"^retrain(\.\w+)+(:[\w.]+)?$")


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "retrain" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in _FOLDERS else "services"


def _retrain_references(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("retrain."))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "retrain":
                found.update(f"retrain.{a.name}" for a in node.names)
            elif node.module.startswith("retrain."):
                found.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _RETRAIN_NAME.match(node.value):
            found.add(node.value.split(":")[0])
    return found


def _layer_offences(rel: Path, tree: ast.AST) -> list[str]:
    src = rel.parts[0] if rel.parts[0] in _FOLDERS and len(rel.parts) > 1 else "services"
    allowed = LAYERS_ALLOWED[src] | MODULE_EXTRA.get(str(rel), set())
    out = []
    for ref in sorted(_retrain_references(tree)):
        dst = _layer(ref)
        if dst is None or dst == src or "*" in allowed or dst in allowed:
            continue
        if any(a == f"{dst}:{ref}" or (a.startswith(f"{dst}:") and ref.startswith(a.split(":", 1)[1] + "."))
               for a in allowed):
            continue
        out.append(f"{rel}: {src} -> {ref}")
    return out


def test_each_folder_imports_only_the_layers_it_may():
    # Given every module of retrain/, When its imports and the module names in its strings are read
    offenders = [o for p in _modules() for o in _layer_offences(p.relative_to(CORE), ast.parse(p.read_text()))]
    # Then each reaches only the layers its folder may (see LAYERS_ALLOWED)
    assert offenders == []


@pytest.mark.parametrize("rel, src", [
    ("core/policy.py", "from retrain.storage.repo import Tx"),
    ("core/tasks.py", "STEP = 'retrain.steps.train:train_run'"),
    ("steps/decide.py", "from retrain.storage.models import RequestRow"),
    ("client/__init__.py", "from retrain.serving import ModelRouter"),
    ("storage/repo.py", "from retrain import registry"),
])
def test_the_layer_check_sees_a_crossing(rel, src):
    assert _layer_offences(Path(rel), ast.parse(src))
