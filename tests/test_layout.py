"""The layout is the architecture: the import arrows between core's layers point one way, and no module or function
outgrows the limits (600 lines a module, 100 a function) in core/ and demo_app/. Read from the source (every import,
those inside functions too), so a new module is checked the day it lands.

Layers, lowest first (README "Files"):
  core base      core/*.py and core/decoding/: models, tokenizer, data, decoding, scoring, the bot registry
  evaluation     core/evaluation/: may import the base
  training       core/training/: may import the base and core.evaluation
  arena          core/arena/: may import the base and core.evaluation
  cli            core/cli.py: may import every package of core
  app            demo_app/, spaces/: may import core (core never imports them, nor gradio)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package of the importing module -> packages it must never import
FORBIDDEN = {
    "core": ("core.training", "core.evaluation", "core.arena", "core.cli", "demo_app", "spaces", "gradio"),
    "core.decoding": ("core.training", "core.evaluation", "core.arena", "core.cli", "demo_app", "spaces", "gradio"),
    "core.evaluation": ("core.training", "core.arena", "core.cli", "demo_app", "spaces", "gradio"),
    "core.training": ("core.arena", "core.cli", "demo_app", "spaces", "gradio"),
    "core.arena": ("core.training", "core.cli", "demo_app", "spaces", "gradio"),
    "core.cli": ("demo_app", "spaces", "gradio"),
}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str, root: Path = ROOT) -> str:
    """The layer of a module of core: its subpackage (core.training, ...), core.cli, or the base ("core")."""
    if name == "core.cli":
        return name
    parts = name.split(".")
    if len(parts) >= 2 and (root / "core" / parts[1]).is_dir():
        return ".".join(parts[:2])
    return "core"


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import of ``path``, relative imports resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def violations(path: Path, root: Path = ROOT) -> list[str]:
    banned = FORBIDDEN[layer(module_name(path, root), root)]
    return [f"{path.relative_to(root)}:{line} imports {target}" for line, target in imports(path, root)
            for b in banned if target == b or target.startswith(b + ".")]


def test_the_import_arrows_point_one_way():
    """Every layer's forbidden imports, anywhere in its files (inside functions too); so core never imports the
    app, the Space or gradio."""
    bad = [v for path in sources("core") for v in violations(path)]
    assert not bad, "\n".join(bad)


# a tab and the module that holds a part of it (each may import the other); no other tab imports another tab
TAB_PARTS = {frozenset({"search", "search_branch"}), frozenset({"arena", "arena_dialogue"})}


def test_a_tab_imports_no_other_tab_but_its_own_part():
    tabs = ROOT / "demo_app" / "tabs"
    bad = []
    for path in sorted(tabs.glob("*.py")):
        for line, target in imports(path):
            if target.startswith("demo_app.tabs."):
                other = target.split(".")[2]
                if other != path.stem and frozenset({path.stem, other}) not in TAB_PARTS:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_wrong_arrow(tmp_path):
    """A base module importing training, and evaluation importing training (inside a function), are caught."""
    (tmp_path / "core" / "evaluation").mkdir(parents=True)
    (tmp_path / "core" / "training").mkdir()
    base = tmp_path / "core" / "bots.py"
    base.write_text("from core.training.train import TrainConfig\n")
    inner = tmp_path / "core" / "evaluation" / "evaluate.py"
    inner.write_text("def f():\n    from ..training import rl\n    import gradio\n")
    fine = tmp_path / "core" / "training" / "rl.py"
    fine.write_text("from core.evaluation.metrics import distinct_n\nfrom . import train\n")
    assert violations(base, tmp_path) == ["core/bots.py:1 imports core.training.train",
                                "core/bots.py:1 imports core.training.train.TrainConfig"]
    assert violations(inner, tmp_path) == ["core/evaluation/evaluate.py:2 imports core.training",
                                 "core/evaluation/evaluate.py:2 imports core.training.rl",
                                 "core/evaluation/evaluate.py:3 imports gradio"]
    assert violations(fine, tmp_path) == []


@pytest.mark.parametrize("path", sources("core", "demo_app"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_or_function_outgrows_the_limits(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: {len(text.splitlines())} lines"
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def readme_tree() -> dict[str, str]:
    """The README's file tree (section "Files") as {path: what its line says}; nesting by two-space indents."""
    text = (ROOT / "README.md").read_text().split("## Files", 1)[1].split("```")[1]
    tree, stack = {}, []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip():
            continue
        if indent > 4:  # a continuation of the line above
            tree["".join(stack)] += " " + line.strip()
            continue
        name, _, says = line.strip().partition(" ")
        stack = stack[: indent // 2] + [name]
        tree["".join(stack)] = says.strip()
    return tree


def test_the_readme_tree_has_a_line_per_package():
    """Each package of core and the app is in the README's file tree, saying what it may import."""
    tree = readme_tree()
    packages = [f"{p.parent.relative_to(ROOT)}/" for p in sources("core", "demo_app") if p.name == "__init__.py"]
    assert "core/decoding/" in packages and "core/training/" in packages
    missing = [p for p in packages if p not in tree]
    assert not missing, missing
    silent = [p for p in packages if p.count("/") == 2 and "import" not in tree[p]]
    assert not silent, f"no line on what these may import: {silent}"
