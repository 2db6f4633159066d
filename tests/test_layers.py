"""The house's one-way dependencies, read from the source: common <- model <- training, bot <- cli.

A newcomer can draw the layers from this table; an import against it fails here, naming the line."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# package -> the project packages it must never import (at module level or inside a function)
FORBIDDEN = {
    "common": {"model", "training", "bot", "cli", "fakes", "tests", "bench"},
    "model": {"training", "bot", "cli", "fakes", "tests", "bench"},
    "training": {"bot", "cli", "fakes", "tests", "bench"},
    "bot": {"training", "cli", "fakes", "tests", "bench"},
    "cli": {"fakes", "tests", "bench"},
    "fakes": {"cli", "tests", "bench"},
    "bench": {"tests"},
}
PACKAGES = set(FORBIDDEN) | {"tests"}
# Inside bot/: the core never imports a front end, and the data it speaks in imports neither.
FRONT_ENDS = {"bot.app", "bot.console_app", "bot.discord_app", "bot.telegram_app", "bot.telegram_inline"}
FORBIDDEN_MODULES = {
    "bot/service.py": FRONT_ENDS,
    "bot/memes.py": FRONT_ENDS | {"bot.service"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_layer_imports_one_above_it():
    wrong = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in _imports(path):
                if module.split(".")[0] in forbidden:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_bots_core_imports_no_front_end():
    wrong = [
        f"{path}:{line} imports {module}"
        for path, forbidden in FORBIDDEN_MODULES.items()
        for line, module in _imports(ROOT / path)
        if module in forbidden
    ]
    assert not wrong, "the core imports a front end:\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    """Module-level imports only: a cycle there makes import order matter."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            targets = set()
            for node in tree.body:  # module level only
                if isinstance(node, ast.Import):
                    targets |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets.add(node.module)
            graph[_module_name(path)] = {t for t in targets if t.split(".")[0] in PACKAGES}
    cycles = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt) :] + [nxt]))
            elif state.get(nxt) is None:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
