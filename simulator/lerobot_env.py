"""lerobot's own evaluation in imagination: the env type ``reverie`` of ``lerobot-eval``.

    lerobot-eval --policy.path=outputs/policy/model --env.type=reverie \
        --env.world_model=outputs/demo/world_model/model --env.progress=outputs/demo/progress/model \
        --env.dataset=outputs/demo/dataset --env.val_episodes=30 --eval.n_episodes=20 --eval.batch_size=10

(any lerobot policy folder: ``reverie-train policy --policy_type diffusion``'s ``<output_dir>/model``
or lerobot-train's ``checkpoints/last/pretrained_model``; without ``--env.dataset`` the episodes
start from physics resets of ``--env.task``.)

lerobot-eval imports the installed distribution ``lerobot_env_reverie`` (simulator/lerobot_plugin),
which imports this module, which registers ``ReverieEnvConfig`` as ``--env.type=reverie``. lerobot
builds envs through ``EnvConfig.create_envs``; ours returns one ``ImaginedVectorEnv``, a gymnasium
VectorEnv of ``--eval.batch_size`` envs around one batched ``ImaginedEnv``.

Dimension legend: B envs (``--eval.batch_size``), H the world model's action chunk, A action dim,
S state dim, V views, h x w image size.

What stepping a chunked env one action at a time implies:

- The world model imagines a chunk of H actions at once, so ``ImaginedVectorEnv`` collects the
  policy's actions and steps the imagined env when a chunk is complete. Between chunk boundaries
  ``step`` returns the observation after the last chunk again, reward 0, not done: a policy must
  re-plan only at chunk boundaries, i.e. lerobot's ``n_action_steps`` a multiple of H. A policy
  that re-planned in between would act on a stale observation; ``create_envs`` refuses it.
- A policy with ``n_obs_steps`` k > 1 keeps a queue of the observations of its last k steps, and
  the k-1 before a re-plan lie inside the chunk, which is imagined only once its last action is
  in. So at each of those steps ``ImaginedVectorEnv`` peeks (``ImaginedEnv.peek``): it imagines
  the chunk with the actions so far, the missing ones held at the latest, and returns the frame
  and state after the latest action, which no later action can change in physics. The chunk is
  then imagined from all its actions with the same sampling noise. This costs k-1 extra world-model
  calls per chunk, and needs a world model that imagines every env step (frame stride 1).
- The chunk's reward, ``terminated`` (the imagined env's success) and ``truncated`` come at the
  chunk's last step, so an episode lerobot counts ends at a chunk boundary even when the imagined
  env ended it at a frame inside the chunk (``info["episode_steps"]`` keeps the imagined count).
  Per-step rewards add up to the imagined env's; ``info["is_success"]`` is its success flag.
- lerobot's ``--seed`` picks the starts: the episode of seed s starts from start s mod N of the
  dataset's episodes (``--env.dataset``), or from the physics reset of seed s (no dataset), as
  ``reverie-eval policy``'s matched starts do.
- lerobot's videos show the observation of each step, so each imagined chunk appears as its last
  frame held for H steps.
- lerobot reads the policy's config only after it built the env; to check ``n_action_steps`` and
  ``n_obs_steps``, ``create_envs`` reads the policy named on the command line (``--policy.path``
  and its ``--policy.*`` overrides), as lerobot's ``EvalPipelineConfig`` does. A policy built from
  scratch (``--policy.type``) is not checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.envs.utils import NEW_ROLLOUT_OPTION

from simulator import keys
from simulator.env import ImaginedEnv, ImaginedEnvConfig, load_normalizer
from simulator.normalization import Normalizer
from simulator.progress import ProgressModel
from simulator.starts import StartFrames
from simulator.world_model import WorldModel

STATE_KEY = "agent_pos"  # the raw observation key lerobot's preprocess_observation maps to observation.state
LOCAL_REPO_ID = "local/dataset"  # lerobot wants a repo id even for a local root

StartSource = Callable[[list[int]], StartFrames]  # the starts of the episodes of these seeds, one each


@EnvConfig.register_subclass("reverie")
@dataclass
class ReverieEnvConfig(EnvConfig):
    """Imagined episodes of a saved world model and progress model, for ``lerobot-eval``."""

    task: str | None = "lift"  # physics task whose resets are the starts (without --env.dataset)
    fps: int = 20  # the videos' frame rate: the physics control rate
    world_model: Path | None = None  # a saved WorldModel folder (required)
    progress: Path | None = None  # a saved ProgressModel folder (required)
    # Start from the first frames of this Reverie dataset's episodes; None: from physics resets.
    dataset: Path | None = None
    # With a dataset: its last N episodes, the ones a training with --dataset.val_episodes N held
    # out; None: every episode.
    val_episodes: int | None = 2
    device: str = "cpu"  # where the world model and the progress model run
    # The imagined env's settings; its num_envs is lerobot's --eval.batch_size.
    imagined: ImaginedEnvConfig = field(default_factory=ImaginedEnvConfig)

    def __post_init__(self):
        if self.world_model is None or self.progress is None:
            raise ValueError(f"give both saved models, --env.world_model and --env.progress, got "
                             f"{self.world_model=} {self.progress=}")
        if self.val_episodes is not None and self.val_episodes < 1:
            raise ValueError(f"val_episodes must be >= 1 or None (every episode), got {self.val_episodes=}")
        if self.imagined.num_envs != ImaginedEnvConfig.num_envs:
            raise ValueError(f"the number of imagined envs is lerobot's --eval.batch_size, not "
                             f"--env.imagined.num_envs, got {self.imagined.num_envs=}")
        self.world_model, self.progress = Path(self.world_model), Path(self.progress)
        wm = saved_config(self.world_model, "WorldModel")
        views = tuple(saved_config(self.progress, "ProgressModel")["views"])
        self.chunk = int(wm["horizon"])
        self.frame_stride = self.chunk // int(wm.get("future") or self.chunk)
        size = int(wm["image_size"])
        self.features = {keys.image_key(v): PolicyFeature(FeatureType.VISUAL, (size, size, 3)) for v in views}
        self.features[STATE_KEY] = PolicyFeature(FeatureType.STATE, (int(wm["state_dim"]),))
        self.features[keys.ACTION] = PolicyFeature(FeatureType.ACTION, (int(wm["action_dim"]),))
        self.features_map = {k: k for k in self.features} | {STATE_KEY: keys.STATE}

    @property
    def gym_kwargs(self) -> dict:
        return {}  # create_envs builds the env itself, not through gym.make

    def create_envs(self, n_envs: int, use_async_envs: bool = False) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        """{"reverie": {0: one ImaginedVectorEnv of n_envs envs}}; the envs are batched inside one
        world model call, so ``use_async_envs`` (processes) has nothing to parallelise."""
        policy = policy_on_command_line()
        history = 1 if policy is None else check_policy(policy, self.chunk, self.frame_stride)
        return {self.type: {0: self.make_vector_env(n_envs, history)}}

    def make_vector_env(self, n_envs: int, history: int = 1) -> ImaginedVectorEnv:
        views = tuple(keys.view_of(k) for k, f in self.features.items() if f.type is FeatureType.VISUAL)
        size = self.features[keys.image_key(views[0])].shape[0]
        if self.dataset is not None:
            starts: StartSource = StartPool(dataset_starts(Path(self.dataset), views, self.val_episodes))
        else:
            starts = PhysicsResets(self.task, views, size)
        return ImaginedVectorEnv(
            WorldModel.from_pretrained(self.world_model).to(self.device),
            ProgressModel.from_pretrained(self.progress).to(self.device),
            load_normalizer(self.world_model, self.dataset), views, starts,
            replace(self.imagined, num_envs=n_envs), history=history, fps=self.fps)


def saved_config(folder: Path, class_name: str) -> dict:
    """The config.json of a model saved in ``folder``, checked to be a ``class_name``'s."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: not a saved {class_name}")
    config = json.loads(path.read_text())
    if config.get("_class_name") != class_name:
        raise ValueError(f"{folder} holds a {config.get('_class_name')} checkpoint, not a {class_name}")
    return config


