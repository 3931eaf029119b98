"""Perturbations of rewound weights: exact permutations, exact sign/magnitude mixes, noise scale."""
import pytest
import torch

from earlyphase.errors import UserError
from earlyphase.perturb import apply, effective_std, mix_sign_magnitude, permute


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = {"conv": torch.randn(8, 4, 3, generator=g), "fc": torch.randn(10, 30, generator=g)}
    mask = {n: torch.rand(t.shape, generator=g) < 0.4 for n, t in w.items()}
    return w, mask


def multiset(t):
    return sorted(t.tolist())


@pytest.mark.parametrize("scope", ["global", "layer", "filter"])
@pytest.mark.parametrize("same_sign", [False, True])
def test_permutation_keeps_each_groups_values_and_the_pruned_positions(scope, same_sign):
    w, mask = setup()
    out = permute(w, mask, scope, same_sign, torch.Generator().manual_seed(1))
    for n in w:
        assert torch.equal(out[n][~mask[n]], w[n][~mask[n]])  # nothing moves into or out of a pruned slot
    if scope == "global":
        assert multiset(torch.cat([out[n][mask[n]] for n in w])) == multiset(torch.cat([w[n][mask[n]] for n in w]))
    else:
        for n in w:
            rows = 1 if scope == "layer" else w[n].shape[0]
            a, b, m = out[n].reshape(rows, -1), w[n].reshape(rows, -1), mask[n].reshape(rows, -1)
            for r in range(rows):
                assert multiset(a[r][m[r]]) == multiset(b[r][m[r]])
    if same_sign:
        for n in w:
            assert torch.equal(torch.sign(out[n]), torch.sign(w[n]))
    moved = sum(int((out[n] != w[n]).sum()) for n in w)
    assert moved > 0.5 * sum(int(m.sum()) for m in mask.values())  # it really shuffles


def test_sign_magnitude_mixes_are_exact():
    w, mask = setup()
    theta0, _ = setup(seed=5)
    fresh, _ = setup(seed=9)
    cases = {"sign_k_mag_0": (w, theta0), "sign_0_mag_k": (theta0, w), "sign_k_mag_fresh": (w, fresh)}
    for kind, (signs, mags) in cases.items():
        out = apply(kind, w, mask, theta0=theta0, fresh=fresh)
        for n in w:
            m = mask[n]
            assert torch.equal(torch.sign(out[n][m]), torch.sign(signs[n][m])), kind
            assert torch.equal(out[n][m].abs(), mags[n][m].abs()), kind
            assert torch.equal(out[n][~m], w[n][~m])
    with pytest.raises(UserError, match="step 0"):
        apply("sign_k_mag_0", w, mask, theta0=None, fresh=fresh)


def test_noise_scale_follows_the_init_std():
    w, mask = setup()
    fresh = {n: torch.randn(t.shape, generator=torch.Generator().manual_seed(3)) * 0.1 for n, t in w.items()}
    small = apply("noise", w, mask, theta0=None, fresh=fresh, scale=0.5, seed=0)
    large = apply("noise", w, mask, theta0=None, fresh=fresh, scale=3.0, seed=0)
    assert effective_std(small, w, mask) == pytest.approx(0.05, rel=0.2)
    assert effective_std(large, w, mask) == pytest.approx(6 * effective_std(small, w, mask), rel=1e-6)
    for n in w:
        assert torch.equal(small[n][~mask[n]], w[n][~mask[n]])


def test_mix_keeps_unmasked_weights():
    w, mask = setup()
    out = mix_sign_magnitude(w, w, mask, w)
    assert all(torch.equal(out[n], w[n]) for n in w)
