"""Policies that act in either simulator: scripted experts (``policy.scripted``), our own
flow-matching policy (``policy.flow``) and adapters for lerobot policies
(``policy.lerobot_adapter``). ``policy.base`` says what each offers and what RL needs."""

from __future__ import annotations

import json
from pathlib import Path


# Where lerobot-train leaves the policy of its last checkpoint, inside its output folder.
LEROBOT_TRAIN_CHECKPOINT = Path("checkpoints/last/pretrained_model")


def policy_folder(path: str | Path) -> Path:
    """The folder that holds a saved policy (its config.json): ``path`` itself, its ``model/`` (the
    output folder of reverie-train policy or reverie-rl) or its ``checkpoints/last/pretrained_model``
    (the output folder lerobot-train prints)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    for folder in (path, path / "model", path / LEROBOT_TRAIN_CHECKPOINT):
        if (folder / "config.json").is_file():
            return folder
    raise FileNotFoundError(f"{path} holds no saved policy: no config.json in it, in model/ (reverie-train policy's "
                            f"output) or in {LEROBOT_TRAIN_CHECKPOINT} (lerobot-train's output)")


def load_policy(name_or_path: str | Path, task: str = "lift", num_envs: int = 1, device: str = "cpu"):
    """A policy by name or folder: a scripted policy of ``policy_family()`` by its name, a saved
    ``FlowPolicy`` (``reverie-train policy``), or a lerobot policy checkpoint, also as the output
    folder of the training that wrote it (``policy_folder``)."""
    from policy.scripted import ScriptedPolicy, policy_family

    family = {p.name: p for p in policy_family()}
    if str(name_or_path) in family:
        return ScriptedPolicy(task, family[str(name_or_path)].expert, num_envs=num_envs, name=str(name_or_path))
    try:
        path = policy_folder(name_or_path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{name_or_path!r} is not the name of a scripted policy ({list(family)}), and {e}") from e
    if json.loads((path / "config.json").read_text()).get("_class_name") == "FlowPolicy":
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
