"""The architecture's promises about the core, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "retrain"


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
