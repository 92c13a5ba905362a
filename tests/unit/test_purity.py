"""The core stays pure and production code never depends on the test kit.

`rainctl/core` is sans-IO (ARCHITECTURE.md, "The sans-IO core"): no I/O, no clock reads, no
global randomness, no asyncio, and nothing of rainctl outside the core. Time comes in as an
argument and randomness as a `random.Random` instance, so `from random import Random` (for
annotations) is the one import of those modules allowed. Python randomises `hash()` of str
and bytes per process and `id()` is an address, so neither may drive a decision.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGE = REPOSITORY / "rainctl"
CORE = PACKAGE / "core"
TESTING = PACKAGE / "testing"
# The simulator ships inside the package, like trio.testing, and `rainctl sim` is its front
# end: the one production module whose whole purpose is to run it, so the one allowed to
# import rainctl.testing. Its renderers (cli/sim_render.py) take plain data and stay clean.
SIMULATOR_FRONT_END = PACKAGE / "cli" / "sim.py"


@dataclass(frozen=True)
class Rules:
    forbidden_modules: frozenset[str]
    """A module is forbidden with all its submodules."""
    allowed_from_imports: dict[str, frozenset[str]] = field(default_factory=dict)
    """`from MODULE import NAME` allowed although MODULE is forbidden."""
    forbidden_calls: frozenset[str] = frozenset()
    """Builtins that may not be called."""
    forbidden_call_receivers: frozenset[str] = frozenset()
    """`NAME.anything(...)` may not be called for these names."""


CORE_RULES = Rules(
    forbidden_modules=frozenset(
        {
            "asyncio",
            "io",
            "os",
            "pathlib",
            "pyroute2",
            "random",
            "select",
            "selectors",
            "signal",
            "socket",
            "subprocess",
            "threading",
            "time",
            "rainctl.cli",
            "rainctl.config",
            "rainctl.daemon",
            "rainctl.kernel",
            "rainctl.lab",
            "rainctl.net",
            "rainctl.probes",
            "rainctl.proxy",
            "rainctl.testing",
        }
    ),
    allowed_from_imports={"random": frozenset({"Random"})},
    forbidden_calls=frozenset(
        {"open", "print", "input", "hash", "id", "exec", "eval", "__import__"}
    ),
    forbidden_call_receivers=frozenset({"random", "time"}),
)

PRODUCTION_RULES = Rules(forbidden_modules=frozenset({"rainctl.testing"}))


def _is_forbidden(module: str, rules: Rules) -> bool:
    return any(
        module == forbidden or module.startswith(forbidden + ".")
        for forbidden in rules.forbidden_modules
    )


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a (possibly relative) `from ... import` reads from."""
    if node.level == 0:
        return node.module or ""
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    base_parts = package_parts[: len(package_parts) - (node.level - 1)]
    return ".".join([*base_parts, *([node.module] if node.module else [])])


def _import_violations(
    tree: ast.Module, module: str, is_package: bool, rules: Rules
) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_forbidden(alias.name, rules):
                    yield node.lineno, f"imports {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_package)
            names = {alias.name for alias in node.names}
            allowed = rules.allowed_from_imports.get(base, frozenset())
            if _is_forbidden(base, rules):
                if not names <= allowed:
                    yield node.lineno, f"imports {', '.join(sorted(names - allowed))} from {base}"
                continue
            for name in sorted(names):
                if _is_forbidden(f"{base}.{name}", rules):
                    yield node.lineno, f"imports {base}.{name}"


def _call_violations(tree: ast.Module, rules: Rules) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        if isinstance(function, ast.Name) and function.id in rules.forbidden_calls:
            yield node.lineno, f"calls {function.id}()"
        elif (
            isinstance(function, ast.Attribute)
            and isinstance(function.value, ast.Name)
            and function.value.id in rules.forbidden_call_receivers
        ):
            yield node.lineno, f"calls {function.value.id}.{function.attr}()"


