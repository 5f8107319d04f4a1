import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

import pytest
import torch

from data.collect import CollectConfig, collect
from simulator.physics import ExpertConfig

# A small Lift dataset shared by the data tests: 4 episodes, one of each failure mode drawn
# with these seeds would be luck, so the mix is forced per test where modes matter.
TINY = dict(task="lift", episodes=4, height=32, width=32, max_steps=70, commit_every=2,
            expert=ExpertConfig(failure_mix={"stall": 0.5}))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets") / "lift"
    collect(CollectConfig(root=root, **TINY))
    return root


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``): they gain
    nothing from threads, and on a shared CPU OpenMP threads that wait for each other make them many
    times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
