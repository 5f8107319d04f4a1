"""The physics simulator: robosuite tasks, scripted experts with failure modes, a batched env."""

from simulator.physics.env import PhysicsEnv, PhysicsEnvConfig
from simulator.physics.experts import FAILURE_MODES, ExpertConfig, ScriptedExpert
from simulator.physics.tasks import TASKS, TaskSpec, get_task

__all__ = ["FAILURE_MODES", "TASKS", "ExpertConfig", "PhysicsEnv", "PhysicsEnvConfig", "ScriptedExpert", "TaskSpec", "get_task"]