def check_policy(policy, chunk: int, frame_stride: int) -> int:
    """The number of observation steps a lerobot policy config reads, after refusing one that would
    act on the stale observations between chunk boundaries: it must re-plan every multiple of
    ``chunk`` steps, and read a history only from a world model that imagines every step."""
    n_action, n_obs = getattr(policy, "n_action_steps", None), getattr(policy, "n_obs_steps", 1)
    if n_action is None or n_action < 1 or n_action % chunk:
        raise ValueError(f"the imagined env steps the world model's chunks of {chunk} actions and observes only "
                         f"between them: the policy must re-plan every multiple of {chunk} steps "
                         f"(--policy.n_action_steps={chunk}), got n_action_steps={n_action}")
    if n_obs > 1 and frame_stride != 1:
        raise ValueError(f"the world model imagines one frame every {frame_stride} env steps, so a history of "
                         f"{n_obs} observation steps cannot be shown: the policy needs n_obs_steps=1, got {n_obs}")
    return n_obs


def policy_on_command_line():
    """The config of the policy lerobot-eval was given (``--policy.path``, with its ``--policy.*``
    overrides), read as lerobot's ``EvalPipelineConfig`` reads it; None without one."""
    from lerobot.configs import parser
    from lerobot.configs.policies import PreTrainedConfig

    path = parser.get_path_arg("policy")
    if path is None:
        return None
    return PreTrainedConfig.from_pretrained(path, cli_overrides=parser.get_cli_overrides("policy") or [])


