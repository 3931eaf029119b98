"""Contract tests: every registered model, dataset, recorder and experiment, the package's own and
plug-ins' alike, keeps the promises the rest of earlyphase relies on (docs/plugins.md "Contracts").

Parametrized over the registries at collection time, so an installed plug-in's entries are tested
too (tests/test_plugins.py runs this file with the example plug-in installed)."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from earlyphase.config import DataConfig, ModelConfig
from earlyphase.data import clear_cache, dataset_info, load_dataset
from earlyphase.errors import UserError
from earlyphase.experiments import ExperimentDef
from earlyphase.models import build_model, prunable_names
from earlyphase.registry import DATASET_REGISTRY, EXPERIMENT_REGISTRY, MODEL_REGISTRY, RECORDER_REGISTRY, Entry
from earlyphase.train.recorders import Recorder

import earlyphase.experiments  # noqa: F401  (the package's experiments register on import)

OUT = 3


def seeded(cfg: ModelConfig, shape: tuple[int, ...], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg, shape, OUT)


@pytest.mark.parametrize("name", MODEL_REGISTRY.names())
def test_model_contract(name):
    """Names its output layer and its prunable weights; its weights are a function of the seed; it
    maps the example input to one output per class."""
    shape = MODEL_REGISTRY.get(name).meta["example_input"]
    cfg = ModelConfig(name=name)
    a, b, c = seeded(cfg, shape, 0), seeded(cfg, shape, 0), seeded(cfg, shape, 1)
    params = dict(a.named_parameters())
    head = a.output_layer
    head_weight = head if head in params else f"{head}.weight"
    assert head_weight in params, f"output_layer {head!r} names no parameter or module with a weight"
    kept, with_head = prunable_names(a, prune_output=False), prunable_names(a, prune_output=True)
    assert kept and set(kept) < set(with_head) <= set(params)
    assert set(with_head) - set(kept) == {head_weight}
    assert all(params[n].dim() >= 2 for n in with_head), "prunable parameters are weights, never biases or norms"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "the same seed must give the same weights"
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point()), "another seed, other weights"
    with torch.no_grad():
        out = a.eval()(torch.randn(2, *shape))
    assert out.shape == (2, OUT)


@pytest.fixture(scope="module")
def file_roots(tmp_path_factory) -> dict[str, str]:
    """Tiny files in the layouts of the package's file datasets."""
    from test_data import write_cifar_py, write_idx

    root = tmp_path_factory.mktemp("files")
    write_cifar_py(root / "cifar")
    write_idx(root / "mnist", gz=True)
    return {"cifar10": str(root / "cifar"), "mnist": str(root / "mnist"), "fashion_mnist": str(root / "mnist")}


def example(name: str, roots: dict[str, str], **changes) -> DataConfig:
    meta = DATASET_REGISTRY.get(name).meta
    return DataConfig(name=name, **{**meta["example"], **({"root": roots[name]} if name in roots else {}), **changes})


def _refuse(cfg: DataConfig) -> None:
    raise AssertionError("dataset_info loaded the tensors")


@pytest.mark.parametrize("name", DATASET_REGISTRY.names())
def test_dataset_contract(name, file_roots, monkeypatch):
    """Fixed shapes and dtypes; deterministic; a fingerprint; metadata that gives the sizes without
    loading tensors."""
    cfg = example(name, file_roots)
    entry = DATASET_REGISTRY.get(name)
    clear_cache()
    with monkeypatch.context() as mp:
        mp.setitem(DATASET_REGISTRY._entries, name, Entry(name, _refuse, entry.origin, entry.meta))
        info = dataset_info(cfg)
    a, b = load_dataset(cfg), (clear_cache(), load_dataset(cfg))[1]
    assert a.x_train.shape == (info.n_train, *info.input_shape) and a.x_test.shape == (info.n_test, *info.input_shape)
    assert a.num_classes == info.num_classes and a.out_dim == info.out_dim
    assert a.x_train.dtype == a.x_test.dtype == torch.float32
    assert a.y_train.dtype == a.y_test.dtype == torch.int64
    assert int(a.y_train.min()) >= 0 and int(a.y_train.max()) < a.num_classes
    for x, y in ((a.x_train, b.x_train), (a.y_train, b.y_train), (a.x_test, b.x_test), (a.y_test, b.y_test)):
        assert torch.equal(x, y), "the same config must give the same tensors"
    assert re.fullmatch(r"[0-9a-f]{16}", a.fingerprint()) and a.fingerprint() == b.fingerprint()


VARIANTS = [{"classes": (1, 0)}, {"task": "rotation"}, {"n_train": 5, "n_test": 3}, {"targets": "pm1", "classes": (0, 1)},
            {"task": "energy_half"}, {"task": "color_dominance"}]


@pytest.mark.parametrize("name", DATASET_REGISTRY.names())
def test_dataset_info_matches_what_loads(name, file_roots):
    """Under the options every dataset takes, the metadata says what loading gives (or both refuse)."""
    for changes in VARIANTS:
        cfg = example(name, file_roots, **changes)
        try:
            got = load_dataset(cfg).info()
        except UserError:
            with pytest.raises(UserError):
                dataset_info(cfg)
            continue
        assert dataset_info(cfg) == got, changes


@pytest.mark.parametrize("name", RECORDER_REGISTRY.names())
def test_recorder_contract(name):
    """A factory of fresh Recorder objects."""
    factory = RECORDER_REGISTRY.get(name).value
    a, b = factory(), factory()
    assert isinstance(a, Recorder) and a is not b


@pytest.mark.parametrize("name", EXPERIMENT_REGISTRY.names())
def test_experiment_contract(name):
    """An ExperimentDef under its own name, with a dataclass config that has defaults, a plan, an
    analysis and a check."""
    exp = EXPERIMENT_REGISTRY.get(name).value
    assert isinstance(exp, ExperimentDef) and exp.name == name
    assert dataclasses.is_dataclass(exp.config_cls)
    exp.config_cls()  # every field has a default
    for method in ("plan", "analyze", "check"):
        assert getattr(type(exp), method) is not getattr(ExperimentDef, method), f"{name} does not define {method}"
