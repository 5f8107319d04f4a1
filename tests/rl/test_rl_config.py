"""reverie-rl's configuration: the algorithm chosen by type from a registry, a help that shows one
algorithm's settings with help text and defaults, and the recipe as a file."""

import re

import draccus
import pytest
import yaml

from data import cli
from data.clips import DatasetConfig
from data.episodes import DEMO_HELD_OUT
from train.rl.base import AlgorithmConfig
from train.rl.filtered_imitation import FilteredImitationConfig
from train.rl.grpo import GRPOConfig
from train.rl.loop import ALGORITHM_CLASSES, ALGORITHMS, RECIPES, RLConfig, main

MAX_FLAGS = 40  # issue 20: a newcomer reads the whole help


def parse(*args: str) -> RLConfig:
    return cli.parse(RLConfig, ["--dataset.root", "data", *args])  # what reverie-rl parses with


def help_entries(capsys, *args: str) -> dict[str, str]:
    """reverie-rl's help, run in-process: each flag with the text the help gives it (help and default)."""
    main([*args, "--help"])
    text = capsys.readouterr().out
    options = text[text.index("\noptions:"):]  # past the usage line
    entries, flag = {}, None
    for line in options.splitlines():
        # an entry: the flag, its metavar ("int", "[Path]", "int [int, ...]"), then its text after 2+ spaces
        if match := re.match(r"^  (--[\w.]+)(?: (?:\[.*\]|\S+(?: \[.*\])?))?(?:\s{2,}(.*))?$", line):
            flag = match.group(1)
            entries[flag] = (match.group(2) or "").strip()
        elif line.startswith("                ") and flag is not None:
            entries[flag] += " " + line.strip()  # the entry's wrapped text
        else:
            flag = None  # a group title or its description
    return entries


def test_the_help_shows_at_most_40_flags_each_with_help_and_default(capsys):
    entries = help_entries(capsys)
    assert len(entries) <= MAX_FLAGS, sorted(entries)
    for flag, text in entries.items():
        assert re.search(r"\S.*\(default: .+\)$", text), f"{flag} has no help text or no default: {text!r}"
    # one algorithm's settings, the default's; the others are a --algorithm.type away
    assert "--algorithm.memory" in entries and "--algorithm.clip" not in entries
    assert "(default: filtered_imitation)" in entries["--algorithm.type"]
    assert {"--env.num_envs", "--env.sampling_steps", "--simulator", "--config_path"} <= set(entries)
    assert not {"--env.num_samples", "--env.uncertainty_limit", "--env.autoreset"} & set(entries)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_help_of_every_algorithm_shows_its_own_settings(algorithm, capsys):
    entries = help_entries(capsys, "--algorithm.type", algorithm)
    settings = {f"--algorithm.{f}" for f in AlgorithmConfig.get_choice_class(algorithm).__dataclass_fields__}
    assert settings == {flag for flag in entries if flag.startswith("--algorithm.")} - {"--algorithm.type"}
    assert all(re.search(r"\S.*\(default: .+\)$", text) for text in entries.values())


def test_the_algorithm_is_chosen_by_type_and_defaults_to_the_measured_recipe():
    default = parse()
    assert isinstance(default.algorithm, FilteredImitationConfig) and default.algorithm.type == "filtered_imitation"
    assert (default.algorithm.real_share, default.algorithm.memory, default.iterations) == (0.25, 40, 40)
    assert parse("--algorithm.lr", "3e-4").algorithm == FilteredImitationConfig(lr=3e-4)  # the default's setting
    grpo = parse("--algorithm.type", "grpo", "--algorithm.lr", "1e-4").algorithm
    assert grpo == GRPOConfig(lr=1e-4) and grpo.type == "grpo"
    for name in ALGORITHMS:
        config = parse("--algorithm.type", name).algorithm
        assert config.type == name and ALGORITHM_CLASSES[name].name == name
    with pytest.raises(SystemExit):  # argparse names the choices
        parse("--algorithm.type", "dqn")


def test_a_nested_setting_keeps_the_recipes_other_settings(capsys):
    """draccus rebuilds a nested config from its class's defaults when one of its fields is given:
    data.cli.parse keeps RL's env defaults (a default_factory's) under another env flag."""
    cfg = parse("--env.sampling_steps", "2", "--algorithm.memory", "5")
    assert (cfg.env.num_envs, cfg.env.max_steps, cfg.env.sampling_steps) == (32, 80, 2)
    assert (cfg.algorithm.real_share, cfg.algorithm.memory) == (0.25, 5)
    with pytest.raises(SystemExit):
        parse("--algorithm.type", "grpo", "--algorithm.memory", "5")  # not a setting of grpo
    assert "not valid for GRPOConfig" in capsys.readouterr().err


def test_the_lift_recipe_file_is_the_defaults_plus_its_settings():
    recipe = RECIPES / "rl_lift.yaml"
    settings = yaml.safe_load(recipe.read_text())
    loaded = cli.parse(RLConfig, ["--config_path", str(recipe), "--dataset.root", "data"])
    expected = draccus.encode(RLConfig(dataset=DatasetConfig(root="data", val_episodes=DEMO_HELD_OUT)))
    for group, value in settings.items():  # the defaults with the file's settings over them
        expected[group] = expected[group] | value if isinstance(value, dict) else value
    assert draccus.encode(loaded) == expected
    assert loaded == parse()  # the file writes the default recipe out
    # a flag beside the file wins over it, and the file's other settings stay
    beside = cli.parse(RLConfig, ["--config_path", str(recipe), "--dataset.root", "data", "--algorithm.memory", "5"])
    assert (beside.algorithm.memory, beside.algorithm.real_share, beside.env.num_envs) == (5, 0.25, 32)


def test_rl_gain_runs_the_default_recipe_into_its_documented_section():
    """benchmarks.rl_gain builds reverie-rl's config: without flags, the default recipe, whose
    section in docs/benchmarks.md (the figure that chose the default) it rewrites in place."""
    from benchmarks import rl_gain
    from benchmarks._report import DOC

    models = ["--policy", "p", "--world-model", "w", "--progress", "q", "--root", "data"]
    args = rl_gain.parse_args(models)
    cfg = rl_gain.rl_config(args, seed=1)
    assert (cfg.algorithm, cfg.env, cfg.iterations, cfg.seed) == (parse().algorithm, parse().env, 40, 1)
    title = rl_gain.section_title(args)[0]
    assert title == "RL in imagination (filtered_imitation, real share 0.25, memory 40): physics success before and after"
    assert f"<!-- {title}:start -->" in DOC.read_text()
    control = rl_gain.parse_args(["--policy", "p", "--root", "data", "--simulator", "physics", "--no-imagined-eval",
                                  "--algorithm", "grpo", "--lr", "1e-4"])
    cfg = rl_gain.rl_config(control, seed=0)
    assert cfg.world_model is None and cfg.simulator == "physics" and cfg.algorithm == GRPOConfig(lr=1e-4)
    with pytest.raises(SystemExit):  # memory is no setting of grpo
        rl_gain.parse_args([*models, "--algorithm", "grpo", "--memory", "3"])
