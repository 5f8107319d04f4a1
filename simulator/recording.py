"""``EpisodeRecorder``: write the episodes a batched env runs as a LeRobotDataset (and mp4s).

Works with ``PhysicsEnv`` and ``ImaginedEnv`` alike (the step/info contract of ``simulator.env``):

    rec = EpisodeRecorder("outputs/rollouts/run1", views=("front", "wrist"), video_dir="outputs/rollouts/run1_mp4")
    obs, info = env.reset(seed=0); rec.start(obs, info)
    while ...:
        obs, reward, terminated, truncated, info = env.step(actions)
        rec.step(actions, reward, terminated, truncated, info)
        # after a partial reset (or with autoreset): rec.start(obs, reset_info, mask=terminated | truncated)
    rec.close()  # finalizes the dataset; returns its root

Per env b, every valid frame t of a chunk (``info["frames_valid"][b, t]``) becomes one dataset
frame, in lerobot's convention (the observation the action was taken from, then the action):
the images and ``observation.state`` before action t (the reset observation, then the frame and
state after the previous action), ``action`` = actions[b, t], ``next.reward`` (the chunk's reward
on its last valid frame, 0 before), ``next.success`` (the env's success after the frame: on the
chunk's last valid frame the success the step reports, before it the success at the chunk's
start), ``next.done`` (on the frame that ends the episode) and ``task``.

lerobot buffers one episode per dataset, while the envs' episodes end at different times: the
recorder keeps each env's frames in memory and writes an episode whole when it ends
(terminated or truncated). Episodes not ended at ``close`` (or restarted by ``start`` before
they ended) are dropped, with a warning. The dataset is created at the first saved episode
(its image size, state and action dims are read from the data); ``root`` must not exist yet.
With ``video_dir``, every saved episode is also written as ``episode_<index>.mp4`` (the views
side by side, the same frames as the dataset), ``index`` being its dataset episode index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import torch

from simulator import keys

log = logging.getLogger(__name__)


@dataclass
class _Open:
    """One env's episode being recorded: the observation before the next action, and its frames."""

    images: dict  # view -> (h, w, 3) uint8
    state: np.ndarray  # (S,) float32
    task: str
    success: bool
    frames: list = field(default_factory=list)


