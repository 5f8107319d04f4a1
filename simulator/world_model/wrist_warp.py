"""Where the wrist camera's scene goes when the arm moves, from proprioception alone.

A wrist camera rides on the end effector: between two poses of the arm, what it sees of the
table (and of a cube lying on it) moves by the camera's own motion. With the camera's mounting
on the end effector and its field of view (a calibration every robot with a wrist camera has) and
the height of the table plane, each pixel of a target pose's view is cast as a ray onto that
plane and looked up in the source pose's frame (``warp``). What rides with the camera (the
fingers) is not on the plane and is warped wrongly; a world model that sees the warp beside the
last frame takes the scene from the one and the fingers from the other.

The world model feeds the last context frame of the wrist view, warped to each future frame's
pose as its state head predicts it, as extra input channels (``WorldModelConfig.wrist_warp``): the
imagined wrist view can then follow the imagined state rather than lag it, which is what a
policy that closes on its wrist view needs (docs/research_log.md, session 15). No object state is
read: the poses are the robot's own, the plane a constant of the workspace.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class WristCamera:
    """The wrist camera's calibration and the plane its warp assumes (MuJoCo convention: the
    camera looks along its -z axis, +y up, +x right; image rows run downwards)."""

    mount_rot: tuple[tuple[float, ...], ...]  # camera axes in the end-effector frame (3 x 3, columns x, y, z)
    mount_pos: tuple[float, float, float]  # camera position in the end-effector frame (m)
    fovy: float  # vertical field of view (degrees)
    plane_z: float  # world height of the plane the scene is taken to lie on (m)

    def as_dict(self) -> dict:
        return {k: [list(r) for r in v] if k == "mount_rot" else list(v) if isinstance(v, tuple) else v
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "WristCamera":
        return cls(mount_rot=tuple(map(tuple, d["mount_rot"])), mount_pos=tuple(d["mount_pos"]), fovy=d["fovy"],
                   plane_z=d["plane_z"])


# robosuite's Panda eye-in-hand camera (robot0_eye_in_hand) in the end-effector frame of the state's
# pose (robot0_eef_pos, robot0_eef_quat): tests/world_model/test_wrist_warp.py checks it against the
# MuJoCo model. The plane: Lift's table top is at 0.80 m, its cube's centre at 0.82 m.
PANDA_WRIST = WristCamera(mount_rot=((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
                          mount_pos=(0.05, 0.0, -0.097), fovy=75.0, plane_z=0.82)


def axis_angle_matrix(aa: Tensor) -> Tensor:
    """(..., 3) axis-angle (axis times angle, as robosuite's quat2axisangle) -> (..., 3, 3) rotations."""
    theta = aa.norm(dim=-1, keepdim=True)
    k = aa / theta.clamp_min(1e-8)
    zero = torch.zeros_like(k[..., 0])
    K = torch.stack([zero, -k[..., 2], k[..., 1], k[..., 2], zero, -k[..., 0], -k[..., 1], k[..., 0], zero],
                    -1).unflatten(-1, (3, 3))
    s, c = theta.sin()[..., None], theta.cos()[..., None]
    return torch.eye(3, dtype=aa.dtype, device=aa.device) + s * K + (1 - c) * (K @ K)


def camera_pose(pose: Tensor, cam: WristCamera) -> tuple[Tensor, Tensor]:
    """End-effector poses (..., 6: position, axis-angle) -> camera rotations (..., 3, 3), positions (..., 3)."""
    R = axis_angle_matrix(pose[..., 3:6])
    mount_R = torch.tensor(cam.mount_rot, dtype=pose.dtype, device=pose.device)
    mount_p = torch.tensor(cam.mount_pos, dtype=pose.dtype, device=pose.device)
    return R @ mount_R, pose[..., :3] + (R @ mount_p[:, None])[..., 0]


def warp(frames: Tensor, source: Tensor, target: Tensor, cam: WristCamera) -> Tensor:
    """frames (B, 3, h, w) seen from end-effector poses ``source`` (B, 6) -> as seen from ``target``
    (B, F, 6): (B, F, 3, h, w). Rays that miss the plane or fall outside the source view take its
    nearest border pixel."""
    B, _, h, w = frames.shape
    nF = target.shape[1]
    f = (h / 2) / math.tan(math.radians(cam.fovy) / 2)
    R1, p1 = camera_pose(source, cam)  # (B, 3, 3), (B, 3)
    R2, p2 = camera_pose(target, cam)  # (B, F, 3, 3), (B, F, 3)
    ys, xs = torch.meshgrid(torch.arange(h, device=frames.device, dtype=frames.dtype) + 0.5,
                            torch.arange(w, device=frames.device, dtype=frames.dtype) + 0.5, indexing="ij")
    rays = torch.stack([(xs - w / 2) / f, -(ys - h / 2) / f, -torch.ones_like(xs)], -1)  # (h, w, 3) camera frame
    world = torch.einsum("bfij,hwj->bfhwi", R2, rays)  # ray directions in the world
    depth = (cam.plane_z - p2[..., 2])[..., None, None] / world[..., 2].clamp(max=-1e-6)  # rays point down
    points = p2[:, :, None, None] + depth.clamp_min(0)[..., None] * world  # (B, F, h, w, 3)
    local = torch.einsum("bji,bfhwj->bfhwi", R1, points - p1[:, None, None, None])  # R1^T (X - p1)
    z = (-local[..., 2]).clamp_min(1e-6)
    u, v = w / 2 + f * local[..., 0] / z, h / 2 - f * local[..., 1] / z
    grid = torch.stack([u / w * 2 - 1, v / h * 2 - 1], -1).flatten(0, 1)  # (B F, h, w, 2)
    src = frames[:, None].expand(-1, nF, -1, -1, -1).flatten(0, 1)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.unflatten(0, (B, nF))
