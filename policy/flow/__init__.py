from policy.flow.configuration_flow import FlowPolicyConfig
from policy.flow.modeling_flow import FlowPolicy

__all__ = ["FlowPolicy", "FlowPolicyConfig"]
