"""Where reverie-demo's stages leave their outputs, and where the report puts its own: the one
place that knows the demo's folder layout (``train/demo.py`` writes it). The report reads only
these paths; a stage whose path is absent has not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MEDIA = "media"  # the report's folder of figures and videos, relative to its page


@dataclass(frozen=True)
class DemoLayout:
    """The paths of one demo run; build it with ``from_demo(output_dir)``."""

    output_dir: Path  # reverie-demo --output_dir
    # collect
    dataset: Path  # the LeRobotDataset
    dataset_info: Path  # its meta/info.json: exists once collection has finished
    dataset_strip: Path  # a PNG of some episodes (data.summary)
    # world_model
    world_model: Path  # the trained model (save_pretrained folder)
    world_model_config: Path  # its config.json
    fidelity_figure: Path  # PSNR, SSIM and probe error per horizon (eval.fidelity)
    fidelity_table: Path  # the same as a markdown table
    fidelity_strips: Path  # real and imagined rollouts, a row each
    # progress
    progress_model: Path
    progress_model_config: Path
    value_figure: Path  # predicted progress over held-out episodes (eval.value)
    value_table: Path
    # policy_eval
    policy_eval_figure: Path  # imagined against physics success per policy (eval.policy)
    policy_eval_table: Path
    # rl
    rl_figure: Path  # the learning curve (eval.rl)
    rl_table: Path  # success before and after RL
    # the report itself
    report: Path  # index.html and report.md
    media: Path  # every figure and video the page shows

    @classmethod
    def from_demo(cls, output_dir: Path | str) -> DemoLayout:
        root = Path(output_dir)
        dataset, world_model, progress = root / "dataset", root / "world_model" / "model", root / "progress" / "model"
        fidelity, value, policy_eval, rl = (root / "world_model_eval", root / "progress_eval", root / "policy_eval",
                                            root / "rl")
        return cls(output_dir=root, dataset=dataset, dataset_info=dataset / "meta" / "info.json",
                   dataset_strip=root / "dataset_strip.png",
                   world_model=world_model, world_model_config=world_model / "config.json",
                   fidelity_figure=fidelity / "fidelity.png", fidelity_table=fidelity / "fidelity.md",
                   fidelity_strips=fidelity / "strips.png",
                   progress_model=progress, progress_model_config=progress / "config.json",
                   value_figure=value / "value.png", value_table=value / "value.md",
                   policy_eval_figure=policy_eval / "policy_eval.png", policy_eval_table=policy_eval / "policy_eval.md",
                   rl_figure=rl / "learning_curve.png", rl_table=rl / "rl_eval.md",
                   report=root / "report", media=root / "report" / MEDIA)