def find_violations(
    source: str, filename: str, module: str, rules: Rules, *, is_package: bool = False
) -> list[str]:
    """Every rule broken by `source`, as `filename:line: what`, in line order."""
    tree = ast.parse(source, filename=filename)
    found = [*_import_violations(tree, module, is_package, rules), *_call_violations(tree, rules)]
    return [f"{filename}:{line}: {what}" for line, what in sorted(found)]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPOSITORY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _check_tree(files: list[Path], rules: Rules) -> list[str]:
    return [
        violation
        for path in files
        for violation in find_violations(
            path.read_text(encoding="utf-8"),
            str(path.relative_to(REPOSITORY)),
            _module_name(path),
            rules,
            is_package=path.name == "__init__.py",
        )
    ]


def test_core_is_pure() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert CORE / "spec.py" in files  # the walk found the core at all
    violations = _check_tree(files, CORE_RULES)
    assert not violations, "impure core:\n" + "\n".join(violations)


def test_production_code_never_imports_the_test_kit() -> None:
    files = [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if TESTING not in path.parents and path != SIMULATOR_FRONT_END
    ]
    assert PACKAGE / "errors.py" in files
    assert SIMULATOR_FRONT_END.is_file()  # the exception names a module that exists
    violations = _check_tree(files, PRODUCTION_RULES)
    assert not violations, "production code imports rainctl.testing:\n" + "\n".join(violations)


# ---- the checker checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time\n", "imports time"),
        ("import os.path\n", "imports os.path"),
        ("import random\n", "imports random"),
        ("from random import randint\n", "imports randint from random"),
        ("from random import Random, shuffle\n", "imports shuffle from random"),
        ("from time import monotonic\n", "imports monotonic from time"),
        ("import asyncio\n", "imports asyncio"),
        ("from pathlib import Path\n", "imports Path from pathlib"),
        ("import pyroute2.ipvs\n", "imports pyroute2.ipvs"),
        ("from rainctl.config.models import X\n", "imports X from rainctl.config.models"),
        ("from rainctl import testing\n", "imports rainctl.testing"),
        ("from ..config import models\n", "imports models from rainctl.config"),
        ("from .. import cli\n", "imports rainctl.cli"),
        ("x = open('f')\n", "calls open()"),
        ("print(1)\n", "calls print()"),
        ("h = hash(b'x')\n", "calls hash()"),
        ("i = id(object())\n", "calls id()"),
        ("eval('1')\n", "calls eval()"),
        ("m = __import__('os')\n", "calls __import__()"),
        ("r = random.random()\n", "calls random.random()"),
        ("t = time.monotonic_ns()\n", "calls time.monotonic_ns()"),
    ],
)
def test_checker_catches(source: str, expected: str) -> None:
    violations = find_violations(
        "from __future__ import annotations\n" + source,
        "rainctl/core/sample.py",
        "rainctl.core.sample",
        CORE_RULES,
    )
    assert violations == [f"rainctl/core/sample.py:2: {expected}"]


def test_checker_accepts_pure_code() -> None:
    source = """\
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from random import Random

from rainctl.core.types import NodeId
from . import spec


def pick(rng: Random, nodes: list[NodeId]) -> NodeId:
    digest = hashlib.sha256(b"x").digest()
    return nodes[rng.randrange(len(nodes)) + digest[0] % 1]
"""
    assert find_violations(source, "core/x.py", "rainctl.core.x", CORE_RULES) == []


def test_checker_reports_every_line_of_a_sample_module() -> None:
    source = "import socket\nimport json\n\n\ndef f() -> None:\n    print(time.time())\n"
    assert find_violations(source, "core/bad.py", "rainctl.core.bad", CORE_RULES) == [
        "core/bad.py:1: imports socket",
        "core/bad.py:6: calls print()",
        "core/bad.py:6: calls time.time()",
    ]


def test_checker_resolves_relative_imports_of_a_package() -> None:
    violations = find_violations(
        "from ..testing import sim\n",
        "rainctl/core/__init__.py",
        "rainctl.core",
        CORE_RULES,
        is_package=True,
    )
    assert violations == ["rainctl/core/__init__.py:1: imports sim from rainctl.testing"]
