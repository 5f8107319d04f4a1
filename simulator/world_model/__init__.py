"""The action-conditioned video world model: configuration, modeling, objective, sampler."""

from simulator.world_model.configuration_world_model import WorldModelConfig
from simulator.world_model.modeling_world_model import Prediction, WorldModel
from simulator.world_model.objective import FlowMatchingConfig, flow_matching_loss
from simulator.world_model.sampler import STILL_THRESHOLD, WorldModelSampler

__all__ = ["STILL_THRESHOLD", "FlowMatchingConfig", "Prediction", "WorldModel", "WorldModelConfig", "WorldModelSampler", "flow_matching_loss"]
