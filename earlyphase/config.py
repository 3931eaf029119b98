"""Run configuration: frozen dataclasses, TOML loading, ``--set a.b=1`` overrides, canonical JSON and
the run id.

A run's id hashes only what determines its trajectory (data, model, optimizer, schedule, seeds,
starting state, mask); fields marked ``observe`` (where the data lives, checkpoint and evaluation
steps, recorders, device, threads) are left out, so asking a stored run for more observations does
not make it a different run (docs/store.md "Run ids"). Fields marked ``derived`` carry what the plan
already knows (an IMP mask's level and its parent's mask): not hashed either, since the id's other
fields determine them.

Step fields hold :class:`~earlyphase.steps.Step` values, parsed once here; a Step is its
normal-form string, so the JSON that run ids hash is what it always was.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .bounds import check_values
from .errors import UserError
from .fingerprint import files_fingerprint
from .registry import DATASET_REGISTRY, MODEL_REGISTRY, RECORDER_REGISTRY, preset_dirs
from .steps import Step, parse_step

OBSERVE = {"observe": True}  # field metadata: not part of the run id
DERIVED = {"observe": True, "derived": True}  # known from the plan; not part of the run id


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _step(value: str, key: str) -> Step:
    """Parse a step string, naming the config key in the error."""
    try:
        return parse_step(value)
    except UserError as e:
        raise UserError(f"{key}: {e}") from None


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, which part of it, and how it is transformed (README "Datasets")."""

    name: str = "mnist1d"
    root: str | None = field(default=None, metadata=OBSERVE)  # directory of cifar10 / mnist files
    n_train: int | None = None
    n_test: int | None = None
    classes: tuple[int, ...] | None = None  # keep a subset, relabelled 0..n-1
    normalize: bool = False  # per-channel mean/std of the training split
    augment: bool = False  # images: random crop (4-px padding) and horizontal flip, per batch
    label_noise: float = 0.0  # fraction of training labels replaced by uniform random ones
    blur: int = 1  # downsample by this factor and upsample back; 1 = off
    task: str = "classify"  # classify | rotation | color_dominance | energy_half
    targets: str = "index"  # index (int64 classes) | pm1 (float +-1, binary square-loss tasks)
    seed: int = 0  # draws generated data (gaussian, prototypes, mnist1d) and label noise
    dim: int = 100  # gaussian / prototypes input dimension
    spectrum: str = "isotropic"  # gaussian covariance: isotropic | power:ALPHA
    num_classes: int = 10  # prototypes
    atypical: float = 0.1  # prototypes: fraction of atypical samples
    atypical_alignment: float = 0.2  # prototypes: weight of the prototype in an atypical sample (typical: 1)
    sphere: bool = False  # rescale each input to norm sqrt(d) (after normalize), as the linear model needs (docs/experiments/linear_dynamics.md)
    # fingerprint of the files a file-backed dataset reads from root: filled by run_id (data_identity),
    # so it is part of the run id; None for generated data, whose ids stay as they were
    content: str | None = None

    def __post_init__(self) -> None:
        _check(self.n_train is None or self.n_train >= 1, f"data.n_train must be >= 1, got {self.n_train}")
        _check(self.n_test is None or self.n_test >= 1, f"data.n_test must be >= 1, got {self.n_test}")
        _check(0.0 <= self.label_noise <= 1.0, f"data.label_noise must be in [0, 1], got {self.label_noise}")
        _check(self.blur >= 1, f"data.blur must be an integer factor >= 1, got {self.blur}")
        _check(self.targets in ("index", "pm1"), f"data.targets must be 'index' or 'pm1', got {self.targets!r}")
        _check(self.dim >= 1, f"data.dim must be >= 1, got {self.dim}")
        _check(0.0 <= self.atypical <= 1.0, f"data.atypical must be in [0, 1], got {self.atypical}")
        _check(self.atypical_alignment >= 0.0,
               f"data.atypical_alignment must be >= 0 (the prototype's weight), got {self.atypical_alignment}")
        if self.classes is not None:
            _check(len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes),
                   f"data.classes must list at least two distinct classes, got {list(self.classes)}")
        check_values(self, "data")


