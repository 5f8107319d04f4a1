"""The console scripts name a bad input in one last line, take list flags as ``a b``, and list their kinds.

A config's ``__post_init__`` error used to end a 49-line traceback under draccus' ParsingError,
``--views front`` became five one-letter views, ``--views front wrist`` was refused, and
``reverie-train --help`` exited 1.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from data.cli import parse
from data.collect import CollectConfig
from eval.policy import EvalPolicyConfig
from train.progress import TrainProgressConfig

BIN = Path(sys.executable).parent


def last_error_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("module, argv, code, message", [
    ("data.collect", ["--episodes", "-1"], 2, "episodes must be >= 0, got self.episodes=-1"),
    ("train.demo", ["--preset", "huge"], 2, "unknown preset 'huge'"),
    ("train.rl.loop", ["--dataset.root", "x", "--iterations", "0"], 2, "iterations must be >= 1"),
    ("train.cli", ["world_model", "--dataset.root", "x", "--steps", "0"], 2, "steps must be >= 1"),
    ("eval.cli", ["policy", "--episodes", "0"], 2, "got self.episodes=0"),
    ("eval.cli", ["world_model", "--dataset.root", "x", "--starts", "abc"], 2, "`starts`: Couldn't parse 'abc'"),
    # a FileNotFoundError when the run starts: the dataset folder is not there
    ("train.cli", ["progress", "--dataset.root", "no/such/dataset"], 1, "no/such/dataset is not a LeRobot dataset"),
])
def test_an_expected_error_is_one_last_line_without_a_traceback(module, argv, code, message, capsys, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a run might start writes lands in the repository
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(argv)
    assert exit_.value.code == code
    line = last_error_line(capsys.readouterr().err)
    assert line.startswith("error: ") and message in line, line


def test_the_installed_script_names_the_bad_value(tmp_path):
    run = subprocess.run([BIN / "reverie-collect", "--episodes", "-1", "--root", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 2
    assert last_error_line(run.stderr) == "error: episodes must be >= 0, got self.episodes=-1"
    assert not (tmp_path / "d").exists()


def test_top_level_help_lists_the_kinds_and_exits_0(capsys):
    from eval.cli import KINDS as EVAL_KINDS
    from eval.cli import main as eval_main
    from train.cli import KINDS as TRAIN_KINDS
    from train.cli import main as train_main

    for main, kinds in ((train_main, TRAIN_KINDS), (eval_main, EVAL_KINDS)):
        main(["--help"])  # returns: the script exits 0
        out = capsys.readouterr().out
        listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
        assert listed == list(kinds), out
    run = subprocess.run([BIN / "reverie-train", "--help"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and "world_model" in run.stdout, run.stderr[-2000:]
    with pytest.raises(SystemExit) as exit_:  # a kind's own help still shows its options
        train_main(["world_model", "--help"])
    assert exit_.value.code == 0 and "--dataset.root" in capsys.readouterr().out


@pytest.mark.parametrize("argv, views", [
    (["--views", "front", "wrist"], ("front", "wrist")),
    (["--views", "front"], ("front",)),
    (["--views=front"], ("front",)),
    (["--views", "[front,wrist]"], ("front", "wrist")),
    (["--views", "wrist", "front", "--episodes", "3"], ("wrist", "front")),
])
def test_list_flags_take_their_values_apart(argv, views):
    assert parse(CollectConfig, argv).views == views


def test_list_flags_of_other_item_types_and_nested_configs():
    assert parse(EvalPolicyConfig, ["--policies", "bc=a/model", "rl=b/model"]).policies == ("bc=a/model", "rl=b/model")
    assert parse(EvalPolicyConfig, ["--policies", "expert"]).policies == ("expert",)
    cfg = parse(TrainProgressConfig, ["--dataset.root", "x", "--model.channels", "16", "32", "--steps", "2"])
    assert cfg.model.channels == (16, 32) and cfg.steps == 2


def test_a_model_shape_the_dataset_decides_is_refused_not_replaced(tiny_dataset, tmp_path, capsys, monkeypatch):
    """--model.image_size (like views, action_dim, state_dim, future) comes from the data: a flag
    that says otherwise is an error naming it, not a setting silently overwritten."""
    from train.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["world_model", "--dataset.root", str(tiny_dataset), "--dataset.val_episodes", "1",
              "--model.image_size", "48", "--steps", "1", "--output_dir", str(tmp_path / "wm")])
    assert exit_.value.code == 1
    line = last_error_line(capsys.readouterr().err)
    assert line == "error: --model.image_size 48 is decided by the dataset (32 here): drop the flag", line
    assert not (tmp_path / "wm" / "model").exists()
