"""The benchmark scripts run (tiny sizes, nothing written to docs/)."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def run_main(module: str, args: list[str], monkeypatch) -> None:
    """``python -m module args`` in this process: a new process would import torch, diffusers and lerobot
    again (seconds of start-up per script). Torch's thread count, which a benchmark may set, is restored."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    threads = torch.get_num_threads()
    try:
        importlib.import_module(module).main()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "module, args, own_process",
    [
        ("benchmarks.expert_success", ["--seeds", "1", "--tasks", "lift"], False),
        # pins its process to one CPU core: a process of its own
        ("benchmarks.collect_throughput", ["--tasks", "lift", "--episodes", "1", "--collect-episodes", "1", "--size", "16"],
         True),
    ],
)
def test_benchmark_runs_and_prints_its_table(module, args, own_process, capsys, monkeypatch):
    if own_process:
        run = subprocess.run([sys.executable, "-m", module, *args, "--no-write"], cwd=REPO, capture_output=True, text=True,
                             check=False)
        assert run.returncode == 0, run.stderr[-3000:]
        out = run.stdout
    else:
        run_main(module, [*args, "--no-write"], monkeypatch)
        out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| lift |")]
    assert len(rows) == 1 and rows[0].count("|") >= 6


def test_clip_loading_benchmark_runs_on_a_dataset(tiny_dataset, capsys, monkeypatch):
    run_main("benchmarks.clip_loading", ["--root", str(tiny_dataset), "--clips", "5", "--no-write"], monkeypatch)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["pyav", "torchcodec", "decord"]
    assert rows[0].rstrip().endswith("| yes |") and rows[2].rstrip().endswith("| yes |")
    assert rows[1].rstrip().endswith("| yes |") or "unavailable" in rows[1]  # torchcodec needs FFmpeg


def test_world_model_speed_benchmark_runs(capsys, monkeypatch):
    run_main("benchmarks.world_model_speed", ["--batch", "2", "--repeats", "1", "--physics-steps", "16",
                                              "--sampling-steps", "1", "--no-write"], monkeypatch)
    out = capsys.readouterr().out
    assert "| physics, 1 env, 2 views rendered |" in out and "| world model on cpu, batch 2, 1 sampling steps |" in out


def test_world_model_fidelity_benchmark_compares_sampler_settings(tiny_dataset, tmp_path, capsys, monkeypatch):
    from simulator.world_model import WorldModel

    WorldModel(views=2, image_size=32, context=2, future=2, horizon=4, action_dim=7, state_dim=8,
               block_out_channels=(16, 32), norm_num_groups=8, cond_dim=32).save_pretrained(tmp_path / "model")
    run_main("benchmarks.world_model_fidelity", [
        "--model", str(tmp_path / "model"), "--root", str(tiny_dataset), "--val-episodes", "2", "--sampling-steps", "1",
        "2", "--still-levels", "8", "0", "--starts", "4", "--horizon-frames", "4", "--probe-steps", "0",
        "--output-dir", str(tmp_path / "eval"), "--no-write"], monkeypatch)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 1 sampling step", "| 2 sampling"))]
    assert len(rows) == 4 and "still threshold 8/255" in rows[0] and "still threshold off" in rows[1]
    # An untrained model predicts copy-last-frame exactly, so it has no gap to copy-last with either threshold.
    assert rows[0].split("|")[2].strip() in ("+0.00", "-0.00")
    assert (tmp_path / "eval" / "settings.png").stat().st_size > 5000