class StartPool:
    """A fixed pool of N starts: the episode of seed s starts from start s mod N."""

    def __init__(self, starts: StartFrames):
        self.starts = starts

    def __call__(self, seeds: list[int]) -> StartFrames:
        return self.starts.take([s % len(self.starts) for s in seeds])


class PhysicsResets:
    """The episode of seed s starts from the physics reset of seed s, rendered at the world model's size."""

    def __init__(self, task: str, views: tuple[str, ...], size: int):
        self.task, self.views, self.size = task, views, size
        self.env = None

    def __call__(self, seeds: list[int]) -> StartFrames:
        from simulator.physics.env import PhysicsEnv, PhysicsEnvConfig

        if self.env is None or self.env.num_envs != len(seeds):
            self.close()
            self.env = PhysicsEnv(PhysicsEnvConfig(task=self.task, num_envs=len(seeds), views=self.views,
                                                   height=self.size, width=self.size))
        obs, info = self.env.reset(options={"seeds": seeds})
        return StartFrames.from_observation(obs, info, self.views)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def dataset_starts(root: Path, views: tuple[str, ...], val_episodes: int | None) -> StartFrames:
    """The first frames of the last ``val_episodes`` episodes (None: all) of the dataset at ``root``."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"--env.dataset {root} is not a LeRobotDataset: it has no meta/info.json")
    data = LeRobotDataset(LOCAL_REPO_ID, root=root, video_backend="pyav", return_uint8=True)
    n = data.meta.total_episodes
    if val_episodes is not None and val_episodes > n:
        raise ValueError(f"the dataset {root} has {n} episodes, fewer than {val_episodes=}")
    wanted = [keys.image_key(v) for v in views] + [keys.STATE]
    missing = [k for k in wanted if k not in data.meta.features]
    if missing:
        raise KeyError(f"the dataset {root} has no {missing}: starts need every view the models read and the state")
    episodes = range(n - val_episodes if val_episodes else 0, n)
    items = [data[int(data.meta.episodes[ep]["dataset_from_index"])] for ep in episodes]
    frames = torch.stack([torch.stack([it[keys.image_key(v)] for v in views]) for it in items])
    if keys.ENV_STATE in data.meta.features:  # for scripted experts only: the imagined env never reads it
        object_state = keys.common_env_state(torch.stack([it[keys.ENV_STATE] for it in items]).float(), root)
    else:
        object_state = torch.zeros(len(items), 0)
    return StartFrames(frames=frames, first_frames=frames.clone(), state=torch.stack([it[keys.STATE] for it in items]),
                       object_state=object_state, task=[it["task"] for it in items])


class ImaginedVectorEnv(gym.vector.VectorEnv):
    """B imagined episodes stepped one action at a time, as lerobot-eval steps a gymnasium VectorEnv
    (module docstring: what that implies). Observations: ``pixels`` {view: (B, h, w, 3) uint8} and
    ``agent_pos`` (B, S) float32, which lerobot's ``preprocess_observation`` turns into our keys;
    actions (B, A) in env units. Finished envs stay frozen (reward 0) until the next reset.
    ``history``: the policy's observation steps; the observations of the last ``history - 1`` steps
    of each chunk are peeked (module docstring)."""

    def __init__(self, world_model: WorldModel, progress: ProgressModel, normalizer: Normalizer,
                 views: tuple[str, ...], starts: StartSource, config: ImaginedEnvConfig, history: int = 1,
                 fps: int = 20):
        spec = world_model.spec
        if history < 1 or (history > 1 and spec.future != spec.horizon):
            raise ValueError(f"a history of {history} observation steps needs history >= 1 and, above 1, a world "
                             f"model that imagines every env step (future {spec.future} = horizon {spec.horizon})")
        self.history = history
        self.world_model, self.progress_model, self.normalizer = world_model, progress, normalizer
        self.views, self.starts, self.config = tuple(views), starts, config
        self.num_envs, self.chunk, self.action_dim = config.num_envs, spec.horizon, spec.action_dim
        self.metadata = {"render_fps": fps, "autoreset_mode": gym.vector.AutoresetMode.DISABLED}
        size = spec.image_size
        self.single_observation_space = spaces.Dict({
            "pixels": spaces.Dict({v: spaces.Box(0, 255, (size, size, 3), np.uint8) for v in self.views}),
            STATE_KEY: spaces.Box(-np.inf, np.inf, (spec.state_dim,), np.float32)})
        self.single_action_space = spaces.Box(-1.0, 1.0, (spec.action_dim,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        # lerobot runs at most this many steps: the imagined horizon, rounded up to whole chunks
        self._max_episode_steps = math.ceil(config.max_steps / self.chunk) * self.chunk
        self.imagined: ImaginedEnv | None = None
        self._pending = np.zeros((self.num_envs, self.chunk, self.action_dim), np.float32)
        self._t, self._next_seed = 0, 0

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        unknown = set(options or {}) - {NEW_ROLLOUT_OPTION}
        if unknown:
            raise ValueError(f"ImaginedVectorEnv.reset takes no options {sorted(unknown)}")
        seeds = self._seeds(seed)
        self.imagined = ImaginedEnv(self.world_model, self.progress_model, self.starts(seeds), self.normalizer,
                               self.views, self.config)
        obs, info = self.imagined.reset(seed=seeds[0], options={"start_index": list(range(self.num_envs))})
        self._t = 0
        self._keep(obs, info)
        return self._obs, self._info() | {"seeds": np.array(seeds)}

    def step(self, actions):
        if self.imagined is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.num_envs, self.action_dim):
            raise ValueError(f"actions must have shape (B={self.num_envs}, A={self.action_dim}), one per env, got "
                             f"{actions.shape}")
        self._pending[:, self._t] = actions
        self._t += 1
        if self._t < self.chunk:  # mid-chunk: nothing taken yet
            if self._t > self.chunk - self.history:  # a policy's history reads this step: peek
                held = self._pending.copy()
                held[:, self._t:] = held[:, self._t - 1:self._t]
                frames, states = self.imagined.peek(torch.from_numpy(held))
                self._keep_frames(frames[:, :, self._t - 1], states[:, self._t - 1])
            nothing = np.zeros(self.num_envs, dtype=bool)
            return self._obs, np.zeros(self.num_envs, np.float32), nothing, nothing.copy(), self._info()
        self._t = 0
        obs, reward, terminated, truncated, info = self.imagined.step(torch.from_numpy(self._pending.copy()))
        self._keep(obs, info)
        return self._obs, reward.numpy().astype(np.float32), terminated.numpy(), truncated.numpy(), self._info()

    def render(self) -> list[np.ndarray]:
        """(h, V*w, 3) uint8 per env: its latest observation's views side by side."""
        self._require_reset()
        return list(np.concatenate([self._obs["pixels"][v] for v in self.views], axis=2))

    def call(self, name: str, *args, **kwargs) -> tuple:
        """lerobot-eval's ``env.call`` of ``render``, ``task``, ``task_description`` and ``_max_episode_steps``."""
        return tuple(self.render()) if name == "render" else self.get_attr(name)

    def get_attr(self, name: str) -> tuple:
        if name == "_max_episode_steps":
            return (self._max_episode_steps,) * self.num_envs
        if name in ("task", "task_description"):
            self._require_reset()
            return tuple(self._tasks)
        raise AttributeError(f"ImaginedVectorEnv has no per-env attribute {name!r}")

    def close(self, **kwargs) -> None:
        if isinstance(self.starts, PhysicsResets):
            self.starts.close()
        self.closed = True

    # ---- helpers ---------------------------------------------------------------------------
    def _seeds(self, seed: int | Sequence[int] | None) -> list[int]:
        """One seed per env: a list as given, an int s as s, s + 1, ..., None continuing the count."""
        if seed is None or isinstance(seed, int):
            first = self._next_seed if seed is None else seed
            seeds = list(range(first, first + self.num_envs))
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != self.num_envs:
                raise ValueError(f"give one seed per env ({self.num_envs}), got {len(seeds)}")
        self._next_seed = seeds[-1] + 1
        return seeds

    def _keep(self, obs: dict, info: dict) -> None:
        frames = torch.stack([(obs[keys.image_key(v)] * 255).round().to(torch.uint8) for v in self.views], 1)
        self._keep_frames(frames, obs[keys.STATE])
        self._tasks = list(obs[keys.TASK])
        self._success, self._steps = info["success"].numpy().copy(), info["steps"].numpy().copy()

    def _keep_frames(self, frames: torch.Tensor, state: torch.Tensor) -> None:
        """Keeps (B, V, 3, h, w) uint8 frames and (B, S) states as the observation lerobot reads."""
        pixels = {v: frames[:, i].permute(0, 2, 3, 1).numpy() for i, v in enumerate(self.views)}
        self._obs = {"pixels": pixels, STATE_KEY: state.numpy().astype(np.float32)}

    def _info(self) -> dict:
        return {"is_success": self._success.copy(), "episode_steps": self._steps.copy()}

    def _require_reset(self) -> None:
        if self.imagined is None:
            raise RuntimeError("call reset() first")
