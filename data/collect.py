"""``reverie-collect``: run scripted experts in physics and write a LeRobotDataset v3.

Every frame holds the views as video (``observation.images.<view>``), proprioception, the
ground-truth object state, the action, reward/success, a progress label, the physics stage,
the task string, and the episode's success and injected failure mode.

Resuming: the dataset is written in commit groups of ``commit_every`` episodes. A commit
finalizes lerobot's writers (closing parquet and video files) and snapshots ``meta/``. Ctrl-C or
SIGTERM keeps what was saved (``data.stop``); after a hard kill, the next run rolls back to the
last commit, or finishes the commit the kill interrupted (``data.commit`` says how). The dataset
is created beside ``root`` with its settings (``meta/reverie.json``) and an empty first commit,
then renamed in whole. Re-running the same command continues from the episodes already there:
episode i always uses seed ``seed + i``, so an interrupted and resumed collection equals an
uninterrupted one. A run that ends (finished or stopped) drops its commit snapshot, so that the
folder holds only lerobot's files and ``meta/reverie.json``; a resumed run takes a new one first.

What the project reads from a dataset is what lerobot's edit and merge tools keep: the columns
(the seed and failure mode of each episode among them) and lerobot's ``meta/``. ``meta/reverie.json``
is provenance, read only to check that a resumed collection uses the same settings.

    reverie-collect --task lift --episodes 20 --root outputs/datasets/lift

``--policy FOLDER`` collects with a saved policy instead of the scripted expert (its
deterministic action chunks, played one action at a time): the policy's own successes and
failures, labelled by physics, with failure mode "none" (nothing injected). A world model
fine-tuned on such rollouts learns what this policy's failures look like (WMPO's policy-behaviour
alignment); use seeds no evaluation uses, e.g. ``--seed 50000``.
"""


import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.commit import commit, finish, recover, start_writing, write_atomic
from data.stop import GracefulStop, Interrupted, is_interruption
from simulator import keys
from simulator.physics.experts import ACTION_DIM, FAILURE_MODES, ExpertConfig, ScriptedExpert

log = logging.getLogger(__name__)
FPS = 20  # robosuite control frequency
REVERIE_META = "meta/reverie.json"  # the collection's settings (provenance; lerobot's edit and merge tools drop it)


@dataclass
class CollectConfig:
    task: str = "lift"  # lift | stack | pick_place_can
    episodes: int = 50  # total episodes wanted in the dataset (a resumed run adds the missing ones)
    root: Path | None = None  # dataset folder; default outputs/datasets/<task>
    repo_id: str | None = None  # default reverie/<task>
    seed: int = 0  # episode i uses seed + i
    views: tuple[str, ...] = ("front", "wrist")  # the cameras recorded, one video each
    height: int = 64  # of each view, in pixels
    width: int = 64  # of each view, in pixels
    render_quality: str = "fast"  # "fast" (arm drawn with collision meshes) or "full"
    # The collection's expert: 10% of episodes in each of three failure modes and 20% near misses
    # (successes and failures a centimetre apart), with action noise on a third of the episodes so
    # that the world model's state head sees actions other than the expert's (docs/research_log.md,
    # sessions 16-18).
    expert: ExpertConfig = field(default_factory=lambda: ExpertConfig(
        failure_mix={"early_release": 0.1, "wrong_target": 0.1, "stall": 0.1, "near_miss": 0.2},
        action_noise=0.3, noisy_share=0.33))
    policy: Path | None = None  # a saved policy (reverie-train policy) to collect with instead of the expert
    hold_steps: int = 10  # steps recorded after the first success
    max_steps: int | None = None  # episode horizon; None = the task's default
    vcodec: str = "h264"  # h264 decodes with every backend (pyav, torchcodec, decord); libsvtav1 is smaller
    crf: int = 18  # the video codec's constant rate factor (lower: larger files, closer to the render)
    commit_every: int = 5  # episodes per commit group
    overwrite: bool = False  # delete an existing dataset at root first

    def __post_init__(self):
        self.env_config()  # validates task, views, resolution and render quality, naming the bad one
        if self.episodes < 0:
            raise ValueError(f"episodes must be >= 0, got {self.episodes=}")
        if self.commit_every < 1:
            raise ValueError(f"commit_every must be >= 1, got {self.commit_every=}")
        self.root = Path(self.root) if self.root is not None else Path("outputs/datasets") / self.task
        self.repo_id = self.repo_id or f"reverie/{self.task}"

    def env_config(self):
        from simulator.physics.env import PhysicsEnvConfig

        return PhysicsEnvConfig(task=self.task, views=self.views, height=self.height, width=self.width,
                                render_quality=self.render_quality, max_steps=self.max_steps,
                                terminate_on_success=False)  # the collector ends episodes itself


