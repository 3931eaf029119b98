"""Critical periods (Achille, Rovere & Soatto 2019): a deficit (blurred inputs, or noisy labels) during a
window of steps at the constant initial learning rate, then a fixed budget of clean training with the
standard schedule; final test accuracy against the window. Two sweeps: the dose (windows from step 0
of growing length) and the sliding window (a fixed length at growing starts, clean training at the
initial learning rate before it). See docs/experiments/critical_period.md.

Built from chains of runs, no engine change: a deficit run (the dataset option, constant lr) and a
clean prefix run (constant lr) of the longest length each, checkpointed at every window boundary
(a constant-lr run passes through the same states whatever its length); the sliding window's deficit
starts from the prefix's checkpoint; the clean budget restarts the standard schedule at step 0 from
the window's end (``restart_schedule``). Each link starts with fresh optimizer state (momentum)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from ..config import RunConfig, _check
from ..errors import UserError
from ..steps import parse_step
from ..store import Store
from .base import Check, ExperimentDef, Plan
from .common import final_accuracy, iterations, pooled, verdict


@dataclass(frozen=True)
class CriticalPeriodConfig:
    run: RunConfig = field(default_factory=RunConfig)  # the standard training: the clean budget after a window
    seeds: int = 3
    deficit: str = "blur"  # blur | label_noise
    blur: int = 4  # downsample-and-upsample factor of the blur deficit
    label_noise: float = 0.5  # fraction of training labels redrawn, for the label_noise deficit
    lengths: tuple[str, ...] = ("0it", "250it", "500it", "1000it", "2000it")  # dose: windows from step 0
    window: str = "500it"  # sliding window's length ...
    starts: tuple[str, ...] = ("0it", "250it", "500it", "1000it", "2000it")  # ... and its starts

    def __post_init__(self) -> None:
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(self.deficit in ("blur", "label_noise"),
               f"deficit must be 'blur' or 'label_noise', got {self.deficit!r}")
        _check(self.blur >= 2 or self.deficit != "blur",
               f"blur must be a factor >= 2 for a blur deficit, got {self.blur}")
        _check(0 < self.label_noise <= 1 or self.deficit != "label_noise",
               f"label_noise must be in (0, 1] for a label-noise deficit, got {self.label_noise}")
        _check(len(self.starts) >= 2, "starts needs at least two window starts (the check compares the first and last)")
        _check(parse_step(self.window) != parse_step("0it"), "window must be a positive length, e.g. '500it'")
        _check(parse_step(self.starts[0]) == parse_step("0it"), f"starts must begin at 0, got {self.starts[0]!r}")

    def deficit_data(self):
        data = self.run.data
        return (replace(data, blur=self.blur) if self.deficit == "blur" else
                replace(data, label_noise=self.label_noise))


@dataclass
class WindowPlan(Plan):
    finals: list[dict] = field(default_factory=list)  # sweep, start, length (steps), seed, run


def constant(run: RunConfig, end: int) -> RunConfig:
    """``run`` at its constant initial learning rate up to ``end``."""
    return run.replace(train=replace(run.train, schedule="constant", milestones=(), steps=f"{end}it"))


def _at(run: RunConfig, steps: list[int]) -> RunConfig:
    return run.replace(observe=replace(run.observe, checkpoints=tuple(sorted(
        set(run.observe.checkpoints) | {f"{s}it" for s in steps}))))


class CriticalPeriod(ExperimentDef):
    name = "critical_period"
    config_cls = CriticalPeriodConfig
    main_figure = "critical_period"
    description = ("Critical periods (Achille, Rovere & Soatto 2019): a deficit during a window of steps at the "
                   "constant initial learning rate, then the standard training (its full schedule, restarted at "
                   "step 0) on clean data; final test accuracy. Dose: windows [0, L); sliding: windows [s, s + W) "
                   "after clean training at the initial learning rate up to s. Each link of a chain starts with "
                   "fresh optimizer state (momentum).")

    def plan(self, cfg: CriticalPeriodConfig, store: Store) -> WindowPlan:
        lengths, total = iterations(cfg.run, cfg.lengths, "lengths")
        starts, _ = iterations(cfg.run, cfg.starts, "starts")
        width = iterations(cfg.run, (cfg.window,), "window")[0][cfg.window]
        late = [s for s in starts.values() if s + width > total]
        if late:
            raise UserError(f"the sliding window [{late[0]}, {late[0] + width}) ends beyond the training length "
                            f"{total}; use earlier starts or a shorter window")
        plan = WindowPlan()
        for s in range(cfg.seeds):
            _seed_chains(cfg, plan, s, sorted(set(lengths.values())), sorted(set(starts.values())), width)
        plan.notes.append(f"Deficit: {_deficit_text(cfg)}; clean training after each window: {cfg.run.train.steps} "
                          f"with the standard schedule.")
        return plan

    def analyze(self, cfg: CriticalPeriodConfig, plan: WindowPlan, store: Store) -> dict[str, pd.DataFrame]:
        rows = [{**f, "test_accuracy": final_accuracy(store, f["run_id"])} for f in plan.finals]
        results = pd.DataFrame(rows).sort_values(["sweep", "start", "length", "seed"]).reset_index(drop=True)
        summary = (results.groupby(["sweep", "start", "length"]).agg(
            mean=("test_accuracy", "mean"), std=("test_accuracy", "std"), seeds=("seed", "nunique"))
            .reset_index())
        return {"results": results, "summary": summary, "critical_period": end_of_period(summary)}

    def figures(self, cfg: CriticalPeriodConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        return draw(cfg, tables, directory)

    def check(self, cfg: CriticalPeriodConfig, tables: dict[str, pd.DataFrame]) -> Check:
        return judge(cfg, tables)


def _seed_chains(cfg: CriticalPeriodConfig, plan: WindowPlan, seed: int, lengths: list[int], starts: list[int],
                 width: int) -> None:
    base = cfg.run.replace(seed=seed, data_seed=seed)
    sick = base.replace(data=cfg.deficit_data())
    none = plan.add(base, kind="standard", seed=seed)
    plan.finals.append({"sweep": "none", "start": 0, "length": 0, "seed": seed, "run_id": none})
    ends = sorted({*lengths, width} - {0})
    deficit = plan.add(_at(constant(sick, max(ends)), ends), kind="deficit", seed=seed) if ends else None
    after = {end: _clean_after(plan, base, deficit, end, seed) for end in ends}
    for length in lengths:
        if length:
            plan.finals.append({"sweep": "dose", "start": 0, "length": length, "seed": seed, "run_id": after[length]})
    later = [s for s in starts if s > 0]
    prefix = plan.add(_at(constant(base, max(later)), later), kind="prefix", seed=seed) if later else None
    for start in starts:
        if start == 0:
            rid = after[width]
        else:
            window = plan.add(constant(sick, start + width).replace(start_run=prefix, start_step=f"{start}it"),
                              kind="deficit", seed=seed)
            rid = _clean_after(plan, base, window, start + width, seed)
        plan.finals.append({"sweep": "sliding", "start": start, "length": width, "seed": seed, "run_id": rid})


def _clean_after(plan: WindowPlan, base: RunConfig, parent: str, step: int, seed: int) -> str:
    """The standard training from ``parent``'s weights at ``step``, its schedule restarted at 0."""
    return plan.add(base.replace(start_run=parent, start_step=f"{step}it", restart_schedule=True), kind="clean",
                    seed=seed)


