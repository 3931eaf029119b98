"""No fixed cost per run: no compiler machinery imported, normalization from one float64 copy (bit-identical to the stored runs), datasets kept
per process (file sources keyed by their files)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from earlyphase.config import DataConfig
from earlyphase.data import clear_cache, load_dataset
from earlyphase.data.transforms import normalize

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_and_its_resume_import_no_dynamo(tmp_path):
    code = (
        "import sys, json, torch\n"
        "from earlyphase.api import train\n"
        "from earlyphase.train.optim import make_optimizer, optimizer_state, load_optimizer_state, step_function\n"
        "from earlyphase.config import TrainConfig\n"
        f"train(preset='laptop', store={str(tmp_path)!r}, overrides=['train.steps=\"120it\"', 'data.n_train=400',"
        " 'data.n_test=100', 'observe.eval_every=\"\"'], progress=False)\n"
        "m = torch.nn.Linear(3, 2); o = make_optimizer(TrainConfig(), m)\n"
        "m(torch.ones(1, 3)).sum().backward(); step_function(o)()\n"
        "s = optimizer_state(o); o2 = make_optimizer(TrainConfig(), m); load_optimizer_state(o2, s)\n"
        "dynamo = 'torch._dynamo' in sys.modules\n"
        "same = all(torch.equal(a['momentum_buffer'], b['momentum_buffer']) for a, b in"
        " zip(o.state_dict()['state'].values(), optimizer_state(o2).values()))\n"
        "print(json.dumps({'same': same, 'dynamo': dynamo}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"same": True, "dynamo": False}


def test_an_adam_run_imports_no_dynamo(tmp_path):
    code = (
        "import sys, json\n"
        "from earlyphase.api import train\n"
        f"train(preset='laptop', store={str(tmp_path)!r}, overrides=['train.steps=\"30it\"', 'data.n_train=400',"
        " 'data.n_test=100', 'observe.eval_every=\"\"', 'train.optimizer=\"adam\"', 'train.lr=0.001'], progress=False)\n"
        "print(json.dumps({'dynamo': 'torch._dynamo' in sys.modules}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"dynamo": False}


def test_adam_step_without_wrappers_is_adam_step():
    import dataclasses

    from earlyphase.config import TrainConfig
    from earlyphase.train.optim import make_optimizer, step_function

    def trained(plain: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        o = make_optimizer(dataclasses.replace(TrainConfig(), optimizer="adam", lr=0.01, weight_decay=1e-3), m)
        step = step_function(o) if plain else o.step
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in m.parameters():
                p.grad = None
            m(torch.randn(8, 3, generator=g)).square().mean().backward()
            step()
        return [p.detach().clone() for p in m.parameters()] + [o.state[p]["exp_avg_sq"] for p in m.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(trained(True), trained(False)))


def test_optimizer_state_matches_state_dict():
    from earlyphase.config import TrainConfig
    from earlyphase.train.optim import make_optimizer, optimizer_state

    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    o = make_optimizer(TrainConfig(), m)
    m(torch.ones(2, 3)).sum().backward()
    o.step()
    ref = o.state_dict()["state"]
    mine = optimizer_state(o)
    assert set(mine) == set(ref) == {0, 1, 2, 3}
    assert all(torch.equal(mine[i]["momentum_buffer"], ref[i]["momentum_buffer"]) for i in ref)


def test_normalize_is_the_float64_computation_bit_for_bit():
    """Stored runs with normalize = true were computed from these exact values (same run ids), so a
    faster path must not round differently."""
    g = torch.Generator().manual_seed(0)
    x, xt = torch.rand(500, 3, 8, 8, generator=g) * 5 + 2, torch.rand(100, 3, 8, 8, generator=g)
    a, b = normalize(x, xt)
    mean = x.double().mean(dim=(0, 2, 3), keepdim=True)
    std = x.double().std(dim=(0, 2, 3), keepdim=True)
    assert torch.equal(a, ((x - mean) / std).float())
    assert torch.equal(b, ((xt - mean) / std).float())
    assert a.dtype == torch.float32 and abs(float(a.mean())) < 1e-5
    flat, _ = normalize(x.flatten(1), xt.flatten(1))  # one channel: a global mean and std
    assert abs(float(flat.std()) - 1) < 1e-5


def _fake_idx(root: Path, n: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    for name, dims in {"train-images-idx3-ubyte": (n, 28, 28), "train-labels-idx1-ubyte": (n,),
                       "t10k-images-idx3-ubyte": (n, 28, 28), "t10k-labels-idx1-ubyte": (n,)}.items():
        payload = rng.integers(0, 10 if len(dims) == 1 else 256, size=dims, dtype=np.uint8)
        header = bytes([0, 0, 8, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
        (root / name).write_bytes(header + payload.tobytes())


def test_file_datasets_kept_per_process_until_files_change(tmp_path, monkeypatch):
    from earlyphase.data import idx

    calls = []
    real = idx.load
    monkeypatch.setattr(idx, "load", lambda cfg: calls.append(cfg) or real(cfg))
    from earlyphase.registry import DATASET_REGISTRY, Entry

    entry = DATASET_REGISTRY.get("mnist")
    monkeypatch.setitem(DATASET_REGISTRY._entries, "mnist", Entry("mnist", idx.load, entry.origin, entry.meta))
    clear_cache()
    _fake_idx(tmp_path, 20, seed=0)
    cfg = DataConfig(name="mnist", root=str(tmp_path), normalize=True)
    a = load_dataset(cfg)
    a.x_train.zero_()
    b = load_dataset(cfg)
    assert len(calls) == 1 and b.x_train.abs().sum() > 0  # read once, each caller its own copy
    _fake_idx(tmp_path, 20, seed=1)  # new files (new inodes): read again, other numbers
    c = load_dataset(cfg)
    assert len(calls) == 2 and c.fingerprint() != b.fingerprint()
    clear_cache()