class EpisodeRecorder:
    """Records the episodes of a batched env as a LeRobotDataset at ``root`` (and mp4s in ``video_dir``)."""

    def __init__(self, root: str | Path, views: tuple[str, ...] = ("front", "wrist"), fps: int = 20,
                 video_dir: str | Path | None = None, repo_id: str = "reverie/imagined", robot_type: str = "panda",
                 vcodec: str = "h264", crf: int = 18):
        self.root = Path(root)
        if self.root.exists():
            raise FileExistsError(f"{self.root} exists: the recorder creates a new dataset, choose another root")
        if not views:
            raise ValueError("views must name at least one camera view")
        self.views, self.fps, self.repo_id, self.robot_type = tuple(views), fps, repo_id, robot_type
        self.vcodec, self.crf = vcodec, crf
        self.video_dir = Path(video_dir) if video_dir is not None else None
        self.episodes: list[dict] = []  # one summary per saved episode: index, env, length, success, video
        self._open: list[_Open | None] | None = None  # per env; None before the first start
        self._ds = None
        self._closed = False

    # ---- recording -----------------------------------------------------------------------
    def start(self, obs: dict, info: dict | None = None, mask=None) -> None:
        """Starts recording new episodes from a reset observation: every env, or those in ``mask`` (B,)."""
        self._check_open()
        missing = [v for v in self.views if keys.image_key(v) not in obs]
        if missing:
            raise KeyError(f"the observation has no view(s) {missing} (keys {sorted(k for k in obs if k != keys.TASK)}): "
                           "render them in the env (views=...) or record fewer views")
        if keys.STATE not in obs:
            raise KeyError(f"the observation has no {keys.STATE!r}")
        B = obs[keys.STATE].shape[0]
        if self._open is None:
            self._open = [None] * B
        elif len(self._open) != B:
            raise ValueError(f"the observation has {B} envs, the recorder was started with {len(self._open)}")
        mask = torch.ones(B, dtype=torch.bool) if mask is None else torch.as_tensor(mask).cpu().bool()
        if mask.shape != (B,):
            raise ValueError(f"mask must have shape ({B},), got {tuple(mask.shape)}")
        images = {v: _to_uint8_hwc(obs[keys.image_key(v)]) for v in self.views}  # (B, h, w, 3)
        state = obs[keys.STATE].detach().cpu().float().numpy()
        success = info["success"].cpu().bool() if info is not None and "success" in info else torch.zeros(B, dtype=torch.bool)
        for b in torch.nonzero(mask).flatten().tolist():
            if self._open[b] is not None and self._open[b].frames:
                log.warning("env %d restarted before its episode ended: dropping its %d frames", b,
                            len(self._open[b].frames))
            self._open[b] = _Open(images={v: images[v][b] for v in self.views}, state=state[b].copy(),
                                  task=str(obs[keys.TASK][b]), success=bool(success[b]))

    def step(self, actions, reward, terminated, truncated, info: dict) -> list[int]:
        """Records one env step's chunk; saves the episodes that ended. Returns their dataset indices."""
        self._check_open()
        if self._open is None:
            raise RuntimeError("EpisodeRecorder.step before start: call rec.start(obs, info) after env.reset()")
        B = len(self._open)
        actions = torch.as_tensor(actions).detach().cpu().float()
        valid = torch.as_tensor(info["frames_valid"]).cpu().bool()
        if actions.ndim != 3 or actions.shape[0] != B:
            raise ValueError(f"actions must be a chunk of shape ({B}, H, A), got {tuple(actions.shape)}")
        H = actions.shape[1]
        if valid.shape != (B, H):
            raise ValueError(f"info['frames_valid'] has shape {tuple(valid.shape)}, the actions ({B}, {H}, A)")
        missing = [v for v in self.views if v not in info["frames"]]
        if missing:
            raise KeyError(f"info['frames'] has no view(s) {missing} (it has {sorted(info['frames'])})")
        if "states" not in info:
            raise KeyError("info has no 'states' (B, H, S): the env must report the state after every action")
        frames = {v: info["frames"][v].cpu().permute(0, 1, 3, 4, 2).numpy() for v in self.views}  # (B, H, h, w, 3)
        states = info["states"].detach().cpu().float().numpy()
        actions_np, reward = actions.numpy(), torch.as_tensor(reward).cpu().float()
        ended = torch.as_tensor(terminated).cpu().bool() | torch.as_tensor(truncated).cpu().bool()
        # with autoreset, info describes the new episodes and final_info the ones that ended
        success = torch.as_tensor(info.get("final_info", info)["success"]).cpu().bool()
        saved = []
        for b in range(B):
            steps = torch.nonzero(valid[b]).flatten().tolist()
            ep = self._open[b]
            if ep is None:
                if steps:
                    raise RuntimeError(f"env {b} ran {len(steps)} valid steps but no episode of it is being "
                                       "recorded: call rec.start(obs, info, mask) after a (partial or auto) reset")
                continue
            for i, t in enumerate(steps):
                last = i == len(steps) - 1
                ep.frames.append({
                    **{keys.image_key(v): ep.images[v] for v in self.views},
                    keys.STATE: ep.state,
                    keys.ACTION: actions_np[b, t].copy(),
                    keys.REWARD: np.array([reward[b].item() if last else 0.0], dtype=np.float32),
                    keys.SUCCESS: np.array([bool(success[b]) if last else ep.success]),
                    keys.DONE: np.array([bool(ended[b]) and last]),
                })
                ep.images = {v: frames[v][b, t].copy() for v in self.views}
                ep.state = states[b, t].copy()
            if steps:
                ep.success = bool(success[b])
            if ended[b] and ep.frames:
                saved.append(self._save(b, ep))
                self._open[b] = None
        return saved

    def close(self) -> Path:
        """Finalizes the dataset (drops unfinished episodes); returns its root. Idempotent."""
        if self._closed:
            return self.root
        self._closed = True
        unfinished = [b for b, ep in enumerate(self._open or []) if ep is not None and ep.frames]
        if unfinished:
            log.warning("closing with unfinished episodes in env(s) %s: they are not saved", unfinished)
        if self._ds is not None:
            self._ds.finalize()
        else:
            log.warning("no episode ended: no dataset was written at %s", self.root)
        return self.root

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- helpers ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the recorder is closed")

    def _save(self, b: int, ep: _Open) -> int:
        ds = self._dataset(ep.frames[0])
        index = ds.meta.total_episodes
        for f in ep.frames:
            ds.add_frame(f | {keys.TASK: ep.task})
        ds.save_episode(parallel_encoding=False)
        video = None
        if self.video_dir is not None:
            video = self.video_dir / f"episode_{index:06d}.mp4"
            write_mp4(video, [np.concatenate([f[keys.image_key(v)] for v in self.views], 1) for f in ep.frames],
                      self.fps, self.crf)
        self.episodes.append({"index": index, "env": b, "length": len(ep.frames), "task": ep.task,
                              "success": ep.success, "video": video})
        return index

    def _dataset(self, frame: dict):
        """The dataset, created at the first saved episode with the shapes of its frames."""
        if self._ds is None:
            from lerobot.configs.video import RGBEncoderConfig
            from lerobot.datasets.lerobot_dataset import LeRobotDataset

            scalar = lambda dtype: {"dtype": dtype, "shape": (1,), "names": None}
            S, A = frame[keys.STATE].shape[0], frame[keys.ACTION].shape[0]
            features = {keys.image_key(v): {"dtype": "video", "shape": frame[keys.image_key(v)].shape,
                                            "names": ["height", "width", "channels"]} for v in self.views}
            features |= {
                keys.STATE: {"dtype": "float32", "shape": (S,), "names": keys.STATE_NAMES if S == len(keys.STATE_NAMES) else None},
                keys.ACTION: {"dtype": "float32", "shape": (A,), "names": keys.ACTION_NAMES if A == len(keys.ACTION_NAMES) else None},
                keys.REWARD: scalar("float32"),
                keys.SUCCESS: scalar("bool"),
                keys.DONE: scalar("bool"),
            }
            self._ds = LeRobotDataset.create(self.repo_id, fps=self.fps, features=features, root=self.root,
                                             robot_type=self.robot_type, use_videos=True, metadata_buffer_size=1,
                                             rgb_encoder=RGBEncoderConfig(vcodec=self.vcodec, crf=self.crf, g=2))
        return self._ds


def _to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """(B, 3, h, w) float in [0, 1] -> (B, h, w, 3) uint8."""
    return (images.detach().cpu().float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_mp4(path: str | Path, frames: list[np.ndarray], fps: int = 20, crf: int = 18) -> Path:
    """Writes (h, w, 3) uint8 frames as an H.264 mp4 (odd sizes are padded to even ones)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    H, W = h + h % 2, w + w % 2  # yuv420p needs even sizes
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for f in frames:
            if (H, W) != (h, w):
                f = np.pad(f, ((0, H - h), (0, W - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