def dataset_features(cfg: CollectConfig) -> dict:
    # Every task records the same features (the object state in its common layout), so that lerobot
    # merges datasets of different tasks.
    scalar = lambda dtype: {"dtype": dtype, "shape": (1,), "names": None}
    features = {
        keys.image_key(v): {"dtype": "video", "shape": (cfg.height, cfg.width, 3), "names": ["height", "width", "channels"]}
        for v in cfg.views
    }
    features |= {
        keys.STATE: {"dtype": "float32", "shape": (keys.STATE_DIM,),
                     "names": keys.STATE_NAMES},
        keys.ENV_STATE: {"dtype": "float32", "shape": (keys.ENV_STATE_DIM,), "names": keys.ENV_STATE_NAMES},
        keys.ACTION: {"dtype": "float32", "shape": (ACTION_DIM,),
                      "names": keys.ACTION_NAMES},
        keys.REWARD: scalar("float32"),
        keys.SUCCESS: scalar("bool"),
        keys.DONE: scalar("bool"),
        keys.PROGRESS: scalar("float32"),
        keys.STAGE: scalar("int64"),
        keys.EPISODE_SUCCESS: scalar("bool"),
        keys.FAILURE_MODE: scalar("int64"),
        keys.SEED: scalar("int64"),
    }
    return features


# ---- one episode ----------------------------------------------------------------------------

class ExpertActor:
    """The scripted expert behind the collector's actor interface: ``reset(obs, info, env, seed)``
    returns the episode's failure mode, ``act(obs)`` the next action."""

    def __init__(self, expert: ScriptedExpert):
        self.expert, self.queue = expert, []

    def reset(self, obs: dict, info: dict, env, seed: int) -> str:
        self.queue = []
        return self.expert.reset(info["object_state"][0].numpy(), env.task_env(0), seed)

    def act(self, obs: dict) -> np.ndarray:
        state = obs[keys.STATE][0].numpy()
        if not self.expert.chunked:
            return self.expert.act(state)
        if not self.queue:  # a chunked episode: plan the next chunk from this state, run it blind
            self.queue = list(self.expert.plan_chunk(state))
        return self.queue.pop(0)


class PolicyActor:
    """A saved policy in the expert's place: its deterministic action chunks, one action a step."""

    def __init__(self, policy):
        self.policy, self.queue = policy, []
        policy.stochastic = False  # the flow ODE: the policy's own actions, no exploration noise

    def reset(self, obs: dict, info: dict, env, seed: int) -> str:
        self.queue = []
        self.policy.reset(obs, info, seeds=[seed])  # its sampling noise: a function of the episode's seed
        return "none"  # nothing injected: physics alone decides success

    def act(self, obs: dict) -> np.ndarray:
        import torch

        if not self.queue:
            with torch.no_grad():
                self.queue = list(self.policy.select_action_chunk(obs)[0].float().cpu().numpy())
        return self.queue.pop(0)


def run_episode(env, expert: ScriptedExpert | ExpertActor | PolicyActor, seed: int,
                hold_steps: int) -> tuple[list[dict], dict]:
    """Runs one episode of the expert (or a policy) in a single-env PhysicsEnv; returns its frames
    and labels. A frame holds what the env showed before its action (the images, the state, the
    object state, the stage) and what the action led to (reward, success, the end)."""
    import torch

    from simulator.rollout import Rollout

    actor = ExpertActor(expert) if isinstance(expert, ScriptedExpert) else expert
    rollout = Rollout(env, seed=seed)
    mode = actor.reset(rollout.obs, rollout.info, env, seed)
    before = rollout.info
    frames, first_success = [], None
    act = lambda obs: torch.from_numpy(actor.act(obs).astype(np.float32))[None, None]
    for step in rollout.run(act):
        frame = {keys.image_key(v): img for v, img in _hwc_frames(before).items()}
        frame |= {keys.STATE: step.obs[keys.STATE][0].numpy(), keys.ENV_STATE: before["object_state"][0].numpy(),
                  keys.ACTION: step.actions[0, 0].numpy(), keys.STAGE: np.array([int(before["stage"][0])], dtype=np.int64)}
        solved_now = bool(step.info["stage"][0] == env.spec.num_stages)
        if solved_now and first_success is None:
            first_success = len(frames)
        end = bool(rollout.done[0]) or (first_success is not None and len(frames) - first_success >= hold_steps)
        frame |= {keys.REWARD: np.array([solved_now], dtype=np.float32), keys.SUCCESS: np.array([solved_now]),
                  keys.DONE: np.array([end])}
        frames.append(frame)
        if end:
            break
        before = step.info
    success = first_success is not None
    for t, f in enumerate(frames):
        # Successes: the standard t/T label, 1 from the first solved frame on. Failures: the
        # fraction of physics milestones reached at that frame (never 1).
        progress = min(1.0, (t + 1) / (first_success + 1)) if success else f[keys.STAGE][0] / env.spec.num_stages
        f[keys.PROGRESS] = np.array([progress], dtype=np.float32)
        f[keys.EPISODE_SUCCESS] = np.array([success])
        f[keys.FAILURE_MODE] = np.array([FAILURE_MODES.index(mode)], dtype=np.int64)
        f[keys.SEED] = np.array([seed], dtype=np.int64)
    return frames, {"success": success, "failure_mode": mode, "length": len(frames), "seed": seed}


