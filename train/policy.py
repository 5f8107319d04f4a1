"""Behaviour cloning of a policy on a LeRobot dataset (``reverie-train policy``).

    reverie-train policy --dataset.root outputs/demo/dataset --output_dir outputs/policy
    reverie-eval policy --policies bc=outputs/policy/model ...

    reverie-train policy --policy_type diffusion --diffusion '{"down_dims": [32, 64, 128]}' ...

A sample is one frame of a training episode (every view, the state, the task) and the action
chunk that follows it (padded past the episode's end, padding left out of the loss).
``--episodes success`` clones only the successful episodes; the default clones them all,
failures included, as a dataset of mixed quality would be used.

``--policy_type`` picks the policy:

* ``flow`` (default): the flow-matching policy of ``policy.flow`` (``--policy.*`` sets its
  size). Images get random shifts of ``--shift`` pixels (DrQ), which a policy trained on a few
  hundred episodes needs not to memorise pixel positions. ``<output_dir>/model`` is a FlowPolicy.
* ``diffusion``: lerobot's Diffusion Policy (Chi et al. 2023), built by
  ``policy.lerobot_adapter.cpu_diffusion_config`` with ``--policy.chunk_size`` actions per chunk
  (its ``n_action_steps``; the other ``--policy.*`` fields are the flow policy's and unused) and
  ``--diffusion`` (JSON) overriding any other ``DiffusionConfig`` field. lerobot's own
  ``forward`` gives the loss, on a batch that lerobot's preprocessor has normalised with the
  dataset's statistics; the chunk spans the config's ``horizon``, padded with copies of the
  episode's last action as lerobot's datasets pad, the padding left out of the loss
  (``do_mask_loss_for_padding``). Its augmentation is lerobot's random crop (``crop_shape``), not
  ``--shift``. ``<output_dir>/model`` is a lerobot checkpoint (weights, config, processors) that
  ``policy.load_policy`` opens as a ``LerobotDiffusionPolicy``, which RL can fine-tune (DPPO).

The loop is the world model's (``train.loop``): EMA, checkpoints, exact resume, metrics.jsonl.
A resumed diffusion run continues exactly too: lerobot draws its noise, timesteps and crops from
the global RNG, which the checkpoints hold.

Dimension legend: B batch, V views, H chunk length, T diffusion horizon (>= H), A action dim,
S state dim, h x w image size.
"""

import dataclasses
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data.clips import DatasetConfig
from data.episodes import DEMO_HELD_OUT, FrameTable
from policy.flow import FlowPolicy, FlowPolicyConfig
from simulator import keys
from train import loop
from train.loop import to_device

log = logging.getLogger(__name__)

EPISODE_CHOICES = ("all", "success")
POLICY_TYPES = ("flow", "diffusion")
ACTION_IS_PAD = keys.ACTION + "_is_pad"  # lerobot's padding flags of the action chunk (B, T)
# Our defaults for the diffusion policy, over cpu_diffusion_config's; --diffusion overrides them.
DIFFUSION_DEFAULTS = {"do_mask_loss_for_padding": True}
# DiffusionConfig fields that the dataset and the other options decide.
DIFFUSION_FIXED = ("input_features", "output_features", "n_obs_steps", "n_action_steps", "device")


