"""The wrist warp: its calibration is robosuite's camera, it moves rendered scenes where physics
moves them, and a world model grown to see it starts as the model it was grown from."""

import numpy as np
import pytest
import torch

from simulator.physics import PhysicsEnv, PhysicsEnvConfig
from simulator.world_model import WorldModel
from simulator.world_model.wrist_warp import PANDA_WRIST, axis_angle_matrix, camera_pose, warp
from train.world_model import load_weights

TINY = {"views": 2, "image_size": 32, "context": 2, "future": 2, "horizon": 4, "action_dim": 7, "state_dim": 8,
        "block_out_channels": (16, 32), "layers_per_block": 1, "norm_num_groups": 8, "cond_dim": 32}
WARP = {"wrist_warp": {"view": 1, "camera": PANDA_WRIST.as_dict()}, "state_mean": [0.0] * 8, "state_std": [1.0] * 8}


@pytest.fixture(scope="module")
def physics():
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", num_envs=1, views=("wrist",)))
    yield env
    env.close()


def test_axis_angle_matrix_matches_robosuite():
    from robosuite.utils.transform_utils import axisangle2quat, quat2mat

    rng = np.random.default_rng(0)
    for aa in [*rng.normal(size=(4, 3)), np.array([3.1, -0.04, 0.25])]:
        torch.testing.assert_close(axis_angle_matrix(torch.tensor(aa)), torch.tensor(quat2mat(axisangle2quat(aa))))


def test_the_panda_wrist_calibration_is_the_mujoco_camera(physics):
    physics.reset(seed=0)
    task = physics.envs[0]
    model, data = task.env.sim.model._model, task.env.sim.data._data
    cam = model.camera("robot0_eye_in_hand").id
    assert model.cam_fovy[cam] == PANDA_WRIST.fovy
    rng = np.random.default_rng(0)
    for _ in range(3):  # the mounting holds at other poses, rotations included
        actions = np.concatenate([rng.uniform(-0.5, 0.5, (4, 6)), -np.ones((4, 1))], 1)
        physics.step(torch.tensor(actions[None], dtype=torch.float32))
        R, p = camera_pose(torch.tensor(task.state()[:6], dtype=torch.float64), PANDA_WRIST)
        torch.testing.assert_close(R, torch.tensor(data.cam_xmat[cam].reshape(3, 3)), atol=1e-5, rtol=0)
        torch.testing.assert_close(p, torch.tensor(data.cam_xpos[cam]), atol=1e-5, rtol=0)


def test_the_warp_moves_the_rendered_scene_where_physics_moves_it(physics):
    obs, _ = physics.reset(seed=3)
    before, pose = obs["observation.images.wrist"][0], obs["observation.state"][:, :6]  # [0, 1] frames
    assert (before[0] - before[1] > 0.3).float().mean() > 0.005  # the red cube is in view
    assert torch.allclose(warp(before[None], pose, pose[:, None], PANDA_WRIST)[0, 0], before, atol=1e-4)  # no motion
    down_and_over = torch.tensor([[[0.3, 0.2, -0.6, 0, 0, 0, -1.0]] * 8])
    obs, *_ = physics.step(down_and_over)
    after, moved = obs["observation.images.wrist"][0], obs["observation.state"][:, :6]
    warped = warp(before[None], pose, moved[:, None], PANDA_WRIST)[0, 0]
    scene = slice(0, before.shape[1] * 5 // 8)  # the rows above the fingers, which ride with the camera
    err_copy = (before - after)[:, scene].square().mean()
    err_warp = (warped - after)[:, scene].square().mean()
    assert err_warp < 0.5 * err_copy, (err_warp, err_copy)


def test_a_model_grown_to_see_the_warp_starts_as_the_one_it_grew_from(tmp_path):
    torch.manual_seed(0)
    plain = WorldModel(**TINY)
    for p in plain.parameters():  # off the zero init, so that the warp channels would change the output
        p.data.add_(0.05 * torch.randn_like(p))
    plain.save_pretrained(tmp_path / "plain")
    grown = WorldModel(**TINY, **WARP)
    assert grown.unet.conv_in.in_channels == plain.unet.conv_in.in_channels + 3 * TINY["future"]
    load_weights(grown, tmp_path / "plain")
    context, noisy = torch.rand(3, 2, 2, 3, 32, 32) * 2 - 1, torch.randn(3, 2, 2, 3, 32, 32)
    actions, state, t = torch.randn(3, 4, 7), torch.randn(3, 2, 8) * 0.1, torch.rand(3)
    plain.eval(), grown.eval()
    a, b = plain(noisy, t, context, actions, state), grown(noisy, t, context, actions, state)
    torch.testing.assert_close(a.frames, b.frames, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.state, b.state)
    # and training reaches the warp's channels (the last 3 F of the U-Net's input)
    grown.train()
    (grown(noisy, t, context, actions, state).frames - context[:, :, -1:]).square().mean().backward()
    assert grown.unet.conv_in.weight.grad[:, -3 * TINY["future"]:].abs().sum() > 0


def test_bad_warp_configs_are_named():
    with pytest.raises(ValueError, match="need state_mean and state_std"):
        WorldModel(**TINY, wrist_warp=WARP["wrist_warp"], state_mean=[0.0] * 6, state_std=[1.0] * 6)
    with pytest.raises(ValueError, match="view must index"):
        WorldModel(**{**TINY, **WARP, "wrist_warp": {**WARP["wrist_warp"], "view": 2}})
    with pytest.raises(ValueError, match="built for the unet backbone"):
        WorldModel(**{**TINY, "block_out_channels": (16,)}, backbone="latent_transformer", latent_downsample=2,
                   autoencoder_width=8, patch_size=2, depth=1, heads=2, width=16, **WARP)
