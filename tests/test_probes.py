"""Probes of SPEC §4.1-4.2: the closed-form ridge against scikit-learn, streamed activations and sums
against whole-batch ones, layer names, and the phase rules on synthetic curves."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from earlyphase.errors import UserError
from earlyphase.probes.activations import collect, default_layers, resolve_layers, stream
from earlyphase.probes.phases import detect_phases
from earlyphase.probes.ridge import Moments, fit_ridge, sse


def _data(n=300, p=12, q=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64) + 3.0
    y = x @ torch.randn(p, q, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, q, generator=g, dtype=torch.float64) + 1.0
    return x, y


def test_ridge_matches_sklearn_with_intercept():
    from sklearn.linear_model import Ridge

    x, y = _data()
    m = Moments.zeros(12, 5)
    for i in range(0, 300, 64):
        m.add(x[i:i + 64], y[i:i + 64])
    (fit,) = fit_ridge([m], None, [slice(0, 5)], lambdas=[0.1])
    lam = float(fit.lam[0])
    ref = Ridge(alpha=lam, fit_intercept=True, solver="svd").fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(fit.weight.numpy(), ref.coef_.T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fit.bias.numpy(), ref.intercept_, rtol=1e-7, atol=1e-9)


def test_tiny_lambda_is_least_squares():
    x, y = _data()
    m = Moments.zeros(12, 5)
    m.add(x, y)
    (fit,) = fit_ridge([m], None, [slice(0, 5)], lambdas=[1e-12])
    xa = np.hstack([x.numpy(), np.ones((300, 1))])
    coef = np.linalg.lstsq(xa, y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(fit.weight.numpy(), coef[:-1], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fit.bias.numpy(), coef[-1], rtol=1e-6, atol=1e-8)


def test_sse_from_sums_equals_direct_and_batch_equals_single():
    x, y = _data()
    fit_m, hold_m = Moments.zeros(12, 5), Moments.zeros(12, 5)
    fit_m.add(x[:200], y[:200])
    hold_m.add(x[200:], y[200:])
    groups = [slice(0, 2), slice(2, 5)]
    (one,) = fit_ridge([fit_m], [hold_m], groups)
    batch = fit_ridge([fit_m, fit_m, fit_m], [hold_m, hold_m, hold_m], groups)
    for b in batch:
        torch.testing.assert_close(b.weight, one.weight)
    direct = ((one.predict(x[200:]) - y[200:]) ** 2).sum(0)
    torch.testing.assert_close(sse([hold_m], one.weight[None], one.bias[None])[0], direct)


def test_held_out_choice_picks_a_larger_lambda_for_noise():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 50, generator=g, dtype=torch.float64)
    y = torch.randn(60, 1, generator=g, dtype=torch.float64)  # pure noise: shrink as far as possible
    fit_m, hold_m = Moments.zeros(50, 1), Moments.zeros(50, 1)
    fit_m.add(x[:40], y[:40])
    hold_m.add(x[40:], y[40:])
    (fit,) = fit_ridge([fit_m], [hold_m], [slice(0, 1)])
    s = torch.linalg.eigvalsh((x - x.mean(0)).T @ (x - x.mean(0)))
    assert float(fit.lam[0]) >= float(s.mean())  # the top of the relative grid


def test_float32_chunks_match_float64_sums():
    """float32 inputs: products in float32 about the first chunk's means, totals in float64 — the fit
    matches the all-float64 one on the same (float32-rounded) data to 1e-5 relative."""
    x, y = _data(n=2000, p=12, q=5, seed=3)
    x32, y32 = (x * 10 + 50).float(), y.float()  # a large offset: centring matters
    m32, m64 = Moments.zeros(12, 5), Moments.zeros(12, 5)
    for i in range(0, 2000, 256):
        m32.add(x32[i:i + 256], y32[i:i + 256])
        m64.add(x32[i:i + 256].double(), y32[i:i + 256].double())
    (a,) = fit_ridge([m32], None, [slice(0, 5)], lambdas=[1e-3])
    (b,) = fit_ridge([m64], None, [slice(0, 5)], lambdas=[1e-3])
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.bias, b.bias, rtol=1e-5, atol=1e-6)


def test_moments_with_different_reference_points_add_exactly():
    x, y = _data()
    one, first, second = Moments.zeros(12, 5), Moments.zeros(12, 5), Moments.zeros(12, 5)
    one.add(x, y)
    first.add(x[:100], y[:100])
    second.add(x[100:] + 0.0, y[100:])
    both = first + second
    (a,) = fit_ridge([one], None, [slice(0, 5)], lambdas=[0.1])
    (b,) = fit_ridge([both], None, [slice(0, 5)], lambdas=[0.1])
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.bias, b.bias, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sse([both], a.weight[None], a.bias[None])[0], ((a.predict(x) - y) ** 2).sum(0))


def test_held_out_grid_errors_equal_direct_errors():
    from earlyphase.probes.ridge import _held_out_errors

    x, y = _data(n=400, p=12, q=5, seed=4)
    fit_m, hold_m = Moments.zeros(12, 5), Moments.zeros(12, 5)
    fit_m.add(x[:300], y[:300])
    hold_m.add(x[300:], y[300:])
    groups = [slice(0, 2), slice(2, 5)]
    rel = torch.tensor([1e-4, 1e-2, 1.0], dtype=torch.float64)
    err = _held_out_errors([fit_m], [hold_m], groups, rel)  # L x 1 x G
    xc = x[:300] - x[:300].mean(0)
    cxx, cxy = xc.T @ xc, xc.T @ (y[:300] - y[:300].mean(0))
    scale = torch.trace(cxx) / 12
    for li, r in enumerate(rel):
        w = torch.linalg.solve(cxx + r * scale * torch.eye(12, dtype=torch.float64), cxy)
        b = y[:300].mean(0) - x[:300].mean(0) @ w
        direct = ((x[300:] @ w + b - y[300:]) ** 2).sum(0)
        for gi, g in enumerate(groups):
            torch.testing.assert_close(err[li, 0, gi], direct[g].sum(), rtol=1e-9, atol=1e-9)


def test_ridge_decoder_training_error_from_sums_equals_direct():
    from earlyphase.probes.checkpoint_probes import holdout_mask
    from earlyphase.probes.reconstruction import ridge_decoder

    g = torch.Generator().manual_seed(5)
    a = torch.randn(500, 20, generator=g).relu()
    x = (a @ torch.randn(20, 2, 3, 3, generator=g).flatten(1)).reshape(500, 2, 3, 3) + torch.randn(500, 2, 3, 3, generator=g)
    res = ridge_decoder(a[:400], x[:400], a[400:], x[400:], chunk=128)
    hold = holdout_mask(400, 0.2, 0)
    fit_m, hold_m = Moments.zeros(20, 18), Moments.zeros(20, 18)
    fit_m.add(a[:400][~hold], x[:400].flatten(1)[~hold])
    hold_m.add(a[:400][hold], x[:400].flatten(1)[hold])
    (r,) = fit_ridge([fit_m], [hold_m], [slice(0, 18)])
    direct = float(((r.predict(a[:400].double()) - x[:400].flatten(1).double()) ** 2).mean())
    assert res.train_mse == pytest.approx(direct, rel=1e-5)


def test_groups_must_partition_the_columns():
    x, y = _data()
    m = Moments.zeros(12, 5)
    m.add(x, y)
    with pytest.raises(ValueError):
        fit_ridge([m], None, [slice(0, 3)])


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4, 10))


def test_streamed_activations_equal_whole_batch_in_eval_mode():
    net = _net()
    net.train()
    x = torch.randn(50, 1, 8, 8)
    whole = collect(net, x, ["2", "4"], chunk=1000)
    parts = {n: [] for n in ("2", "4")}
    for rows, acts in stream(net, x, ["2", "4"], chunk=7):
        for n, a in acts.items():
            parts[n].append(a)
    for n in parts:
        torch.testing.assert_close(torch.cat(parts[n]), whole[n])
    assert net.training  # restored
    net.eval()
    torch.testing.assert_close(whole["4"], net(x))
    assert whole["2"].shape == (50, 4 * 64)


def test_unknown_layer_lists_the_names():
    with pytest.raises(UserError) as e:
        resolve_layers(_net(), ["blocks.9"])
    msg = str(e.value)
    assert "blocks.9" in msg and "0, 1, 2, 3, 4" in msg and "\n" not in msg


def test_default_layers_of_vgg8_phases_and_cnn1d():
    from earlyphase.config import ModelConfig
    from earlyphase.models import build_model

    v8 = build_model(ModelConfig(name="vgg8_phases", channels=(4, 4, 4, 4, 4)), (1, 8, 8), 10)
    assert default_layers(v8) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "pool"]
    c1 = build_model(ModelConfig(name="cnn1d"), (1, 40), 10)
    assert default_layers(c1) == ["body.1", "body.3", "body"]


STEPS = [0, 1, 2, 4, 8, 16, 32, 64]
THREE = [1.0, 1.005, 1.0, 0.97, 0.8, 0.7, 0.75, 0.8]  # flat, falls 30 %, rises 14 % above the minimum


def test_a_real_three_phase_curve_shows_all_three():
    ph = detect_phases(STEPS, THREE)
    assert ph.all_three and ph.phase1_end == 4 and ph.minimum_step == 16 and ph.last_step == 64
    assert ph.drop == pytest.approx(0.3) and ph.rise == pytest.approx(0.8 / 0.7 - 1)


@pytest.mark.parametrize("curve, failing", [
    ([1.0, 1.0, 1.0, 1.05, 1.1, 1.2, 1.4, 1.6], {"drops", "minimum_after_phase1"}),  # rises only (minimum at step 0)
    ([1.0, 1.0, 0.99, 0.9, 0.8, 0.7, 0.6, 0.5], {"minimum_before_end", "rises"}),  # falls only
    ([1.0, 1.001, 0.999, 1.0, 1.01, 0.995, 1.0, 1.005], {"drops", "minimum_after_phase1", "rises"}),  # flat
    ([1.0, 1.0, 1.0, 0.97, 0.8, 0.7, 0.72, 0.76], {"rises"}),  # rises 8.6 %: below ρ = 10 %
    ([1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.65, 0.7], {"flat_start"}),  # first checkpoint already 5 % down
    ([1.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.65, 0.7], {"flat_start"}),  # second checkpoint 10 % down
])
def test_curves_without_the_three_phases(curve, failing):
    ph = detect_phases(STEPS, curve).as_dict()
    assert not ph["all_three"]
    tests = ("flat_start", "drops", "minimum_after_phase1", "minimum_before_end", "rises")
    assert {t for t in tests if not ph[t]} == failing


def test_phase_boundaries_are_exact():
    """δ = 0.25, ρ = 0.5: values exactly on a boundary are representable, so each inequality is tested
    at equality: within δ counts as flat, exactly δ below counts as a drop but does not end phase 1,
    a rise of exactly ρ counts."""
    steps = [0, 1, 2, 4, 8, 16]
    ph = detect_phases(steps, [1.0, 0.75, 1.25, 0.7, 0.5, 0.75], delta=0.25, rho=0.5)
    assert ph.flat_start and ph.phase1_end == 4 and ph.minimum_step == 8 and ph.rises and ph.all_three
    just_below = detect_phases(steps, [1.0, 1.0, 1.0, 0.7, 0.5, 0.7499], delta=0.25, rho=0.5)
    assert not just_below.rises and not just_below.all_three
    not_flat = detect_phases(steps, [1.0, 1.0, 1.2501, 0.7, 0.5, 0.75], delta=0.25, rho=0.5)
    assert not not_flat.flat_start
    # a minimum exactly δ below step 0 drops, but no checkpoint is *more* than δ below: phase 1 never ends
    edge = detect_phases(steps, [1.0, 1.0, 1.0, 0.9, 0.75, 1.2], delta=0.25, rho=0.5)
    assert edge.drops and edge.phase1_end is None and not edge.minimum_after_phase1 and not edge.all_three
    # the minimum at the end of phase 1 itself: phase 2 has no length
    at_end = detect_phases(steps, [1.0, 1.0, 1.0, 0.5, 0.6, 0.9], delta=0.25, rho=0.5)
    assert at_end.phase1_end == 4 and at_end.minimum_step == 4 and not at_end.minimum_after_phase1


def test_phase_rule_inputs():
    assert detect_phases(STEPS, [1.0] * 8).phase1_end is None
    assert not detect_phases([0, 1], [1.0, 0.5]).flat_start  # too short to have a flat start
    with pytest.raises(ValueError):
        detect_phases([1, 2], [1.0, 1.0])
    for bad in ({"delta": 0.0}, {"delta": 1.0}, {"rho": 0.0}, {"rho": 1.5}, {"rho": -0.1}):
        with pytest.raises(UserError, match="must be in \\(0, 1\\)"):
            detect_phases(STEPS, THREE, **bad)


def _linear_task(n=600, d=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    a = centres[y] + torch.randn(n, d, generator=g)
    return a[: n // 2], y[: n // 2], a[n // 2:], y[n // 2:]


def test_the_optional_probes_learn_a_separable_task():
    from earlyphase.probes.linear_probe import lbfgs_probe, ridge_probe, sgd_probe

    a_tr, y_tr, a_te, y_te = _linear_task()
    for probe in (ridge_probe, lbfgs_probe, sgd_probe):
        assert probe(a_tr, y_tr, a_te, y_te, 3) > 0.9, probe.__name__


def test_the_optional_decoders_fit_a_linear_map_and_the_closed_form_is_best():
    from earlyphase.probes.reconstruction import adam_linear_decoder, conv_decoder, ridge_decoder

    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 16, generator=g)
    x = (a @ torch.randn(16, 1 * 8 * 8, generator=g)).view(400, 1, 8, 8) / 4 + 0.05 * torch.randn(400, 1, 8, 8, generator=g)
    base = float(x[200:].var())
    closed = ridge_decoder(a[:200], x[:200], a[200:], x[200:])
    adam = adam_linear_decoder(a[:200], x[:200], a[200:], x[200:], epochs=20, lr=1e-2, batch=32)
    conv = conv_decoder(a[:200], x[:200], a[200:], x[200:], act_shape=(16,), epochs=5, lr=1e-2, batch=32)
    assert closed.test_mse < 0.05 * base
    assert adam.test_mse < 0.5 * base and conv.test_mse < base
    assert closed.test_mse <= adam.test_mse


def test_fine_tuning_replaces_the_head():
    from earlyphase.config import ModelConfig
    from earlyphase.models import build_model
    from earlyphase.probes.linear_probe import fine_tune

    a_tr, y_tr, a_te, y_te = _linear_task(d=20, classes=2)
    model = build_model(ModelConfig(name="mlp", widths=(16,)), (20,), 5)
    acc = fine_tune(model, a_tr, y_tr, a_te, y_te, 2, steps=100, lr=0.05, batch=32)
    assert acc > 0.9
    assert model.get_submodule(model.output_layer).out_features == 5  # the original is untouched
