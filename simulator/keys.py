"""Observation and dataset keys, in LeRobot naming, in one place.

A lerobot policy reads an observation from either simulator, or a frame from a dataset, with
these keys unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_PREFIX = "observation.images."
STATE = "observation.state"  # (S,) end-effector position (3), axis-angle (3), gripper fingers (2)
ENV_STATE = "observation.environment_state"  # (D,) ground-truth object poses, for probes and experts
ACTION = "action"  # (A,) OSC_POSE delta action + gripper
REWARD = "next.reward"
SUCCESS = "next.success"  # the task is solved after this action
DONE = "next.done"
PROGRESS = "progress"  # progress label in [0, 1]: t/T on successes, stage/num_stages on failures
STAGE = "stage"  # physics milestones reached at this frame (0..num_stages)
EPISODE_SUCCESS = "episode.success"  # per-episode label, repeated on every frame
FAILURE_MODE = "episode.failure_mode"  # per-episode injected failure mode (index into FAILURE_MODES)
# The physics seed the episode was collected from, repeated on every frame: a column survives
# lerobot's edit and merge tools, which renumber episodes and drop our meta/ files.
SEED = "episode.seed"
TASK = "task"
# Both envs' obs also carry the observation one env step before under "previous." + key (at reset
# and after a partial reset: the current one repeated), for policies that condition on two steps;
# the imagined env only where its world model imagines every env step.
PREVIOUS_PREFIX = "previous."

STATE_DIM = 8
STATE_NAMES = ["eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay", "eef_az", "finger_l", "finger_r"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
# ENV_STATE has one layout for every task, so that lerobot merges datasets of different tasks (it
# requires equal shapes and names): OBJECT_SLOTS poses (position xyz + quaternion wxyz), a task's
# objects in the first slots in its spec's order (simulator.physics.tasks), the unused slots zero.
OBJECT_SLOTS = 2  # the most objects of any task (stack)
POSE_NAMES = ("x", "y", "z", "qw", "qx", "qy", "qz")
ENV_STATE_DIM = len(POSE_NAMES) * OBJECT_SLOTS
ENV_STATE_NAMES = [f"obj{i}_{c}" for i in range(OBJECT_SLOTS) for c in POSE_NAMES]


def image_key(view: str) -> str:
    return IMAGE_PREFIX + view


def previous_key(key: str) -> str:
    """The obs key of ``key``'s value one env step before."""
    return PREVIOUS_PREFIX + key


def view_of(key: str) -> str:
    if not key.startswith(IMAGE_PREFIX):
        raise ValueError(f"{key!r} is not an image key (expected the prefix {IMAGE_PREFIX!r})")
    return key[len(IMAGE_PREFIX):]


def common_env_state(x: np.ndarray | torch.Tensor, root: str | Path) -> np.ndarray | torch.Tensor:
    """(..., d) object state of the dataset at ``root`` -> (..., ENV_STATE_DIM) in the common layout:
    a dataset recorded before it holds d = 7 per object of its task, which fill the first slots (zeros
    added after them). Any other width is an error that says to re-collect."""
    d = x.shape[-1]
    if d == ENV_STATE_DIM:
        return x
    if d % len(POSE_NAMES) or d > ENV_STATE_DIM:
        raise ValueError(f"{root}: {ENV_STATE} has {d} values, which is not {len(POSE_NAMES)} per object in at most "
                         f"{OBJECT_SLOTS} slots ({ENV_STATE_DIM} values, names {ENV_STATE_NAMES[0]}..."
                         f"{ENV_STATE_NAMES[-1]}): re-collect it with reverie-collect, or drop the feature with "
                         f"lerobot-edit-dataset --operation.type remove_feature")
    if isinstance(x, torch.Tensor):
        return torch.nn.functional.pad(x, (0, ENV_STATE_DIM - d))
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, ENV_STATE_DIM - d)])
