"""reverie-collect: a LeRobotDataset round trip, labels that agree with physics, resume after a
kill, and clear refusals that change nothing."""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import data.commit as commit_module
from data.collect import CollectConfig, collect
from simulator import keys
from simulator.physics import FAILURE_MODES, ExpertConfig, PhysicsEnv, PhysicsEnvConfig
from tests.conftest import TINY


def table(root: Path) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(p) for p in sorted((root / "data").rglob("*.parquet"))).reset_index(drop=True)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_lerobot_loads_the_dataset_with_every_feature(tiny_dataset):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("reverie/lift", root=tiny_dataset)
    assert ds.num_episodes == 4 and ds.fps == 20
    item = ds[5]
    assert item[keys.image_key("front")].shape == (3, 32, 32) and item[keys.image_key("wrist")].shape == (3, 32, 32)
    assert item[keys.STATE].shape == (8,) and item[keys.ENV_STATE].shape == (14,) and item[keys.ACTION].shape == (7,)
    assert ds.meta.features[keys.ENV_STATE]["names"] == keys.ENV_STATE_NAMES  # the common layout: lift's cube, then zeros
    assert torch.equal(item[keys.ENV_STATE][7:], torch.zeros(7)) and item[keys.ENV_STATE][3:7].norm() > 0.99
    assert item[keys.TASK] == "pick up the red cube"
    assert len(ds) == ds.meta.total_frames


def test_labels_agree_with_physics(tiny_dataset):
    df = table(tiny_dataset)
    modes = json.loads((tiny_dataset / "meta" / "reverie.json").read_text())["failure_modes"]
    assert modes == list(FAILURE_MODES)
    seen = set()
    for ep, rows in df.groupby("episode_index"):
        success = rows[keys.EPISODE_SUCCESS].iloc[0]
        mode = modes[rows[keys.FAILURE_MODE].iloc[0]]
        seen.add((mode, bool(success)))
        assert rows[keys.EPISODE_SUCCESS].nunique() == 1 and rows[keys.FAILURE_MODE].nunique() == 1
        progress = rows[keys.PROGRESS].to_numpy()
        assert rows[keys.DONE].to_numpy().nonzero()[0].tolist() == [len(rows) - 1]
        if success:  # t/T up to the first success, then 1; the task is solved by the end
            assert rows[keys.SUCCESS].iloc[-1] and rows[keys.STAGE].iloc[-1] == 3
            assert np.all(np.diff(progress) >= 0) and progress[-1] == 1.0 and progress[0] < 0.1
        else:  # a stalled expert never solves it; progress is the fraction of milestones reached
            assert not rows[keys.SUCCESS].any() and progress.max() < 1.0
            np.testing.assert_allclose(progress, rows[keys.STAGE].to_numpy() / 3)
    assert seen == {("none", True), ("stall", False)}  # TINY's mix gives both with seeds 0-3


def test_recorded_actions_replay_to_the_recorded_states(tiny_dataset):
    """Frame t holds the state before action t: replaying actions from the episode's seed
    reproduces every recorded object and robot state."""
    df = table(tiny_dataset)
    rows = df[df.episode_index == 0]
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", views=(), terminate_on_success=False))
    obs, info = env.reset(seed=TINY.get("seed", 0) + 0)
    for t in range(len(rows)):
        np.testing.assert_allclose(info["object_state"][0].numpy(), rows[keys.ENV_STATE].iloc[t], atol=1e-6)
        np.testing.assert_allclose(obs[keys.STATE][0].numpy(), rows[keys.STATE].iloc[t], atol=1e-6)
        action = torch.tensor(np.asarray(rows[keys.ACTION].iloc[t]), dtype=torch.float64)
        obs, _, _, _, info = env.step(action[None, None])
    env.close()


def _cli(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "data.collect", "--task", "lift", "--root", str(root), "--height", "32", "--width", "32",
            "--max_steps", "20", *args]


def _wait_for(predicate, proc, timeout=120):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.05)


def _committed_episodes(root: Path) -> int:
    try:  # a commit in progress may be moving the snapshot
        return json.loads((root / ".reverie" / "committed" / "meta" / "info.json").read_text())["total_episodes"]
    except (OSError, ValueError):
        return 0


