"""Chaos: a small sweep killed at seeded random moments, restarted each time, then compared with an
uninterrupted run of the same sweep.

The sweep is `earlyphase run rewinding` with tiny runs (IMP on mnist1d, a few hundred steps each).
It is started, killed after a random delay with SIGKILL (`kill -9 PID`) or SIGINT (Ctrl-C: to the
process group, as a terminal sends it), and started again, KILLS times; then it runs to the end.
Passes when:

* the experiment's tables (every CSV) and check are identical to the uninterrupted sweep's;
* every run's metrics and checkpoints are bit-identical (benchmarks/compare_stores.py);
* no run that was done before a kill was trained again (its status.json unchanged since);
* nothing stray is left: no temporary files, no resume points or partial metrics of done runs, no
  run that is not done, no process of the sweep alive.

    python benchmarks/chaos.py [--kills 20] [--seed 0] [--workers 1] [--out DIR]

Bounded to about 5 minutes on 2 cores. Prints one line per kill and, last, one JSON line with the
counts and "pass"."""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ['levels=2', 'rewind=["0it", "40it"]', 'run.train.steps="200it"', 'run.train.milestones=["100it"]',
         'run.data.n_train=400', 'run.data.n_test=200', 'run.train.batch_size=50', 'run.observe.eval_every="50it"']


def _default_sigint() -> None:
    """Ctrl-C's default disposition in the child: a shell without job control starts background jobs
    with SIGINT ignored, and Python would then install no handler and ignore the interrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def command(store: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "earlyphase.cli", "run", "rewinding", "--store", str(store), "--quiet",
            "--seeds", "2", "--workers", str(workers), *sum((["--set", o] for o in SWEEP), [])]


def environment(home: Path) -> dict[str, str]:
    return {**os.environ, "EARLYPHASE_HOME": str(home), "PYTHONPATH": str(ROOT)}


def done_statuses(store: Path) -> dict[str, bytes]:
    """status.json bytes of every done run (a run trained again would rewrite it)."""
    out = {}
    for p in (store / "runs").glob("*/status.json"):
        try:
            raw = p.read_bytes()
        except OSError:
            continue
        if b'"done"' in raw:
            out[p.parent.name] = raw
    return out


def written(store: Path, since: float) -> int:
    """Files of the store written since ``since``: the sweep's progress, whatever the machine's speed."""
    n = 0
    for p in store.rglob("*"):
        try:
            n += p.is_file() and p.stat().st_mtime >= since
        except OSError:  # renamed or removed meanwhile
            pass
    return n


def interrupted(cmd: list[str], env: dict, store: Path, moment: tuple[str, float], sig: signal.Signals) -> int | None:
    """Run ``cmd`` and send ``sig`` at ``moment``: ("start", s) s seconds after it starts (imports,
    planning), or ("write", n) once it has written n files (then a random few ms later, so the kill
    lands anywhere between two writes); its exit code if it ended first."""
    since = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_default_sigint)
    if moment[0] == "write":
        while proc.poll() is None and written(store, since) < moment[1]:
            time.sleep(0.01)
    try:
        proc.wait(timeout=moment[1] if moment[0] == "start" else moment[1] % 1 * 0.2)
        return proc.returncode  # finished before the kill
    except subprocess.TimeoutExpired:
        pass
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return None


def stray(store: Path) -> list[str]:
    """What an interrupted sweep must not leave once it has finished."""
    out = [str(p.relative_to(store)) for p in store.rglob("*.tmp")]
    for run in (store / "runs").iterdir():
        status = json.loads((run / "status.json").read_text()).get("status") if (run / "status.json").is_file() else "pending"
        if status != "done":
            out.append(f"runs/{run.name} is {status}")
        out += [f"runs/{run.name}/{f}" for f in ("checkpoints/resume.safetensors", "metrics/partial.parquet")
                if (run / f).exists()]
    return out


def experiment_files(store: Path) -> dict[str, bytes]:
    """The experiment's CSV tables and its check's verdict and numbers."""
    out = {}
    for p in sorted(store.glob("experiments/*/*.csv")):
        out[f"{p.parent.name}/{p.name}"] = p.read_bytes()
    for p in store.glob("experiments/*/check.json"):
        c = json.loads(p.read_text())
        out[f"{p.parent.name}/check"] = json.dumps({k: c.get(k) for k in ("pass", "statement", "numbers")},
                                                   sort_keys=True).encode()
    return out


def survivors(work: Path, pids_before: set[int]) -> list[int]:
    """Processes of this benchmark's sweeps still alive: the sweeps and their pool workers, which
    inherit its $EARLYPHASE_HOME (only the ones not there before it started)."""
    mark = f"EARLYPHASE_HOME={work / 'home'}".encode() + b"\0"
    out = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        try:
            found = mark in environ.read_bytes() and pid not in pids_before and pid != os.getpid()
        except OSError:
            continue
        if found:
            out.append(pid)
    return out


def warm_up(work: Path) -> None:
    """Generate the sweep's dataset once (it is cached on disk), so the reference's set-up time is
    what every start pays, not the first start's generation."""
    subprocess.run([sys.executable, "-m", "earlyphase.cli", "train", "--quiet", "--store", str(work / "chaos-warm"),
                    "--set", "data.n_train=400", "--set", "data.n_test=200", "--set", "train.steps=1it"],
                   env=environment(work / "home"), capture_output=True, check=True)