def _hwc_frames(info: dict) -> dict:
    """The first frame of env 0 of every view, as (h, w, 3) uint8 arrays (what lerobot writes)."""
    return {v: f[0, 0].permute(1, 2, 0).numpy() for v, f in info["frames"].items()}


def policy_actor(cfg: CollectConfig) -> PolicyActor:
    """The saved policy at ``cfg.policy``, checked against the collection's views and resolution."""
    from policy import camera_views, load_policy

    policy = load_policy(cfg.policy, cfg.task)
    views, size = camera_views(policy)
    missing = [v for v in views if v not in cfg.views]
    if missing or (size is not None and (size, size) != (cfg.height, cfg.width)):
        raise ValueError(f"policy {cfg.policy} reads views {views} at {size}x{size}; the collection renders "
                         f"{cfg.views} at {cfg.height}x{cfg.width}")
    return PolicyActor(policy)


# ---- opening the dataset --------------------------------------------------------------------

def _encoder(cfg: CollectConfig):
    from lerobot.configs.video import RGBEncoderConfig

    return RGBEncoderConfig(vcodec=cfg.vcodec, crf=cfg.crf, g=2)  # GOP 2: fast random access for clips


def _reopen(cfg: CollectConfig):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset.resume(cfg.repo_id, root=cfg.root, rgb_encoder=_encoder(cfg))


def _creating(root: Path) -> Path:
    return root.parent / f".{root.name}.creating"


def _open_dataset(cfg: CollectConfig, features: dict):
    """Creates the dataset, or reopens an existing one after checking it is the same collection."""
    root = cfg.root
    if cfg.overwrite and root.exists():
        shutil.rmtree(root)
    if _creating(root).exists():  # ours alone, and it never held an episode
        shutil.rmtree(_creating(root))
        log.warning("%s: removed %s, left by a run killed while creating the dataset", root, _creating(root))
    if root.exists() and (done := recover(root)):
        log.warning("%s: %s", root, done)
    if root.exists() and any(root.iterdir()):
        check_same_collection(root, cfg, features)
        commit(root)  # what a run killed from here on rolls back to (a finished run kept none)
        return _reopen(cfg)
    return _create_dataset(cfg, features)


