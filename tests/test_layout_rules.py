"""The code's own rules: no import circles, dependencies one way, docs that stand alone, one
spelling per flag (old spellings hidden)."""
from __future__ import annotations

import ast
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"jobs": "linegen.jobs", "workers": "linegen.workers", "cluster": "linegen.cluster",
            "cli": "linegen.cli", "benchmarks": "linegen.benchmarks", "linegen": "linegen"}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, prefix in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([prefix, *parts])] = path
    return mods


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(path: Path, known: set[str], top_only: bool = False) -> set[str]:
    """linegen modules `path` imports anywhere: at the top, inside functions (lazy imports count:
    a cycle hidden behind a function-local import is still a cycle), not under `if TYPE_CHECKING:`,
    which never runs. ``top_only``: what importing `path` itself runs (no function bodies)."""
    out = set()

    def walk(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            for child in node.orelse:
                walk(child)
            return
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
        for child in ast.iter_child_nodes(node):
            if not (top_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))):
                walk(child)

    walk(ast.parse(path.read_text()))
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    seen: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        seen[m] = 1
        for d in sorted(graph[m]):
            if seen.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in seen:
                visit(d, stack + [d])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])
    return cycles


def test_no_import_circles() -> None:
    mods = _modules()
    graph = {m: _imports(p, set(mods)) - {m} for m, p in mods.items()}
    # A package's own __init__ importing its submodules is how re-exports work, not a circle.
    for m in graph:
        graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
    assert _cycles(graph) == []


