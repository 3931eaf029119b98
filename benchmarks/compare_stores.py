"""Compare two stores bit for bit: the same runs, each with the same status, metrics and checkpoint
bytes, and the same check.json verdicts and numbers for every experiment. Reads the files directly
(pyarrow), so it compares stores written by any two versions of earlyphase:

A checkpoint counts as identical when its bytes are, or when its tensor bytes and its parsed header
(every tensor's dtype, shape and offsets, and the metadata) are: safetensors writes the metadata in
hash-map order, which varies from process to process (earlyphase sorts it since the house issue).

    python benchmarks/compare_stores.py STORE_A STORE_B

Prints a table of what differs (nothing, when the stores agree) and, last, one JSON line with the
counts and "pass"; exits 1 on any difference."""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq

KEY = ("step", "name", "layer", "split")


def metrics(run: Path) -> list[tuple]:
    """Every metric row of a run, first occurrence of each (step, name, layer, split), sorted."""
    seen: dict[tuple, float] = {}
    for f in sorted((run / "metrics").glob("*.parquet")):
        t = pq.read_table(f).to_pydict()
        for row in zip(*(t[c] for c in (*KEY, "value"))):
            seen.setdefault(row[:4], row[4])
    return sorted((*k, v) for k, v in seen.items())


def same_value(a: float, b: float) -> bool:
    """Equal, or both NaN: bit-identical computations give identical NaNs."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def checkpoint_parts(path: Path) -> tuple[dict, str]:
    """A safetensors file's parsed header and a digest of its tensor bytes."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), hashlib.sha256(raw[8 + n:]).hexdigest()


def same_checkpoint(a: Path, b: Path, counts: dict[str, int]) -> bool:
    if a.read_bytes() == b.read_bytes():
        counts["byte_identical"] += 1
        return True
    if checkpoint_parts(a) == checkpoint_parts(b):
        counts["identical_but_metadata_order"] += 1
        return True
    return False


def compare_run(a: Path, b: Path, counts: dict[str, int]) -> list[str]:
    diffs = []
    sa, sb = (json.loads((r / "status.json").read_text())["status"] for r in (a, b))
    if sa != sb or sa != "done":
        diffs.append(f"status {sa} / {sb}")
    ma, mb = metrics(a), metrics(b)
    if [r[:4] for r in ma] != [r[:4] for r in mb]:
        diffs.append(f"metric rows differ ({len(ma)} / {len(mb)})")
    else:
        bad = [r[:4] for r, s in zip(ma, mb) if not same_value(r[4], s[4])]
        if bad:
            diffs.append(f"{len(bad)} metric values differ, first {bad[0]}")
    ca = sorted(p.name for p in (a / "checkpoints").glob("*.safetensors"))
    cb = sorted(p.name for p in (b / "checkpoints").glob("*.safetensors"))
    if ca != cb:
        diffs.append(f"checkpoints {ca} / {cb}")
    diffs += [f"checkpoint {n} differs" for n in sorted(set(ca) & set(cb))
              if not same_checkpoint(a / "checkpoints" / n, b / "checkpoints" / n, counts)]
    return diffs


def checks(store: Path) -> dict[str, str]:
    """Each experiment directory's verdict and numbers as canonical JSON (wall time left out)."""
    out = {}
    for f in sorted(store.glob("experiments/*/check.json")):
        c = json.loads(f.read_text())
        out[f.parent.name] = json.dumps({k: c.get(k) for k in ("experiment", "statement", "pass", "numbers")},
                                        sort_keys=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    runs_a = {p.parent.name for p in args.a.glob("runs/*/spec.json")}
    runs_b = {p.parent.name for p in args.b.glob("runs/*/spec.json")}
    rows = [(rid, "only in A") for rid in sorted(runs_a - runs_b)] + [(rid, "only in B") for rid in sorted(runs_b - runs_a)]
    counts = {"byte_identical": 0, "identical_but_metadata_order": 0}
    n_rows = 0
    for rid in sorted(runs_a & runs_b):
        rows += [(rid, d) for d in compare_run(args.a / "runs" / rid, args.b / "runs" / rid, counts)]
        n_rows += len(metrics(args.a / "runs" / rid))
    ka, kb = checks(args.a), checks(args.b)
    rows += [(name, "check.json differs" if name in ka and name in kb else "experiment only in one store")
             for name in sorted(set(ka) | set(kb)) if ka.get(name) != kb.get(name)]
    print(f"{'run or experiment':<40} difference")
    for what, diff in rows or [("-", "none")]:
        print(f"{what:<40} {diff}")
    result = {"runs": len(runs_a & runs_b), "metric_rows": n_rows, "checkpoints_compared": sum(counts.values()),
              "checkpoints_byte_identical": counts["byte_identical"],
              "checkpoints_identical_but_metadata_order": counts["identical_but_metadata_order"],
              "experiments": len(set(ka) & set(kb)), "differences": len(rows), "pass": not rows and bool(runs_a)}
    print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