@dataclass(frozen=True)
class ModelConfig:
    """Which network (README "Models")."""

    name: str = "cnn1d"
    widths: tuple[int, ...] = (300, 100)  # mlp hidden widths
    width: int = 2000  # two_layer: hidden units m
    activation: str = "relu"  # mlp / two_layer
    symmetric: bool = True  # two_layer: two halves with opposite second layers, so f0 = 0
    prune_output: bool = False  # whether the output layer's weight is prunable
    channels: tuple[int, ...] = ()  # vgg8_phases block channels; empty = the paper's 32-64-128-256-512
    # conv/linear weights: Kaiming normal from fan_in | fan_out, or torch_default (each module's own
    # reset_parameters(): uniform weights and biases)
    init_mode: str = "fan_in"
    bn_init: str = "ones"  # BatchNorm weights: ones | uniform (U[0, 1], as OpenLTH); biases 0 either way
    norm: str = "batch"  # vgg8_phases: "batch" (BatchNorm after each conv) | "none" (the BN-free control)
    init_std: float = 0.0  # > 0: conv/linear weights drawn N(0, init_std^2) instead of Kaiming (prototypes' W0)

    def __post_init__(self) -> None:
        _check(all(w >= 1 for w in self.widths), f"model.widths must be positive, got {list(self.widths)}")
        _check(self.width >= 1, f"model.width must be >= 1, got {self.width}")
        _check(all(c >= 1 for c in self.channels), f"model.channels must be positive, got {list(self.channels)}")
        _check(self.init_mode in ("fan_in", "fan_out", "torch_default"),
               f"model.init_mode must be 'fan_in' or 'fan_out' (Kaiming normal's fan) or 'torch_default' "
               f"(PyTorch's own layer init), got {self.init_mode!r}")
        _check(self.bn_init in ("ones", "uniform"),
               f"model.bn_init must be 'ones' or 'uniform' (BatchNorm weights U[0, 1]), got {self.bn_init!r}")
        _check(self.norm in ("batch", "none"), f"model.norm must be 'batch' or 'none', got {self.norm!r}")
        _check(self.init_std >= 0, f"model.init_std must be >= 0 (0 = Kaiming normal), got {self.init_std}")
        check_values(self, "model")


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule and loss (README "Configs")."""

    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    batch_size: int = 100
    full_batch: bool = False  # gradient descent on the whole training set
    steps: Step = Step(0, 3000)  # training length T
    schedule: str = "constant"  # constant | step
    milestones: tuple[Step, ...] = ()  # step decay points
    gamma: float = 0.1  # step decay factor
    warmup: Step = Step(0, 0)  # linear warmup length
    loss: str = "cross_entropy"  # cross_entropy | square
    # per-parameter learning-rate factors in named_parameters() order (() = all 1; 0 freezes a
    # parameter): two_layer's eta1, eta2 for w, v (docs/experiments/linear_dynamics.md)
    lr_scales: tuple[float, ...] = ()
    # execution mode that changes the trajectory (docs/scale.md): bf16 autocast of the forward pass
    # and the loss, and conv weights (hence activations) in channels-last memory layout
    precision: str = "fp32"  # fp32 | bf16
    channels_last: bool = False

    def __post_init__(self) -> None:
        _check(self.optimizer in ("sgd", "adam"), f"train.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(0.0 <= self.momentum < 1.0, f"train.momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.schedule in ("constant", "step"), f"train.schedule must be 'constant' or 'step', got {self.schedule!r}")
        _check(self.gamma > 0, f"train.gamma must be > 0, got {self.gamma}")
        _check(self.loss in ("cross_entropy", "square"), f"train.loss must be 'cross_entropy' or 'square', got {self.loss!r}")
        _check(all(s >= 0 for s in self.lr_scales), f"train.lr_scales must be >= 0, got {list(self.lr_scales)}")
        _check(self.precision in ("fp32", "bf16"), f"train.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        object.__setattr__(self, "steps", _step(self.steps, "train.steps"))
        object.__setattr__(self, "warmup", _step(self.warmup, "train.warmup"))
        object.__setattr__(self, "milestones", tuple(_step(m, "train.milestones") for m in self.milestones))
        check_values(self, "train")


@dataclass(frozen=True)
class ObserveConfig:
    """What is recorded and where it runs: none of it changes the trajectory, so none is hashed."""

    checkpoints: tuple[Step, ...] = ()  # explicit checkpoint steps
    schedule: str = "none"  # none | dense (every step to 100, then 20 per decade) | pow2 (0 and 2^i) | dense+pow2
    eval_every: Step | str = ""  # also evaluate every this many steps ("" = at checkpoints and the end only)
    eval_dense_until: Step | str = ""  # also evaluate at every step up to this one (early-phase statistics)
    eval_train: bool = True  # evaluate on the training split as well as the test split
    eval_batch: int = 2000
    recorders: tuple[str, ...] = ()
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 1  # torch threads, pinned per run
    progress: bool = True
    deterministic: bool = False  # deterministic kernels only (torch.use_deterministic_algorithms), said in provenance

    def __post_init__(self) -> None:
        _check(all(part in ("none", "dense", "pow2") for part in self.schedule.split("+")),
               f"observe.schedule must be 'none', 'dense', 'pow2' or 'dense+pow2', got {self.schedule!r}")
        _check(self.threads >= 1, f"observe.threads must be >= 1, got {self.threads}")
        _check(self.eval_batch >= 1, f"observe.eval_batch must be >= 1, got {self.eval_batch}")
        object.__setattr__(self, "checkpoints", tuple(_step(c, "observe.checkpoints") for c in self.checkpoints))
        if self.eval_dense_until:
            object.__setattr__(self, "eval_dense_until", _step(self.eval_dense_until, "observe.eval_dense_until"))
        if self.eval_every:
            object.__setattr__(self, "eval_every", _step(self.eval_every, "observe.eval_every"))
            _check(self.eval_every not in ("0it",), "observe.eval_every must be a positive step, e.g. '100it'")
        check_values(self, "observe")


@dataclass(frozen=True)
class MaskConfig:
    """A pruning mask held fixed during a run, named by how it is made so a run's id is known
    before its parents have trained: IMP level L+1's mask prunes level L's final weights.

    kind = "stored": a mask saved in the store (``id``).
    kind = "magnitude": remove ``fraction`` of the survivors of run ``from_run``'s own mask,
    ranked by the magnitude of its final weights, globally or per layer (``scope``); level L keeps
    round((1 - fraction)^L * N) of the N prunable weights.
    kind = "random": the per-layer densities of mask ``like``, positions drawn from ``seed``.
    ``dense``: parameters left unmasked here although the source mask covers them (a pre-training
    head whose class count differs from the real task's, e.g. rotation's four).

    ``level`` and ``parent`` (the mask ``from_run`` trained under) are filled in by the plan, which
    knows them; they are not part of the run id. Without them (a hand-written config) they are
    read from the store's record of ``from_run``.
    """

    kind: str = "magnitude"
    id: str | None = None
    from_run: str | None = None
    fraction: float = 0.2
    scope: str = "global"
    like: "MaskConfig | None" = None
    seed: int = 0
    dense: tuple[str, ...] = ()
    level: int | None = field(default=None, metadata=DERIVED)  # IMP level of a magnitude mask
    parent: "MaskConfig | None" = field(default=None, metadata=DERIVED)  # the mask from_run trained under

    def __post_init__(self) -> None:
        _check(self.kind in ("stored", "magnitude", "random"),
               f"mask.kind must be 'stored', 'magnitude' or 'random', got {self.kind!r}")
        _check(0.0 < self.fraction < 1.0, f"pruning fraction must be in (0, 1), got {self.fraction}")
        _check(self.scope in ("global", "layerwise"), f"mask.scope must be 'global' or 'layerwise', got {self.scope!r}")
        _check(self.kind != "stored" or self.id is not None, "mask.kind = 'stored' needs mask.id")
        _check(self.kind != "magnitude" or self.from_run is not None, "mask.kind = 'magnitude' needs mask.from_run")
        _check(self.kind != "random" or self.like is not None, "mask.kind = 'random' needs mask.like")
        _check(self.level is None or self.level >= 1, f"mask.level must be >= 1, got {self.level}")
        check_values(self, "mask")


@dataclass(frozen=True)
class PerturbConfig:
    """A perturbation of the starting weights' survivors (docs/experiments/perturbations.md), applied once before training.

    kind: sign_k_mag_0 | sign_k_mag_fresh | sign_0_mag_k | permute | noise.
    """

    kind: str = "noise"
    scope: str = "layer"  # permute: global | layer | filter
    same_sign: bool = False  # permute only among values of equal sign
    scale: float = 1.0  # noise: std in units of the layer's initialization std
    seed: int = 0

    def __post_init__(self) -> None:
        kinds = ("sign_k_mag_0", "sign_k_mag_fresh", "sign_0_mag_k", "permute", "noise")
        _check(self.kind in kinds, f"perturb.kind must be one of {', '.join(kinds)}, got {self.kind!r}")
        _check(self.scope in ("global", "layer", "filter"),
               f"perturb.scope must be global, layer or filter, got {self.scope!r}")
        _check(self.scale >= 0, f"perturb.scale must be >= 0, got {self.scale}")
        check_values(self, "perturb")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run, plus what is observed of it."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0  # draws the initialization
    data_seed: int = 0  # draws the data order and augmentation
    start_run: str | None = None  # start from the weights of this run ...
    start_step: Step = Step(0, 0)  # ... at this step; training resumes the schedule from here
    mask: MaskConfig | None = None  # a pruning mask held fixed during training
    perturb: PerturbConfig | None = None  # perturb the starting weights' survivors once, before training
    restart_schedule: bool = False  # start at step 0 from start_run's weights (pre-training), not at start_step
    start_reinit_head: bool = False  # keep this run's freshly drawn output layer (the class count changed)
    observe: ObserveConfig = field(default_factory=ObserveConfig, metadata=OBSERVE)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_step", _step(self.start_step, "start_step"))
        check_values(self, "")

    @property
    def run_id(self) -> str:
        return run_id(self)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass with strict keys and types


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{where}' must be a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise UserError(f"config key '{where}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"config key '{where}' must be a table, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"config key '{where}' must be a finite number, got {value}")
            return float(value)
    elif tp is str or tp is Step:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    hint = " (a step string such as '100it' or '2ep')" if tp in (str, Step) and isinstance(value, int) else ""
    raise UserError(f"config key '{where}' must be of type {_type_name(str if tp is Step else tp)}{hint}, "
                    f"got {value!r}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build a config dataclass from a dict; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in known:
            raise UserError(f"unknown config key '{where}'; known keys here: {', '.join(sorted(known))}")
        kwargs[key] = _coerce(value, hints[key], where)
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def to_dict(cfg: Any, *, hashed_only: bool = False, trajectory: bool = False) -> dict:
    """Plain-JSON form of a config. ``trajectory`` drops the observe-only fields; ``hashed_only``
    also drops every field at its default, so adding a field with a default later leaves every
    stored run's id as it was."""
    out = {}
    for f in fields(cfg):
        if (hashed_only or trajectory) and f.metadata.get("observe"):
            continue
        v = getattr(cfg, f.name)
        if hashed_only and v == _default(f):
            continue
        if dataclasses.is_dataclass(v):
            v = to_dict(v, hashed_only=hashed_only, trajectory=trajectory)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def canonical_json(obj: Any) -> str:
    if dataclasses.is_dataclass(obj):
        obj = to_dict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def run_id(cfg: RunConfig) -> str:
    """Hash of the trajectory-determining part of a run config (16 hex digits), the content of a
    file-backed dataset's files included (data_identity)."""
    cfg = data_identity(cfg)
    return hashlib.sha256(canonical_json(to_dict(cfg, hashed_only=True)).encode()).hexdigest()[:16]


