"""Policies that act in either simulator: scripted experts (``policy.scripted``), our own
flow-matching policy (``policy.flow``) and adapters for lerobot policies
(``policy.lerobot_adapter``). ``policy.base`` says what each offers and what RL needs."""

from __future__ import annotations

import json
from pathlib import Path


def load_policy(name_or_path: str | Path, task: str = "lift", num_envs: int = 1, device: str = "cpu"):
    """A policy by name or folder: a scripted policy of ``policy_family()`` by its name, a saved
    ``FlowPolicy`` (``reverie-train policy``), or a lerobot policy checkpoint."""
    from policy.scripted import ScriptedPolicy, policy_family

    family = {p.name: p for p in policy_family()}
    if str(name_or_path) in family:
        return ScriptedPolicy(task, family[str(name_or_path)].expert, num_envs=num_envs, name=str(name_or_path))
    path = Path(name_or_path)
    config = path / "config.json"
    if not config.is_file():
        hint = f"; did you mean {path / 'model'}?" if (path / "model" / "config.json").is_file() else ""
        raise FileNotFoundError(f"{name_or_path!r} is neither a scripted policy ({list(family)}) nor a folder "
                                f"with a saved policy (config.json){hint}")
    if json.loads(config.read_text()).get("_class_name") == "FlowPolicy":
        from policy.flow import FlowPolicy

        return FlowPolicy.from_pretrained(path).to(device).eval()
    from policy.lerobot_adapter import LerobotPolicy

    return LerobotPolicy.from_pretrained(path, num_envs=num_envs)


def camera_views(policy) -> tuple[tuple[str, ...], int | None]:
    """(views, image size) a policy reads: a FlowPolicy's config, a lerobot policy's visual input
    features; ((), None) for a policy that reads no images (scripted experts)."""
    from simulator import keys

    spec = getattr(policy, "spec", None)
    if spec is not None and hasattr(spec, "views") and hasattr(spec, "image_size"):
        return tuple(spec.views), spec.image_size
    features = getattr(getattr(policy, "config", None), "input_features", None) or {}
    images = {k: f.shape for k, f in features.items() if k.startswith(keys.IMAGE_PREFIX)}
    if images:
        return tuple(keys.view_of(k) for k in images), int(next(iter(images.values()))[-1])
    return (), None