def reference(work: Path, workers: int) -> tuple[int, float, int]:
    """The uninterrupted sweep: its exit code, its wall time, and how many files it wrote."""
    warm_up(work)
    t0 = time.time()
    store = work / "chaos-ref"
    code = subprocess.run(command(store, workers), env=environment(work / "home"), capture_output=True).returncode
    return code, time.time() - t0, written(store, t0 - 1.0)


def chaos(work: Path, kills: int, seed: int, workers: int, files: int) -> dict:
    """Kill moments, seeded: one in five during start-up (0.2-3 s after the start: imports, planning),
    the others after a uniform number of files in [1, 2 F / kills] written by that start, F the
    files the reference wrote, so the kills together span the whole sweep whatever the machine's
    speed (each start resumes where the last one stopped)."""
    rng = random.Random(seed)
    store, env = work / "chaos-kill", environment(work / "home")
    trained_twice: set[str] = set()
    seen: dict[str, bytes] = {}
    counts = {"SIGKILL": 0, "SIGINT": 0, "finished_before_kill": 0}
    for i in range(kills):
        sig = rng.choice([signal.SIGKILL, signal.SIGINT])
        moment = ("start", rng.uniform(0.2, 3.0)) if rng.random() < 0.2 else \
            ("write", rng.randint(1, max(1, 2 * files // kills)) + rng.random())
        code = interrupted(command(store, workers), env, store, moment, sig)
        counts["finished_before_kill" if code is not None else sig.name] += 1
        now = done_statuses(store)
        trained_twice |= {rid for rid, raw in seen.items() if now.get(rid) != raw}
        seen.update(now)
        when = f"{moment[1]:4.2f} s after the start" if moment[0] == "start" else f"after {int(moment[1])} files"
        print(f"kill {i + 1:2d}: {sig.name:7s} {when:24s}; {len(now)} runs done"
              f"{' (finished first)' if code is not None else ''}", file=sys.stderr)
    final = subprocess.run(command(store, workers), env=env, capture_output=True, text=True, timeout=900)
    now = done_statuses(store)
    trained_twice |= {rid for rid, raw in seen.items() if now.get(rid) != raw}
    return {**counts, "final_exit": final.returncode, "trained_twice": sorted(trained_twice)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="earlyphase-chaos-"))
    pids_before = {int(p.name) for p in Path("/proc").glob("[0-9]*")}
    t0, c0 = time.time(), time.process_time()
    ref_exit, ref_seconds, files = reference(work, args.workers)
    result = chaos(work, args.kills, args.seed, args.workers, files)
    time.sleep(1)
    tables_ref, tables_kill = experiment_files(work / "chaos-ref"), experiment_files(work / "chaos-kill")
    compare = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_stores.py"), str(work / "chaos-ref"),
                              str(work / "chaos-kill")], capture_output=True, text=True, env=environment(work / "home"))
    compared = json.loads(compare.stdout.strip().splitlines()[-1]) if compare.stdout.strip() else {"pass": False}
    left = stray(work / "chaos-kill")
    alive = survivors(work, pids_before)
    children = os.times()
    out = {"kills": args.kills, "seed": args.seed, "workers": args.workers, **result, "ref_exit": ref_exit,
           "runs": len(list((work / "chaos-ref" / "runs").glob("*/spec.json"))),
           "identical_tables": bool(tables_ref) and tables_ref == tables_kill,
           "stores_identical": bool(compared.get("pass")), "stray": left[:10], "processes_left": alive,
           "ref_seconds": round(ref_seconds, 1), "ref_files": files, "seconds": round(time.time() - t0, 1),
           "cpu_seconds": round(time.process_time() - c0 + children.children_user + children.children_system, 1)}
    out["pass"] = (out["ref_exit"] == 0 and out["final_exit"] == 0 and out["identical_tables"]
                   and out["stores_identical"] and not out["trained_twice"] and not left and not alive)
    print(json.dumps(out))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
