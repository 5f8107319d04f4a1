"""``reverie-demo``: the whole loop on the embedded default task (Lift), one stage after another.

Stages so far: collect (physics dataset + summary). Later work adds world-model training,
progress-model training, behaviour cloning, evaluation in imagination and in physics, and RL.
Every stage reuses what an earlier run produced, so an interrupted demo continues where it
stopped:

    reverie-demo                   # preset full
    reverie-demo --preset quick    # a few minutes on two cores
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import draccus

from data.collect import CollectConfig, collect, quiet_writers
from data.summary import summarize

PRESETS = {
    # episodes of physics data to collect
    "quick": {"episodes": 12},
    "full": {"episodes": 200},
}


@dataclass
class DemoConfig:
    preset: str = "full"  # quick | full
    task: str = "lift"
    output_dir: Path = Path("outputs/demo")
    episodes: int | None = None  # overrides the preset's number of episodes
    seed: int = 0

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        self.output_dir = Path(self.output_dir)


def stage_collect(cfg: DemoConfig) -> Path:
    episodes = cfg.episodes if cfg.episodes is not None else PRESETS[cfg.preset]["episodes"]
    root = collect(CollectConfig(task=cfg.task, episodes=episodes, root=cfg.output_dir / "dataset", seed=cfg.seed))
    summary = summarize(root, strip_path=cfg.output_dir / "dataset_strip.png")
    print(summary.to_text())
    return root


def run(cfg: DemoConfig) -> dict:
    """Runs every stage that exists; returns what each produced."""
    results = {}
    for name, stage in [("collect", stage_collect)]:
        t0 = time.perf_counter()
        print(f"\n=== stage: {name} ===")
        results[name] = stage(cfg)
        print(f"=== {name} done in {time.perf_counter() - t0:.0f} s ===")
    return results


@draccus.wrap()
def main(cfg: DemoConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    quiet_writers()
    run(cfg)


if __name__ == "__main__":
    main()
