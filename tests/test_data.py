"""earlyphase.data: sources, options and loaders of real file formats (written tiny into tmp_path)."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from earlyphase.config import DataConfig
from earlyphase.data import Dataset, clear_cache, crop_flip, draw_crop_flip, load_dataset
from earlyphase.data import gaussian, mnist1d, prototypes
from earlyphase.data.transforms import blur, label_noise
from earlyphase.errors import UserError


def load(**kw) -> Dataset:
    return load_dataset(DataConfig(**kw))


SMALL = {
    "mnist1d": dict(n_train=200, n_test=100),
    "digits": dict(),
    "gaussian": dict(n_train=500, n_test=100, dim=20),
    "prototypes": dict(n_train=300, n_test=100, dim=50, num_classes=5),
}


# ---------------------------------------------------------------------------------------------- sources

@pytest.mark.parametrize("name,shape,n_tr,n_te,classes", [
    ("mnist1d", (1, 40), 200, 100, 10),
    ("digits", (1, 8, 8), 1437, 360, 10),
    ("gaussian", (20,), 500, 100, 2),
    ("prototypes", (50,), 300, 100, 5),
])
def test_generated_and_embedded_sources(name, shape, n_tr, n_te, classes):
    ds = load(name=name, **SMALL[name])
    assert ds.input_shape == shape and ds.n_train == n_tr and ds.x_test.shape == (n_te, *shape)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert ds.num_classes == classes and ds.out_dim == classes
    assert set(ds.y_train.unique().tolist()) == set(range(classes))
    assert torch.isfinite(ds.x_train).all()
    again = load(name=name, **SMALL[name])
    assert ds.fingerprint() == again.fingerprint()


def test_unknown_dataset_lists_known_names():
    with pytest.raises(UserError, match="known datasets: mnist1d, digits, gaussian, prototypes, cifar10, mnist, fashion_mnist"):
        load(name="imagenet")


def test_mnist1d_seeded_and_cached_on_disk():
    a = load(name="mnist1d", n_train=60, n_test=30, seed=1)
    b = load(name="mnist1d", n_train=60, n_test=30, seed=2)
    assert not torch.equal(a.x_train, b.x_train)
    files = list(mnist1d.cache_dir().glob("mnist1d-*.npz"))
    assert files and mnist1d.cache_dir().parent == Path(os.environ["EARLYPHASE_HOME"])
    mnist1d._cached.cache_clear()  # the next load reads the .npz
    clear_cache()
    assert load(name="mnist1d", n_train=60, n_test=30, seed=1).fingerprint() == a.fingerprint()
    with pytest.raises(UserError, match="data.seed"):
        load(name="mnist1d", n_train=60, n_test=30, seed=-1)


def test_generated_datasets_cached_in_process_as_private_copies(monkeypatch):
    calls = []
    real = prototypes.load
    from earlyphase.registry import DATASET_REGISTRY, Entry

    entry = DATASET_REGISTRY.get("prototypes")
    monkeypatch.setitem(DATASET_REGISTRY._entries, "prototypes",
                        Entry("prototypes", lambda cfg: calls.append(cfg) or real(cfg), entry.origin, entry.meta))
    clear_cache()
    a = load(name="prototypes", n_train=50, n_test=20, dim=8)
    a.x_train.zero_()  # what one caller does to its copy ...
    b = load(name="prototypes", n_train=50, n_test=20, dim=8)
    assert len(calls) == 1  # ... generated once ...
    assert b.x_train.abs().sum() > 0 and b.x_train.data_ptr() != a.x_train.data_ptr()  # ... never seen by the next
    fresh = Dataset(b.name, b.x_train, b.y_train, b.x_test, b.y_test, b.num_classes)  # nothing carried over
    assert b.fingerprint() == fresh.fingerprint()
    load(name="prototypes", n_train=50, n_test=20, dim=9)
    assert len(calls) == 2  # another config is another dataset


def test_digits_pixels_in_unit_range():
    ds = load(name="digits")
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1 and ds.x_train.max() == 1


def test_gaussian_teacher_and_spectrum():
    ds = load(name="gaussian", n_train=4000, n_test=10, dim=10, spectrum="power:1.0", seed=3)
    a, b = gaussian.teacher(10, 3)
    assert torch.allclose(a.norm(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(ds.y_train, gaussian.teacher_labels(ds.x_train, a, b))
    var = ds.x_train.var(0)
    assert var[0] > 2 * var[-1] and abs(var.sum().item() - 10) < 1.0
    lam = gaussian.eigenvalues(10, "power:1.0")
    assert torch.allclose(lam.sum(), torch.tensor(10.0, dtype=torch.float64))
    longer = load(name="gaussian", n_train=4100, n_test=10, dim=10, spectrum="power:1.0", seed=3)
    assert torch.equal(longer.x_train[:4000], ds.x_train) and torch.equal(longer.x_test, ds.x_test)
    with pytest.raises(UserError, match="power:ALPHA"):
        load(name="gaussian", spectrum="power:x")


def test_prototypes_atypical_fraction():
    protos = prototypes.prototypes(5, 50, 0)
    x, y, atyp = prototypes.sample(1000, protos, 0.1, 0, "train")
    assert atyp.sum() == 100
    align = (x * protos[y]).sum(1)
    assert align[~atyp].min() > align[atyp].mean()
    assert (protos @ protos.T - torch.eye(5)).abs().max() < 0.6


# ---------------------------------------------------------------------------------------------- options

def test_classes_subset_relabels_in_given_order():
    full = load(name="digits")
    ds = load(name="digits", classes=(7, 3))
    assert ds.num_classes == 2 and set(ds.y_train.tolist()) == {0, 1}
    keep = (full.y_train == 7) | (full.y_train == 3)
    assert torch.equal(ds.x_train, full.x_train[keep])
    assert torch.equal(ds.y_train, (full.y_train[keep] == 3).long())
    with pytest.raises(UserError, match="outside 0..9"):
        load(name="digits", classes=(3, 12))


def test_n_train_cap_keeps_first_samples():
    full = load(name="digits")
    ds = load(name="digits", n_train=100, n_test=50)
    assert torch.equal(ds.x_train, full.x_train[:100]) and torch.equal(ds.y_test, full.y_test[:50])
    with pytest.raises(UserError, match="n_train"):
        load(name="digits", n_train=5000)


def test_normalize_uses_training_statistics():
    raw = load(name="digits")
    ds = load(name="digits", normalize=True)
    assert abs(ds.x_train.mean().item()) < 1e-5 and abs(ds.x_train.std().item() - 1) < 1e-4
    m, s = raw.x_train.mean(), raw.x_train.std()
    assert torch.allclose(ds.x_test, (raw.x_test - m) / s, atol=1e-5)


def test_label_noise_changes_expected_fraction():
    clean = load(name="prototypes", n_train=4000, n_test=10, dim=20)
    noisy = load(name="prototypes", n_train=4000, n_test=10, dim=20, label_noise=0.5)
    changed = (clean.y_train != noisy.y_train).float().mean().item()
    assert abs(changed - 0.45) < 0.03
    assert torch.equal(noisy.y_test, clean.y_test)
    again = load(name="prototypes", n_train=4000, n_test=10, dim=20, label_noise=0.5)
    assert torch.equal(again.y_train, noisy.y_train)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(label_noise(clean.y_train, 0.0, 10, g), clean.y_train)


def test_blur_is_blockwise_mean():
    raw = load(name="mnist1d", n_train=50, n_test=10)
    ds = load(name="mnist1d", n_train=50, n_test=10, blur=2)
    assert ds.x_train.shape == raw.x_train.shape
    pairs = raw.x_train.reshape(50, 1, 20, 2).mean(-1)
    assert torch.allclose(ds.x_train[..., 0::2], pairs) and torch.equal(ds.x_train[..., 0::2], ds.x_train[..., 1::2])
    img = load(name="digits", n_train=20, n_test=5, blur=2).x_train
    blocks = img.reshape(20, 1, 4, 2, 4, 2)
    assert torch.allclose(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))
    odd = blur(torch.arange(5.0).reshape(1, 1, 5), 2)
    assert torch.equal(odd, torch.tensor([[[0.5, 0.5, 2.5, 2.5, 4.0]]]))
    with pytest.raises(UserError, match="blur"):
        load(name="gaussian", n_train=10, n_test=10, blur=2)


def test_rotation_task_exact_quarter_turns():
    raw = load(name="digits", n_train=10, n_test=5)
    ds = load(name="digits", n_train=10, n_test=5, task="rotation")
    assert ds.num_classes == 4 and ds.n_train == 40 and ds.x_test.shape[0] == 20
    assert torch.equal(ds.y_train, torch.arange(4).repeat_interleave(10))
    for k in range(4):
        assert torch.equal(ds.x_train[10 * k:10 * (k + 1)], torch.rot90(raw.x_train, k, dims=(2, 3)))
    seq = load(name="mnist1d", n_train=20, n_test=10, task="rotation")
    x = seq.x_train[:20]
    assert torch.equal(seq.x_train[20:40], x.flip(2)) and torch.equal(seq.x_train[40:60], x.roll(20, 2))


def test_energy_half_on_normalized_inputs():
    ds = load(name="mnist1d", n_train=100, n_test=20, task="energy_half", normalize=True)
    x = load(name="mnist1d", n_train=100, n_test=20, normalize=True).x_train
    expect = ((x[..., :20] ** 2).sum((1, 2)) > (x[..., 20:] ** 2).sum((1, 2))).long()
    assert ds.num_classes == 2 and torch.equal(ds.y_train, expect) and torch.equal(ds.x_train, x)
    img = load(name="digits", task="energy_half")
    top = (img.x_train[:, :, :4] ** 2).sum((1, 2, 3)) > (img.x_train[:, :, 4:] ** 2).sum((1, 2, 3))
    assert torch.equal(img.y_train, top.long())


def test_targets_pm1_and_augment_checks():
    ds = load(name="gaussian", n_train=200, n_test=50, dim=5, targets="pm1")
    raw = load(name="gaussian", n_train=200, n_test=50, dim=5)
    assert ds.y_train.dtype == torch.float32 and ds.out_dim == 1
    assert torch.equal(ds.y_train, raw.y_train.float() * 2 - 1)
    assert load(name="digits", classes=(3, 7), targets="pm1").y_test.unique().tolist() == [-1.0, 1.0]
    with pytest.raises(UserError, match="pm1"):
        load(name="digits", targets="pm1")
    with pytest.raises(UserError, match="augment"):
        load(name="mnist1d", n_train=20, n_test=10, augment=True)
    assert load(name="digits", augment=True).augment
    with pytest.raises(UserError, match="color_dominance"):
        load(name="digits", task="color_dominance")


# ---------------------------------------------------------------------------------------------- crop/flip

def test_crop_flip():
    x = torch.randn(6, 3, 8, 10)
    pad = torch.full((6,), 4)
    no = torch.zeros(6, dtype=torch.bool)
    assert torch.equal(crop_flip(x, pad, pad, no), x)
    assert torch.equal(crop_flip(x, pad, pad, ~no), x.flip(3))
    out = crop_flip(x, pad + 2, pad - 1, no)  # content moves 2 left and 1 down
    assert torch.equal(out[:, :, 1:, :-2], x[:, :, :-1, 2:])
    assert (out[:, :, 0] == 0).all() and (out[:, :, :, -2:] == 0).all()
    dx, dy, flip = draw_crop_flip(6, torch.Generator().manual_seed(5))
    dx2, dy2, flip2 = draw_crop_flip(6, torch.Generator().manual_seed(5))
    assert torch.equal(dx, dx2) and torch.equal(dy, dy2) and torch.equal(flip, flip2)
    assert dx.min() >= 0 and dx.max() <= 8 and flip.dtype == torch.bool
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    got = crop_flip(x, dx, dy, flip)
    for i in range(6):  # per-sample reference
        ref = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 10]
        assert torch.equal(got[i], ref.flip(2) if flip[i] else ref)


# ---------------------------------------------------------------------------------------------- cifar10

CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar_arrays(seed: int = 0, n: int = 4) -> list[tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()) for _ in CIFAR_NAMES]


def write_cifar_py(where: Path) -> list:
    where.mkdir(parents=True, exist_ok=True)
    arrays = _cifar_arrays()
    for name, (data, labels) in zip(CIFAR_NAMES, arrays):
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [b"img%d.png" % i for i in range(len(labels))]}
        (where / name).write_bytes(pickle.dumps(batch, protocol=2))
    return arrays


def write_cifar_bin(where: Path) -> list:
    where.mkdir(parents=True, exist_ok=True)
    arrays = _cifar_arrays(1)
    for name, (data, labels) in zip(CIFAR_NAMES, arrays):
        records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1)
        (where / f"{name}.bin").write_bytes(records.tobytes())
    return arrays


def _check_cifar(ds: Dataset, arrays: list) -> None:
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32) and ds.num_classes == 10
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    expect = torch.from_numpy(np.concatenate([a[0] for a in arrays[:5]])).float().reshape(20, 3, 32, 32) / 255
    assert torch.equal(ds.x_train, expect)
    assert ds.y_train.tolist() == sum((a[1] for a in arrays[:5]), [])
    assert ds.y_test.tolist() == arrays[5][1]


def test_cifar_python_batches(tmp_path):
    arrays = write_cifar_py(tmp_path / "cifar-10-batches-py")
    _check_cifar(load(name="cifar10", root=str(tmp_path)), arrays)
    ds = load(name="cifar10", root=str(tmp_path / "cifar-10-batches-py"), task="color_dominance", normalize=True)
    assert ds.num_classes == 3 and torch.equal(ds.y_train, ds.x_train.sum((2, 3)).argmax(1))
    m = ds.x_train.mean((0, 2, 3))
    s = ds.x_train.std((0, 2, 3))
    assert m.abs().max() < 1e-5 and (s - 1).abs().max() < 1e-4


class _Py2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2 strings (SHORT_BINSTRING / BINSTRING), as the official CIFAR
    batches were written, instead of Python 3's _codecs.encode calls."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def test_cifar_python2_pickles(tmp_path):
    """The official files: Python 2 strings, numpy 1.x's numpy.core.multiarray names."""
    arrays = write_cifar_py(tmp_path)
    for name, (data, labels) in zip(CIFAR_NAMES, arrays):
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump({b"batch_label": name.encode(), b"labels": labels, b"data": data})
        raw = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"_codecs" not in raw and b"numpy.core.multiarray" in raw
        (tmp_path / name).write_bytes(raw)
    _check_cifar(load(name="cifar10", root=str(tmp_path)), arrays)


