"""The package's shape: imports run one way (no circles, function-level imports included),
the data side knows no network, and no function takes more than ten parameters."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fusion"
NETWORK = {"fusion.streams", "fusion.timm_streams", "fusion.model", "fusion.fusers",
           "fusion.surgery"}
MAX_PARAMETERS = 10


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


def parameter_counts(tree: ast.AST, module: str) -> list[tuple[str, int]]:
    """(qualified name, parameters) of every function and method in `tree`: positional and
    keyword-only parameters, not `self` or `cls`, nor *args and **kwargs (which pass options
    on, counted where they are named)."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
                if names[:1] in (["self"], ["cls"]):
                    names = names[1:]
                found.append((f"{prefix}.{child.name}", len(names)))
                visit(child, f"{prefix}.{child.name}")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}.{child.name}")
            else:
                visit(child, prefix)
    visit(tree, module)
    return found


def test_no_function_takes_more_than_ten_parameters():
    """Options that travel together are one object (the model's StreamSpec and FusionSpec, the
    data's ClipSpec and Selection, extraction's Settings and Execution), built once where the
    options are read (fusion/build.py from the config, extract_frames.py from its arguments):
    a function with more parameters passes on options that belong in one, and adding an option
    would touch every function in between."""
    over = [f"{name} ({n})" for path in sorted(PACKAGE.rglob("*.py"))
            for name, n in parameter_counts(ast.parse(path.read_text()), module_name(path))
            if n > MAX_PARAMETERS]
    assert not over, f"more than {MAX_PARAMETERS} parameters: " + ", ".join(over)


def test_the_parameter_counter_counts_what_is_named():
    tree = ast.parse("def f(a, /, b, *args, c, **kwargs):\n"
                     "    def inner(x): pass\n"
                     "class K:\n"
                     "    def m(self, a, b=1): pass\n"
                     "    @classmethod\n"
                     "    def k(cls, *, a): pass\n")
    assert parameter_counts(tree, "mod") == [("mod.f", 3), ("mod.f.inner", 1), ("mod.K.m", 2),
                                             ("mod.K.k", 1)]


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