def data_identity(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``data.content`` filled: the fingerprint of the files its dataset reads (a
    dataset registered with ``files``); unchanged for generated data, a config that already holds
    it (a stored spec), or files not found (such a run cannot load its data anyway)."""
    if cfg.data.content is not None or cfg.data.root is None:
        return cfg
    files = DATASET_REGISTRY.get(cfg.data.name, key="data.name").meta.get("files")
    if files is None:
        return cfg
    try:
        paths = files(cfg.data)
    except UserError:
        return cfg
    return cfg.replace(data=dataclasses.replace(cfg.data, content=files_fingerprint(paths)))


def with_current_data(cfg: RunConfig) -> RunConfig:
    """``cfg`` identified by the files as they are now, for training: a config that names other
    content (files changed since it was planned or stored) is a one-line UserError."""
    now = data_identity(cfg.replace(data=dataclasses.replace(cfg.data, content=None)))
    if cfg.data.content is not None and now.data.content != cfg.data.content:
        raise UserError(f"the files under data.root = {cfg.data.root} changed since this run was planned "
                        f"(content {now.data.content}, planned {cfg.data.content}); run the command again")
    return now


# ----------------------------------------------------------------------------------------------
# TOML files, presets and overrides

PRESET_DIR = Path(__file__).parent / "configs"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value``: the value is read as a TOML literal, else kept as a string."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not of the form key=value, e.g. --set train.lr=0.05")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r} has an empty key; write e.g. --set train.lr=0.05")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    data = json.loads(json.dumps(data))  # deep copy
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {text!r}: '{part}' is not a table")
        node[path[-1]] = value
    return data


def read_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist; pass an existing TOML file to --config")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {p} is not valid TOML: {e}") from None


def preset_roots() -> list[tuple[Path, str]]:
    """Directories of presets, ``<root>/<preset>/<kind>.toml``: the package's own, then the plug-ins'."""
    return [(PRESET_DIR, "earlyphase"), *preset_dirs()]


def preset_path(kind: str, preset: str) -> Path:
    """The preset file for ``kind`` (``train`` or an experiment name); the package's own come first."""
    for root, _ in preset_roots():
        path = root / preset / f"{kind}.toml"
        if path.is_file():
            return path
    have = sorted({p.name for root, _ in preset_roots() for p in root.iterdir() if (p / f"{kind}.toml").is_file()})
    raise UserError(f"unknown preset {preset!r} for {kind}; available: {', '.join(have) or 'none'}")


def check_names(cfg: Any, prefix: str = "") -> None:
    """Every model, dataset and recorder a config names is registered (one line with the closest
    names otherwise), so a typo fails when the config is loaded, before anything runs."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if isinstance(v, DataConfig):
            DATASET_REGISTRY.get(v.name, key=f"{key}.name")
        elif isinstance(v, ModelConfig):
            MODEL_REGISTRY.get(v.name, key=f"{key}.name")
        elif isinstance(v, ObserveConfig):
            for name in v.recorders:
                RECORDER_REGISTRY.get(name, key=f"{key}.recorders")
        if dataclasses.is_dataclass(v):
            check_names(v, f"{key}.")


def load_run_config(config: str | Path | dict | None = None, *, preset: str | None = None,
                    overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve a run config: preset, then a TOML file (or dict) on top, then ``--set`` overrides."""
    data: dict = {}
    if preset is not None:
        data = read_toml(preset_path("train", preset))
    if isinstance(config, dict):
        data = _merge(data, config)
    elif config is not None:
        from_file = read_toml(config)
        try:
            from_dict(RunConfig, from_file)
        except UserError as e:
            raise UserError(f"{config}: {e}") from None
        data = _merge(data, from_file)
    data = apply_overrides(data, overrides)
    cfg = from_dict(RunConfig, data)
    check_names(cfg)
    return cfg


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
