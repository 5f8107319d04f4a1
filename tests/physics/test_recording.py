"""EpisodeRecorder: a real PhysicsEnv's episodes written as a LeRobotDataset and mp4s, read back."""

import av
import pytest
import torch

from data.collect import quiet_writers
from simulator import keys
from simulator.physics import PhysicsEnv, PhysicsEnvConfig
from simulator.recording import EpisodeRecorder

B, H, A, STEPS = 2, 8, 7, 16


@pytest.fixture(scope="module")
def env():
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", num_envs=B, views=("front",), height=32, width=32, max_steps=STEPS))
    yield env
    env.close()


def test_records_episodes_as_lerobot_dataset_and_mp4(env, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    quiet_writers()
    root, video_dir = tmp_path / "ds", tmp_path / "videos"
    rec = EpisodeRecorder(root, views=("front",), fps=20, video_dir=video_dir, repo_id="reverie/test_recording")
    with pytest.raises(RuntimeError, match="before start"):
        rec.step(torch.zeros(B, H, A), torch.zeros(B), torch.zeros(B, dtype=torch.bool),
                 torch.zeros(B, dtype=torch.bool), {"frames_valid": torch.ones(B, H, dtype=torch.bool)})
    obs, info = env.reset(seed=0)
    with pytest.raises(KeyError, match="wrist"):
        EpisodeRecorder(tmp_path / "other", views=("front", "wrist")).start(obs, info)
    rec.start(obs, info)
    gen = torch.Generator().manual_seed(0)
    sent, states, saved = [], [obs[keys.STATE][:, None]], []
    for _ in range(STEPS // H):
        actions = torch.rand(B, H, A, generator=gen) * 2 - 1
        sent.append(actions)
        after, reward, terminated, truncated, step_info = env.step(actions)
        assert torch.equal(step_info["states"][:, -1], after[keys.STATE])  # PhysicsEnv's states: after each action
        states.append(step_info["states"])
        saved += rec.step(actions, reward, terminated, truncated, step_info)
    assert truncated.all() and saved == [0, 1]  # both episodes ended by truncation in the second chunk
    assert rec.close() == root
    sent = torch.cat(sent, 1)  # (B, STEPS, A)
    before = torch.cat(states, 1)[:, :STEPS]  # the state before each action

    ds = LeRobotDataset("reverie/test_recording", root=root)
    assert ds.meta.total_episodes == 2 and len(ds) == 2 * STEPS
    episode = torch.as_tensor(ds.hf_dataset["episode_index"])
    action = torch.stack([torch.as_tensor(a) for a in ds.hf_dataset[keys.ACTION]])
    state = torch.stack([torch.as_tensor(a) for a in ds.hf_dataset[keys.STATE]])
    assert action.dtype == torch.float32
    for ep in rec.episodes:
        rows = episode == ep["index"]
        assert rows.sum() == STEPS
        assert torch.equal(action[rows], sent[ep["env"]])  # exactly the actions sent
        assert torch.equal(state[rows], before[ep["env"]])
        first = ds[int(torch.nonzero(rows)[0])]
        diff = (first[keys.image_key("front")] - obs[keys.image_key("front")][ep["env"]]).abs().mean()
        assert diff < 0.05, f"episode {ep['index']}: first frame differs from the reset observation by {diff}"
        assert torch.equal(first[keys.STATE], obs[keys.STATE][ep["env"]])
        assert first[keys.TASK] == obs[keys.TASK][ep["env"]]
        done = torch.stack([torch.as_tensor(d) for d in ds.hf_dataset[keys.DONE]])[rows].flatten()
        assert done.tolist() == [False] * (STEPS - 1) + [True]

        assert ep["video"] == video_dir / f"episode_{ep['index']:06d}.mp4" and ep["video"].is_file()
        with av.open(str(ep["video"])) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == STEPS and frames[0].shape == (32, 32, 3)
