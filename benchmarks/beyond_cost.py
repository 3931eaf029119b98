"""What the beyond-the-papers experiments cost beside the rewinding experiment, on one machine in one
run: `earlyphase run rewinding` (laptop preset) into an empty store, then `instability`,
`gradient_subspace` and `critical_period` (laptop presets) each on that store, which holds the
rewinding experiment's runs; with ``--empty``, each of the three also from its own empty store.
Every command is the CLI with the same ``--workers``; wall seconds and CPU seconds (the command and
its workers) side by side, and each experiment's time over the rewinding experiment's.

The target (docs/experiments/instability.md, "Cost"): each experiment on the store holding the
rewinding experiment finishes in at most the rewinding experiment's own wall time. Last line JSON.
Takes about as long as the four experiments (40-50 min on 2 cores; ``--empty`` adds about as much).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BEYOND = ("instability", "gradient_subspace", "critical_period")


def timed(experiment: str, store: Path, workers: int) -> dict:
    """Wall and CPU seconds of one `earlyphase run`, and the verdict it wrote."""
    before = os.times()
    t = time.perf_counter()
    out = subprocess.run([str(Path(sys.executable).parent / "earlyphase"), "run", experiment, "--store", str(store),
                          "--workers", str(workers), "--quiet"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = os.times()
    if out.returncode != 0:
        sys.exit(f"{experiment} failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    check = json.loads((Path(out.stdout.strip().splitlines()[-1]) / "check.json").read_text())
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "pass": check["pass"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", default=",".join(BEYOND), help="comma-separated: which of the three to time")
    ap.add_argument("--empty", action="store_true", help="also time each from an empty store")
    ap.add_argument("--store", help="where the rewinding experiment's store goes (default: a temporary directory)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.store or Path(tmp) / "held")
        rewinding = timed("rewinding", store, args.workers)
        print(f"rewinding from an empty store: {rewinding['wall_s']:.0f} s wall, {rewinding['cpu_s']:.0f} s CPU",
              flush=True)
        rows = {}
        for name in names:
            held = timed(name, store, args.workers)
            row = {"held": held, "wall_vs_rewinding": round(held["wall_s"] / rewinding["wall_s"], 3),
                   "cpu_vs_rewinding": round(held["cpu_s"] / rewinding["cpu_s"], 3)}
            if args.empty:
                row["empty"] = timed(name, Path(tmp) / f"empty-{name}", args.workers)
            rows[name] = row
            print(f"{name} on the held store: {held['wall_s']:.0f} s wall ({row['wall_vs_rewinding']:.2f}x), "
                  f"{held['cpu_s']:.0f} s CPU ({row['cpu_vs_rewinding']:.2f}x)"
                  + (f"; from empty {row['empty']['wall_s']:.0f} s wall, {row['empty']['cpu_s']:.0f} s CPU"
                     if args.empty else ""), flush=True)
    over = [n for n, r in rows.items() if r["wall_vs_rewinding"] > 1.0]
    print(json.dumps({"benchmark": "beyond_cost", "workers": args.workers, "rewinding": rewinding,
                      "experiments": rows, "over_rewinding": over, "pass": not over}))


if __name__ == "__main__":
    main()