def test_imagined_replay_finds_the_last_grasp_and_applies_the_grasp_check():
    import torch

    from benchmarks.imagined_replay import last_grasps, with_grasp_check

    gripper = torch.tensor([[-1, -1, 1, 1, -1, 1, 1.0],   # closes at 2, re-opens, closes again at 5
                            [1, 1, 1, 1, 1, 1, 1.0],      # closing from the first step: a grasp at 0
                            [-1, -1, -1, -1, -1, -1, -1.0]])  # never closes
    actions = torch.zeros(3, 7, 7)
    actions[..., -1] = gripper
    assert last_grasps(actions).tolist() == [5, 0, -1]
    run = {"imagined": torch.tensor([True, True, True, False]),
           "object": torch.zeros(4, 3),
           "eef_imagined": torch.tensor([[0.01, 0.0, 0.0], [0.03, 0.0, 0.0], [float("nan")] * 3, [0.0, 0.0, 0.0]])}
    # within 2 cm: solved; 3 cm off: refuted; no grasp: nothing to refute; not solved stays unsolved
    assert with_grasp_check(run, 0.02, 0.02).tolist() == [True, False, True, False]
    run["eef_imagined"][0, 2] = 0.05  # aimed in x-y but closed 5 cm above the object
    assert not with_grasp_check(run, 0.02, 0.02)[0]


def test_model_selection_chooses_on_the_first_half_and_scores_on_the_second(tmp_path, capsys, monkeypatch):
    """Two world models over one family of 3 policies and 8 paired starts: "lucky" matches physics
    on the first 4 starts and inverts it on the last 4; "steady" is off by one episode per policy
    on both halves. The first half picks lucky, and the second half shows what the pick was worth."""
    physics = {"weak": [0, 0, 0, 1] * 2, "mid": [0, 1, 0, 1] * 2, "strong": [1, 1, 1, 0] * 2}
    inverted = lambda outcome: outcome[:4] + [1 - x for x in outcome[4:]]
    steady = {"weak": [0, 0, 1, 1] * 2, "mid": [1, 1, 0, 1] * 2, "strong": [1, 1, 1, 1] * 2}
    paths = []
    for name, imagined in (("lucky", {k: inverted(v) for k, v in physics.items()}), ("steady", steady)):
        runs = {p: {"physics": {"success": physics[p], "steps": [10] * 8, "seconds": 1.0},
                    "imagined": {"success": imagined[p], "steps": [10] * 8, "seconds": 1.0}} for p in physics}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"runs": runs}))
        paths.append(f"recipe/{name}={path}")
    run_main("benchmarks.model_selection", [*paths, "--no-write"], monkeypatch)
    out = capsys.readouterr().out
    assert "picks **recipe/lucky**" in out
    choose, score = out.split("**score")
    assert "| recipe/lucky | 1.00 | 1.00 | 0.000 | 0.00 |" in choose
    lucky_score = next(line for line in score.splitlines() if line.startswith("| recipe/lucky"))
    steady_score = next(line for line in score.splitlines() if line.startswith("| recipe/steady"))
    assert float(lucky_score.split("|")[4]) > float(steady_score.split("|")[4])  # its MMRV on fresh starts
    assert "Recipe **recipe**, 2 trainings" in out


def test_world_model_speed_times_lerobot_evals_per_step_env_with_its_peek(tmp_path, capsys, monkeypatch):
    from simulator.env import NORMALIZATION_FILE
    from tests.conftest import moving_world_model
    from tests.test_lerobot_eval import SIZE, UNIT, H, sure_progress

    moving_world_model(SIZE, horizon=H).save_pretrained(tmp_path / "wm")
    (tmp_path / "wm" / NORMALIZATION_FILE).write_text(json.dumps(UNIT))
    sure_progress(success=False).save_pretrained(tmp_path / "pm")
    run_main("benchmarks.world_model_speed", ["--model", str(tmp_path / "wm"), "--progress", str(tmp_path / "pm"),
                                              "--history", "1", "2", "--batch", "2", "--repeats", "1",
                                              "--physics-steps", "16", "--sampling-steps", "1", "--no-write"],
             monkeypatch)
    rows = [line for line in capsys.readouterr().out.splitlines() if "per-step env" in line]
    assert len(rows) == 2 and "policy history 1," in rows[0] and "policy history 2," in rows[1]
    assert all(float(r.split("|")[2]) > 0 for r in rows)
    with pytest.raises(SystemExit):  # --history needs saved models
        run_main("benchmarks.world_model_speed", ["--history", "2", "--no-write"], monkeypatch)