def _deficit_text(cfg: CriticalPeriodConfig) -> str:
    return (f"inputs blurred by a factor {cfg.blur} (downsampled and upsampled back)" if cfg.deficit == "blur" else
            f"{cfg.label_noise:.0%} of the training labels redrawn at random")


# ----------------------------------------------------------------------------------------------
# verdict and figure


def _none(summary: pd.DataFrame) -> pd.Series:
    return summary[summary.sweep == "none"].iloc[0]


def end_of_period(summary: pd.DataFrame) -> pd.DataFrame:
    """Damage (no-deficit mean minus mean) per window, against twice the pooled std; the end of the
    critical period = the earliest sliding start whose damage is within that."""
    none = _none(summary)
    rows = []
    for r in summary[summary.sweep != "none"].itertuples():
        spread = 2 * pooled(none["std"], r.std)
        rows.append({"sweep": r.sweep, "start": r.start, "length": r.length, "damage": none["mean"] - r.mean,
                     "twice_pooled_std": spread, "within_noise": bool(none["mean"] - r.mean <= spread)})
    table = pd.DataFrame(rows)
    sliding = table[(table.sweep == "sliding") & table.within_noise]
    table["end_of_critical_period"] = int(sliding.start.min()) if len(sliding) else None
    return table.astype({"end_of_critical_period": "Int64"})


