"""The physics tasks: which robosuite environment, which cameras, what the ground truth is.

A :class:`TaskSpec` is everything task-specific that the rest of the package needs: how to make
the robosuite env, how to frame its cameras, how to read the objects' state, how far the task
has got (``stage``: physics milestones, for progress labels and failure analysis), and the
plan a scripted expert follows from the start-of-episode object state.

The object state has one layout for every task (``keys.ENV_STATE_NAMES``): ``keys.OBJECT_SLOTS``
slots of 7 (position xyz + quaternion wxyz), the task's ``objects`` in the first slots in their
order, the other slots zero. Datasets of different tasks then have equal features, which lerobot's
merge requires; a plan reads the slots of its own objects (``[0:7]`` the first, ``[7:14]`` the second).

Dimension legend: D object-state dim (``keys.ENV_STATE_DIM``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from simulator import keys
from simulator.physics.render import CameraSpec

TABLE_Z = 0.8  # robosuite's table_offset z for every task here


@dataclass(frozen=True)
class ExpertPlan:
    """Where a pick(-and-place) expert grasps and, optionally, where it puts the object down."""

    grasp: np.ndarray  # (3,) grasp point, world frame
    place: np.ndarray | None  # (3,) where the object's grasp point goes, None for pick-and-hold
    lift: float  # how far above the grasp point to carry the object (m)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    robosuite_env: str
    instruction: str  # the language task string stored with every frame
    objects: tuple[str, ...]  # robosuite object attribute names / bodies whose pose is the env state
    num_stages: int  # milestones; stage == num_stages means success
    max_steps: int  # episode horizon in env steps (20 Hz)
    cameras: dict[str, CameraSpec]
    plan: Callable[["np.ndarray", object], ExpertPlan]  # (object_state (D,), robosuite env) -> plan
    stage: Callable[[object], int]  # robosuite env -> milestones reached now

    def __post_init__(self):
        if not 1 <= len(self.objects) <= keys.OBJECT_SLOTS:
            raise ValueError(f"task {self.name!r} has {len(self.objects)} objects; the object-state layout has "
                             f"{keys.OBJECT_SLOTS} slots (raise keys.OBJECT_SLOTS, which changes every dataset's schema)")

    @property
    def object_state_dim(self) -> int:
        """D, the same for every task (the common layout), whatever the number of objects."""
        return keys.ENV_STATE_DIM


def slot_poses(poses: list[np.ndarray]) -> np.ndarray:
    """(D,) float32: the objects' poses ((7,) each, in the spec's order) in the first slots of the
    common layout, the unused slots zero."""
    if len(poses) > keys.OBJECT_SLOTS or any(np.shape(p) != (7,) for p in poses):
        raise ValueError(f"expected at most {keys.OBJECT_SLOTS} poses of shape (7,), got {[np.shape(p) for p in poses]}")
    out = np.zeros(keys.ENV_STATE_DIM, dtype=np.float32)
    if poses:
        out[:7 * len(poses)] = np.concatenate(poses)
    return out


def object_bodies(env, spec: TaskSpec) -> list[int]:
    """MuJoCo body ids of the task's objects in a made robosuite env."""
    ids = []
    for name in spec.objects:
        obj = getattr(env, name, None)
        if obj is None:  # PickPlace keeps its objects in a dict by name
            obj = next(o for o in env.objects if o.name == name)
        ids.append(env.sim.model.body_name2id(obj.root_body))
    return ids


def _near(env, obj, xy_tol=0.02, z_tol=0.03) -> bool:
    eef = env.sim.data.site_xpos[env.robots[0].eef_site_id]
    pos = env.sim.data.body_xpos[env.sim.model.body_name2id(obj.root_body)]
    return bool(np.linalg.norm(eef[:2] - pos[:2]) < xy_tol and abs(eef[2] - pos[2]) < z_tol)


def _grasped(env, obj) -> bool:
    return bool(env._check_grasp(gripper=env.robots[0].gripper, object_geoms=obj))


def _lift_stage(env) -> int:
    if env._check_success():
        return 3
    if _grasped(env, env.cube):
        return 2
    return int(_near(env, env.cube))


def _stack_stage(env) -> int:
    if env._check_success():
        return 4
    a = env.sim.data.body_xpos[env.cubeA_body_id]
    b = env.sim.data.body_xpos[env.cubeB_body_id]
    if _grasped(env, env.cubeA):
        return 3 if a[2] > b[2] + 0.05 else 2
    return int(_near(env, env.cubeA))


def _can(env):
    return next(o for o in env.objects if o.name == "Can")


def _can_stage(env) -> int:
    if env._check_success():
        return 4
    can = _can(env)
    if _grasped(env, can):
        pos = env.sim.data.body_xpos[env.obj_body_id["Can"]]
        return 3 if pos[2] > TABLE_Z + 0.10 else 2
    return int(_near(env, can))


def _lift_plan(obj_state: np.ndarray, env) -> ExpertPlan:
    return ExpertPlan(grasp=obj_state[:3] + [0, 0, -0.005], place=None, lift=0.15)


def _stack_plan(obj_state: np.ndarray, env) -> ExpertPlan:
    a, b = obj_state[:3], obj_state[7:10]
    # cubeA (half size 0.02) goes centred on cubeB (half size 0.025), 1 cm above contact.
    return ExpertPlan(grasp=a + [0, 0, -0.005], place=b + [0, 0, 0.025 + 0.02 + 0.01], lift=0.12)


def _can_plan(obj_state: np.ndarray, env) -> ExpertPlan:
    target = env.target_bin_placements[env.object_to_id["can"]]
    return ExpertPlan(grasp=obj_state[:3] + [0, 0, 0.01], place=np.array([target[0], target[1], TABLE_Z + 0.14]), lift=0.20)


def _front(pos, lookat, fovy=45.0) -> CameraSpec:
    return CameraSpec("agentview", pos=pos, lookat=lookat, fovy=fovy)


_WRIST = CameraSpec("robot0_eye_in_hand")

TASKS: dict[str, TaskSpec] = {
    "lift": TaskSpec(
        name="lift",
        robosuite_env="Lift",
        instruction="pick up the red cube",
        objects=("cube",),
        num_stages=3,
        max_steps=120,
        cameras={"front": _front((0.42, 0.0, 1.12), (-0.03, 0.0, 0.91)), "wrist": _WRIST},
        plan=_lift_plan,
        stage=_lift_stage,
    ),
    "stack": TaskSpec(
        name="stack",
        robosuite_env="Stack",
        instruction="stack the red cube on the green cube",
        objects=("cubeA", "cubeB"),
        num_stages=4,
        max_steps=200,
        cameras={"front": _front((0.45, 0.0, 1.1), (-0.02, 0.0, 0.87)), "wrist": _WRIST},
        plan=_stack_plan,
        stage=_stack_stage,
    ),
    "pick_place_can": TaskSpec(
        name="pick_place_can",
        robosuite_env="PickPlaceCan",
        instruction="put the can in the bin on the right",
        objects=("Can",),
        num_stages=4,
        max_steps=300,
        cameras={"front": _front((0.85, 0.02, 1.45), (0.05, 0.02, 0.85), 45.0), "wrist": _WRIST},
        plan=_can_plan,
        stage=_can_stage,
    ),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]
