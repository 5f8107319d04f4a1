"""Evaluating policies beside each other and before and after RL, in physics and in imagination:
paired-outcome agreement, saved policies beside scripted ones, the RL evaluation imagining with the
run's env settings, and the evaluation benchmarks on tiny real models."""

import json

import pytest
import torch

from policy.flow import FlowPolicy
from simulator.env import ImaginedEnvConfig
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
    # A saved evaluation without the reseeded runs: its physics runs are reused, the reseeded ones simulated.
    import json

    without = json.loads(saved.read_text())
    for r in without["runs"].values():
        del r["physics_reseeded"]
    (tmp_path / "without.json").write_text(json.dumps(without))
    _, filled = evaluate(replace(cfg, physics_from=tmp_path / "without.json", output_dir=tmp_path / "filled"))
    assert filled["stall"]["physics"].steps[0] == 999  # reused
    assert filled["stall"]["physics_reseeded"].steps[0] != 999  # simulated
    with pytest.raises(ValueError, match="seed"):
        evaluate(replace(cfg, physics_from=saved, seed=cfg.seed + 1))
    with pytest.raises(ValueError, match="no physics run of policy"):
        evaluate(replace(cfg, physics_from=saved, policies=("expert",)))



def test_the_family_physics_ceiling_scores_the_reseeded_physics_run_as_if_it_were_imagination():
    from eval.closed_loop import family_markdown, physics_against_itself
    from eval.policy import EpisodeResults
    from eval.success import PolicyComparison

    def results(success, step=10):
        return EpisodeResults(success=success, steps=[step] * len(success), seconds=1.0)

    first = {"a": [True, True, True, False], "b": [True, False, False, False], "c": [False] * 4}
    again = {"a": [True, True, False, False], "b": [True, True, False, True], "c": [False, False, False, True]}
    runs = {n: {"imagined": results([True] * 4, step=12), "physics": results(first[n]),
                "physics_reseeded": results(again[n])} for n in first}
    ceiling = physics_against_itself(runs)
    assert ceiling.physics == [0.75, 0.25, 0.0] and ceiling.imagined == [0.5, 0.75, 0.25]
    assert ceiling.summary()["mean_abs_gap"] == pytest.approx((0.25 + 0.5 + 0.25) / 3)
    comparison = PolicyComparison(names=list(first), imagined_successes=[4] * 3, imagined_n=[4] * 3,
                                  physics_successes=[3, 1, 0], physics_n=[4] * 3)
    assert "mean |reseeded - physics| 0.33" in family_markdown(comparison, runs)
    # success steps pooled over the family's starts that succeed in both: 3 + 1 imagined two steps late,
    # 2 + 1 reseeded ones on time
    assert "imagined - physics: +2.0 [+2.0, +2.0] (mean abs 2.0, n=4); reseeded physics - physics: +0.0 " \
        "[+0.0, +0.0] (mean abs 0.0, n=3)" in family_markdown(comparison, runs)
    del runs["c"]["physics_reseeded"]  # not run for every policy: no ceiling, and no line for it
    assert physics_against_itself(runs) is None and "reseeded - physics" not in family_markdown(comparison, runs)


def test_paired_runs_n_starts_in_physics_and_estimates_physics_success_from_both(tiny_dataset, tiny_models, tmp_path):
    """--paired n: the first n starts in physics, all of them in imagination, and the
    prediction-powered estimate (eval.ppi) of physics success beside the n physics episodes alone.
    The policy is the expert: its physics episodes end at its success (about 47 steps on Lift), where a
    failing policy's run the whole 120-step horizon; 20 physics episodes is the fewest --paired takes."""
    from eval.closed_loop import closed_loop, closed_loop_markdown
    from eval.policy import EvalPolicyConfig, evaluate

    cfg = EvalPolicyConfig(world_model=tiny_models / "world_model", progress=tiny_models / "progress",
                           stats_root=tiny_dataset, policies=("expert",), episodes=24, paired=20, num_envs=4,
                           physics_ceiling=False, output_dir=tmp_path)
    comparison, runs = evaluate(cfg)
    assert (len(runs["expert"]["physics"].success), len(runs["expert"]["imagined"].success)) == (20, 24)
    assert comparison.physics_n == [20] and comparison.imagined_n == [24]
    row = closed_loop(runs)["expert"]
    assert row["agreement"]["both"] + row["agreement"]["physics_only"] + row["agreement"]["imagined_only"] \
        + row["agreement"]["neither"] == 20
    ppi = row["ppi"]
    assert (ppi["paired"], ppi["imagined_only"], ppi["real_only"]) == (20, 4, 1.0)  # the expert solves these 20 starts
    assert ppi["interval"][0] <= ppi["estimate"] <= ppi["interval"][1]
    assert "prediction-powered" in closed_loop_markdown(closed_loop(runs))
    with pytest.raises(ValueError, match=r"paired must be in \[20, episodes - 2 = 22\]"):
        EvalPolicyConfig(episodes=24, paired=23)



