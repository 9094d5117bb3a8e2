"""The package's shape: no import cycles, a torch-free config, methods in their own rooms."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the sidrec modules it imports (at any depth of the file: lazy imports count too)."""
    files = {_module_name(p): p for p in (SRC / "sidrec").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names]
                # `from sidrec import precision` imports the module sidrec.precision; the package itself is an edge
                # only for a name that is not a module (`from sidrec import __version__`)
                names = subs + ([base] if any(x not in files for x in subs) else [])
            for n in names:
                while n and n not in files:  # `from a.b import c`: c may be a name, not a module
                    n = n.rsplit(".", 1)[0] if "." in n else ""
                if n and n != mod:
                    graph[mod].add(n)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
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
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_reading_a_config_imports_no_torch():
    code = "import sys, sidrec.config; sidrec.config.load_config(None, ['method=tiger']); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


TOY_TASK = '''
import torch
from torch import nn

from sidrec.data.batches import NextItemBatches
from sidrec.training.task import Task


class Bigram(nn.Module):
    """The next item from the last one: one row of logits per item."""

    def __init__(self, n_items):
        super().__init__()
        self.table = nn.Embedding(n_items + 1, n_items)
        nn.init.zeros_(self.table.weight)

    def forward(self, seq, target):
        keep = target >= 0
        return nn.functional.cross_entropy(self.table(seq[keep] + 1), target[keep])

    def score(self, hist):
        return self.table(hist[:, -1] + 1)


class BigramTask(Task):
    def __init__(self, cfg, split):
        self.cfg, self.split = cfg, split
        self.model = Bigram(split.n_items)
        self.batches = NextItemBatches(split.train, cfg.data.max_len, cfg.train.batch_size, cfg.seed)
        self.eval_batch_size = cfg.eval.batch_size

    def train_batches(self, epoch):
        return self.batches(epoch)

    def loss(self, model, batch):
        return model(batch["seq"], batch["target"])

    def model_scores(self, model, hist):
        model.eval()
        with torch.no_grad():
            return model.score(hist)


def build(cfg, dataset, split, run_dir):
    return BigramTask(cfg, split)
'''


def test_a_method_is_a_folder_and_one_registry_line(tmp_path, monkeypatch):
    """docs/architecture.md's recipe for a new method, followed literally: a package with a task module and a
    registry entry; it trains, evaluates (fused with content) and beats the popularity ranker on synthetic data."""
    from sidrec.config import load_config
    from sidrec.methods import registry
    from sidrec.pipeline import load_run, train

    pkg = tmp_path / "toymethods" / "bigram"
    pkg.mkdir(parents=True)
    (tmp_path / "toymethods" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "task.py").write_text(TOY_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.METHODS, "bigram", "toymethods.bigram.task:build")
    run = tmp_path / "run"
    cfg = load_config(None, ["method=bigram", "data.path=synthetic", "data.synthetic_users=300",
                             "data.synthetic_items=80", "data.max_len=10", "features.kind=attributes",
                             "train.epochs=3", "train.lr=0.05", "train.progress=false", "train.threads=1",
                             f"run_dir={run}", "fusion.lambdas=[0,1]"])
    res = train(cfg)
    assert res["model_only"]["test"]["all"]["ndcg@10"] > res["popularity_test"]["all"]["ndcg@10"]
    _, _, _, task = load_run(run)
    assert task.evaluate(task.model, "test")["all"] == res["test"]["all"]