def test_learned_family_refuses_to_train_an_existing_policy_on_to_another_step_count(tiny_dataset, tmp_path):
    """A re-run with another --steps would resume every saved policy to the new count: the family,
    and the physics episodes another run reuses from it (--physics-from), would no longer match."""
    from benchmarks.learned_family import train_family

    (tmp_path / "bc10").mkdir()
    (tmp_path / "bc10" / "train_config.json").write_text(json.dumps({"steps": 600}))
    with pytest.raises(ValueError, match="trained for 600 steps, this run asks 1000"):
        train_family(tiny_dataset, 2, 1000, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bc10"]  # nothing trained, nothing written
    assert json.loads((tmp_path / "bc10" / "train_config.json").read_text()) == {"steps": 600}


class CloseAt:
    """A test policy that holds still and commands the gripper shut from env step ``at[b]`` on (never: None)."""

    def __init__(self, at: list[int | None], horizon: int = 8):
        self.at, self.horizon, self.num_envs = at, horizon, len(at)

    def reset(self, obs, info, mask=None, seeds=None):
        self.t = 0

    def select_action_chunk(self, obs):
        chunk = torch.zeros(self.num_envs, self.horizon, 7)
        steps = torch.arange(self.t, self.t + self.horizon)
        for b, at in enumerate(self.at):
            chunk[b, :, 6] = -1.0 if at is None else torch.where(steps >= at, 1.0, -1.0)
        self.t += self.horizon
        return chunk


def test_imagined_replay_reads_the_imagined_frame_after_the_grasp(physics, starts, one_thread):
    """With a probe, the benchmark reads the imagined frame after each episode's last grasp: the frame
    that the (deterministic) imagined env shows after that action when run again, in its second chunk
    for env 0; nothing for env 1, which never closes. And physics' frame after the same actions."""
    from benchmarks.imagined_replay import imagine_and_replay
    from eval.probe import StateProbe
    from simulator.env import ImaginedEnv, ImaginedEnvConfig
    from simulator.normalization import Normalizer
    from simulator.rollout import Rollout
    from tests.conftest import moving_world_model
    from tests.test_lerobot_eval import UNIT, VIEWS, sure_progress

    imagined = ImaginedEnv(moving_world_model(32, horizon=8), sure_progress(False), starts, Normalizer(UNIT), VIEWS,
                           ImaginedEnvConfig(num_envs=2, max_steps=16))
    torch.manual_seed(0)
    probe = StateProbe(views=2).eval()
    policy = CloseAt([11, None])
    run = imagine_and_replay(policy, imagined, physics, episodes=2, seed=1000, probe=probe)
    assert run["probed"].shape == (2, probe.config.outputs) and run["probed"][1].isnan().all()

    rollout = Rollout(imagined, seed=0)
    policy.reset(rollout.obs, rollout.info)
    chunks = [step.info["frames"] for step in rollout.run(policy.select_action_chunk)]  # {view: (B, 8, 3, h, w) uint8}
    read = lambda chunk, t: probe(torch.stack([chunks[chunk][v][0, t] for v in VIEWS])[None].float() / 255)[0]
    torch.testing.assert_close(run["probed"][0], read(1, 11 - 8))  # action 11 is the second chunk's fourth
    assert not torch.allclose(run["probed"][0], read(0, 3))  # another frame reads otherwise

    # and physics' frame after the same action 11, replayed: the same probe on the real frame
    replay = Rollout(physics, seed=1000)
    policy.reset(replay.obs, replay.info)
    real = [step.info["frames"] for step in replay.run(policy.select_action_chunk)]
    torch.testing.assert_close(run["probed_physics"][0],
                               probe(torch.stack([real[1][v][0, 3] for v in VIEWS])[None].float() / 255)[0])
    assert run["probed_physics"][1].isnan().all()
    assert run["probed_blurred"][1].isnan().all() and run["probed_blurred"][0].isfinite().all()


def test_physics_then_imagined_imagines_the_actions_physics_ran(physics, starts, one_thread):
    """The other direction: the imagined env receives the actions the policy took in physics. The
    test policy ignores what it sees, so running it in imagination directly gives the same imagined
    states: the reported error is those minus physics' after the same actions. An imagined episode
    that ended (a progress model sure of success) reports nothing past its end."""
    from benchmarks.imagined_replay import open_loop_summary, physics_then_imagined
    from simulator.env import ImaginedEnv, ImaginedEnvConfig
    from simulator.normalization import Normalizer
    from simulator.rollout import Rollout
    from tests.conftest import moving_world_model
    from tests.test_lerobot_eval import UNIT, VIEWS, sure_progress

    def imagined_env(success: bool) -> ImaginedEnv:
        return ImaginedEnv(moving_world_model(32, horizon=8), sure_progress(success), starts, Normalizer(UNIT), VIEWS,
                           ImaginedEnvConfig(num_envs=2, max_steps=16))

    def states(env, seed):
        rollout = Rollout(env, seed=seed)
        policy.reset(rollout.obs, rollout.info)
        return torch.cat([step.info["states"][..., :3].float() for step in rollout.run(policy.select_action_chunk)], 1)

    policy, horizons = CloseAt([3, None]), (8, 12, 16)
    run = physics_then_imagined(policy, imagined_env(False), physics, episodes=2, seed=1000, horizons=horizons)
    assert run["physics"].tolist() == [False, False] and run["imagined"].tolist() == [False, False]
    expected = (states(imagined_env(False), 0) - states(physics, 1000))[:, [t - 1 for t in horizons]]
    assert expected.abs().amax() > 1e-4  # the moving world model's arm parts from physics'
    torch.testing.assert_close(run["state_error"], expected)
    assert run["psnr"].shape == (2, 3, 2) and run["psnr"].isfinite().all()

    run = physics_then_imagined(policy, imagined_env(True), physics, episodes=2, seed=1000, horizons=horizons)
    assert run["imagined"].all() and run["state_error"][:, 0].isfinite().all()
    assert run["state_error"][:, 1:].isnan().all() and run["psnr"][:, 1:].isnan().all()
    assert "physics 0.00, imagined 1.00" in open_loop_summary(run, horizons, VIEWS)
    # the step of each one's first success: the sure progress model solves the first imagined frame
    assert run["imagined_step"].tolist() == [1, 1] and run["physics_step"].tolist() == [0, 0]
    assert "no start succeeds in both" in open_loop_summary(run, horizons, VIEWS)
    run["physics"][:], run["physics_step"][:] = True, torch.tensor([4, 1])  # as if physics had succeeded
    assert "imagined - physics -1.5 (mean abs 1.5, n=2)" in open_loop_summary(run, horizons, VIEWS)


def test_grasp_frames_reads_differences_from_physics_frames_in_mm():
    """The grasp summary subtracts the probe's reading of physics' frames: an imagined reading 10 mm
    higher and 3-4 mm off in x-y shows as such, a blurred reading equal to the sharp one as zero."""
    from benchmarks.imagined_replay import grasp_frames
    from simulator import keys

    real = torch.zeros(2, keys.STATE_DIM + 3)
    real[:, 2], real[:, keys.STATE_DIM + 2] = 0.85, 0.82  # gripper 30 mm above the cube
    imagined = real.clone()
    imagined[:, 2] += 0.010
    imagined[:, 0] += torch.tensor([0.003, 0.004])  # the gripper off in x: the cube seen 3-4 mm off too
    run = {"probed": imagined, "probed_physics": real, "probed_blurred": real.clone(),
           "eef_imagined": torch.full((2, 3), 0.84), "eef_physics": torch.full((2, 3), 0.85),
           "object": torch.full((2, 3), 0.83)}
    text = grasp_frames(run, torch.tensor([True, True]))
    assert ("imagined frames: end effector x/y/z +3.5/+0.0/+10.0 (x-y 3.5 apart); cube +0.0/+0.0/+0.0 (x-y 0.0 apart); "
            "cube seen from the gripper -3.5/+0.0/-10.0 (x-y 3.5 apart)") in text
    assert "blur bias): end effector x/y/z +0.0/+0.0/+0.0 (x-y 0.0 apart)" in text
    assert "Gripper above the cube: imagined frames +40.0, blurred physics' frames +30.0" in text
    assert "the state head's z minus physics' -10.0" in text


def test_blurred_to_matches_the_sharpness_of_the_frames_it_is_given(physics):
    """Real frames blurred to look like the same frames under a known Gaussian come out as those
    frames; frames matched to themselves stay as they are."""
    from torchvision.transforms.functional import gaussian_blur

    from benchmarks.imagined_replay import blurred_to
    from eval.fidelity import high_frequency_energy
    from simulator import keys

    obs, _ = physics.reset(seed=3)
    frames = torch.stack([obs[keys.image_key(v)] for v in ("front", "wrist")], 1)  # (B, V, 3, h, w) in [0, 1]
    sigmas = torch.tensor([0.5, 1.0, 1.5, 2.0])
    blur = lambda s: gaussian_blur(frames.flatten(0, 1), [9, 9], [s, s]).reshape(frames.shape)
    soft = blur(1.5)
    near = lambda a, b: torch.allclose(a, b, atol=5e-3, rtol=0)  # kernels of other widths differ by 3e-3
    assert near(blurred_to(frames, soft, sigmas), soft)
    assert not near(blur(1.0), soft) and not near(blur(2.0), soft)  # the tolerance tells the sigmas apart
    torch.testing.assert_close(blurred_to(frames, frames, sigmas), frames)
    mixed = torch.stack([frames[:, 0], soft[:, 1]], 1)  # each view on its own
    assert near(blurred_to(frames, mixed, sigmas), mixed)
    assert (high_frequency_energy(soft) < 0.5 * high_frequency_energy(frames)).all()


def test_physics_then_imagined_reads_both_frames_after_the_last_grasp(physics, starts, one_thread):
    """With a probe, the other direction reads the imagined frame and physics' frame after the last
    grasp of physics' actions (action 11 for env 0, the fourth of the second chunk; env 1 never closes):
    the same frames the imagined env and physics show after that action when run on their own."""
    from benchmarks.imagined_replay import physics_then_imagined
    from eval.probe import StateProbe
    from simulator.env import ImaginedEnv, ImaginedEnvConfig
    from simulator.normalization import Normalizer
    from simulator.rollout import Rollout
    from tests.conftest import moving_world_model
    from tests.test_lerobot_eval import UNIT, VIEWS, sure_progress

    imagined = ImaginedEnv(moving_world_model(32, horizon=8), sure_progress(False), starts, Normalizer(UNIT), VIEWS,
                           ImaginedEnvConfig(num_envs=2, max_steps=16))
    torch.manual_seed(0)
    probe, policy = StateProbe(views=2, outputs=1).eval(), CloseAt([11, None])
    run = physics_then_imagined(policy, imagined, physics, episodes=2, seed=1000, horizons=(8,), probe=probe)
    assert run["probed"].shape == run["probed_physics"].shape == (2, 1)
    assert run["probed"][1].isnan().all() and run["probed_physics"][1].isnan().all()

    def frame_after(env, seed, chunk, t):
        rollout = Rollout(env, seed=seed)
        policy.reset(rollout.obs, rollout.info)
        chunks = [step.info["frames"] for step in rollout.run(policy.select_action_chunk)]
        return torch.stack([chunks[chunk][v][0, t] for v in VIEWS])[None].float() / 255

    with torch.no_grad():
        torch.testing.assert_close(run["probed"][0], probe(frame_after(imagined, 0, 1, 3))[0])
        torch.testing.assert_close(run["probed_physics"][0], probe(frame_after(physics, 1000, 1, 3))[0])
        assert not torch.allclose(run["probed"][0], run["probed_physics"][0])  # imagination is not physics


def test_grasp_outcome_labels_the_frame_after_the_last_close_by_the_fingers_later():
    """The frame after the last close (and either side with spread), labelled by the finger gap
    HELD_AFTER steps later (or at the episode's end); an episode that never closes is left out."""
    from benchmarks.grasp_outcome import HELD_AFTER, closes
    from data.episodes import Episode

    def episode(index, close_at, gap_later, n=40):
        frames = torch.arange(n, dtype=torch.uint8)[None, :, None, None, None].expand(2, n, 3, 4, 4).clone()
        actions = torch.full((n, 7), -1.0)
        states = torch.zeros(n, 8)
        if close_at is not None:
            actions[close_at - 5:close_at - 2, 6] = 1.0  # an earlier close, reopened: not the last one
            actions[close_at:, 6] = 1.0
            states[min(close_at + HELD_AFTER, n - 1):, 6:] = torch.tensor([gap_later / 2, -gap_later / 2])
        return Episode(index=index, frames=frames, progress=torch.zeros(n), solved=torch.zeros(n, dtype=torch.bool),
                       success=False, task="lift", actions=actions, states=states, regenerated=255 - frames)

    episodes = [episode(0, 12, 0.04), episode(1, None, 0.0), episode(2, 30, 0.001)]
    frames, labels = closes(episodes)
    assert frames.shape == (2, 2, 3, 4, 4) and labels.tolist() == [True, False]
    assert frames[:, 0, 0, 0, 0].tolist() == [13, 31]  # the frame after the closing action
    frames, labels = closes(episodes, regenerated=True, spread=1)
    assert frames[:, 1, 0, 0, 0].tolist() == [255 - t for t in (12, 13, 14, 30, 31, 32)]
    assert labels.tolist() == [True] * 3 + [False] * 3
    with pytest.raises(ValueError, match="no episode closes its gripper"):
        closes([episodes[1]])


def test_a_binary_probe_learns_what_the_frames_show():
    """train_probe with binary=True fits a classifier's logits: on new frames it tells the two kinds
    apart (a bright square in the wrist view's left or right half) where the untrained one cannot."""
    from benchmarks.grasp_outcome import Readers, read
    from eval.probe import ProbeConfig, StateProbe, train_probe
    from eval.value import success_auroc

    def frames(n, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 60, (n, 2, 3, 16, 16), generator=g, dtype=torch.uint8)
        right = torch.rand(n, generator=g) < 0.5
        for i in range(n):
            col = 9 if right[i] else 2
            x[i, 1, :, 6:11, col:col + 5] = 250
        return x, right

    x, y = frames(256, 0)
    classifier = train_probe(x, y[:, None], ProbeConfig(steps=150, batch_size=32), binary=True)
    assert classifier.mean.eq(0).all() and classifier.std.eq(1).all()  # logits, not standardised targets
    test_x, test_y = frames(64, 1)
    torch.manual_seed(0)
    scores = read(Readers(classifier, StateProbe(views=2, outputs=1)).eval(), test_x)
    assert scores.shape == (64, 2)
    assert success_auroc(scores[:, 0], test_y) > 0.95 > success_auroc(scores[:, 1], test_y)


def test_grasp_outcome_benchmark_runs_on_a_dataset(tiny_dataset, tmp_path, capsys, monkeypatch):
    run_main("benchmarks.grasp_outcome", ["--dataset", str(tiny_dataset), "--val-episodes", "2", "--steps", "5",
                                          "--output-dir", str(tmp_path), "--no-write"], monkeypatch)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| held-out episodes: real |")]
    assert len(rows) == 1
    saved = json.loads((tmp_path / "grasp_outcome.json").read_text())
    assert saved["rows"][0]["frames"] == "held-out episodes: real" and saved["rows"][0]["n"] >= 1
