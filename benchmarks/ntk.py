"""Empirical NTK: structured Grams (earlyphase.probes.ntk) against a naive loop of one autograd call per
sample followed by the Gram, for two_layer (d = 100, m = 2000) on Gaussian inputs and cnn_ntk on the
8x8 digits, at n = 1000 (issue 5: at least 10x faster), and the peak memory beyond the n x n result
as n grows (it must stay flat).

Each measurement runs in a fresh process, so its peak resident memory (ru_maxrss) minus the resident
memory just before the computation is the memory the computation itself needed.

    .venv/bin/python benchmarks/ntk.py
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

N = 1000
SIZES = {"two_layer": (1000, 2000, 4000), "cnn_ntk": (500, 1000, 1797)}
THREADS = 2


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def one(model_name: str, method: str, n: int) -> dict:
    import torch

    from earlyphase.config import DataConfig, ModelConfig
    from earlyphase.data import load_dataset
    from earlyphase.models import build_model
    from earlyphase.probes.ntk import empirical_ntk, naive_ntk

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    if model_name == "two_layer":
        x = torch.randn(n, 100)
        model = build_model(ModelConfig(name="two_layer", width=2000), (100,), 1)
    else:
        ds = load_dataset(DataConfig(name="digits", normalize=True))
        x = torch.cat([ds.x_train, ds.x_test])[:n]
        model = build_model(ModelConfig(name="cnn_ntk"), tuple(x.shape[1:]), 1)
    fn = empirical_ntk if method == "structured" else naive_ntk
    fn(model, x[:8])  # warm up kernels and allocator outside the measurement
    before = _rss_mib()
    t0 = time.perf_counter()
    theta = fn(model, x)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result_mib = theta.numel() * theta.element_size() / 2**20
    return {"model": model_name, "method": method, "n": n, "seconds": seconds,
            "peak_mib": max(0.0, peak - before), "beyond_result_mib": max(0.0, peak - before - result_mib),
            "checksum": float(theta.double().trace())}


def gram_floor(n: int) -> dict:
    """The contraction no exact method avoids for cnn_ntk: the per-sample gradients of its two 64 x 64
    3x3 convolutions have no structure cheaper than their 2 x 36,864 entries per pair of samples (the
    sum over pairs of positions costs 64^2 (64 + 576) per pair, ~70x more), so Theta needs at least
    the lower half of an (n x P) (P x n) product. Timed as one float32 matmul with the benchmark's
    threads; half of it is the floor."""
    import torch

    torch.set_num_threads(THREADS)
    j = torch.randn(n, 2 * 64 * 64 * 9)
    j @ j[:64].T  # warm up
    t0 = time.perf_counter()
    j @ j.T
    return {"n": n, "full_gram_seconds": time.perf_counter() - t0}


def run(model_name: str, method: str, n: int) -> dict:
    args = ["--floor", str(n)] if method == "floor" else ["--one", model_name, method, str(n)]
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = []
    for model_name, sizes in SIZES.items():
        for n in sizes:
            rows.append(run(model_name, "structured", n))
        rows.append(run(model_name, "naive", N))
    floor = run("cnn_ntk", "floor", N)["full_gram_seconds"] / 2
    print(f"{'model':<10} {'method':<11} {'n':>5} {'seconds':>9} {'peak MiB':>9} {'beyond n x n':>13}")
    for r in rows:
        print(f"{r['model']:<10} {r['method']:<11} {r['n']:>5} {r['seconds']:>9.3f} {r['peak_mib']:>9.1f} "
              f"{r['beyond_result_mib']:>13.1f}")
    figures: dict = {}
    ok = True
    for model_name, sizes in SIZES.items():
        ours = {r["n"]: r for r in rows if r["model"] == model_name and r["method"] == "structured"}
        naive = next(r for r in rows if r["model"] == model_name and r["method"] == "naive")
        speedup = naive["seconds"] / ours[N]["seconds"]
        agree = abs(naive["checksum"] - ours[N]["checksum"]) <= 1e-3 * abs(naive["checksum"])
        beyond = [ours[n]["beyond_result_mib"] for n in sizes]
        flat = beyond[-1] <= 1.25 * max(beyond[1], 1.0) + 16  # the largest n needs no more than n = 1000
        print(f"{model_name}: structured {speedup:.1f}x faster than naive at n = {N}; memory beyond the n x n result "
              f"{' -> '.join(f'{b:.0f}' for b in beyond)} MiB for n = {' -> '.join(map(str, sizes))}")
        figures[model_name] = {"speedup_at_1000": round(speedup, 2), "structured_seconds": round(ours[N]["seconds"], 3),
                               "naive_seconds": round(naive["seconds"], 3), "beyond_result_mib": [round(b, 1) for b in beyond],
                               "sizes": list(sizes), "naive_beyond_result_mib": round(naive["beyond_result_mib"], 1),
                               "trace_agrees": agree, "flat": flat}
        if model_name == "cnn_ntk":
            ceiling = naive["seconds"] / floor
            figures[model_name].update({"gram_floor_seconds": round(floor, 3), "speedup_ceiling": round(ceiling, 2)})
            print(f"cnn_ntk: the Gram of the conv layers' per-sample gradients alone takes {floor:.3f} s (half of an "
                  f"n x 73,728 by 73,728 x n matmul): no exact float32 method here beats naive by more than {ceiling:.1f}x")
        ok = ok and speedup >= 10 and flat and agree
    print(json.dumps({"benchmark": "ntk", "threads": THREADS, **figures, "pass": ok}))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    elif len(sys.argv) == 3 and sys.argv[1] == "--floor":
        print(json.dumps(gram_floor(int(sys.argv[2]))))
    else:
        main()
