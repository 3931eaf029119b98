"""The GPU path, checked on the CPU: --device on run and demo, bf16 autocast and channels-last as
execution modes in the run id, deterministic kernels said in provenance, BatchNorm statistics per run
in batched mode, and the paper presets' first steps on fake CIFAR-10 files."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from earlyphase.cli import main
from earlyphase.config import load_run_config, run_id
from earlyphase.execute import ExecOptions, LocalExecutor, RunGraph
from earlyphase.store import Store
from earlyphase.train.engine import execute
from earlyphase.train.work import WORK

TINY = ['data.n_train=400', 'data.n_test=200', 'train.steps="40it"', 'train.milestones=[]',
        'observe.checkpoints=["40it"]', 'observe.eval_every=""', "observe.progress=false"]


def write_fake_cifar(root: Path, per_batch: int = 24, seed: int = 0) -> Path:
    """The binary batches (one label byte, then 3072 pixel bytes, per record) with random content."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=(per_batch, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        (root / f"{name}.bin").write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    return root


def final(store: Store, cfg, step: int = 40) -> dict[str, torch.Tensor]:
    return store.run(run_id(cfg)).load(step)[0]


def test_bf16_autocast_trains_differs_from_fp32_and_is_its_own_run(tmp_path):
    store = Store(tmp_path)
    fp32 = load_run_config(preset="laptop", overrides=TINY)
    bf16 = load_run_config(preset="laptop", overrides=[*TINY, 'train.precision="bf16"'])
    assert run_id(fp32) == run_id(load_run_config(preset="laptop", overrides=[*TINY, 'train.precision="fp32"']))
    assert run_id(bf16) != run_id(fp32)
    for cfg in (fp32, bf16):
        execute(cfg, store, progress=False)
    a, b = final(store, fp32), final(store, bf16)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert 1e-4 < diff < 0.5  # another trajectory, near the same one
    loss = store.run(run_id(bf16)).metrics().query("name == 'loss' and split == 'test'").sort_values("step").value
    assert loss.iloc[-1] < loss.iloc[0]  # it trains
    assert store.run(run_id(bf16)).provenance()["execution"]["precision"] == "bf16"


def test_channels_last_gives_the_same_numbers_and_deterministic_is_recorded(tmp_path):
    root = write_fake_cifar(tmp_path / "cifar")
    # vgg8_phases with BatchNorm: its gradients agree across layouts to ~1e-6 relative; ResNet-20's
    # BatchNorm-bias gradients, sums that nearly cancel, differed by ~0.7 % on random data (docs/scale.md)
    base = [f'data.root="{root}"', 'data.name="cifar10"', 'model.name="vgg8_phases"', "model.channels=[8, 8, 16, 16, 16]",
            "train.batch_size=16", 'train.steps="5it"', 'train.milestones=[]', 'observe.checkpoints=["5it"]',
            'observe.eval_every=""', "observe.eval_train=false", "observe.progress=false", "train.lr=0.01"]
    store = Store(tmp_path / "store")
    plain = load_run_config(preset="laptop", overrides=[*base, "data.n_train=64", "data.n_test=24"])
    last = plain.replace(train=dataclasses.replace(plain.train, channels_last=True))
    det = plain.replace(observe=dataclasses.replace(plain.observe, deterministic=True))
    assert run_id(last) != run_id(plain) and run_id(det) == run_id(plain)
    execute(det, store, progress=False)
    execute(last, store, progress=False)
    a, b = final(store, plain, 5), final(store, last, 5)
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst < 1e-5, worst
    start = store.run(run_id(plain)).load(0)[0] if 0 in store.run(run_id(plain)).checkpoint_steps() else None
    assert start is None or any(not torch.equal(a[k], start[k]) for k in a)
    ex = store.run(run_id(plain)).provenance()["execution"]
    assert ex["deterministic"] is True and ex["cublas_workspace"] == ":4096:8"
    assert store.run(run_id(last)).provenance()["execution"]["channels_last"] is True
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


def test_batchnorm_statistics_are_per_run_in_a_group(tmp_path):
    root = write_fake_cifar(tmp_path / "cifar")
    over = [f'data.root="{root}"', 'data.name="cifar10"', 'model.name="vgg8_phases"', "model.channels=[8, 8, 16, 16, 16]",
            "train.batch_size=16", "train.lr=0.01",
            "data.n_train=64", "data.n_test=24", 'train.steps="8it"', 'train.milestones=[]',
            'observe.checkpoints=["8it"]', 'observe.eval_every="4it"', "observe.eval_train=false",
            "observe.progress=false", "data.augment=true"]
    graph = RunGraph()
    rids = [graph.add(load_run_config(preset="laptop", overrides=over).replace(seed=s, data_seed=s)) for s in (0, 1)]
    alone, together = Store(tmp_path / "a"), Store(tmp_path / "b")
    assert LocalExecutor(1, progress=False).run(graph, alone, work=WORK).ok
    assert LocalExecutor(1, progress=False, options=ExecOptions(batch_runs=2)).run(graph, together, work=WORK).ok
    for rid in rids:
        wa, wb = alone.run(rid).load(8)[0], together.run(rid).load(8)[0]
        for k in wa:
            assert torch.allclose(wa[k].double(), wb[k].double(), rtol=1e-4, atol=1e-5), k
    means = [together.run(r).load(8)[0]["model.blocks.0.1.running_mean"] for r in rids]
    assert not torch.allclose(means[0], means[1])  # each run's own statistics


