"""Tiny real models for the RL tests, saved as training saves them."""

import json

import pytest

from data.clips import DatasetConfig
from policy.flow import FlowPolicy
from simulator.env import NORMALIZATION_FILE
from simulator.progress import ProgressModel
from tests.conftest import moving_world_model

SIZE = 32  # the tiny models' image size


@pytest.fixture(scope="module")
def tiny_models(tiny_dataset, tmp_path_factory):
    """A tiny world model, progress model and flow policy, saved as training saves them."""
    root = tmp_path_factory.mktemp("rl_models")
    moving_world_model(SIZE).save_pretrained(root / "world_model")
    stats = DatasetConfig(root=tiny_dataset, val_episodes=1).clips([0], context=1, horizon=1).stats
    (root / "world_model" / NORMALIZATION_FILE).write_text(json.dumps(stats))  # as world-model training saves it
    ProgressModel(image_size=SIZE, channels=(8, 8), norm_num_groups=4, width=32, head_width=16,
                  ensemble=3).save_pretrained(root / "progress")
    FlowPolicy(image_size=SIZE, channels=(8, 8), width=32, depth=1, heads=2).save_pretrained(root / "policy")
    return root