@dataclass
class TrainPolicyConfig(loop.LoopConfig):
    # the demo's split (a tenth of its episodes held out): policy cloning and RL starts
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(val_episodes=DEMO_HELD_OUT))
    policy_type: str = "flow"  # flow (policy.flow) | diffusion (lerobot's Diffusion Policy)
    # The flow policy; views, image size and action/state dims are filled in from the dataset.
    # The diffusion policy takes only chunk_size from here.
    policy: FlowPolicyConfig = field(default_factory=FlowPolicyConfig)
    # The diffusion policy: DiffusionConfig fields over cpu_diffusion_config's and
    # DIFFUSION_DEFAULTS, e.g. --diffusion '{"down_dims": [32, 64, 128], "num_inference_steps": 10}'.
    diffusion: dict[str, Any] = field(default_factory=dict)
    episodes: str = "all"  # all | success: which training episodes are cloned
    shift: int = 4  # random image shift in pixels for the flow policy (0 = none)
    # A world model whose re-generations of the training episodes (open loop from their first
    # frames, their recorded actions) the policy also clones: frames and states as the imagined env
    # shows them, so that it acts in imagination as it does in physics. None = real frames only.
    world_model: Path | None = None
    regenerated_prob: float = 0.5  # share of samples read from the re-generations (with world_model)
    output_dir: Path = Path("outputs/policy")  # model/ (the EMA weights), checkpoints/, metrics.jsonl
    steps: int = 3000  # optimiser steps in all (a resumed run goes on to this many)
    batch_size: int = 64  # samples per optimiser step and process, before accumulation
    lr: float = 3e-4  # peak learning rate (AdamW), after warm-up, then a cosine decay to 0
    ema_decay: float = 0.995  # of the weights' exponential moving average, which is what is saved
    checkpoint_every: int = 500  # steps between checkpoints (a run resumes from the latest)
    num_workers: int = 0  # DataLoader workers (0: batches are read in the training process)

    def __post_init__(self):
        super().__post_init__()
        self.dataset.require()
        self.output_dir = Path(self.output_dir)
        if self.episodes not in EPISODE_CHOICES:
            raise ValueError(f"episodes must be one of {EPISODE_CHOICES}, got {self.episodes=}")
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0, got {self.shift=}")
        if not 0 <= self.regenerated_prob <= 1:
            raise ValueError(f"regenerated_prob must be in [0, 1], got {self.regenerated_prob=}")
        if self.world_model is not None:
            self.world_model = Path(self.world_model)
            if not (self.world_model / "config.json").is_file():
                raise FileNotFoundError(f"--world_model {self.world_model} is not a saved world model (no config.json)")
        if self.policy_type not in POLICY_TYPES:
            raise ValueError(f"policy_type must be one of {POLICY_TYPES}, got {self.policy_type=}")
        if self.diffusion and self.policy_type != "diffusion":
            raise ValueError(f"diffusion options are for --policy_type diffusion, got {self.diffusion=} "
                             f"with {self.policy_type=}")
        if self.diffusion:
            from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

            known = {f.name for f in dataclasses.fields(DiffusionConfig)} - set(DIFFUSION_FIXED)
            if unknown := sorted(set(self.diffusion) - known):
                raise ValueError(f"diffusion options must be DiffusionConfig fields other than "
                                 f"{DIFFUSION_FIXED} (set by the dataset, --policy.chunk_size and the device), "
                                 f"got {unknown}")


def training_episodes(cfg: TrainPolicyConfig) -> list[int]:
    """The training episodes of the split, only the successful ones with ``--episodes success``."""
    train_episodes, _ = cfg.dataset.split()
    if cfg.episodes == "all":
        return train_episodes
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    table = LeRobotDataset(cfg.dataset.repo_id or "local/dataset", root=cfg.dataset.root).hf_dataset
    if keys.EPISODE_SUCCESS not in table.column_names:
        raise KeyError(f"--episodes success needs the {keys.EPISODE_SUCCESS!r} column, which the dataset lacks")
    cols = table.select_columns(["episode_index", keys.EPISODE_SUCCESS]).with_format("torch")[:]
    good = set(cols["episode_index"][cols[keys.EPISODE_SUCCESS].bool().flatten()].tolist())
    chosen = [ep for ep in train_episodes if ep in good]
    if not chosen:
        raise ValueError("no successful training episodes to clone")
    return chosen


def dataset_shapes(data) -> dict:
    """The views, (square) image size and action/state dims of the dataset."""
    features = data.meta.features
    h, w, _ = features[keys.image_key(data.views[0])]["shape"]
    if h != w:
        raise ValueError(f"the policy expects square frames, the dataset has {h}x{w}")
    return {"views": tuple(data.views), "image_size": h, "action_dim": features[keys.ACTION]["shape"][0],
            "state_dim": features[keys.STATE]["shape"][0]}


def policy_for(cfg: TrainPolicyConfig, data) -> FlowPolicy:
    """The policy with the shapes and statistics that the dataset decides."""
    spec = asdict(cfg.policy) | dataset_shapes(data)
    stats = data.stats
    return FlowPolicy(**spec, action_mean=stats[keys.ACTION]["mean"], action_std=stats[keys.ACTION]["std"],
                      state_mean=stats[keys.STATE]["mean"], state_std=stats[keys.STATE]["std"])


def diffusion_policy_for(cfg: TrainPolicyConfig, data, device: torch.device):
    """Lerobot's Diffusion Policy with the shapes the dataset decides, and its (preprocessor,
    postprocessor), which normalise with the dataset's statistics. Returns (policy, pre, post)."""
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors

    from policy.lerobot_adapter import cpu_diffusion_config

    config = cpu_diffusion_config(**dataset_shapes(data), chunk_size=cfg.policy.chunk_size,
                                  device=device.type, **(DIFFUSION_DEFAULTS | cfg.diffusion))
    stats = {key: {name: torch.tensor(v, dtype=torch.float32) for name, v in stat.items()}
             for key, stat in data.stats.items()}
    return DiffusionPolicy(config), *make_pre_post_processors(config, dataset_stats=stats)


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ-v2's augmentation: each image shifted by a random whole number of pixels in [-pad, pad],
    the border replicated. images (N, 3, h, w) -> (N, 3, h, w)."""
    if pad == 0:
        return images
    N, _, h, w = images.shape
    shift = torch.randint(-pad, pad + 1, (N, 1, 1, 2), generator=generator).to(images) * 2 / torch.tensor([w, h]).to(images)
    theta = torch.eye(2, 3, device=images.device, dtype=images.dtype).expand(N, 2, 3)
    grid = F.affine_grid(theta, (N, 3, h, w), align_corners=False) + shift
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


def observation_of(batch: dict, views: tuple[str, ...], shift: int, generator: torch.Generator) -> dict:
    """The policy's observation from a batch, every view randomly shifted."""
    frames = batch["frames"]  # (B, V, 3, h, w)
    frames = random_shift(frames.flatten(0, 1), shift, generator).view(frames.shape)
    obs = {keys.image_key(v): frames[:, i] for i, v in enumerate(views)}
    return obs | {keys.STATE: batch["state"], keys.TASK: batch["task"]}