def test_bad_device_is_one_line_and_writes_nothing(tmp_path, capsys):
    for argv in (["run", "rewinding", "--device", "tpu"], ["demo", "--device", "cuda:x"],
                 ["run", "rewinding", "--batch-runs", "0"]):
        assert main([*argv, "--store", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "s").exists()


def test_paper_presets_first_steps_on_fake_cifar_on_cpu(tmp_path, capsys):
    root = write_fake_cifar(tmp_path / "cifar", per_batch=30)
    common = ["--store", str(tmp_path / "store"), "--set", f'data.root="{root}"', "--set", 'train.steps="3it"',
              "--set", "train.milestones=[]", "--set", "train.batch_size=50", "--set", "observe.eval_every=\"\"",
              "--device", "cpu", "--quiet"]
    assert main(["train", "--preset", "paper", *common]) == 0
    runs = list((tmp_path / "store" / "runs").iterdir())
    assert len(runs) == 1
    rd = Store(tmp_path / "store").run(runs[0].name)
    assert rd.status()["status"] == "done" and rd.provenance()["device"] == "cpu"
    assert rd.spec()["config"]["model"]["name"] == "resnet_cifar_20"


def test_paper_rewinding_first_steps_batched_on_cpu(tmp_path, capsys):
    """The rewinding paper preset (ResNet-20, CIFAR-10 layout, IMP with rewinding) for a few steps, every
    run batched: dense runs, rewound masked levels and their controls."""
    root = write_fake_cifar(tmp_path / "cifar", per_batch=30)
    sets = [f'run.data.root="{root}"', 'run.train.steps="6it"', 'run.train.milestones=["3it"]', 'rewind=["0it","2it"]',
            "levels=1", "seeds=2", "check_level=1", 'check_min_k="2it"', "run.train.batch_size=50",
            'run.observe.eval_every=""']
    argv = ["run", "rewinding", "--preset", "paper", "--store", str(tmp_path / "store"), "--device", "cpu",
            "--batch-runs", "4", "--quiet", *sum((["--set", s] for s in sets), [])]
    assert main(argv) == 0
    store = Store(tmp_path / "store")
    runs = [store.run(p.name) for p in (tmp_path / "store" / "runs").iterdir()]
    assert len(runs) == 10 and all(rd.status()["status"] == "done" for rd in runs)
    modes = [rd.provenance()["execution"] for rd in runs]
    assert all(m["mode"] == "batched" for m in modes) and max(len(m["group"]) for m in modes) == 4


def test_pool_workers_take_the_visible_gpus_round_robin(monkeypatch):
    import multiprocessing
    import os

    from earlyphase.execute import local
    from earlyphase.execute.local import init_worker, visible_gpus

    monkeypatch.setattr(local, "die_with_parent", lambda parent_pid: None)  # this is no pool worker
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert visible_gpus() == ["3", "5"]
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(3):
        init_worker(os.getppid(), [], ["3", "5"], counter)
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["3", "5", "3"]
    assert ExecOptions(device="cpu").batch_runs_for(RunGraph()) == 1 and not ExecOptions(device="cpu").cuda
    assert ExecOptions(batch_runs=None).batch_runs_for(RunGraph()) == 1  # the CPU rule: single


def test_device_option_moves_the_analysis_too(tmp_path):
    """Runs configured for CUDA, ``device="cpu"`` given: training and the HVP analysis both run on the
    CPU (the analysis used to follow the runs' configured device and ask for CUDA)."""
    import earlyphase
    from earlyphase.devices import analysis_device, analysis_on

    with analysis_on("cpu"):
        assert analysis_device("cuda:0") == torch.device("cpu")
    assert analysis_device("cpu") == torch.device("cpu")
    tiny = ['run.train.steps="20it"', 'run.train.milestones=["10it"]', 'run.data.n_train=300', 'run.data.n_test=100',
            'run.observe.eval_every=""', 'run.observe.device="cuda"', "subset=100"]
    exp = earlyphase.run("gradient_subspace", overrides=tiny, seeds=1, store=tmp_path / "s", device="cpu")
    assert exp.results.fraction.between(0, 1).all() and len(exp.results) > 1
