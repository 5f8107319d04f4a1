"""Scripted experts solve every task at zero noise; each injected failure mode makes Lift fail,
except near_miss, whose grasps straddle the edge of what holds."""

import numpy as np
import pytest

from data.collect import run_episode
from simulator.physics import FAILURE_MODES, ExpertConfig, PhysicsEnv, PhysicsEnvConfig, ScriptedExpert
from simulator.physics.experts import GRASP_OFFSETS


def episodes(task, cfg, seeds):
    env = PhysicsEnv(PhysicsEnvConfig(task=task, views=(), terminate_on_success=False))
    expert = ScriptedExpert(env.spec, cfg)
    out = [run_episode(env, expert, s, hold_steps=2)[1] for s in seeds]
    env.close()
    return out


@pytest.mark.parametrize("task", ["lift", "stack", "pick_place_can"])
def test_expert_solves_task(task):
    labels = episodes(task, ExpertConfig(), seeds=[11, 12])
    assert all(e["success"] and e["failure_mode"] == "none" for e in labels)


@pytest.mark.parametrize("mode", [m for m in FAILURE_MODES[1:] if m != "near_miss"])
def test_each_failure_mode_fails_lift(mode):
    labels = episodes("lift", ExpertConfig(failure_mix={mode: 1.0}), seeds=[21, 22])
    assert all(not e["success"] and e["failure_mode"] == mode for e in labels)


def test_near_miss_grasps_beside_the_cube_and_physics_decides():
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", views=(), terminate_on_success=False))
    expert = ScriptedExpert(env.spec, ExpertConfig(failure_mix={"near_miss": 1.0}))
    outcomes = []
    for seed in range(8):
        frames, labels = run_episode(env, expert, seed, hold_steps=2)
        cube = np.asarray(frames[0]["observation.environment_state"][:3])
        miss = np.linalg.norm(expert.plan.grasp[:2] - cube[:2])
        lo, hi = GRASP_OFFSETS["near_miss"]
        assert labels["failure_mode"] == "near_miss" and lo - 1e-3 <= miss <= hi + 1e-3, miss
        outcomes.append(labels["success"])
    env.close()
    assert any(outcomes) and not all(outcomes), outcomes  # the offsets straddle the edge of a hold


@pytest.mark.parametrize("start", [0, 1234, 10_000])
def test_failure_modes_of_consecutive_seeds_follow_the_mix(start):
    mix = {"stall": 0.2, "wrong_target": 0.1, "early_release": 0.05}
    cfg = ExpertConfig(failure_mix=mix)
    for n in (20, 50, 400):
        draws = [cfg.sample_mode(s) for s in range(start, start + n)]
        for mode, p in mix.items():
            assert abs(draws.count(mode) / n - p) <= 2.5 / n + 1e-9, (mode, n)
    assert {cfg.sample_mode(s) for s in range(100)} == {"none", *mix}
    assert ExpertConfig().sample_mode(7) == "none"


@pytest.mark.parametrize(
    "kwargs, message",
    [({"failure_mix": {"teleport": 0.1}}, "unknown failure modes"), ({"failure_mix": {"stall": 0.8, "wrong_target": 0.4}}, "summing to <= 1"),
     ({"action_noise": -0.1}, "action_noise")],
)
def test_bad_expert_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExpertConfig(**kwargs)


def test_noisy_share_picks_whole_episodes_and_leaves_the_others_untouched():
    cfg = ExpertConfig(action_noise=0.3, noisy_share=0.25, failure_mix={"stall": 0.2})
    for n in (20, 400):  # consecutive seeds hold the share, independently of the failure modes
        noisy = [cfg.is_noisy(s) for s in range(100, 100 + n)]
        assert abs(sum(noisy) / n - 0.25) <= 2.5 / n
    both = [cfg.is_noisy(s) and cfg.sample_mode(s) == "stall" for s in range(400)]
    assert 0.02 <= sum(both) / 400 <= 0.08  # about 0.25 x 0.2 of them
    assert not any(ExpertConfig(noisy_share=1.0).is_noisy(s) for s in range(50))  # no noise to add

    quiet, noisy_seed = next(s for s in range(50) if not cfg.is_noisy(s)), next(s for s in range(50) if cfg.is_noisy(s))
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", views=(), terminate_on_success=False))
    plain = ExpertConfig(failure_mix=cfg.failure_mix)
    actions = {}
    for name, config in (("share", cfg), ("plain", plain)):
        for seed in (quiet, noisy_seed):
            frames, _ = run_episode(env, ScriptedExpert(env.spec, config), seed, hold_steps=2)
            actions[name, seed] = np.stack([np.asarray(f["action"]) for f in frames])
    env.close()
    np.testing.assert_array_equal(actions["share", quiet], actions["plain", quiet])
    n = min(len(actions["share", noisy_seed]), len(actions["plain", noisy_seed]))
    assert np.abs(actions["share", noisy_seed][:n, :3] - actions["plain", noisy_seed][:n, :3]).mean() > 0.1


def test_bad_noisy_share_is_named():
    with pytest.raises(ValueError, match="noisy_share"):
        ExpertConfig(action_noise=0.3, noisy_share=1.5)


def test_chunked_episodes_plan_blind_chunks_and_still_lift():
    cfg = ExpertConfig(chunked_share=0.5)
    for n in (20, 400):  # consecutive seeds hold the share
        assert abs(sum(cfg.is_chunked(s) for s in range(300, 300 + n)) / n - 0.5) <= 2.5 / n
    assert not any(ExpertConfig().is_chunked(s) for s in range(50))
    blind, fed = next(s for s in range(50) if cfg.is_chunked(s)), next(s for s in range(50) if not cfg.is_chunked(s))

    env = PhysicsEnv(PhysicsEnvConfig(task="lift", views=(), terminate_on_success=False))
    actions, labels = {}, {}
    for name, config in (("share", cfg), ("plain", ExpertConfig())):
        for seed in (blind, fed):
            frames, labels[name, seed] = run_episode(env, ScriptedExpert(env.spec, config), seed, hold_steps=2)
            actions[name, seed] = np.stack([np.asarray(f["action"]) for f in frames])
            if (name, seed) == ("share", blind):  # its first chunk: planned from the first state alone
                first = ScriptedExpert(env.spec, config)
                first.reset(frames[0]["observation.environment_state"], env.task_env(0), seed)
                planned = first.plan_chunk(np.asarray(frames[0]["observation.state"]))
    env.close()
    np.testing.assert_allclose(actions["share", blind][:len(planned)], planned, atol=1e-6)
    np.testing.assert_array_equal(actions["share", fed], actions["plain", fed])  # the others untouched
    n = min(len(actions["share", blind]), len(actions["plain", blind]))
    assert np.abs(actions["share", blind][:n, :3] - actions["plain", blind][:n, :3]).max() > 0.05
    assert labels["share", blind]["success"] and labels["plain", blind]["success"]


def test_bad_chunked_share_is_named():
    with pytest.raises(ValueError, match="chunked_share"):
        ExpertConfig(chunked_share=-0.1)