def _create_dataset(cfg: CollectConfig, features: dict):
    """Builds the empty dataset beside ``root``, with meta/reverie.json and a first commit, and renames it
    in: a folder at ``root`` never lacks our settings or a commit to roll back to."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    new = _creating(cfg.root)
    ds = LeRobotDataset.create(cfg.repo_id, fps=FPS, features=features, root=new, robot_type="panda",
                               use_videos=True, rgb_encoder=_encoder(cfg), metadata_buffer_size=1)
    write_atomic(new / REVERIE_META, json.dumps(_reverie_meta(cfg), indent=2, default=str))
    ds.finalize()
    commit(new)
    new.rename(cfg.root)  # replaces an empty folder at root, if there is one
    return _reopen(cfg)


def _reverie_meta(cfg: CollectConfig) -> dict:
    d = asdict(cfg)
    for k in ("episodes", "root", "overwrite", "commit_every"):  # these may change between runs
        d.pop(k)
    return {"collect": d, "failure_modes": list(FAILURE_MODES)}


def check_same_collection(root: Path, cfg: CollectConfig, features: dict) -> None:
    """Raises a clear error, before touching anything, if ``root`` holds another collection."""
    info_path = root / "meta" / "info.json"
    if not info_path.exists():
        raise FileExistsError(f"{root} exists and is not a LeRobot dataset (no meta/info.json); "
                              "choose another --root or pass --overwrite true")
    info = json.loads(info_path.read_text())
    theirs = {k: (v["dtype"], tuple(v["shape"])) for k, v in info["features"].items()}
    ours = {k: (v["dtype"], tuple(v["shape"])) for k, v in features.items()}
    diff = sorted(k for k in set(theirs) | set(ours)
                  if k not in {"timestamp", "frame_index", "episode_index", "index", "task_index"}
                  and theirs.get(k) != ours.get(k))
    if diff:
        detail = "; ".join(f"{k}: existing {theirs.get(k)} vs requested {ours.get(k)}" for k in diff)
        raise ValueError(f"{root} holds a dataset with another schema ({detail}). Nothing was changed; "
                         "choose another --root or pass --overwrite true")
    meta_path = root / REVERIE_META
    if not meta_path.exists():  # reverie-collect writes it before the dataset appears at root
        raise ValueError(f"{root} holds a LeRobot dataset with no {REVERIE_META}: reverie-collect did not make it, "
                         "so whether it used the same settings is unknown. Nothing was changed; choose another "
                         "--root or pass --overwrite true")
    existing = json.loads(meta_path.read_text())["collect"]
    requested = json.loads(json.dumps(_reverie_meta(cfg)["collect"], default=str))
    changed = sorted(k for k in requested if existing.get(k) != requested[k])
    if changed:
        raise ValueError(f"{root} was collected with other settings ({', '.join(changed)} differ); a resumed "
                         "collection must use the same ones. Nothing was changed.")


# ---- the collection loop --------------------------------------------------------------------

def collect(cfg: CollectConfig) -> Path:
    """Collects until the dataset at ``cfg.root`` holds ``cfg.episodes`` episodes; returns the root."""
    from simulator.physics.env import PhysicsEnv

    features = dataset_features(cfg)
    ds = _open_dataset(cfg, features)
    root = cfg.root
    start = ds.meta.total_episodes
    if start >= cfg.episodes:
        ds.finalize()
        finish(root)
        log.info("%s already holds %d episodes (>= %d requested)", root, start, cfg.episodes)
        return root
    env = PhysicsEnv(cfg.env_config())
    expert = ScriptedExpert(env.spec, cfg.expert) if cfg.policy is None else policy_actor(cfg)
    start_writing(root)
    bar = tqdm(range(start, cfg.episodes), initial=start, total=cfg.episodes, desc=f"collect {cfg.task}", unit="ep")
    stop = GracefulStop()
    clean = False  # True when no episode is half-written, so the dataset may be committed
    try:
        with stop:
            for i in bar:
                clean = True
                frames, labels = run_episode(env, expert, cfg.seed + i, cfg.hold_steps)
                clean, stop.saving = False, True  # a stop waits for the save, and for the commit
                for f in frames:
                    ds.add_frame(f | {keys.TASK: env.spec.instruction})
                ds.save_episode(parallel_encoding=False)  # a process pool per episode costs more than it saves
                bar.set_postfix(success=labels["success"], mode=labels["failure_mode"], steps=labels["length"])
                if (i + 1 - start) % cfg.commit_every == 0 and i + 1 < cfg.episodes:
                    ds.finalize()
                    commit(root)
                    ds = _reopen(cfg)
                    start_writing(root)
                clean, stop.saving = True, False
                if stop.requested:
                    raise Interrupted()
            clean = True
    except (Interrupted, SystemError) as e:
        if not is_interruption(e):
            raise
        log.warning("interrupted: %s keeps its %d finished episodes; run the same command to resume",
                    root, ds.meta.total_episodes)
        raise KeyboardInterrupt from None
    finally:
        env.close()
        if clean:
            ds.finalize()
            finish(root)
    return root


def quiet_writers() -> None:
    """Our progress bar is the one to read: silence FFmpeg's statistics and datasets' bars."""
    import datasets

    from data.video import quiet_libav

    quiet_libav()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> None:
    from data import cli
    from data.summary import summarize

    cfg = cli.parse(CollectConfig, argv, prog="reverie-collect")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    quiet_writers()
    root = cli.run(collect, cfg)
    print(summarize(root).to_text())


if __name__ == "__main__":
    main()
