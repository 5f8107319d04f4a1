"""reverie-align end to end at tiny sizes: the policy's rollouts collected in physics, merged before
the dataset, the world model fine-tuned from its own weights, the progress model trained on the merge."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from data.clips import DatasetConfig
from policy.flow import FlowPolicy
from simulator import keys
from simulator.env import NORMALIZATION_FILE
from simulator.progress import ProgressModel
from simulator.world_model import WorldModel
from tests.conftest import moving_world_model
from train.align import AlignConfig, main


def episodes(root) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(p) for p in sorted((root / "data").rglob("*.parquet")))


def test_align_collects_merges_and_fine_tunes_both_models(tiny_dataset, tmp_path):
    """On a copy without meta/reverie.json, which lerobot's tools drop: the collection's settings are
    read from lerobot's own metadata."""
    import shutil

    from tests.conftest import TINY
    from train.align import collection_settings

    dataset = shutil.copytree(tiny_dataset, tmp_path / "dataset")
    (dataset / "meta" / "reverie.json").unlink()
    settings = collection_settings(dataset)
    lengths = pd.read_parquet(next((dataset / "meta" / "episodes").rglob("*.parquet")))["length"]
    assert settings == {"task": TINY["task"], "views": ("front", "wrist"), "height": TINY["height"],
                        "width": TINY["width"], "max_steps": lengths.max()} and lengths.max() <= TINY["max_steps"]
    torch.manual_seed(0)
    FlowPolicy(image_size=32, channels=(8, 8), width=32, depth=1, heads=2).save_pretrained(tmp_path / "policy")
    moving_world_model(32).save_pretrained(tmp_path / "wm")
    stats = DatasetConfig(root=tiny_dataset, val_episodes=1).clips([0], context=1, horizon=1).stats
    (tmp_path / "wm" / NORMALIZATION_FILE).write_text(json.dumps(stats))  # as world-model training saves it
    out = tmp_path / "align"
    main(["--policy", str(tmp_path / "policy"), "--world_model", str(tmp_path / "wm"), "--dataset.root",
          str(dataset), "--dataset.val_episodes", "1", "--episodes", "2", "--world_model_steps", "2",
          "--progress_steps", "2", "--output_dir", str(out)])
    merged, original = episodes(out / "dataset"), episodes(dataset)
    n = original["episode_index"].nunique()
    assert merged["episode_index"].nunique() == n + 2
    rollouts = merged[merged["episode_index"] < 2]
    assert (rollouts[keys.FAILURE_MODE] == 0).all()  # the policy's own episodes: nothing injected, first
    last = lambda df, i: np.stack(df[df["episode_index"] == i][keys.ACTION].to_numpy())  # noqa: E731
    assert np.array_equal(last(merged, n + 1), last(original, n - 1))  # the held-out last episode is the dataset's, as before
    tuned, base = WorldModel.from_pretrained(out / "world_model" / "model"), WorldModel.from_pretrained(tmp_path / "wm")
    assert tuned.spec == base.spec  # the same shapes, fine-tuned from its weights
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values()))
    assert ProgressModel.from_pretrained(out / "progress" / "model").spec.views == ("front", "wrist")
    with pytest.raises(ValueError, match="--policy FOLDER"):
        AlignConfig(world_model=tmp_path / "wm", dataset=DatasetConfig(root=tiny_dataset))