def test_the_cycle_check_sees_lazy_imports() -> None:
    """The check above must see an import inside a function: a two-module circle closed lazily."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d, "a.py"), Path(d, "b.py")
        a.write_text("import pkg.b\n")
        b.write_text("def f():\n    from pkg.a import x\n")
        graph = {"pkg.a": _imports(a, {"pkg.a", "pkg.b"}) - {"pkg.a"},
                 "pkg.b": _imports(b, {"pkg.a", "pkg.b"}) - {"pkg.b"}}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert _cycles(graph) != []


BASE = {"linegen.errors", "linegen.guarded"}  # what every package may import: errors, the guarded reader


def test_dependencies_point_one_way() -> None:
    mods = _modules()
    allowed = {  # what each package may import (at any depth, lazily too)
        "linegen.workers": {"linegen.workers", "linegen.errors"},
        "linegen.cluster": {"linegen.cluster", "linegen.errors"},
        "linegen.settings": {"linegen.settings", "linegen.workers", "linegen.cluster", "linegen.cost.prices",
                             "linegen.jobs.storage", "linegen.errors"},
        "linegen.jobs": {"linegen.jobs", "linegen.workers", "linegen.cluster", "linegen.settings", "linegen.cost",
                         "linegen.errors"},
        "linegen.quality": {"linegen.quality", "linegen.settings", "linegen.workers", "linegen.errors"},
        "linegen.bench": {"linegen.bench", "linegen.workers", "linegen.settings", "linegen.errors"},
    }
    bad = []
    for m, path in mods.items():
        rule = next((v for k, v in allowed.items() if m == k or m.startswith(k + ".")), None)
        if rule is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.module if isinstance(node, ast.ImportFrom) and node.level == 0 else None
            names = [name] if name else [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for n in names:
                if n and n.startswith("linegen.") and not any(n == a or n.startswith(a + ".") for a in rule | BASE):
                    bad.append(f"{m} imports {n}")
    assert bad == []


def test_sources_cite_only_the_repository() -> None:
    outside = ("specs/", "DESIGN.md", "notes/environment", "/work/shared", "../shared")
    hits = []
    for folder in ("jobs", "workers", "cluster", "cli", "benchmarks", "linegen", "tests", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".sh") and path.name != "test_layout_rules.py":
                text = path.read_text()
                hits += [f"{path.relative_to(ROOT)}: {o}" for o in outside if o in text]
    text = (ROOT / "README.md").read_text()
    hits += [f"README.md: {o}" for o in outside if o in text]
    assert hits == []


def test_flag_groups_and_hidden_aliases() -> None:
    from linegen.cli.main import app

    runner = CliRunner()
    help_text = runner.invoke(app, ["eval", "--help"], terminal_width=200).output
    assert "--cache-ratio" in help_text and "--batch-size" in help_text
    assert "--ratios" not in help_text and "--max-batch" not in help_text  # old spellings: accepted, hidden
    for command in ("run", "submit", "generate"):
        out = runner.invoke(app, [command, "--help"], terminal_width=200).output
        for flag in ("--model", "--checkpoint", "--cache-ratio", "--cache-option", "--seed", "--top-p", "--batch-size",
                     "--memory-budget", "--device"):
            assert flag in out, (command, flag)
    for command in ("submit", "status", "list", "logs", "cancel", "resume", "monitor", "cost"):
        out = runner.invoke(app, [command, "--help"], terminal_width=200).output
        for flag in ("--cluster", "--token", "--token-file", "--header", "--config"):
            assert flag in out, (command, flag)


def test_old_flag_spelling_still_works(tmp_path: Path) -> None:
    from linegen.cli.main import app

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"class_id": 1, "count": 2}\n')
    runner = CliRunner()
    old = runner.invoke(app, ["cost", "--estimate", str(manifest), "--model", "test-tiny", "--gpu", "H100",
                              "--cache", "linear", "--cache-ratio", "1/4", "--json"])
    assert '"cache_ratio": "1/4"' in old.output, old.output
    # --ratio (bench's old name) folds into --cache-ratio: a bad value is reported under the new meaning
    r = runner.invoke(app, ["bench", "--model", "test-tiny", "--policies", "linear", "--ratio", "7/6", "--batch", "1",
                            "--skip-max-batch", "--no-warmup"])
    assert r.exit_code != 0 and "ratio must be in (0, 1]" in r.output, r.output


def test_no_product_function_longer_than_80_lines() -> None:
    """A function a reader must hold in their head at once stays on one screen (docstring included)."""
    long = []
    for folder in ("jobs", "workers", "cluster", "cli", "linegen"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > 80:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


HEAVY = {"torch", "ray", "pyarrow", "boto3", "botocore", "transformers", "numpy", "PIL", "tokenizers", "safetensors",
         "tomlkit"}


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _external_top_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
    return out


def _heavy_modules(mods: dict[str, Path]) -> set[str]:
    """linegen modules whose import (at module level, through any chain) loads a heavy library."""
    graph = {m: {d for d in _imports(p, set(mods), top_only=True) if d != m} for m, p in mods.items()}
    heavy = {m for m, p in mods.items() if _external_top_imports(p) & HEAVY}
    changed = True
    while changed:
        changed = False
        for m, deps in graph.items():
            parents = {d.rpartition(".")[0] for d in deps}  # importing a.b runs a's __init__ too
            if m not in heavy and (deps | parents) & heavy:
                heavy.add(m)
                changed = True
    return heavy


def test_lazy_imports_only_of_heavy_modules() -> None:
    """A function-local import exists to keep start-up fast: outside the CLI (which keeps every
    import lazy so `--help` answers at once) it must be of a module that loads torch, ray, pyarrow,
    boto3, numpy or transformers. A light module is imported at the top, where a reader sees it."""
    mods = _modules()
    heavy = _heavy_modules(mods)
    light_lazy = []
    for m, path in mods.items():
        if m.startswith(("linegen.cli", "linegen.benchmarks")) or m == "linegen":
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in fn.body:
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("linegen"):
                    targets = {_resolve(f"{node.module}.{a.name}", mods) for a in node.names} | {
                        _resolve(node.module, mods)}
                    targets.discard(None)
                    if not targets & heavy:
                        light_lazy.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module}")
    assert light_lazy == []
