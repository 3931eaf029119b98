"""The linear-dynamics experiment end to end on a tiny problem, per-layer learning rates in the engine,
the linear model's pieces, and bad input through the command line."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import earlyphase
from earlyphase.cli import main
from earlyphase.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from earlyphase.data import load_dataset
from earlyphase.experiments.linear_dynamics import LinearDynamics, summarize
from earlyphase.experiments.runner import load_experiment_config
from earlyphase.probes.linear_model import KernelGD, LinearKernel, fit_kernel, spectral_norm
from earlyphase.store import Store

TINY = ["run.data.dim=50", "run.data.n_train=240", "run.data.n_test=200", "run.model.width=1000",
        'run.train.steps="60it"', 'run.observe.eval_dense_until="5it"', 'run.observe.eval_every="10it"',
        "run.observe.threads=1", "sweep_widths=[200]", 'image_steps="10it"', "image_n_test=60"]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("EARLYPHASE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ld")
    return earlyphase.run("linear_dynamics", overrides=TINY, store=root / "store", progress=False), root / "store"


def test_check_and_tables(tiny):
    exp, _ = tiny
    check = json.loads((exp.path / "check.json").read_text())
    assert set(check) >= {"experiment", "statement", "pass", "numbers", "wall_seconds"}
    assert set(check["numbers"]) >= {"ntk_gap_at_init", "reduction_step", "max_gap_rel_until_reduction_step",
                                     "net_test_loss_below_linear_from_step", "gap_rel_exceeds_0.15_at_step"}
    assert check["measured"] and check["meaning"] and (exp.path / "check-main_runs.csv").is_file()
    assert set(exp.tables["summary"].kind) == {"main", "image"}
    assert set(exp.tables["ntk"].kind) == {"main", "image", "sweep_width"}
    for name in ("losses", "gap", "outputs_scatter", "spectral_gap"):
        assert (exp.path / f"{name}.png").is_file() and (exp.path / f"{name}.svg").is_file()


def test_linear_model_tracks_the_network_early(tiny):
    exp, _ = tiny
    res = exp.results
    main = res[(res.kind == "main") & (res.step > 0)].sort_values("step")
    assert main.gap_rel.iloc[:3].max() < 0.15
    assert main.agreement.iloc[:3].min() > 0.95
    assert exp.tables["ntk"].query("kind == 'main'").ntk_gap.iloc[0] < 0.3
    # at step 0 both outputs are exactly zero (symmetric initialization)
    out = exp.tables["outputs"]
    assert (out[out.step == 0][["out_net", "out_lin"]].abs().to_numpy() == 0).all()


def test_second_run_finds_the_store(tiny):
    _, store = tiny
    exp = earlyphase.run("linear_dynamics", overrides=TINY, store=store, progress=False)
    assert exp.check["numbers"]["ntk_gap_at_init"] == pytest.approx(
        json.loads((exp.path / "check.json").read_text())["numbers"]["ntk_gap_at_init"])


def test_lr_scales_freeze_and_scale_layers(tmp_path):
    base = RunConfig(data=DataConfig(name="gaussian", dim=10, n_train=64, n_test=32, targets="pm1"),
                     model=ModelConfig(name="two_layer", width=16),
                     train=TrainConfig(lr=0.5, momentum=0.0, full_batch=True, steps="3it", loss="square"))
    assert base.run_id == RunConfig(**{**base.__dict__, "train": TrainConfig(**{**base.train.__dict__, "lr_scales": ()})}).run_id
    store = Store(tmp_path / "s")
    first = base.replace(train=TrainConfig(**{**base.train.__dict__, "lr_scales": (1.0, 0.0)}),
                         observe=base.observe.__class__(checkpoints=("0it", "3it"), progress=False))
    rd = earlyphase.train(first, store=store).path
    from earlyphase.store.runs import RunDir

    r = RunDir(rd)
    w0, w3 = r.load(0)[0], r.load(3)[0]
    assert torch.equal(w0["model.v"], w3["model.v"]) and not torch.equal(w0["model.w"], w3["model.w"])
    bad = base.replace(train=TrainConfig(**{**base.train.__dict__, "lr_scales": (1.0,)}))
    assert main(["train", "--config", _toml(tmp_path, bad), "--store", str(tmp_path / "s2"), "--quiet"]) == 2


def _toml(tmp_path, cfg):
    import tomli_w

    from earlyphase.config import to_dict

    def clean(d):
        return {k: clean(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    p = tmp_path / "cfg.toml"
    p.write_text(tomli_w.dumps(clean(to_dict(cfg))))
    return str(p)


def test_kernel_gd_matches_dense_kernel_gd():
    torch.manual_seed(0)
    x, xt, y = torch.randn(50, 6), torch.randn(20, 6), torch.sign(torch.randn(50))
    k = LinearKernel(0.7, 0.2, 0.1)
    gd = KernelGD(k, x, y, xt, torch.zeros(50), torch.zeros(20))
    kd = k.matrix(x)
    kt = xt.double() @ x.double().T * 0.7 / 6 + 0.2
    f, ft = torch.zeros(50, dtype=torch.float64), torch.zeros(20, dtype=torch.float64)
    for _ in range(5):
        gd.step(0.3)
        r = f - y.double()
        f, ft = f - 0.3 / 50 * kd @ r, ft - 0.3 / 50 * kt @ r
    assert torch.allclose(gd.f, f) and torch.allclose(gd.ft, ft)


def test_fit_recovers_a_linear_kernel():
    x = torch.randn(40, 5, dtype=torch.float64)
    k = LinearKernel(0.3, 0.05, 0.2)
    fit = fit_kernel(k.matrix(x), x)
    assert (fit.a, fit.b, fit.c) == pytest.approx((0.3, 0.05, 0.2), abs=1e-10)
    assert spectral_norm(k.matrix(x)) == pytest.approx(float(torch.linalg.eigvalsh(k.matrix(x)).max()))


def test_sphere_option():
    ds = load_dataset(DataConfig(name="gaussian", dim=30, n_train=20, n_test=10, sphere=True))
    assert torch.allclose(ds.x_train.norm(dim=1), torch.full((20,), 30 ** 0.5), atol=1e-5)


@pytest.mark.parametrize("override,needle", [
    ("run.model.activation=\"swishy\"", "swishy"),
    ("image_classes=[1, 2, 3]", "exactly two"),
    ("ntk_memory_gb=0.001", "2000 x 2000 matrix of 30.5 MiB"),
])
def test_bad_input_is_one_line_exit_2(override, needle, capsys, tmp_path):
    code = main(["run", "linear_dynamics", "--store", str(tmp_path / "s"), "--set", override, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err


# ---------------------------------------------------------------------------------------------- the check


def _summary(**changes) -> pd.DataFrame:
    """A main run's summary row that meets every clause of the laptop statement, with ``changes``."""
    row = {"kind": "main", "variant": "isotropic", "seed": 0, "run_id": "r", "ntk_gap": 0.12, "t_reduction": 400,
           "max_gap_rel_to_t_reduction": 0.08, "net_below_lin_step": 900, "threshold_step": 700,
           "final_loss_test": 0.30, "final_lin_loss_test": 0.35, "final_agreement": 0.9, "ntk_fit_residual": np.nan}
    return pd.DataFrame([{**row, **changes}])


