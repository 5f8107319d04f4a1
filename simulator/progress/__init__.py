"""The progress value model: progress in [0, 1], a success head and an ensemble uncertainty."""

from simulator.progress.configuration_progress import ProgressConfig
from simulator.progress.modeling_progress import ProgressModel, ProgressOutput, history_indices, task_tokens

__all__ = ["ProgressConfig", "ProgressModel", "ProgressOutput", "history_indices", "task_tokens"]
