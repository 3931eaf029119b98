"""Plug-ins: the example package under examples/plugin installed into the test environment and used
end to end (its model and dataset in the rewinding experiment with two worker processes, its entries
through the contract tests); run-time registrations reaching worker processes by module reference; one
defined in ``__main__`` refused in one line; registered names known when a config is loaded."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import earlyphase
from earlyphase import registry
from earlyphase.config import RunConfig, load_run_config
from earlyphase.errors import UserError
from earlyphase.execute import LocalExecutor, RunGraph
from earlyphase.store import Store

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "earlyphase-tinyplug 0.1.0"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """The example plug-in built and installed (offline, from a copy, so the repo stays clean) into a
    directory the subprocesses put on their path."""
    base = tmp_path_factory.mktemp("plugin")
    shutil.copytree(ROOT / "examples" / "plugin", base / "src")
    target = base / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(base / "src")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return target


def run_py(plugin_path: Path, *args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), str(ROOT)])}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


LIST = ("from earlyphase.cli import main\n"
        "for what in ('models', 'datasets', 'presets'):\n"
        "    main(['list', what])\n")


def test_example_plugin_is_listed(plugin_path):
    res = run_py(plugin_path, "-c", LIST)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(ln.split()[0] == "tiny_mlp" and PLUGIN in ln for ln in lines)
    assert any(ln.split()[0] == "blobs" and PLUGIN in ln for ln in lines)
    assert any(ln.split()[0] == "tinyplug/rewinding" for ln in lines)
    assert any(ln.split()[0] == "cnn1d" and ln.split()[1] == "earlyphase" for ln in lines)


def test_example_plugin_rewinding_with_two_workers(plugin_path, tmp_path):
    """The rewinding experiment on the plug-in's model and data, trained by two spawned workers (which
    load the plug-in themselves), to report.html; provenance names the plug-in and its version."""
    store = tmp_path / "store"
    res = run_py(plugin_path, "-m", "earlyphase.cli", "run", "rewinding", "--preset", "tinyplug", "--workers", "2",
                 "--quiet", "--store", str(store))
    assert res.returncode == 0, res.stderr[-3000:]
    exp_dir = Path(res.stdout.strip().splitlines()[-1])
    assert (exp_dir / "report.html").is_file()
    check = json.loads((exp_dir / "check.json").read_text())
    assert check["experiment"] == "rewinding" and check["numbers"]["level"] == 2
    runs = json.loads((exp_dir / "runs.json").read_text())
    assert len(runs) == 18
    for rid in runs:
        run = store / "runs" / rid
        assert json.loads((run / "status.json").read_text())["status"] == "done"
        assert json.loads((run / "spec.json").read_text())["config"]["model"]["name"] == "tiny_mlp"
        assert json.loads((run / "provenance.json").read_text())["plugins"] == {"tinyplug": PLUGIN}


def test_example_plugin_passes_the_contracts(plugin_path):
    res = run_py(plugin_path, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_contracts.py"),
                 "-k", "tiny_mlp or blobs")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "3 passed" in res.stdout, res.stdout[-500:]  # the model's contract, the dataset's two


# ---------------------------------------------------------------------------------------------- run time


class Flat(nn.Module):
    """A model registered at run time from this (importable) module."""

    output_layer = "out"

    def __init__(self, d: int, out_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(d, 16)
        self.out = nn.Linear(16, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1))))


def build_flat(cfg, input_shape, out_dim) -> Flat:
    return Flat(int(torch.tensor(input_shape).prod()), out_dim)


def _tiny(model: str, seed: int = 0) -> RunConfig:
    return load_run_config({"data": {"name": "gaussian", "n_train": 200, "n_test": 100, "dim": 12},
                            "model": {"name": model}, "seed": seed,
                            "train": {"steps": "30it", "batch_size": 50, "lr": 0.05},
                            "observe": {"threads": 1, "progress": False}})


@pytest.fixture
def flat():
    earlyphase.register_model("flat_rt", build_flat, example_input=(12,))
    yield "flat_rt"
    registry.MODEL_REGISTRY.unregister("flat_rt")


def test_run_time_model_reaches_pool_workers_by_module_reference(flat, tmp_path):
    entry = registry.MODEL_REGISTRY.get(flat)
    assert entry.origin == f"run time ({__name__})"
    graph = RunGraph()
    for seed in (0, 1):
        graph.add(_tiny(flat, seed))
    store = Store(tmp_path / "store")
    report = LocalExecutor(2, progress=False).run(graph, store)
    assert report.ok and sorted(report.trained) == sorted(graph), report
    alone = earlyphase.train(_tiny(flat, 0), store=tmp_path / "alone")  # in-process: the same weights
    final = max(alone.checkpoint_steps())
    worker = store.run(alone.id).load(final)[0]
    assert all(torch.equal(worker[k], v) for k, v in Store(tmp_path / "alone").run(alone.id).load(final)[0].items())


def test_model_defined_in_main_is_one_line_for_workers(tmp_path, snapshot):
    def build(cfg, input_shape, out_dim):  # what a notebook cell defines
        return build_flat(cfg, input_shape, out_dim)

    build.__module__, build.__qualname__ = "__main__", "build"
    earlyphase.register_model("notebook_net", build)
    try:
        assert earlyphase.train(_tiny("notebook_net"), store=tmp_path / "inproc").status == "done"  # in-process: fine
        graph = RunGraph()
        graph.add(_tiny("notebook_net"))
        with pytest.raises(UserError, match="__main__") as err:
            LocalExecutor(2, progress=False).check(graph, Store(tmp_path / "s"))
        assert "\n" not in str(err.value) and "plug-in" in str(err.value)
        store = Store(tmp_path / "exp").root
        before = snapshot(store)
        with pytest.raises(UserError, match="notebook_net"):
            earlyphase.run("rewinding", store=store, workers=2, seeds=1, levels=1,
                           overrides=['run.model.name="notebook_net"', 'run.data.name="gaussian"', "run.data.dim=12",
                                      "run.data.n_train=200", 'run.train.steps="30it"', 'rewind=["0it", "10it"]'])
        assert snapshot(store) == before
    finally:
        registry.MODEL_REGISTRY.unregister("notebook_net")


def test_ray_refuses_a_main_model_before_starting():
    pytest.importorskip("ray")
    from earlyphase.execute.ray_executor import RayExecutor

    def build(cfg, input_shape, out_dim):
        return build_flat(cfg, input_shape, out_dim)

    build.__module__ = "__main__"
    earlyphase.register_model("notebook_ray", build)
    try:
        graph = RunGraph()
        graph.add(_tiny("notebook_ray"))
        with pytest.raises(UserError, match="__main__"):
            RayExecutor(workers=1, progress=False).check(graph, Store(Path(os.environ["EARLYPHASE_HOME"]) / "r"))
    finally:
        registry.MODEL_REGISTRY.unregister("notebook_ray")


# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("argv,needle", [
    (["train", "--print-config", "--set", 'model.name="cnn1dd"'], "unknown model 'cnn1dd' (did you mean 'cnn1d'"),
    (["train", "--print-config", "--set", 'data.name="mnist1"'], "unknown dataset 'mnist1' (did you mean 'mnist1d'"),
    (["run", "rewinding", "--print-config", "--set", 'run.model.name="conv"'], "run.model.name: unknown model 'conv'"),
    (["train", "--print-config", "--set", 'observe.recorders=["grad_nrom"]'], "did you mean 'grad_norm'"),
])
def test_unknown_names_fail_at_load_with_suggestions(ep, argv, needle):
    res = ep(*argv)
    assert res.code == 2 and needle in res.err and len(res.err.strip().splitlines()) == 1, res.err


def test_list_prints_one_line_per_entry(ep):
    res = ep("list", "models")
    assert res.code == 0
    rows = [ln.split() for ln in res.out.splitlines()]
    assert ["cnn1d", "earlyphase"] in rows and len(rows) == len(registry.MODEL_REGISTRY.names())
    assert ep("list", "nothing").code == 2


def test_a_broken_plugin_is_one_line(monkeypatch):
    from importlib.metadata import EntryPoint

    broken = EntryPoint(name="broken", value="earlyphase_no_such_module:register", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group=None: [broken])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    with pytest.raises(UserError, match="plug-in 'broken'.*failed to load.*fix or uninstall it") as err:
        registry.load_plugins()
    assert "\n" not in str(err.value)


def test_a_plugin_cannot_take_a_builtin_name():
    with pytest.raises(UserError, match="already registered by earlyphase"):
        earlyphase.register_model("cnn1d", build_flat)


def readme_plugin_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own model and data"):]
    return section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]


def test_the_readme_plugin_example_works(tmp_path, monkeypatch):
    """The README's plug-in (under 30 lines) registers a model and a dataset a run can name."""
    import types

    code = readme_plugin_example()
    assert len(code.strip().splitlines()) < 30
    module = types.ModuleType("readme_plugin")
    monkeypatch.setitem(sys.modules, "readme_plugin", module)
    exec(compile(code, "readme_plugin", "exec"), module.__dict__)
    module.register()
    try:
        run = earlyphase.train({"data": {"name": "halfspace", "dim": 20, "n_train": 300, "n_test": 100},
                                "model": {"name": "my_net"}, "train": {"steps": "60it", "batch_size": 50},
                                "observe": {"threads": 1}}, store=tmp_path / "store")
        assert run.status == "done" and run.final_accuracy > 0.8
    finally:
        registry.MODEL_REGISTRY.unregister("my_net")
        registry.DATASET_REGISTRY.unregister("halfspace")