@pytest.fixture(scope="module")
def laptop_cfg():
    return load_experiment_config(LinearDynamics(), preset="laptop")


def test_check_passes_on_a_summary_meeting_every_clause(laptop_cfg):
    chk = LinearDynamics().check(laptop_cfg, {"summary": _summary()})
    assert chk.passed is True and "linear model" in chk.meaning
    assert "below 0.2" in chk.statement and "below 0.15" in chk.statement and "90 %" in chk.statement
    assert "d = 100, m = 2000, n = 2000 train and 1000 test" in chk.statement
    assert list(chk.tables["main_runs"].columns[-3:]) == ["spectral_gap_ok", "output_gap_ok", "network_overtakes"]


@pytest.mark.parametrize("changes, words", [
    ({"ntk_gap": 0.25}, "spectral gap at initialization reaches 0.250"),
    ({"max_gap_rel_to_t_reduction": 0.2}, "output gap reaches 0.200"),
    ({"max_gap_rel_to_t_reduction": np.nan}, "output gap"),
    ({"net_below_lin_step": -1}, "never goes below"),
])
def test_check_fails_when_any_clause_fails(laptop_cfg, changes, words):
    chk = LinearDynamics().check(laptop_cfg, {"summary": _summary(**changes)})
    assert chk.passed is False and words in chk.meaning


def test_check_statement_and_bounds_follow_the_config():
    cfg = load_experiment_config(LinearDynamics(), preset="laptop",
                                 overrides=["spectral_gap_max=0.3", "gap_threshold=0.25", "reduction=0.5"])
    chk = LinearDynamics().check(cfg, {"summary": _summary(ntk_gap=0.25, max_gap_rel_to_t_reduction=0.2)})
    assert chk.passed is True and "below 0.3" in chk.statement and "50 %" in chk.statement
    two = pd.concat([_summary(), _summary(seed=1, net_below_lin_step=-1)], ignore_index=True)
    assert LinearDynamics().check(cfg, {"summary": two}).passed is False  # every seed must meet the claim


def test_summarize_finds_the_reduction_step_and_the_overtaking():
    steps = np.arange(0, 11)
    lin = 1.0 - 0.1 * steps  # reaches 90 % of its reduction (1.0 -> 0.0) at step 9
    net = lin.copy()
    net[10] = -0.5  # the network overtakes at the last step
    g = pd.DataFrame({"step": steps, "lin_loss_test": lin, "loss_test": net, "gap_rel": 0.01 * steps,
                      "agreement": 1.0})
    s = summarize(g, threshold=0.05, reduction=0.9)
    assert s["t_reduction"] == 9 and s["max_gap_rel_to_t_reduction"] == pytest.approx(0.09)
    assert s["net_below_lin_step"] == 10 and s["threshold_step"] == 6
    assert summarize(g, threshold=0.05, reduction=0.5)["t_reduction"] == 5
