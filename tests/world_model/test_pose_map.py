"""The front map: its camera is the rendered one, its fingertips are MuJoCo's, and a world model
grown to see it starts as the model it grew from."""

import numpy as np
import pytest
import torch

from simulator.physics import PhysicsEnv, PhysicsEnvConfig
from simulator.physics.tasks import TASKS
from simulator.world_model import WorldModel
from simulator.world_model.pose_map import FixedCamera, pose_maps, project
from simulator.world_model.wrist_warp import axis_angle_matrix
from train.world_model import load_weights

TINY = {"views": 2, "image_size": 32, "context": 2, "future": 2, "horizon": 4, "action_dim": 7, "state_dim": 8,
        "block_out_channels": (16, 32), "layers_per_block": 1, "norm_num_groups": 8, "cond_dim": 32}
FRONT = TASKS["lift"].cameras["front"]
CAM = FixedCamera(FRONT.pos, FRONT.lookat, FRONT.fovy)
MAP = {"front_map": {"camera": CAM.as_dict()}, "state_mean": [0.0] * 8, "state_std": [1.0] * 8}


@pytest.fixture(scope="module")
def physics():
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", num_envs=1, views=("front",)))
    yield env
    env.close()


def test_projection_and_fingertips_match_mujoco(physics):
    physics.reset(seed=0)
    task = physics.envs[0]
    model, data = task.env.sim.model._model, task.env.sim.data._data
    cam = model.camera(FRONT.mujoco_camera).id
    rng = np.random.default_rng(0)
    for _ in range(3):
        actions = np.concatenate([rng.uniform(-0.5, 0.5, (4, 6)), rng.choice([-1.0, 1.0], (4, 1))], 1)
        physics.step(torch.tensor(actions[None], dtype=torch.float32))
        state = torch.tensor(task.state(), dtype=torch.float64)
        # the tips where pose_maps puts them are MuJoCo's fingertip bodies
        R = axis_angle_matrix(state[3:6])
        for name, q, sign in (("gripper0_finger_joint1_tip", state[6], 1), ("gripper0_finger_joint2_tip", state[7], -1)):
            tip = state[:3] + R @ torch.tensor([0.0, float(q) + sign * 0.0085, 0.0114], dtype=torch.float64)
            torch.testing.assert_close(tip, torch.tensor(data.xpos[model.body(name).id]), atol=2e-4, rtol=0)
        # the projection is MuJoCo's camera: a point on its optical axis lands in the image centre,
        # and the camera's own right/up axes move the pixel right/up
        p, xmat = torch.tensor(data.cam_xpos[cam]), torch.tensor(data.cam_xmat[cam].reshape(3, 3))
        on_axis = p - 0.5 * xmat[:, 2]
        torch.testing.assert_close(project(on_axis, CAM, 64), torch.tensor([32.0, 32.0], dtype=torch.float64))
        uv = project(torch.stack([on_axis + 0.01 * xmat[:, 0], on_axis + 0.01 * xmat[:, 1]]), CAM, 64)
        f = 32 / np.tan(np.radians(model.cam_fovy[cam]) / 2)
        torch.testing.assert_close(uv, torch.tensor([[32 + f * 0.02, 32.0], [32.0, 32 - f * 0.02]], dtype=torch.float64))


def test_the_grip_blob_lands_on_the_rendered_gripper(physics):
    """The grip site's blob in the map falls where the rendered front view changes when the arm moves."""
    obs, _ = physics.reset(seed=1)
    before, s0 = obs["observation.images.front"][0], obs["observation.state"][0]
    obs, *_ = physics.step(torch.tensor([[[0.0, 0.6, -0.3, 0, 0, 0, -1.0]] * 8]))
    after, s1 = obs["observation.images.front"][0], obs["observation.state"][0]
    size = before.shape[-1]
    maps = pose_maps(torch.stack([s0, s1]).double(), CAM, size)[:, 0]  # (2, h, w)
    changed = (after - before).abs().sum(0) > 0.15  # pixels the arm's move changed
    assert changed.float().mean() > 0.002
    for m in maps:  # the blob's peak pixel is within 3 pixels of a changed one
        r, c = np.unravel_index(int(m.argmax()), m.shape)
        assert changed[max(r - 3, 0):r + 4, max(c - 3, 0):c + 4].any(), (r, c)
    assert maps.amax(dim=(1, 2)).min() > 0.5  # inside the image