def test_cifar_binary_batches(tmp_path):
    arrays = write_cifar_bin(tmp_path / "cifar-10-batches-bin")
    _check_cifar(load(name="cifar10", root=str(tmp_path)), arrays)


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_cifar_malicious_pickle_is_refused(tmp_path):
    write_cifar_py(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(str(marker))}, protocol=2))
    with pytest.raises(UserError, match="refusing to unpickle .*system.*data_batch_3"):
        load(name="cifar10", root=str(tmp_path))
    assert not marker.exists()
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(eval, protocol=2))
    with pytest.raises(UserError, match="refusing to unpickle (__builtin__|builtins).eval"):
        load(name="cifar10", root=str(tmp_path))


def test_cifar_bad_inputs_name_the_path(tmp_path):
    with pytest.raises(UserError, match="data.root"):
        load(name="cifar10")
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"{missing}.*does not exist.*data_batch_1"):
        load(name="cifar10", root=str(missing))
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "data_batch_1").write_bytes(b"")
    with pytest.raises(UserError, match="wrong does not hold the CIFAR-10 batches.*test_batch.bin"):
        load(name="cifar10", root=str(tmp_path / "wrong"))
    py = tmp_path / "py"
    write_cifar_py(py)
    (py / "test_batch").write_bytes((py / "test_batch").read_bytes()[:300])
    with pytest.raises(UserError, match=str(py / "test_batch")):
        load(name="cifar10", root=str(py))
    bn = tmp_path / "bn"
    write_cifar_bin(bn)
    (bn / "data_batch_2.bin").write_bytes((bn / "data_batch_2.bin").read_bytes()[:-10])
    with pytest.raises(UserError, match=f"{bn / 'data_batch_2.bin'}.*truncated"):
        load(name="cifar10", root=str(bn))


