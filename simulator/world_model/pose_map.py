"""Where the gripper is in a fixed camera's view, from proprioception alone.

A fixed camera (the front view) sees the gripper move wherever the arm's pose puts it. With the
camera's calibration (position, where it looks, field of view: what every robot with a calibrated
camera has) each pose of the end effector and opening of the fingers is drawn as Gaussian blobs
at the pixels where the grip site and the two fingertips project (``pose_maps``). The world model
feeds these maps for the last context state and for each future state its state head predicts as
extra U-Net inputs (``WorldModelConfig.front_map``): a convolutional network has then only to draw
the gripper where a blob is, where from the global action vector alone it draws the expert's
motion whatever a policy commands (docs/research_log.md, sessions 14-17). No object state is read.
"""

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from simulator.world_model.wrist_warp import axis_angle_matrix

# Fingertip bodies of robosuite's Panda gripper in the end-effector frame of the state's pose:
# (0, +-(finger joint + 0.0085), 0.0114); tests/world_model/test_pose_map.py checks them in MuJoCo.
_TIP_OFFSET_Y, _TIP_OFFSET_Z = 0.0085, 0.0114


@dataclass(frozen=True)
class FixedCamera:
    """A camera fixed in the world (MuJoCo convention: looks along its -z axis, +y up, +x right)."""

    pos: tuple[float, float, float]
    lookat: tuple[float, float, float]
    fovy: float  # vertical field of view (degrees)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "FixedCamera":
        return cls(pos=tuple(d["pos"]), lookat=tuple(d["lookat"]), fovy=d["fovy"])


def project(points: Tensor, cam: FixedCamera, size: int) -> Tensor:
    """World points (..., 3) -> pixel coordinates (..., 2: column, row) of a size x size image."""
    pos = torch.tensor(cam.pos, dtype=points.dtype, device=points.device)
    forward = torch.tensor(cam.lookat, dtype=points.dtype, device=points.device) - pos
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0], dtype=points.dtype, device=points.device))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    rel = points - pos
    depth = (rel @ forward).clamp_min(1e-6)
    f = (size / 2) / math.tan(math.radians(cam.fovy) / 2)
    return torch.stack([size / 2 + f * (rel @ right) / depth, size / 2 - f * (rel @ up) / depth], -1)


def pose_maps(state: Tensor, cam: FixedCamera, size: int, sigma: float = 1.5) -> Tensor:
    """Unnormalised states (..., 8: end-effector position, axis-angle, two finger joints) ->
    (..., 2, size, size) maps in [0, 1]: a blob at the grip site, blobs at the two fingertips."""
    R = axis_angle_matrix(state[..., 3:6])
    zero = torch.zeros_like(state[..., 6])
    z = torch.full_like(zero, _TIP_OFFSET_Z)
    left = torch.stack([zero, state[..., 6] + _TIP_OFFSET_Y, z], -1)
    right = torch.stack([zero, state[..., 7] - _TIP_OFFSET_Y, z], -1)
    tips = state[..., None, :3] + (R[..., None, :, :] @ torch.stack([left, right], -2)[..., None])[..., 0]
    points = torch.cat([state[..., None, :3], tips], -2)  # (..., 3, 3): grip site, left tip, right tip
    uv = project(points, cam, size)
    grid = torch.arange(size, dtype=state.dtype, device=state.device) + 0.5
    gx = torch.exp(-(grid - uv[..., 0, None]).square() / (2 * sigma**2))  # (..., 3, w)
    gy = torch.exp(-(grid - uv[..., 1, None]).square() / (2 * sigma**2))  # (..., 3, h)
    blobs = gy[..., :, None] * gx[..., None, :]  # (..., 3, h, w)
    return torch.stack([blobs[..., 0, :, :], blobs[..., 1:, :, :].sum(-3).clamp(max=1.0)], -3)