def test_a_model_grown_to_see_the_map_starts_as_the_one_it_grew_from(tmp_path):
    torch.manual_seed(0)
    plain = WorldModel(**TINY)
    for p in plain.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    plain.save_pretrained(tmp_path / "plain")
    grown = WorldModel(**TINY, **MAP)
    assert grown.unet.conv_in.in_channels == plain.unet.conv_in.in_channels + 2 * (TINY["future"] + 1)
    load_weights(grown, tmp_path / "plain")
    context, noisy = torch.rand(3, 2, 2, 3, 32, 32) * 2 - 1, torch.randn(3, 2, 2, 3, 32, 32)
    actions, t = torch.randn(3, 4, 7), torch.rand(3)
    state = torch.tensor([-0.05, 0.0, 0.9, 3.14, 0.0, 0.2, 0.02, -0.02]).expand(3, 2, 8).clone()
    plain.eval(), grown.eval()
    a, b = plain(noisy, t, context, actions, state), grown(noisy, t, context, actions, state)
    torch.testing.assert_close(a.frames, b.frames, atol=1e-5, rtol=0)
    grown.train()
    (grown(noisy, t, context, actions, state).frames - context[:, :, -1:]).square().mean().backward()
    assert grown.unet.conv_in.weight.grad[:, -2 * (TINY["future"] + 1):].abs().sum() > 0


def test_bad_map_configs_are_named():
    with pytest.raises(ValueError, match="need state_mean and state_std"):
        WorldModel(**TINY, front_map=MAP["front_map"], state_mean=MAP["state_mean"])
    with pytest.raises(ValueError, match="8-value state"):
        WorldModel(**{**TINY, "state_dim": 6}, **MAP)
    with pytest.raises(ValueError, match=r"front_map takes the keys \['camera'\]"):  # a config of the old layout
        WorldModel(**{**TINY, **MAP, "front_map": {**MAP["front_map"], "state_mean": [0.0] * 8}})


def test_training_fills_in_the_map_from_the_datasets_task(tiny_dataset):
    from data.clips import DatasetConfig
    from train.world_model import TrainWorldModelConfig, make_train_set, model_config_for

    cfg = TrainWorldModelConfig(dataset=DatasetConfig(root=tiny_dataset, val_episodes=1), front_map=True)
    data, _ = make_train_set(cfg)
    model_cfg = model_config_for(cfg, data)
    assert model_cfg.front_map == {"camera": CAM.as_dict()}  # Lift's front camera, found by the dataset's instruction
    torch.testing.assert_close(torch.tensor(model_cfg.state_std), data.normalizer.std["observation.state"].float())
    assert model_cfg.wrist_warp is None
    wrist_only = TrainWorldModelConfig(dataset=DatasetConfig(root=tiny_dataset, val_episodes=1, views=("wrist",)),
                                       front_map=True)
    with pytest.raises(ValueError, match="needs a front view"):
        model_config_for(wrist_only, make_train_set(wrist_only)[0])


def test_a_saved_model_with_both_pose_inputs_loads_as_it_was(tmp_path):
    from simulator.world_model.wrist_warp import PANDA_WRIST

    torch.manual_seed(0)
    stats = {"state_mean": [-0.05, 0.0, 0.9, 3.0, 0.0, 0.1, 0.02, -0.02], "state_std": [0.1] * 6 + [0.01] * 2}
    model = WorldModel(**TINY, **stats, front_map={"camera": CAM.as_dict()},
                       wrist_warp={"view": 1, "camera": PANDA_WRIST.as_dict()})
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "m")
    loaded = WorldModel.from_pretrained(tmp_path / "m")
    assert loaded.front_camera == CAM and loaded.wrist_camera == PANDA_WRIST
    context, noisy = torch.rand(2, 2, 2, 3, 32, 32) * 2 - 1, torch.randn(2, 2, 2, 3, 32, 32)
    actions, state, t = torch.randn(2, 4, 7), torch.randn(2, 2, 8), torch.rand(2)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(noisy, t, context, actions, state).frames, model(noisy, t, context, actions, state).frames)
    # the pose inputs a sampler computes once per chunk are the ones the model computes itself
    once = model.pose_inputs(context, actions, state)
    assert once.shape == (2, 3 * TINY["future"] + 2 * (TINY["future"] + 1), 32, 32)
    torch.testing.assert_close(model(noisy, t, context, actions, state, pose=once).frames,
                               model(noisy, t, context, actions, state).frames)