class SuccessProbe:
    """Collects the imagined env's success probability after every chunk (``run_episodes``' recorder
    hook): rounds of (chunks, envs)."""

    def __init__(self):
        self.rounds: list[list[torch.Tensor]] = []

    def start(self, obs, info):
        self.rounds.append([])

    def step(self, actions, reward, terminated, truncated, info):
        self.rounds[-1].append(info["success_prob"].clone())


def test_the_rl_evaluation_imagines_with_the_runs_env_settings(tiny_models):
    """The RL evaluation's imagined env is the run's (``RLConfig.env``: here 2 sampling steps and
    action guidance) at the evaluation's batch and physics' horizon: its episodes are those of an env
    built with the same settings, not those of the defaults (it once got only the success threshold)."""
    from eval.policy import matched_starts, run_episodes
    from eval.rl import physics_and_imagined
    from simulator.env import ImaginedEnv
    from simulator.physics.tasks import get_task

    policy = FlowPolicy.from_pretrained(tiny_models / "policy")
    views, episodes, seed, num_envs = ("front", "wrist"), 2, 100_000, 2
    run_env = ImaginedEnvConfig(num_envs=4, max_steps=16, sampling_steps=2, action_guidance=2.0)
    evaluated = SuccessProbe()
    physics_and_imagined(policy, views, SIZE, "lift", episodes, seed, num_envs, tiny_models / "world_model",
                         tiny_models / "progress", env=run_env, physics=False, recorder=evaluated)
    starts = matched_starts("lift", views, SIZE, episodes, seed, num_envs)

    def imagined(**settings) -> torch.Tensor:
        """(chunks, envs) success probabilities of the episodes an env with ``settings`` imagines."""
        probe = SuccessProbe()
        env = ImaginedEnv.from_pretrained(tiny_models / "world_model", tiny_models / "progress", starts, views,
                                          num_envs=num_envs, max_steps=get_task("lift").max_steps, **settings)
        with torch.no_grad():
            run_episodes(env, policy, episodes, 0, recorder=probe)
        return torch.stack(probe.rounds[0])

    same = imagined(sampling_steps=2, action_guidance=2.0)
    assert torch.equal(torch.stack(evaluated.rounds[0]), same)
    assert not torch.equal(imagined(), same)  # the settings change what is imagined


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


def test_the_policy_evaluation_benchmark_reports_the_closed_loop_beside_the_physics_ceiling(tiny_models, tmp_path,
                                                                                             capsys, monkeypatch):
    """``python -m benchmarks.policy_evaluation``'s main, in this process (a new one would import torch,
    lerobot and robosuite again: seconds of start-up), on one episode per policy and simulator (each
    failing one runs physics' whole 120-step horizon; evaluate's counting is tested above)."""
    import sys

    from benchmarks.policy_evaluation import main

    monkeypatch.setattr(sys, "argv", [
        "policy_evaluation", "--world-model", str(tiny_models / "world_model"), "--progress", str(tiny_models / "progress"),
        "--policies", "stall", "expert", f"bc={tiny_models / 'policy'}", "--episodes", "1", "--num-envs", "1",
        "--output-dir", str(tmp_path), "--no-write"])
    main()
    out = capsys.readouterr().out
    assert "| policy | imagined - physics | per-episode phi" in out and "| bc |" in out
    saved = json.loads((tmp_path / "policy_eval.json").read_text())
    assert set(saved["closed_loop"]) == {"stall", "expert", "bc"} and "mean_abs_gap" in saved["summary"]
    assert all(len(r["physics_reseeded"]["success"]) == 1 for r in saved["runs"].values())


def test_paired_envs_start_the_imagined_env_where_physics_starts(tiny_models, one_thread):
    """The benchmarks' policy, physics env and imagined env (benchmarks.imagined_replay.paired_envs):
    the physics env renders at the policy's views and size, and imagined episode i starts from the
    frames of physics seed ``seed + i``."""
    from benchmarks.imagined_replay import paired_envs
    from simulator.rollout import Rollout

    _, physics, imagined, cfg = paired_envs(tiny_models / "policy", tiny_models / "world_model",
                                            tiny_models / "progress", episodes=2, seed=100, num_envs=2)
    try:
        assert (cfg.height, cfg.num_envs, cfg.terminate_on_success) == (32, 2, True)
        assert tuple(imagined.views) == tuple(cfg.views) and imagined.num_envs == 2
        real, dreamt = Rollout(physics, seed=100).obs, Rollout(imagined, seed=0).obs
        for view in cfg.views:
            key = next(k for k in real if k.endswith(view))
            torch.testing.assert_close(dreamt[key], real[key])
    finally:
        physics.close()