def test_hard_kill_then_resume_equals_an_uninterrupted_collection(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_cli(killed, "--episodes", "3", "--commit_every", "1"), stderr=subprocess.PIPE, text=True)
    # kill -9 while the second episode is being collected, after the first one was committed
    _wait_for(lambda: _committed_episodes(killed) >= 1 and (killed / ".reverie" / "writing").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cfg = dict(task="lift", height=32, width=32, max_steps=20, commit_every=1)
    collect(CollectConfig(root=killed, episodes=3, **cfg))
    collect(CollectConfig(root=clean, episodes=3, commit_every=3, **{k: v for k, v in cfg.items() if k != "commit_every"}))
    a, b = table(killed), table(clean)
    assert len(a) == len(b) and a["episode_index"].nunique() == 3
    for col in (keys.ACTION, keys.STATE, keys.ENV_STATE, keys.PROGRESS, keys.FAILURE_MODE):
        np.testing.assert_array_equal(np.stack(a[col].to_numpy()), np.stack(b[col].to_numpy()))
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    da, db = LeRobotDataset("r/a", root=killed), LeRobotDataset("r/b", root=clean)
    for i in (0, len(da) // 2, len(da) - 1):
        assert torch.equal(da[i][keys.image_key("front")], db[i][keys.image_key("front")])
    assert not (killed / ".reverie" / "writing").exists()


def test_sigterm_stops_cleanly_and_keeps_finished_episodes(tmp_path):
    root = tmp_path / "ds"
    # a stop after the first commit group (2 episodes), during the next episode
    proc = subprocess.Popen(_cli(root, "--episodes", "50", "--commit_every", "2"), stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(list((root / "meta" / "episodes").rglob("*.parquet"))) > 0 if (root / "meta").exists() else False, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command to resume" in err
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("r/a", root=root)
    assert 1 <= ds.num_episodes < 50 and len(ds) == ds.meta.total_frames
    ds[len(ds) - 1]  # the last episode's video decodes
    assert not (root / ".reverie" / "writing").exists()


def test_a_stop_wrapped_by_compiled_code_is_still_a_stop():
    from data.stop import Interrupted, is_interruption

    try:
        try:
            raise Interrupted()
        except Interrupted as stop:
            raise SystemError("CPUDispatcher(...) returned a result with an exception set") from stop
    except SystemError as wrapped:
        assert is_interruption(wrapped)
    assert is_interruption(Interrupted()) and not is_interruption(SystemError("another")) and not is_interruption(ValueError())


def test_a_stop_wrapped_twice_or_raised_while_handling_it_is_still_a_stop():
    """numba may wrap the stop more than once, by cause or by context; a chain that loops ends."""
    from data.stop import Interrupted, is_interruption

    def wrapped(depth: int, by_cause: bool) -> SystemError:
        try:
            raise Interrupted()
        except Interrupted as stop:
            inner: BaseException = stop
        for _ in range(depth):
            try:
                if by_cause:
                    raise SystemError("CPUDispatcher(...) returned a result with an exception set") from inner
                try:
                    raise inner
                except (Interrupted, SystemError):  # raised while handling: the chain is by context
                    raise SystemError("error return without exception set")
            except SystemError as e:
                inner = e
        return inner

    for depth in (2, 3):
        assert is_interruption(wrapped(depth, by_cause=True)) and is_interruption(wrapped(depth, by_cause=False))
    a, b = SystemError("a"), SystemError("b")
    a.__cause__, b.__context__ = b, a
    assert not is_interruption(a)


class _Killed(Exception):
    """A hard kill as the collector sees it: not a stop after which it may commit."""


SMALL = dict(task="lift", height=32, width=32, max_steps=8, views=("front",), commit_every=1)


def _episodes_in(root: Path) -> int:
    return json.loads((root / "meta" / "info.json").read_text())["total_episodes"]


def _stamps(root: Path, rels: list[str]) -> dict[str, tuple[int, str]]:
    """Each file's modification time and digest: equal stamps mean the file was neither removed nor rewritten."""
    return {rel: ((root / rel).stat().st_mtime_ns, hashlib.md5((root / rel).read_bytes()).hexdigest()) for rel in rels}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> pd.DataFrame:
    return table(collect(CollectConfig(root=tmp_path_factory.mktemp("clean") / "ds", episodes=3, **SMALL)))


@pytest.mark.parametrize("k", range(len(commit_module._COMMIT_STEPS) + 1))
def test_a_kill_at_any_step_of_a_commit_loses_nothing_committed(k, tmp_path, monkeypatch, uninterrupted):
    """Killed before step k of the second episode's commit, the rerun keeps every committed file as it
    was (the episode being committed too, once its snapshot was complete) and ends as an uninterrupted
    collection."""
    root, seen = tmp_path / "ds", {}

    def record(at: Path):
        if at == root and _episodes_in(root) == 2:
            committed = json.loads((root / ".reverie" / "committed" / "files.json").read_text())
            seen["committed"] = _stamps(root, [f for f in committed if not f.startswith("meta/")])
            seen["now"] = _stamps(root, [f for f in commit_module._files(root) if not f.startswith("meta/")])

    def kill(at: Path):
        if at == root and _episodes_in(root) == 2:
            raise _Killed()

    steps = commit_module._COMMIT_STEPS
    monkeypatch.setattr(commit_module, "_COMMIT_STEPS", (record, *steps[:k], kill, *steps[k:]))
    with pytest.raises(_Killed):
        collect(CollectConfig(root=root, episodes=3, **SMALL))
    monkeypatch.undo()
    collect(CollectConfig(root=root, episodes=3, **SMALL))
    kept = seen["now"] if k >= commit_module._FINISHING else seen["committed"]
    assert any(f.startswith("data/") for f in kept) and _stamps(root, list(kept)) == kept
    pd.testing.assert_frame_equal(table(root), uninterrupted)
    assert not (root / ".reverie").exists()  # a finished collection keeps no commit state


def test_a_kill_while_the_dataset_is_created_leaves_no_dataset_without_its_settings(tmp_path, monkeypatch):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from data.summary import summarize

    root, create = tmp_path / "ds", LeRobotDataset.create.__func__

    def create_then_die(cls, *args, **kwargs):
        create(cls, *args, **kwargs)  # meta/info.json is written
        raise _Killed()

    monkeypatch.setattr(LeRobotDataset, "create", classmethod(create_then_die))
    with pytest.raises(_Killed):
        collect(CollectConfig(root=root, episodes=1, **SMALL))
    monkeypatch.undo()
    collect(CollectConfig(root=root, episodes=1, **SMALL))
    assert summarize(root, strip_path=None).episodes == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    before = tree_digest(root)
    with pytest.raises(ValueError, match=r"other settings \(seed differ\)"):
        collect(CollectConfig(root=root, episodes=2, **{**SMALL, "seed": 7}))
    assert tree_digest(root) == before


def test_a_lerobot_dataset_without_our_settings_is_refused_and_left_untouched(tiny_dataset, tmp_path):
    root = tmp_path / "foreign"
    shutil.copytree(tiny_dataset, root, ignore=shutil.ignore_patterns("reverie.json", ".reverie"))
    before = tree_digest(root)
    with pytest.raises(ValueError, match=r"no meta/reverie.json"):
        collect(CollectConfig(**{**TINY, "root": root, "episodes": 6}))
    assert tree_digest(root) == before


def test_a_dataset_with_another_schema_is_refused_and_left_untouched(tiny_dataset):
    before = tree_digest(tiny_dataset)
    with pytest.raises(ValueError, match=r"another schema \(observation.images.front: existing \('video', \(32, 32, 3\)\)"):
        collect(CollectConfig(**{**TINY, "root": tiny_dataset, "height": 64, "width": 64, "episodes": 6}))
    with pytest.raises(ValueError, match="other settings \\(expert differ\\)"):
        collect(CollectConfig(**{**TINY, "root": tiny_dataset, "expert": ExpertConfig(), "episodes": 6}))
    assert tree_digest(tiny_dataset) == before


def test_a_folder_that_is_not_a_dataset_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a LeRobot dataset"):
        collect(CollectConfig(task="lift", episodes=1, root=tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs, message",
    [({"task": "juggle"}, "unknown task 'juggle'"), ({"views": ("front", "top")}, r"unknown camera view\(s\) \['top'\]"),
     ({"height": 0}, "resolution must be positive"), ({"width": -1}, "resolution must be positive")],
)
def test_bad_collect_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CollectConfig(**kwargs)


def test_cli_reports_an_unknown_task(tmp_path, capsys):
    from data.collect import main  # what ``python -m data.collect`` runs

    with pytest.raises(SystemExit) as exit_:
        main(["--task", "juggle", "--root", str(tmp_path / "x")])
    assert exit_.value.code != 0 and "unknown task 'juggle'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_saved_policy_collects_its_own_actions_and_merges_before_the_collection(tiny_dataset, tmp_path):
    """``--policy`` records the policy's own chunks; the README's recipe to fine-tune a world model on
    them merges them *before* the collection (lerobot's merge keeps the order), so the held-out
    last episodes stay the same."""
    from lerobot.datasets import LeRobotDataset, merge_datasets

    from data.clips import DatasetConfig
    from policy.flow import FlowPolicy

    torch.manual_seed(0)
    FlowPolicy(image_size=32, channels=(8, 8), width=32, depth=1, heads=2).save_pretrained(tmp_path / "policy")
    root = collect(CollectConfig(task="lift", episodes=2, height=32, width=32, max_steps=12, seed=50,
                                 policy=tmp_path / "policy", root=tmp_path / "rollouts"))
    df = table(root)
    assert sorted(df["episode_index"].unique()) == [0, 1] and (df[keys.FAILURE_MODE] == 0).all()  # "none": nothing injected
    # the first chunk recorded is the policy's deterministic chunk from the physics start of seed 50
    policy = FlowPolicy.from_pretrained(tmp_path / "policy").eval()
    policy.stochastic = False
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", height=32, width=32))
    obs, info = env.reset(seed=50)
    env.close()
    policy.reset(obs, info, seeds=[50])  # the collector seeds the policy's noise with the episode's seed
    with torch.no_grad():
        chunk = policy.select_action_chunk(obs)[0].numpy()
    recorded = np.stack(df[df["episode_index"] == 0][keys.ACTION].to_numpy())[: len(chunk)]
    np.testing.assert_allclose(recorded, chunk, atol=1e-5)
    with pytest.raises(ValueError, match="reads views"):  # a policy of another resolution is refused
        collect(CollectConfig(task="lift", episodes=1, policy=tmp_path / "policy", root=tmp_path / "r64"))

    merge_datasets([LeRobotDataset("r/policy", root=root), LeRobotDataset("r/lift", root=tiny_dataset)],
                   output_repo_id="r/merged", output_dir=tmp_path / "merged")
    merged, original = table(tmp_path / "merged"), table(tiny_dataset)
    _, held_out = DatasetConfig(root=tmp_path / "merged", val_episodes=1).split()
    assert held_out == [5]
    last = merged[merged["episode_index"] == 5]
    np.testing.assert_array_equal(np.stack(last[keys.ACTION]), np.stack(original[original["episode_index"] == 3][keys.ACTION]))


def test_episode_seeds_survive_lerobots_episode_deletion(tiny_dataset, tmp_path):
    """The collection seed is a column: after lerobot's delete_episodes renumbers the episodes and
    drops meta/reverie.json, each episode still resets physics to the start it was collected from
    (what reverie-rl --simulator physics needs)."""
    from lerobot.datasets.dataset_tools import delete_episodes
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from data.episodes import episode_seeds

    source = LeRobotDataset("local/dataset", root=tiny_dataset)
    edited = delete_episodes(source, [0], output_dir=tmp_path / "edited", repo_id="local/edited")
    assert not (edited.root / "meta" / "reverie.json").exists() and edited.meta.total_episodes == TINY["episodes"] - 1
    seeds = episode_seeds(edited.root, [0, 1, 2])
    assert seeds == episode_seeds(tiny_dataset, [1, 2, 3]) == [1, 2, 3]  # TINY collects from seed 0
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", num_envs=3, views=("front",), height=32, width=32))
    _, info = env.reset(options={"seeds": seeds})
    env.close()
    table = edited.hf_dataset.with_format("torch")
    index, frame = torch.as_tensor(table["episode_index"]), torch.as_tensor(table["frame_index"])
    for episode in range(3):
        first = int(torch.nonzero((index == episode) & (frame == 0))[0])
        assert torch.allclose(info["object_state"][episode], table[first][keys.ENV_STATE], atol=1e-5)
    with pytest.raises(ValueError, match=r"has no episodes \[7\]"):
        episode_seeds(edited.root, [7])
