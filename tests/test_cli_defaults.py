"""The command lines keep their recipe defaults when a neighbouring field is given.

draccus rebuilds a nested config from its annotated class as soon as one of its fields is on the
command line, so a default set by a default_factory lambda vanished silently: the world model's
documented run 3 trained with `--objective.logit_mean 0.0` got no unrolls while the demo, which
builds its config in Python, got two. ``data.cli.parse`` hands draccus those defaults as the
config file under the command line (``factory_defaults``).
"""

import pytest

from data import cli
from data.collect import CollectConfig
from data.episodes import held_out_count
from train.autoencoder import TrainAutoencoderConfig
from train.demo import PRESETS
from train.policy import TrainPolicyConfig
from train.rl.loop import RLConfig
from train.world_model import TrainWorldModelConfig


def parse(cls, *args):
    return cli.parse(cls, args)  # what the console scripts parse with


def test_world_model_recipe_survives_other_fields_of_its_groups():
    plain = parse(TrainWorldModelConfig, "--dataset.root", "x")
    given = parse(TrainWorldModelConfig, "--dataset.root", "x", "--dataset.val_episodes", "3",
                  "--model.context", "3", "--objective.logit_mean", "0.5")
    for cfg in (plain, given):
        assert cfg.dataset.cache_frames is True
        assert cfg.model.scale_noisy_input is True
        assert cfg.objective.regression_share == 0.25 and cfg.objective.unroll_chunks == 1
    assert (given.dataset.val_episodes, given.model.context, given.objective.logit_mean) == (3, 3, 0.5)
    assert parse(TrainWorldModelConfig, "--dataset.root", "x", "--dataset.cache_frames", "false").dataset.cache_frames is False


def test_autoencoder_caches_frames_unless_told_not_to():
    assert parse(TrainAutoencoderConfig, "--dataset.root", "x").dataset.cache_frames is True


@pytest.mark.parametrize("cls", [TrainPolicyConfig, RLConfig])
def test_policy_and_rl_hold_out_the_demo_split(cls):
    demo_split = held_out_count(PRESETS["full"]["episodes"])
    assert parse(cls, "--dataset.root", "x").dataset.val_episodes == demo_split
    assert parse(cls, "--dataset.root", "x", "--dataset.val_episodes", "5").dataset.val_episodes == 5


def test_collection_keeps_its_failure_mix_and_noisy_share_when_the_noise_is_changed():
    cfg = parse(CollectConfig, "--expert.action_noise", "0.1")
    assert cfg.expert.action_noise == 0.1 and cfg.expert.noisy_share == 0.33
    assert cfg.expert.failure_mix == {"early_release": 0.1, "wrong_target": 0.1, "stall": 0.1, "near_miss": 0.2}
    assert parse(CollectConfig, "--expert.failure_mix", '{"near_miss": 0.2}').expert.failure_mix == {"near_miss": 0.2}


def test_the_help_shows_the_defaults_a_run_gets(capsys):
    with pytest.raises(SystemExit):
        parse(TrainWorldModelConfig, "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "(~25 KB per frame at 2 views of 64x64) (default: True)" in text  # cache_frames: the recipe's
    assert "(the deterministic prediction) (default: 0.25)" in text  # regression_share


def test_the_help_of_a_nested_configs_file_flag_shows_no_settings(capsys):
    with pytest.raises(SystemExit):
        parse(CollectConfig, "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--expert str Config file for expert (default: None)" in text
    assert "--expert.failure_mix dict[str,float] mode -> probability per episode (default: {'early_release'" in text


def test_a_config_file_sits_on_the_defaults_and_under_the_flags(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("dataset:\n  root: data\n  val_episodes: 7\nobjective:\n  logit_mean: 0.5\n")
    cfg = parse(TrainWorldModelConfig, "--config_path", str(recipe), "--dataset.val_episodes", "3")
    assert (str(cfg.dataset.root), cfg.dataset.val_episodes, cfg.objective.logit_mean) == ("data", 3, 0.5)
    assert cfg.dataset.cache_frames is True and cfg.objective.regression_share == 0.25


def script_configs() -> list[type]:
    """The config class of every console script (pyproject's [project.scripts]) and kind."""
    import importlib

    from data.collect import CollectConfig
    from eval.cli import KINDS as EVAL_KINDS
    from train.align import AlignConfig
    from train.cli import KINDS as TRAIN_KINDS
    from train.demo import DemoConfig

    kinds = [getattr(importlib.import_module(module), name) for module, name, *_ in
             [*TRAIN_KINDS.values(), *EVAL_KINDS.values()]]
    return [*kinds, CollectConfig, AlignConfig, RLConfig, DemoConfig]


@pytest.mark.parametrize("cls", script_configs(), ids=lambda cls: cls.__name__)
def test_every_flag_says_what_it_does(cls):
    actions = cli.actions_of(cli.help_parser(cls))
    silent = sorted({a.option_strings[0] for a in actions if a.option_strings and not (a.help or "").strip()})
    assert silent == [], f"{cls.__name__}: flags without help text (a comment beside the field): {silent}"
