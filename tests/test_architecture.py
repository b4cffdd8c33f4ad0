"""The package's import graph, read from the source with ``ast`` (nothing is imported): no circle, no
import that runs back up the layers of /work/shared/DESIGN.md ("The package, by layer"), and no core
module that knows about the GPU-profile rehearsal (issue 24: its cuts are the ``rehearse`` recipe
profile, its stand-ins are put where the real sources are looked up; core modules never ask).

Every import counts, also one inside a function or under ``if TYPE_CHECKING:``: a lazy import is
still a dependency of the room.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gemma_helpers"

# bottom to top; a module may import its own layer and the ones below, never one above
LAYERS = (
    # the ground: no gemma_helpers import but from this layer
    ("ground", {"env", "jsonl", "gguf_header", "setup_cell", "chat", "memory", "trl_compat"}),
    # data to rows, results files and charts
    ("data", {"data", "data.dolly", "data.download", "data.frames", "data.hub", "data.papers", "data.pdf", "data.persian",
              "results", "plots"}),
    # models: the embedded model, the registry and loading, vision models; cards; offline stand-ins of the internet
    ("models", {"embedded", "models", "vision", "hub", "offline"}),
    # the work a notebook does with a model
    ("work", {"train", "evaluate", "merging", "gguf_convert", "modelfile", "llamacpp", "kerashub"}),
    # what is built on the work: recipes, the T4 budget, measurements, serving, the notebooks' experiments
    ("recipes", {"recipes", "budget", "bench", "throughput", "serve", "paper_parts", "fact_injection"}),
    # the top floor: the public surface, the command line and the rehearsal
    ("top", {"", "__main__", "rehearsal", "gpu_check"}),
)
# the rehearsal's own rooms: only these (__main__, which starts it, and the GPU check, which runs through it) may name it
REHEARSAL_ROOMS = {"rehearsal", "__main__", "gpu_check"}
REHEARSAL_WORDS = re.compile(r"\brehears(al|ing)\b|GEMMA_REHEARSAL", re.IGNORECASE)


def module_name(path: Path) -> str:
    """``data.papers`` for gemma_helpers/data/papers.py, ``""`` for gemma_helpers/__init__.py."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from . import x`` counts as x when x is a module)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" and name else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
            elif (node.module or "").split(".")[0] == "gemma_helpers":
                base = []
                node = ast.ImportFrom(module=node.module.removeprefix("gemma_helpers").lstrip(".") or None,
                                      names=node.names, level=1)
            else:
                continue
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                out.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gemma_helpers":
                    out.add(alias.name.removeprefix("gemma_helpers").lstrip("."))
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) for name, path in found.items()}


def layer_of(name: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        if name in members:
            return i
    raise KeyError(name)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read_from_the_source():
    edges = graph()
    assert "models" in edges["train"] and "chat" in edges["models"]
    assert "data.papers" in edges["offline"]  # a lazy import inside a function counts


def test_every_module_has_a_layer():
    missing = sorted(set(modules()) - set().union(*(m for _, m in LAYERS)))
    assert not missing, f"modules in no layer of this test (add each to LAYERS, as in DESIGN.md): {missing}"


def test_no_import_circle():
    found = circles(graph())
    assert not found, f"import circles: {found}"


def test_no_import_runs_back_up():
    up = [f"{a or '__init__'} ({LAYERS[layer_of(a)][0]}) -> {b or '__init__'} ({LAYERS[layer_of(b)][0]})"
          for a, targets in sorted(graph().items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not up, "imports that run back up the layers: " + "; ".join(up)


def test_no_core_module_knows_about_the_rehearsal():
    named = [f"{module_name(p)}:{i}: {line.strip()}" for name, p in modules().items() if name not in REHEARSAL_ROOMS
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if REHEARSAL_WORDS.search(line)]
    assert not named, f"{len(named)} lines of core modules name the rehearsal:\n" + "\n".join(named)


def test_the_checks_can_fail():
    """The walk's own checks on a made-up graph: a circle and an upward arrow are found."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("env") < layer_of("models") < layer_of("train") < layer_of("recipes") < layer_of("rehearsal")
    assert REHEARSAL_WORDS.search("from .rehearsal import cut_steps") and not REHEARSAL_WORDS.search("rehearse profile")