# ---------------------------------------------------------------------------------------------- idx

IDX_FILES = {"train-images-idx3-ubyte": (3, 12), "train-labels-idx1-ubyte": (1, 12),
             "t10k-images-idx3-ubyte": (3, 5), "t10k-labels-idx1-ubyte": (1, 5)}


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx(where: Path, gz: bool) -> dict[str, np.ndarray]:
    where.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name, (ndim, n) in IDX_FILES.items():
        arr = rng.integers(0, 256, (n, 28, 28)) if ndim == 3 else rng.integers(0, 10, n)
        arrays[name] = arr
        raw = idx_bytes(arr)
        if gz:
            (where / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (where / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz,sub,name", [(False, "", "mnist"), (True, "raw", "fashion_mnist")])
def test_idx_loads(tmp_path, gz, sub, name):
    arrays = write_idx(tmp_path / sub if sub else tmp_path, gz)
    ds = load(name=name, root=str(tmp_path))
    assert ds.name == name and ds.num_classes == 10
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    expect = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float()[:, None] / 255
    assert torch.equal(ds.x_train, expect)
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_idx_bad_files_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=f"{missing}.*train-images-idx3-ubyte"):
        load(name="mnist", root=str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty does not hold the mnist files.*t10k-labels-idx1-ubyte"):
        load(name="mnist", root=str(tmp_path / "empty"))
    write_idx(tmp_path / "a", gz=False)
    f = tmp_path / "a" / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(UserError, match=f"{f}.*truncated"):
        load(name="mnist", root=str(tmp_path / "a"))
    f.write_bytes(b"\0\0\x08\x01" + f.read_bytes()[4:])
    with pytest.raises(UserError, match=f"{f}.*magic"):
        load(name="mnist", root=str(tmp_path / "a"))
    write_idx(tmp_path / "b", gz=True)
    g = tmp_path / "b" / "train-labels-idx1-ubyte.gz"
    g.write_bytes(g.read_bytes()[:20])
    with pytest.raises(UserError, match=str(g)):
        load(name="mnist", root=str(tmp_path / "b"))
    write_idx(tmp_path / "c", gz=False)
    h = tmp_path / "c" / "train-labels-idx1-ubyte"
    h.write_bytes(idx_bytes(np.zeros(11, dtype=np.uint8)))
    with pytest.raises(UserError, match="11 labels"):
        load(name="mnist", root=str(tmp_path / "c"))
