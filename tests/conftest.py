import contextlib
import io
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


def moving_world_model(image_size: int, horizon: int = 8, seed: int = 0, future: int = 8, memory: bool = False):
    """A tiny world model whose imagination moves: its delta and state heads start at zero
    (copy-last), so every weight is nudged, and the imagined frames and states vary with the actions."""
    from simulator.world_model import WorldModel

    torch.manual_seed(seed)
    wm = WorldModel(views=2, image_size=image_size, context=2, future=future, horizon=horizon, block_out_channels=(32, 32),
                    cond_dim=32, scale_noisy_input=True, memory=memory)
    with torch.no_grad():
        for p in wm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return wm


@pytest.fixture(scope="module")
def physics():
    """A tiny Lift physics env: 2 envs, both views at 32x32, 16 steps (imagined-env tests run on its starts)."""
    from simulator.physics.env import PhysicsEnv, PhysicsEnvConfig

    env = PhysicsEnv(PhysicsEnvConfig(task="lift", num_envs=2, views=("front", "wrist"), height=32, width=32,
                                      max_steps=16))
    yield env
    env.close()


@pytest.fixture(scope="module")
def starts(physics):
    """The tiny physics env's starts of seed 1000, as an imagined env's start frames."""
    from simulator.starts import StartFrames

    obs, info = physics.reset(seed=1000)
    return StartFrames.from_observation(obs, info, ("front", "wrist"))


# The demo's quick preset with fewer steps and episodes: its stages' artifacts only need to exist and load.
DEMO_PRESET = {"wm_steps": 4, "wm_second_cycle": 2, "probe_steps": 10, "progress_steps": 4, "bc_steps": 4, "policy_episodes": 1,
               "rl_max_steps": 8, "rl_eval_episodes": 1}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One tiny demo run (every stage, preset "tiny": quick with DEMO_PRESET's settings, 3 episodes),
    shared by the demo, report and notebook tests: (its folder, what each stage returned, what it printed)."""
    from train.demo import PRESETS, DemoConfig, run

    out, printed = tmp_path_factory.mktemp("demo"), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setitem(PRESETS, "tiny", PRESETS["quick"] | DEMO_PRESET)
        results = run(DemoConfig(preset="tiny", output_dir=out, episodes=3))
    return out, results, printed.getvalue()
