"""Masks: magnitude pruning keeps exactly round(0.8^L N) of the largest survivors; random masks keep
per-layer counts."""
import pytest
import torch

from earlyphase.sparsity import densities, magnitude_prune, random_like
from earlyphase.sparsity.masks import keep_count


def weights():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(10, 20, generator=g), "b": torch.randn(50, generator=g) * 3}


def test_keep_count_follows_the_level_formula():
    assert [keep_count(1000, 0.2, L) for L in (0, 1, 8, 9)] == [1000, 800, 168, 134]


def test_global_magnitude_pruning_keeps_the_largest_survivors():
    w = weights()
    full = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    m1 = magnitude_prune(w, full, 0.2, 1, "global")
    assert sum(int(m.sum()) for m in m1.values()) == 200
    kept = torch.cat([w[n].abs()[m1[n]] for n in w])
    dropped = torch.cat([w[n].abs()[~m1[n]] for n in w])
    assert kept.min() >= dropped.max()
    # the larger-scale layer keeps more: the ranking is across layers
    assert densities(m1)["b"] > densities(m1)["a"]
    m2 = magnitude_prune(w, m1, 0.2, 2, "global")
    assert sum(int(m.sum()) for m in m2.values()) == 160
    for n in w:  # nested: a pruned weight never comes back
        assert not (m2[n] & ~m1[n]).any()


def test_layerwise_pruning_keeps_each_layers_share():
    w = weights()
    full = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    m = magnitude_prune(w, full, 0.2, 3, "layerwise")
    assert int(m["a"].sum()) == keep_count(200, 0.2, 3) and int(m["b"].sum()) == keep_count(50, 0.2, 3)
    assert w["a"].abs()[m["a"]].min() >= w["a"].abs()[~m["a"]].max()


def test_random_like_keeps_per_layer_counts_and_changes_positions():
    w = weights()
    full = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    m = magnitude_prune(w, full, 0.2, 4, "global")
    r = random_like(m, seed=1)
    for n in m:
        assert int(r[n].sum()) == int(m[n].sum())
    assert any((r[n] != m[n]).any() for n in m)
    assert all(torch.equal(random_like(m, 1)[n], r[n]) for n in m)


def test_densities_overall():
    d = densities({"a": torch.tensor([True, False]), "b": torch.tensor([True, True])})
    assert d == pytest.approx({"a": 0.5, "b": 1.0, "": 0.75})
