"""Evaluating policies beside each other and before and after RL, in physics and in imagination:
paired-outcome agreement, saved policies beside scripted ones, the uncertainty limit applied after a
run, and the evaluation benchmarks on tiny real models."""

import json
import math

import pytest
import torch

from policy.flow import FlowPolicy
from simulator.env import NORMALIZATION_FILE
from simulator.progress import ProgressModel
from tests.conftest import moving_world_model
from tests.rl.conftest import SIZE

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_agreement_counts_paired_outcomes_and_their_phi():
    import math

    from eval.success import agreement

    physics = [True, True, False, False, True, False]
    same = agreement(physics, list(physics))
    assert (same["both"], same["physics_only"], same["imagined_only"], same["neither"]) == (3, 0, 0, 3)
    assert same["phi"] == pytest.approx(1.0)
    flipped = agreement(physics, [not s for s in physics])
    assert flipped["phi"] == pytest.approx(-1.0) and flipped["physics_only"] == flipped["imagined_only"] == 3
    # 2x2 counts (2, 1, 1, 2): phi = (2*2 - 1*1) / 3^2
    mixed = agreement(physics, [True, True, True, False, False, False])
    assert mixed["phi"] == pytest.approx(1 / 3) and mixed["phi_ci95"][0] <= 1 / 3 <= mixed["phi_ci95"][1]
    assert math.isnan(agreement(physics, [True] * 6)["phi"])  # imagination that always succeeds says nothing
    with pytest.raises(ValueError, match="paired"):
        agreement(physics, [True] * 5)


def test_saved_policies_are_evaluated_beside_scripted_ones(tiny_dataset, tiny_models, tmp_path):
    from eval.policy import EvalPolicyConfig, evaluate

    cfg = EvalPolicyConfig(world_model=tiny_models / "world_model", progress=tiny_models / "progress",
                           stats_root=tiny_dataset, policies=("stall", f"bc={tiny_models / 'policy'}"), episodes=2,
                           num_envs=2, output_dir=tmp_path)
    comparison, runs = evaluate(cfg)
    assert comparison.names == ["stall", "bc"] and comparison.physics_successes[0] == 0
    assert all(len(r[k].success) == 2 for r in runs.values() for k in ("imagined", "physics", "physics_reseeded"))
    with pytest.raises(ValueError, match="NAME=FOLDER"):
        evaluate(EvalPolicyConfig(world_model=cfg.world_model, progress=cfg.progress, policies=("bc=/nowhere",)))

    # Another world model against the same physics: the saved physics runs are reused, not re-simulated,
    # and only for the same starts and policies.
    from dataclasses import replace

    from eval.policy import save_report

    for run in runs["stall"].values():  # mark the saved run: a re-simulation would not give this back
        run.steps[0] = 999
    saved = save_report(comparison, runs, cfg) / "policy_eval.json"
    _, again = evaluate(replace(cfg, physics_from=saved, output_dir=tmp_path / "again"))
    for name in runs:
        for kind in ("physics", "physics_reseeded"):
            assert again[name][kind].success == runs[name][kind].success
            assert again[name][kind].steps == runs[name][kind].steps
    with pytest.raises(ValueError, match="seed"):
        evaluate(replace(cfg, physics_from=saved, seed=cfg.seed + 1))
    with pytest.raises(ValueError, match="no physics run of policy"):
        evaluate(replace(cfg, physics_from=saved, policies=("expert",)))



class SuccessProbe:
    """Collects the imagined env's success probability after every chunk (``run_episodes``' recorder
    hook): rounds of (chunks, envs)."""

    def __init__(self):
        self.rounds: list[list[torch.Tensor]] = []

    def start(self, obs, info):
        self.rounds.append([])

    def step(self, actions, reward, terminated, truncated, info):
        self.rounds[-1].append(info["success_prob"].clone())


