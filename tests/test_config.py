"""Configs: strict keys and types, overrides, step notation, and run ids that a refactor cannot move."""
import pytest

from earlyphase.config import (DataConfig, RunConfig, TrainConfig, apply_overrides, from_dict, load_run_config,
                               parse_override, run_id, to_dict)
from earlyphase.errors import UserError
from earlyphase.steps import parse_step, steps_per_epoch, to_iterations


def test_pinned_run_ids():
    # If one of these changes, every store built before the change is orphaned: bump deliberately.
    assert run_id(RunConfig()) == "44136fa355b3678a"
    assert run_id(load_run_config(preset="laptop")) == "7f81c024637b00c2"  # fan_out init since stop 8
    assert run_id(load_run_config(preset="paper")) == "9c84061f3d6a03fd"  # OpenLTH BN init (bn_init) since issue 10
    assert run_id(load_run_config(preset="paper", overrides=['model.bn_init="ones"'])) == "f05334710bc39884"


def test_observations_do_not_change_the_run_id():
    base = load_run_config(preset="laptop")
    more = load_run_config(preset="laptop", overrides=[
        'observe.schedule="dense"', "observe.threads=1", 'observe.checkpoints=["7it"]', 'data.root="/elsewhere"',
        'observe.device="cpu"', 'observe.recorders=["grad_norm"]', 'observe.eval_every="10it"'])
    assert run_id(base) == run_id(more)


@pytest.mark.parametrize("override", ["seed=1", "data_seed=1", "train.lr=0.05", "data.n_train=100",
                                      'model.name="mlp"', 'mask={kind="stored", id="abc"}', 'start_run="x"', "data.augment=true"])
def test_trajectory_fields_change_the_run_id(override):
    assert run_id(load_run_config(preset="laptop", overrides=[override])) != run_id(load_run_config(preset="laptop"))


@pytest.mark.parametrize("text,expected", [("500it", 500), ("2ep", 160), ("2ep100it", 260), ("0it", 0), (7, 7)])
def test_step_notation(text, expected):
    assert parse_step(text).to_iterations(80) == expected


@pytest.mark.parametrize("bad", ["12xy", "", "ep", "it", "1.5ep", "-3it", "3", "3 it", "ep2"])
def test_malformed_steps_are_errors(bad):
    with pytest.raises(UserError, match="step"):
        parse_step(bad)


def test_steps_per_epoch_counts_the_short_last_batch():
    assert steps_per_epoch(1000, 128) == 8
    assert to_iterations("1ep", 1000, 128) == 8
    assert steps_per_epoch(10, 100) == 1


def test_unknown_keys_and_wrong_types_are_errors():
    with pytest.raises(UserError, match="unknown config key 'train.lrr'"):
        from_dict(RunConfig, {"train": {"lrr": 1}})
    with pytest.raises(UserError, match="unknown config key 'nope'"):
        from_dict(RunConfig, {"nope": 1})
    with pytest.raises(UserError, match="train.lr"):
        from_dict(RunConfig, {"train": {"lr": "abc"}})
    with pytest.raises(UserError, match="train.batch_size"):
        from_dict(RunConfig, {"train": {"batch_size": 1.5}})
    with pytest.raises(UserError, match="seed"):
        from_dict(RunConfig, {"seed": True})


@pytest.mark.parametrize("section,key,value", [("train", "lr", 0.0), ("train", "lr", -1.0), ("train", "batch_size", 0),
                                               ("data", "label_noise", 1.5), ("data", "blur", 0),
                                               ("train", "momentum", 1.0), ("train", "steps", "12xy")])
def test_out_of_range_values_are_errors(section, key, value):
    with pytest.raises(UserError, match=key):
        from_dict(RunConfig, {section: {key: value}})


def test_overrides_parse_toml_literals():
    assert parse_override("train.lr=0.05") == (["train", "lr"], 0.05)
    assert parse_override('model.name=mlp') == (["model", "name"], "mlp")
    assert parse_override("data.classes=[3, 7]") == (["data", "classes"], [3, 7])
    cfg = load_run_config(preset="laptop", overrides=["train.lr=0.05", "data.classes=[3,7]", "model.widths=[10]"])
    assert cfg.train.lr == 0.05 and cfg.data.classes == (3, 7) and cfg.model.widths == (10,)
    with pytest.raises(UserError, match="key=value"):
        parse_override("train.lr")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_round_trip_through_dict():
    cfg = load_run_config(preset="paper")
    again = from_dict(RunConfig, to_dict(cfg))
    assert again == cfg and run_id(again) == run_id(cfg)
    assert isinstance(cfg.data, DataConfig) and isinstance(cfg.train, TrainConfig)


def test_step_strings_are_normalized():
    assert TrainConfig(steps="0ep30it").steps == "30it"
    assert run_id(RunConfig(train=TrainConfig(steps="0ep30it"))) == run_id(RunConfig(train=TrainConfig(steps="30it")))


def test_unknown_preset_is_an_error():
    with pytest.raises(UserError, match="unknown preset"):
        load_run_config(preset="cluster")


def test_fields_at_their_default_are_not_hashed():
    # a field added later with a default must not move the ids of stored runs
    assert to_dict(RunConfig(), hashed_only=True) == {}
    assert to_dict(load_run_config(overrides=["train.lr=0.05"]), hashed_only=True) == {"train": {"lr": 0.05}}


@pytest.mark.parametrize("override,needle", [
    ('mask={kind="stored"}', "needs mask.id"),
    ('mask={kind="magnitude"}', "needs mask.from_run"),
    ('mask={kind="random"}', "needs mask.like"),
    ('mask={kind="magnitude", from_run="x", fraction=1.0}', "pruning fraction"),
    ('mask={kind="magnitude", from_run="x", scope="row"}', "mask.scope"),
    ('perturb={kind="shuffle"}', "perturb.kind"),
    ('perturb={kind="permute", scope="row"}', "perturb.scope"),
    ('perturb={kind="noise", scale=-1.0}', "perturb.scale"),
])
def test_mask_and_perturbation_configs_are_checked(override, needle, tmp_path, capsys):
    from earlyphase.cli import main

    with pytest.raises(UserError, match=needle):
        load_run_config(preset="laptop", overrides=[override])
    assert main(["train", "--store", str(tmp_path), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
