"""Fast offscreen rendering of a robosuite scene with MuJoCo's own renderer.

robosuite's camera observables render at full quality through its own context. On a CPU
(Mesa llvmpipe) the cost of a 64x64 frame is almost entirely vertex work on the robot's visual
meshes (~170k triangles for a Panda on its pedestal), so this module renders with:

- no multisampling, no reflections, no skybox, an offscreen buffer sized to the camera;
- ``quality="fast"`` (default): the arm and its mount drawn with their coarse collision meshes,
  recoloured to the visual palette, instead of the visual meshes; the gripper, the objects and
  the table keep their visual meshes. With two 64x64 views the env steps about 2x faster than
  with ``"full"`` (docs/benchmarks.md).

Cameras are MuJoCo cameras of the model; a :class:`CameraSpec` with a pose moves one of them
(the close third-person view is the model's ``agentview`` camera moved onto the workspace).
"""

from __future__ import annotations

import atexit
import weakref
from dataclasses import dataclass

import mujoco
import numpy as np

RENDER_QUALITIES = ("fast", "full")
_SHOWN_GROUP, _HIDDEN_GROUP = 1, 5  # MuJoCo geom groups: robosuite puts visual geoms in group 1


@dataclass(frozen=True)
class CameraSpec:
    """A view of the dataset: which MuJoCo camera renders it and, optionally, where it is moved."""

    mujoco_camera: str
    pos: tuple[float, float, float] | None = None  # world position; None keeps the model's pose
    lookat: tuple[float, float, float] | None = None
    fovy: float | None = None


def look_at_quat(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """MuJoCo camera quaternion (w, x, y, z) looking from ``pos`` at ``target`` with world z up."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    # A MuJoCo camera looks along its -z axis with +y up.
    rot = np.stack([right, up, -forward], axis=1)
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, rot.flatten())
    return quat


class SceneRenderer:
    """Renders named views of one MuJoCo model/data pair into uint8 (H, W, 3) arrays."""

    def __init__(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        cameras: dict[str, CameraSpec],
        height: int,
        width: int,
        quality: str = "fast",
    ):
        if quality not in RENDER_QUALITIES:
            raise ValueError(f"unknown render quality {quality!r}; choose one of {RENDER_QUALITIES}")
        if height <= 0 or width <= 0:
            raise ValueError(f"camera resolution must be positive, got {height=} {width=}")
        self.model, self.data = model, data
        self.height, self.width = height, width
        known = [model.camera(i).name for i in range(model.ncam)]
        for view, spec in cameras.items():
            if spec.mujoco_camera not in known:
                raise ValueError(f"view {view!r} uses unknown MuJoCo camera {spec.mujoco_camera!r}; model has {known}")
            if spec.pos is not None:
                cam = model.camera(spec.mujoco_camera).id
                model.cam_pos[cam] = spec.pos
                model.cam_quat[cam] = look_at_quat(np.array(spec.pos), np.array(spec.lookat))
                if spec.fovy is not None:
                    model.cam_fovy[cam] = spec.fovy
        self.cameras = cameras
        if quality == "fast":
            _swap_arm_meshes_for_collision_meshes(model)
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(width, 1)
        model.vis.global_.offheight = max(height, 1)
        self._renderer = mujoco.Renderer(model, height, width)
        # Free the GL context while the interpreter is still whole: registered after mujoco.egl's own
        # exit handlers, this runs before them (a weakref.finalize runs too late, EGL already gone).
        ref = weakref.ref(self)
        self._close_at_exit = lambda: ref() is not None and ref().close()
        atexit.register(self._close_at_exit)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        self._option = mujoco.MjvOption()
        self._option.geomgroup[:] = 0
        self._option.geomgroup[_SHOWN_GROUP] = 1
        mujoco.mj_forward(model, data)  # camera poses moved above only take effect after kinematics

    def render(self) -> dict[str, np.ndarray]:
        """Every view as a fresh (H, W, 3) uint8 array."""
        out = {}
        for view, spec in self.cameras.items():
            self._renderer.update_scene(self.data, camera=spec.mujoco_camera, scene_option=self._option)
            out[view] = self._renderer.render().copy()
        return out

    def close(self) -> None:
        self._renderer.close()  # idempotent
        atexit.unregister(self._close_at_exit)


def _swap_arm_meshes_for_collision_meshes(model: mujoco.MjModel) -> None:
    """Hide the arm's and mount's visual meshes and show their collision meshes in light grey.

    Gripper, objects and arena keep their visual geoms: they are what a policy must see in detail.
    """
    for g in range(model.ngeom):
        name = model.geom(g).name
        is_arm = name.startswith("robot") or name.startswith("mount")
        if not is_arm:
            continue
        if model.geom_group[g] == _SHOWN_GROUP:  # a visual mesh of the arm
            model.geom_group[g] = _HIDDEN_GROUP
        elif model.geom_group[g] == 0:  # its collision mesh
            model.geom_group[g] = _SHOWN_GROUP
            model.geom_rgba[g] = (0.82, 0.82, 0.84, 1.0) if name.startswith("robot") else (0.25, 0.25, 0.27, 1.0)