def threshold_that_splits(probs: torch.Tensor, chunk: int, max_steps: int) -> tuple[float, list[bool], list[int]]:
    """A success threshold under which some but not all episodes are solved, at more than two
    different step counts and none in its first chunk (each has a spread before it is solved),
    from each episode's success probability after every chunk (N, chunks):
    the midpoint of the widest gap between measured values that does this (so that no float
    difference of another CPU moves a value across it). Returns it, the successes and the steps."""
    values = probs.flatten().unique()  # sorted
    best = None
    for low, high in zip(values[:-1].tolist(), values[1:].tolist()):
        threshold = (low + high) / 2
        passed = probs > threshold
        success = passed.any(1)
        steps = torch.where(success, (passed.float().argmax(1) + 1) * chunk, max_steps)
        splits = 0 < success.sum() < len(success) and len(steps.unique()) > 2 and steps.min() > chunk
        if splits and (best is None or high - low > best[0]):
            best = (high - low, threshold, success.tolist(), steps.tolist())
    assert best is not None, f"no threshold splits these episodes: {probs}"
    return best[1:]


def test_an_uncertainty_limit_applied_afterwards_matches_the_env_that_truncates(tiny_models, tmp_path):
    """The imagined env's ``uncertainty_limit`` truncates an episode as a failure once the world
    model's spread passes it; ``under_uncertainty_limit`` re-scores an unlimited run the same way.
    The success threshold is chosen from a measured run, so that whatever the float kernels of
    the machine, some episodes are solved, at different steps, and some are not."""
    from eval.policy import matched_starts, run_episodes
    from eval.rl import physics_and_imagined, under_uncertainty_limit
    from simulator.env import ImaginedEnv
    from simulator.physics.tasks import get_task

    # one imagined frame per chunk: the success probability the env reports is the chunk's whole verdict
    moving_world_model(SIZE, future=1).save_pretrained(tmp_path / "world_model")
    (tmp_path / "world_model" / NORMALIZATION_FILE).write_text((tiny_models / "world_model" / NORMALIZATION_FILE).read_text())
    torch.manual_seed(1)
    progress = ProgressModel(image_size=SIZE, channels=(8, 8), norm_num_groups=4, width=32, head_width=16, ensemble=3,
                             history_stride=8)
    with torch.no_grad():  # a random success head that depends on the frames, so episodes end at different steps
        for p in progress.parameters():
            p.add_(0.3 * torch.randn_like(p))
    progress.save_pretrained(tmp_path / "progress")
    policy = FlowPolicy.from_pretrained(tiny_models / "policy")
    views, episodes, seed, num_envs, max_steps = ("front", "wrist"), 8, 100_000, 4, get_task("lift").max_steps
    imagined = {"num_samples": 2, "sampling_steps": 2}

    starts = matched_starts("lift", views, SIZE, episodes, seed, num_envs)  # as physics_and_imagined starts them
    env = ImaginedEnv.from_pretrained(tmp_path / "world_model", tmp_path / "progress", starts, views, num_envs=num_envs,
                                      max_steps=max_steps, terminate_on_success=False, **imagined)
    probe = SuccessProbe()
    with torch.no_grad():
        run_episodes(env, policy, episodes, 0, recorder=probe)
    probs = torch.cat([torch.stack(r, 1) for r in probe.rounds])[:episodes]  # (episodes, chunks)
    threshold, solved_by, steps = threshold_that_splits(probs, policy.spec.chunk_size, max_steps)

    run = lambda **kw: physics_and_imagined(
        policy, views, SIZE, "lift", episodes, seed, num_envs, tmp_path / "world_model", tmp_path / "progress",
        physics=False, success_threshold=threshold, **imagined, **kw)["imagined"]
    free = run()
    assert free.success == solved_by and free.steps == steps  # as measured: episodes solved at different steps
    assert 0 < sum(free.success) < 8 and len(set(free.steps)) > 2
    assert all(p > 0 for p in free.peak_uncertainty)  # the two samples of a chunk differ
    solved = sorted(p for s, p in zip(free.success, free.peak_uncertainty) if s)
    for limit in (solved[0] - 1e-7, solved[len(solved) // 2] - 1e-7):  # truncates all, then half, of the solved ones
        limited = run(uncertainty_limit=limit)
        assert limited.success == under_uncertainty_limit(free, limit)
        assert sum(limited.success) < sum(free.success)
    # the benchmark's table, by hand: the no-limit row and then tighter limits that solve fewer
    from benchmarks.imagined_uncertainty import default_limits, rows
    from eval.policy import EpisodeResults

    physics = EpisodeResults(success=[i % 2 == 0 for i in range(8)], steps=[120] * 8, seconds=0.0)
    table = rows(physics, free, default_limits(free))
    assert math.isinf(table[0]["limit"]) and table[0]["solved"] == sum(free.success)
    both = sum(p and i for p, i in zip(physics.success, free.success))
    assert table[0]["precision"] == pytest.approx(both / sum(free.success))
    assert [r["solved"] for r in table] == sorted((r["solved"] for r in table), reverse=True)


def test_the_uncertainty_benchmark_runs_and_prints_its_table(tiny_models, tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "benchmarks.imagined_uncertainty", "--policy", str(tiny_models / "policy"),
                          "--world-model", str(tiny_models / "world_model"), "--progress", str(tiny_models / "progress"),
                          "--episodes", "2", "--num-envs", "2", "--output-dir", str(tmp_path), "--no-write"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| uncertainty limit |" in out.stdout and (tmp_path / "uncertainty_limits.png").stat().st_size > 0
    saved = json.loads((tmp_path / "episodes.json").read_text())
    assert len(saved["physics"]["success"]) == len(saved["imagined"]["peak_uncertainty"]) == 2


def test_imagined_episodes_replay_in_physics(tiny_models):
    """benchmarks.imagined_replay on tiny models: every imagined episode's actions replayed in
    physics from the same start; the end effector after the last grasp from both."""
    from benchmarks.imagined_replay import imagine_and_replay, rows
    from eval.policy import matched_starts
    from policy import camera_views, load_policy
    from simulator.env import ImaginedEnv
    from simulator.physics.env import PhysicsEnv, PhysicsEnvConfig

    policy = load_policy(tiny_models / "policy", num_envs=2)
    views, size = camera_views(policy)
    physics = PhysicsEnv(PhysicsEnvConfig(task="lift", num_envs=2, views=views, height=size, width=size, max_steps=16))
    starts = matched_starts("lift", views, size, 3, 100_000, 2)
    imagined = ImaginedEnv.from_pretrained(tiny_models / "world_model", tiny_models / "progress", starts, views,
                                           num_envs=2, max_steps=16)
    run = imagine_and_replay(policy, imagined, physics, episodes=3, seed=100_000)
    physics.close()
    assert run["imagined"].shape == run["replayed"].shape == (3,) and run["object"].shape == (3, 3)
    assert torch.allclose(run["object"], starts.object_state[:3, :3])
    grasped = ~run["eef_imagined"][:, 0].isnan()
    assert torch.equal(grasped, ~run["eef_physics"][:, 0].isnan())  # the same actions: the same grasps
    assert [r["tolerance"] for r in rows(run, [0.02], 0.02)] == [None, 0.02]


def test_the_policy_evaluation_benchmark_reports_the_closed_loop_beside_the_physics_ceiling(tiny_models, tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "benchmarks.policy_evaluation", "--world-model",
                          str(tiny_models / "world_model"), "--progress", str(tiny_models / "progress"),
                          "--policies", "stall", "expert", f"bc={tiny_models / 'policy'}", "--episodes", "2",
                          "--num-envs", "2", "--output-dir", str(tmp_path), "--no-write"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| policy | imagined - physics | per-episode phi" in out.stdout and "| bc |" in out.stdout
    saved = json.loads((tmp_path / "policy_eval.json").read_text())
    assert set(saved["closed_loop"]) == {"stall", "expert", "bc"} and "mean_abs_gap" in saved["summary"]
    assert all(len(r["physics_reseeded"]["success"]) == 2 for r in saved["runs"].values())
