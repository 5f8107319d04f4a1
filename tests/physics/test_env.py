"""PhysicsEnv contract (keys, shapes, dtypes), determinism, partial and automatic resets, errors."""

import pytest
import torch

from simulator import keys
from simulator.physics import PhysicsEnv, PhysicsEnvConfig

H, A = 3, 7


@pytest.fixture(scope="module")
def env():
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", num_envs=2, height=24, width=32, max_steps=5))
    yield env
    env.close()


def test_reset_and_step_contract(env):
    obs, info = env.reset(seed=3)
    for view in ("front", "wrist"):
        img = obs[keys.image_key(view)]
        assert img.shape == (2, 3, 24, 32) and img.dtype == torch.float32
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01  # a real picture, not blank
    assert obs[keys.STATE].shape == (2, keys.STATE_DIM) and obs[keys.STATE].dtype == torch.float32
    assert obs[keys.TASK] == ["pick up the red cube"] * 2
    assert info["object_state"].shape == (2, keys.ENV_STATE_DIM) and info["stage"].dtype == torch.long
    for key in ("success_prob", "progress"):  # shared with the imagined env
        assert info[key].shape == (2,) and info[key].dtype == torch.float32
    assert torch.equal(info["progress"], info["stage"] / 3)

    obs2, reward, terminated, truncated, info = env.step(torch.zeros(2, H, A))
    assert set(obs2) == set(obs)
    assert reward.shape == terminated.shape == truncated.shape == (2,)
    assert reward.dtype == torch.float32 and terminated.dtype == truncated.dtype == torch.bool
    assert info["frames"]["front"].shape == (2, H, 3, 24, 32) and info["frames"]["front"].dtype == torch.uint8
    assert info["frames_valid"].all() and (info["steps"] == H).all()
    # the observation is the last frame of the chunk
    assert torch.equal(info["frames"]["wrist"][:, -1].float() / 255, obs2[keys.image_key("wrist")])


def test_actions_move_the_arm(env):
    obs, _ = env.reset(seed=0)
    up = torch.zeros(2, 4, A)
    up[..., 2] = 1.0
    obs2, *_ = env.step(up)
    dz = obs2[keys.STATE][:, 2] - obs[keys.STATE][:, 2]
    assert (dz > 0.02).all()  # 4 steps at full speed up move the end effector several cm


def test_same_seed_same_frames_other_seed_other_scene(env):
    chunk = torch.rand(2, H, A, generator=torch.Generator().manual_seed(0)) * 2 - 1
    runs = []
    for seed in (7, 7, 8):
        obs, info = env.reset(seed=seed)
        _, _, _, _, step_info = env.step(chunk)
        runs.append((obs, info["object_state"], step_info["frames"]["front"]))
    assert torch.equal(runs[0][0][keys.image_key("front")], runs[1][0][keys.image_key("front")])
    assert torch.equal(runs[0][2], runs[1][2])
    assert not torch.equal(runs[0][1], runs[2][1])  # another seed places the cube elsewhere
    assert not torch.equal(runs[0][1][0], runs[0][1][1])  # envs of a batch get different seeds
    # explicit per-env seeds: both envs at seed 8 start where env 0 of reset(seed=8) did
    _, info = env.reset(options={"seeds": [8, 8]})
    assert torch.equal(info["object_state"][0], runs[2][1][0]) and torch.equal(info["object_state"][1], runs[2][1][0])
    with pytest.raises(ValueError, match="one seed per reset env"):
        env.reset(options={"seeds": [8]})


def test_truncation_freezes_finished_envs_until_partial_reset(env):
    env.reset(seed=1)
    _, _, terminated, truncated, info = env.step(torch.zeros(2, 7, A))  # horizon is 5 steps
    assert truncated.all() and not terminated.any()
    assert info["frames_valid"][:, :5].all() and not info["frames_valid"][:, 5:].any()
    before = info["object_state"].clone()
    obs, info = env.reset(options={"reset_mask": torch.tensor([True, False])})
    assert info["steps"].tolist() == [0, 5]
    assert torch.equal(info["object_state"][1], before[1])  # the other env is untouched
    _, _, _, truncated, info = env.step(torch.zeros(2, 1, A))
    assert truncated.tolist() == [False, True] and info["steps"].tolist() == [1, 5]


def test_autoreset_starts_a_new_episode():
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", views=("wrist",), height=16, width=16, max_steps=2, autoreset=True))
    env.reset(seed=0)
    obs, _, _, truncated, info = env.step(torch.zeros(1, 3, A))
    assert truncated.all()
    assert "final_observation" in info and info["steps"].tolist() == [0]
    env.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "pour_coffee"}, "unknown task 'pour_coffee'"),
        ({"views": ("front", "ceiling")}, "unknown camera view(s) ['ceiling']"),
        ({"height": 0}, "resolution must be positive"),
        ({"width": -4}, "resolution must be positive"),
        ({"render_quality": "ultra"}, "render_quality"),
    ],
)
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        PhysicsEnvConfig(**kwargs)


def test_bad_actions_are_named(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(num_envs=2, H, A=7\), got \(2, 3, 6\)"):
        env.step(torch.zeros(2, 3, 6))
    with pytest.raises(ValueError, match="got \\(3, 7\\)"):
        env.step(torch.zeros(3, 7))
    with pytest.raises(TypeError, match="floating-point"):
        env.step(torch.zeros(2, 1, 7, dtype=torch.long))
    nan = torch.zeros(2, 2, 7)
    nan[1, 1, 6] = float("nan")
    with pytest.raises(ValueError, match=r"finite; got nan at \(env, step, dim\) = \(1, 1, 6\)"):
        env.step(nan)


def test_step_before_reset_is_an_error():
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", views=()))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(1, 1, A))
    env.close()


def test_success_step_is_where_a_terminating_env_ends():
    """An env that goes on past success reports, in ``success_step``, the step at which the same
    episode ends in an env that terminates at success (the expert's actions, recorded once)."""
    from simulator.physics import ExpertConfig, ScriptedExpert

    ends = PhysicsEnv(PhysicsEnvConfig(task="lift", views=()))
    goes_on = PhysicsEnv(PhysicsEnvConfig(task="lift", views=(), terminate_on_success=False))
    obs, info = ends.reset(seed=4)
    expert = ScriptedExpert(ends.spec, ExpertConfig())
    expert.reset(info["object_state"][0].numpy(), ends.task_env(0), 4)
    actions, terminated = [], torch.zeros(1, dtype=torch.bool)
    while not terminated.any():
        actions.append(torch.as_tensor(expert.act(obs[keys.STATE][0].numpy()), dtype=torch.float32)[None, None])
        obs, _, terminated, truncated, info = ends.step(actions[-1])
        assert not truncated.any()
    _, start = goes_on.reset(seed=4)
    assert start["success_step"].tolist() == [0]
    *_, after = goes_on.step(torch.cat([*actions, torch.zeros(1, 10, A)], 1))  # 10 steps more after the success
    assert after["success_step"].tolist() == info["steps"].tolist() == [len(actions)]
    assert after["steps"].tolist() == [len(actions) + 10]
    ends.close(), goes_on.close()
