"""``reverie-align``: show the world model and the progress model a policy's own behaviour (WMPO,
VLAW): the recipe of the README's alignment paragraph as one command.

    reverie-align --policy outputs/policy/model --world_model outputs/world_model/model \\
        --dataset.root outputs/demo/dataset --dataset.val_episodes 30 --output_dir outputs/align

1. ``rollouts/``: the policy's own episodes in physics (``reverie-collect --policy``, its
   deterministic chunks; successes and failures labelled by physics), collected with the dataset's
   task, views and resolution, from seeds no evaluation uses (``--seed 50000`` on).
2. ``dataset/``: the rollouts merged with the dataset by lerobot's ``merge_datasets``, rollouts
   first, so that the held-out last episodes are the dataset's own, as before.
3. ``world_model/``: the world model fine-tuned on the merge from its own weights (same shapes).
4. ``progress/``: the progress model trained on the merge, with the fine-tuned world model's
   re-generations among its samples.

Each stage is skipped when its output is complete, and the trainings resume, so a stopped run
continues where it stopped. With rollouts recorded on a real robot, give them as ``--rollouts``
(a LeRobotDataset with the dataset's features) instead of collecting in physics.
What it does not do: measure the alignment (``reverie-eval policy`` before and after does).
"""

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

from data.clips import DatasetConfig

log = logging.getLogger(__name__)


@dataclass
class AlignConfig:
    policy: Path | None = None  # the policy whose behaviour the models should see
    world_model: Path | None = None  # the world model to fine-tune (its shapes are kept)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # the dataset it was trained on
    rollouts: Path | None = None  # recorded rollouts of the policy (e.g. a real robot's); None: collect in physics
    episodes: int = 100  # physics rollouts of the policy
    seed: int = 50_000  # rollout i uses seed + i: seeds neither the collection (0 on) nor the evaluations use
    world_model_steps: int = 500  # fine-tuning steps
    world_model_lr: float = 1e-4  # its peak learning rate (lower than training from scratch)
    progress_steps: int = 1500  # the progress model's training steps (reverie-train progress's default)
    output_dir: Path = Path("outputs/align")  # the merged dataset, the fine-tuned world and progress models

    def __post_init__(self):
        if self.policy is None and self.rollouts is None:
            raise ValueError("give the policy to align to (--policy FOLDER) or its recorded rollouts (--rollouts ROOT)")
        if self.world_model is None:
            raise ValueError("give the world model to fine-tune: --world_model FOLDER")
        if self.dataset.root is None:
            raise ValueError("give the dataset the world model was trained on: --dataset.root PATH")
        for name in ("episodes", "world_model_steps", "progress_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        for name in ("policy", "world_model", "rollouts", "output_dir"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))


def collection_settings(root: Path) -> dict:
    """The physics task, views, image size and horizon of the dataset at ``root``, read from lerobot's
    own metadata (which its edit and merge tools keep): the task whose instruction is the dataset's
    one task text, the views and size of its image features, its longest episode."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from data.clips import LOCAL_REPO_ID
    from simulator import keys
    from simulator.physics.tasks import TASKS

    meta = LeRobotDatasetMetadata(LOCAL_REPO_ID, root=root)
    texts = list(meta.tasks.index)
    names = [name for name, spec in TASKS.items() if spec.instruction in texts]
    if len(texts) != 1 or len(names) != 1:
        raise ValueError(f"{root} holds the tasks {texts}: rollouts are collected in one physics task, whose instruction "
                         f"must be the dataset's only task ({ {n: s.instruction for n, s in TASKS.items()} }); for "
                         "another dataset record the policy's rollouts yourself (--rollouts)")
    images = {k: meta.features[k] for k in meta.video_keys}  # the views, as data.clips reads them
    sizes = {tuple(f["shape"][f["names"].index(n)] for n in ("height", "width")) for f in images.values()}
    if len(sizes) != 1:
        raise ValueError(f"{root}'s views have different sizes {sorted(sizes)}: a collection renders all at one size")
    (height, width), = sizes
    return {"task": names[0], "views": tuple(keys.view_of(k) for k in images), "height": height, "width": width,
            "max_steps": int(max(meta.episodes["length"]))}


def collect_rollouts(cfg: AlignConfig) -> Path:
    """The policy's episodes in physics, with the dataset's collection settings (task, views, size)."""
    from data.collect import CollectConfig, collect

    return collect(CollectConfig(**collection_settings(cfg.dataset.root), policy=cfg.policy, episodes=cfg.episodes,
                                 seed=cfg.seed, root=cfg.output_dir / "rollouts", repo_id="reverie/rollouts"))


def merge(rollouts: Path, dataset: Path, out: Path) -> Path:
    """Rollouts then dataset, merged by lerobot into ``out`` (written beside it, then renamed in)."""
    from lerobot.datasets import LeRobotDataset, merge_datasets

    if (out / "meta" / "info.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    merge_datasets([LeRobotDataset("reverie/rollouts", root=rollouts), LeRobotDataset("reverie/dataset", root=dataset)],
                   output_repo_id="reverie/aligned", output_dir=tmp)
    tmp.rename(out)
    return out


def world_model_config(cfg: AlignConfig, merged: Path):
    """Fine-tuning on the merge, the model's shapes read from the saved world model."""
    from simulator.world_model import WorldModel, WorldModelConfig
    from train.world_model import TrainWorldModelConfig

    saved = dict(WorldModel.load_config(cfg.world_model))
    model = WorldModelConfig(**{f.name: tuple(saved[f.name]) if isinstance(saved[f.name], list) else saved[f.name]
                                for f in fields(WorldModelConfig) if f.name in saved})
    dataset = DatasetConfig(root=merged, val_episodes=cfg.dataset.val_episodes, views=cfg.dataset.views, cache_frames=True)
    return TrainWorldModelConfig(dataset=dataset, model=model, frame_stride=model.horizon // (model.future or model.horizon),
                                 init_from=cfg.world_model, steps=cfg.world_model_steps, lr=cfg.world_model_lr,
                                 warmup_steps=max(1, cfg.world_model_steps // 20),
                                 checkpoint_every=max(1, cfg.world_model_steps // 4), second_cycle=0,
                                 output_dir=cfg.output_dir / "world_model")


def align(cfg: AlignConfig) -> Path:
    """Runs (or resumes) the four stages; returns the output folder."""
    from train.progress import TrainProgressConfig
    from train.progress import train as train_progress
    from train.world_model import train as train_world_model

    rollouts = cfg.rollouts or collect_rollouts(cfg)
    merged = merge(rollouts, Path(cfg.dataset.root), cfg.output_dir / "dataset")
    world_model = train_world_model(world_model_config(cfg, merged))
    dataset = DatasetConfig(root=merged, val_episodes=cfg.dataset.val_episodes, views=cfg.dataset.views)
    train_progress(TrainProgressConfig(dataset=dataset, world_model=world_model, steps=cfg.progress_steps,
                                       output_dir=cfg.output_dir / "progress"))
    log.info("aligned: world model %s, progress model %s", world_model, cfg.output_dir / "progress" / "model")
    return cfg.output_dir


def main(argv: list[str] | None = None) -> None:
    from data import cli
    from data.collect import quiet_writers

    cfg = cli.parse(AlignConfig, argv, prog="reverie-align")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    quiet_writers()
    print(f"done: {cli.run(align, cfg)}")


if __name__ == "__main__":
    main()
