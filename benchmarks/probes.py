"""Closed-form linear decoder against the paper code's Adam decoder (docs/experiments/learning_phases.md), side by side in one
run on the same activations.

Workload: the penultimate features (``pool``, 512) of vgg8_phases at initialisation (paper widths)
on CIFAR-shaped images (3x32x32, smooth random images: a 4x4 random field upsampled, plus noise;
n_train and n_test below), decoded to the 3072 input values. Arm A: ridge in closed form from
streamed sums (each chunk's products in float32 about a reference mean, added into float64 totals),
λ chosen on a held-out 20 % of the training set from one eigendecomposition for the whole grid,
refit on all of it by a Cholesky solve, training error from the sums
(``earlyphase.probes.reconstruction.ridge_decoder``). Arm B: one linear layer, Adam lr 3e-4, batch
128, 20 epochs (``adam_linear_decoder``), as in the paper's code. Both arms run with the same torch
thread count (``--threads``, default 1: the machine is shared); each arm is timed ``--rounds``
times, alternating (the closed form ``--cf-repeats`` times per round), and the median wall time is
judged; the process CPU time of each arm is printed beside it.

Prints a table, then as its last line one JSON object; pass: time ratio >= 20 and the closed form's
test MSE not higher than Adam's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, 4, 4, generator=g)
    x = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    return x + 0.3 * torch.randn(n, 3, 32, 32, generator=g)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cf-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # the same for both arms
    torch.set_num_interop_threads(args.threads)

    from earlyphase.config import ModelConfig
    from earlyphase.models import build_model
    from earlyphase.probes.activations import collect
    from earlyphase.probes.reconstruction import adam_linear_decoder, ridge_decoder

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vgg8_phases"), (3, 32, 32), 10)
    x_train, x_test = images(args.n_train, 1), images(args.n_test, 2)
    mean, std = x_train.mean((0, 2, 3), keepdim=True), x_train.std((0, 2, 3), keepdim=True)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    a_train = collect(model, x_train, ["pool"])["pool"]
    a_test = collect(model, x_test, ["pool"])["pool"]

    times: dict[str, list[float]] = {"closed_form": [], "adam": []}
    cpu: dict[str, list[float]] = {"closed_form": [], "adam": []}
    result = {}
    for r in range(args.rounds):
        order = ["closed_form", "adam"] if r % 2 == 0 else ["adam", "closed_form"]
        for arm in order:
            # the closed form is cheap: timed --cf-repeats times per round, so that its median is not
            # one sample of a shared machine's load
            for _ in range(args.cf_repeats if arm == "closed_form" else 1):
                t, c = time.perf_counter(), time.process_time()
                if arm == "closed_form":
                    result[arm] = ridge_decoder(a_train, x_train, a_test, x_test)
                else:
                    result[arm] = adam_linear_decoder(a_train, x_train, a_test, x_test)
                times[arm].append(time.perf_counter() - t)
                cpu[arm].append(time.process_time() - c)
    cf, adam = statistics.median(times["closed_form"]), statistics.median(times["adam"])
    cf_cpu, adam_cpu = statistics.median(cpu["closed_form"]), statistics.median(cpu["adam"])
    ratio = adam / cf
    print(f"activations: vgg8_phases 'pool' at init, {a_train.shape[1]} features -> {x_train[0].numel()} "
          f"inputs; {args.n_train} train / {args.n_test} test; {args.threads} thread(s); {args.rounds} rounds")
    print(f"{'decoder':<34}{'seconds (median)':>18}{'train MSE':>12}{'test MSE':>12}")
    print(f"{'closed form (ridge, held-out λ)':<34}{cf:>18.3f}{result['closed_form'].train_mse:>12.5f}"
          f"{result['closed_form'].test_mse:>12.5f}")
    print(f"{'Adam lr 3e-4, 20 epochs':<34}{adam:>18.3f}{result['adam'].train_mse:>12.5f}{result['adam'].test_mse:>12.5f}")
    print(f"time ratio (Adam / closed form): {ratio:.1f}x wall (target >= 20x); process CPU seconds "
          f"(median): closed form {cf_cpu:.3f}, Adam {adam_cpu:.3f}, ratio {adam_cpu / cf_cpu:.1f}x")
    ok = ratio >= 20 and result["closed_form"].test_mse <= result["adam"].test_mse
    print(json.dumps({"closed_form_seconds": round(cf, 4), "adam_seconds": round(adam, 4), "ratio": round(ratio, 2),
                      "closed_form_cpu_seconds": round(cf_cpu, 4), "adam_cpu_seconds": round(adam_cpu, 4),
                      "cpu_ratio": round(adam_cpu / cf_cpu, 2), "threads": args.threads,
                      "closed_form_test_mse": result["closed_form"].test_mse, "adam_test_mse": result["adam"].test_mse,
                      "n_train": args.n_train, "features": int(a_train.shape[1]), "pass": bool(ok)}))


if __name__ == "__main__":
    main()
