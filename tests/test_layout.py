"""The package's shape: imports run one way (no circles, function-level imports included),
and the data side knows no network."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fusion"
NETWORK = {"fusion.streams", "fusion.timm_streams", "fusion.model", "fusion.fusers",
           "fusion.surgery"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every fusion module -> the fusion modules it imports anywhere in its code."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert cycles(imports()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_data_knows_no_network():
    graph = imports()
    reached = {}
    for name in graph:
        if name.startswith("fusion.data"):
            seen, todo = set(), [name]
            while todo:
                for w in graph[todo.pop()] - seen:
                    seen.add(w)
                    todo.append(w)
            reached[name] = sorted(seen & NETWORK)
    assert {k: v for k, v in reached.items() if v} == {}


def test_checkpoints_written_before_the_parts_still_load():
    """tests/data/checkpoint_layouts.json holds the state-dict keys and shapes, the trainable
    parameters and the held BatchNorms of models built by the code before the model was
    assembled from parts; a model built now from the same config matches them, so a
    checkpoint of then loads (strictly) into a model of now."""
    import json
    import torch
    from fusion.build import build_model
    from fusion.config import Config
    layouts = json.loads((Path(__file__).parent / "data" / "checkpoint_layouts.json").read_text())
    for name, then in layouts.items():
        model = build_model(Config(flow_stack=3, **then["config"]), 5)
        state = model.state_dict()
        assert {k: list(v.shape) for k, v in state.items()} == then["state"], name
        old = {k: torch.full(shape, 0.5) for k, shape in then["state"].items()}
        model.load_state_dict(old)  # strict: every key, no extra
        assert sorted(k for k, p in model.named_parameters() if p.requires_grad) == \
            then["trainable"], name
        model.train()
        held = sum(1 for m in model.modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.training)
        assert held == then["held_bn"], name