def judge(cfg: CriticalPeriodConfig, tables: dict[str, pd.DataFrame]) -> Check:
    summary = tables["summary"]
    none = _none(summary)
    slide = summary[summary.sweep == "sliding"].sort_values("start")
    first, last = slide.iloc[0], slide.iloc[-1]
    lasting = float(none["mean"] - first["mean"])
    spread_a = 2 * pooled(none["std"], first["std"])
    recovery = float(last["mean"] - first["mean"])
    spread_b = 2 * pooled(first["std"], last["std"])
    if int(none.seeds) < 2 or int(slide.seeds.min()) < 2:  # no std to judge a difference against
        a_ok = b_ok = None
    else:
        a_ok, b_ok = bool(lasting > spread_a), bool(recovery > spread_b)
    end = tables["critical_period"].end_of_critical_period.iloc[0]
    statement = (f"A {int(first.length)}-step window of {_deficit_text(cfg)} at step {int(first.start)} leaves a "
                 f"lasting loss (final accuracy below the no-deficit runs by more than twice the pooled std over "
                 f"{int(none.seeds)} seeds), and the same window at step {int(last.start)} hurts less than it by "
                 f"more than twice the pooled std.")
    numbers = {"no_deficit_mean": float(none["mean"]), "no_deficit_std": float(none["std"]),
               "first_start": int(first.start), "first_mean": float(first["mean"]), "first_std": float(first["std"]),
               "last_start": int(last.start), "last_mean": float(last["mean"]), "last_std": float(last["std"]),
               "lasting_loss": lasting, "twice_pooled_std_a": spread_a, "recovery": recovery,
               "twice_pooled_std_b": spread_b, "a_pass": a_ok, "b_pass": b_ok,
               "end_of_critical_period": None if pd.isna(end) else int(end),
               "dose": {int(r.length): float(r.mean) for r in summary[summary.sweep == "dose"].itertuples()}}
    measured = (f"No deficit {100 * none['mean']:.2f} ± {100 * none['std']:.2f} %; window at {int(first.start)}: "
                f"{100 * first['mean']:.2f} ± {100 * first['std']:.2f} % (loss {100 * lasting:.2f} pts against "
                f"{100 * spread_a:.2f}); window at {int(last.start)}: {100 * last['mean']:.2f} ± "
                f"{100 * last['std']:.2f} % "
                f"(better than at {int(first.start)} by {100 * recovery:.2f} pts against {100 * spread_b:.2f}). Dose "
                f"(accuracy by window length): "
                + ", ".join(f"{k}: {100 * v:.2f} %" for k, v in numbers["dose"].items())
                + f". End of the critical period: {numbers['end_of_critical_period']}.")
    passed = verdict(a_ok, b_ok)
    meaning = {True: "PASS: an early deficit does lasting damage that the same deficit later does not: a critical "
                     "period.",
               None: "No verdict: with one seed there is no spread to judge the differences against.",
               False: "FAIL: " + ("an early deficit leaves no lasting loss beyond seed noise" if a_ok is False
                                  else "a late deficit hurts about as much as an early one (no closing window)")
                      + "."}[passed]
    return Check(statement, passed, numbers, measured=measured, meaning=meaning,
                 tables={"sliding_window": tables["results"][tables["results"].sweep.isin(["none", "sliding"])],
                         "damage": tables["critical_period"]})


def draw(cfg: CriticalPeriodConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
    from ..report import band, new_figure, save_figure

    summary = tables["summary"]
    none = _none(summary)
    fig, (ax, ax2) = new_figure(ncols=2, width=4.8, height=3.8)
    dose = pd.concat([summary[summary.sweep == "none"], summary[summary.sweep == "dose"]]).sort_values("length")
    band(ax, dose.length, 100 * dose["mean"], 100 * dose["std"], label="deficit in [0, L)")
    ax.set_xlabel("window length L (steps)")
    ax.set_title(f"Dose: {_deficit_text(cfg)}")
    slide = summary[summary.sweep == "sliding"].sort_values("start")
    width = int(slide.length.iloc[0])
    band(ax2, slide.start, 100 * slide["mean"], 100 * slide["std"], label=f"deficit in [s, s + {width})")
    end = tables["critical_period"].end_of_critical_period.iloc[0]
    if not pd.isna(end):
        ax2.axvline(int(end), color="tab:red", ls=":", label=f"end of the critical period ({int(end)})")
    ax2.set_xlabel("window start s (steps)")
    ax2.set_title("Sliding window")
    for a in (ax, ax2):
        a.axhline(100 * none["mean"], color="black", lw=1, label="no deficit")
        a.axhspan(100 * (none["mean"] - none["std"]), 100 * (none["mean"] + none["std"]), color="black", alpha=0.08)
        a.set_ylabel(f"final test accuracy (%), band ±1 std over {int(none.seeds)} seeds")
        a.legend()
    return save_figure(fig, directory, "critical_period")