def hold_last_action(actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The chunks padded with copies of their last unpadded action, as lerobot's datasets pad.
    actions (B, T, A), mask (B, T) True on a prefix of each row -> (B, T, A)."""
    last = actions[torch.arange(len(actions)), mask.sum(1) - 1]  # (B, A)
    return torch.where(mask[..., None], actions, last[:, None])


def diffusion_batch(batch: dict, views: tuple[str, ...]) -> dict:
    """Lerobot's training batch for a Diffusion Policy with one observation step: each view's
    images (B, 3, h, w) (lerobot adds the time axis), the state (B, 1, S), the action chunk
    (B, T, A) and its padding flags (B, T)."""
    assert batch["action"].ndim == 3 and batch["action_mask"].shape == batch["action"].shape[:2]
    images = {keys.image_key(v): batch["frames"][:, i] for i, v in enumerate(views)}
    return images | {keys.STATE: batch["state"].unsqueeze(1),
                     keys.ACTION: hold_last_action(batch["action"], batch["action_mask"]),
                     ACTION_IS_PAD: ~batch["action_mask"]}


def train(cfg: TrainPolicyConfig) -> Path:
    """Trains (or resumes) until ``cfg.steps``; returns the folder of the final EMA policy."""
    accelerator = loop.make_accelerator(cfg)
    episodes = training_episodes(cfg)
    clips = cfg.dataset.clips(episodes, context=1, horizon=1, normalize=False, cache_frames=True)
    if cfg.policy_type == "flow":
        model, save_model = policy_for(cfg, clips), None
        data = FrameTable(clips, cfg.policy.chunk_size)
    else:
        from policy.lerobot_adapter import LerobotPolicy

        model, preprocessor, postprocessor = diffusion_policy_for(cfg, clips, accelerator.device)
        data = FrameTable(clips, model.config.horizon)

        def save_model(policy, folder: Path) -> None:  # a lerobot checkpoint, processors included
            LerobotPolicy(policy, preprocessor, postprocessor).save_pretrained(folder)
    if cfg.world_model is not None:
        data.regenerate(cfg.world_model, cfg.dataset.root, accelerator.device)
    model, ema, opt, sched, step = loop.prepare(accelerator, cfg, model, asdict(cfg), "policy")
    log.info("policy: %.2fM parameters, %d episodes (%s), %d frames, from step %d",
             sum(p.numel() for p in model.parameters()) / 1e6, len(episodes), cfg.episodes, len(data), step)
    batches = data.batches(cfg, step * cfg.grad_accumulation, accelerator.process_index, accelerator.num_processes)

    def train_step(s: int) -> dict:
        seen = []  # the frames' rows, per micro-batch, for --record_batches

        def micro_loss(micro: int):
            batch = next(batches)
            seen.append(batch["index"].tolist())
            batch = to_device(batch, accelerator.device)
            if cfg.policy_type == "diffusion":
                # lerobot draws noise, timesteps and crops from the global RNG, which checkpoints hold.
                loss, _ = model(preprocessor(diffusion_batch(batch, data.views)))
            else:
                # Noise and shifts depend only on (seed, step, micro, process): a resumed run continues
                # exactly.
                micro_step = s * cfg.grad_accumulation + micro
                seed = cfg.seed * 1_000_003 + micro_step * 131 + accelerator.process_index
                gen = torch.Generator().manual_seed(seed)
                obs = observation_of(batch, data.views, cfg.shift, gen)
                loss = model(obs, batch["action"], batch["action_mask"], generator=gen)
            return loss, {"loss": loss.detach()}

        metrics = loop.optimizer_step(accelerator, model, opt, sched, cfg, micro_loss)
        loop.record_step(accelerator, cfg, cfg.output_dir, s + 1, seen, model)
        return metrics

    return loop.run(accelerator, model, ema, opt, sched, cfg, cfg.output_dir, step, train_step,
                    "train policy", save_model=save_model)
