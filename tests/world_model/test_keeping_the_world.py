"""What a world model has to keep the world (issue 21, point 2): memory frames (the episode's first
real frames seen by every chunk) and classifier-free guidance on the actions at sampling.
Contracts at tiny sizes, for both backbones where the backbone matters. (A motion-weighted loss
was measured not to help and removed: docs/benchmarks.md, "World model: keeping the world".)"""

import pytest
import torch

from data.clips import ClipConfig, ClipDataset
from simulator.env import ImaginedEnv, ImaginedEnvConfig
from simulator.starts import StartFrames
from simulator.world_model import FlowMatchingConfig, WorldModel, WorldModelSampler, flow_matching_loss
from tests.conftest import moving_world_model

B, V, C, F, H, SIZE = 3, 2, 2, 2, 4, 32
SMALL = {"unet": {"block_out_channels": (16, 32), "norm_num_groups": 8, "cond_dim": 32},
         "latent_transformer": {"latent_channels": 4, "latent_downsample": 4, "autoencoder_width": 16,
                                "norm_num_groups": 8, "patch_size": 2, "depth": 1, "heads": 2, "width": 32,
                                "cond_dim": 32}}


def nudged(model: WorldModel) -> WorldModel:
    """Off the copy-last start (zero-initialised outputs), so that every input can reach the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def tiny(backbone: str, **kw) -> WorldModel:
    return nudged(WorldModel(backbone=backbone, views=V, image_size=SIZE, context=C, future=F, horizon=H,
                             **SMALL[backbone], **kw))


def inputs(model: WorldModel, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frame = model.sample_shape
    return (torch.randn(B, V, F, *frame, generator=g), torch.rand(B, generator=g),
            torch.randn(B, V, C, *frame, generator=g), torch.randn(B, H, 7, generator=g), torch.randn(B, C, 8, generator=g))


@pytest.mark.parametrize("backbone", ["unet", "latent_transformer"])
def test_memory_frames_reach_the_prediction_and_are_required(backbone, tmp_path):
    model = tiny(backbone, memory=True)
    noisy, t, context, actions, state = inputs(model)
    memory = torch.randn(B, V, *model.sample_shape, generator=torch.Generator().manual_seed(5))
    a = model(noisy, t, context, actions, state, memory=memory).frames
    b = model(noisy, t, context, actions, state, memory=memory.roll(1, dims=0)).frames  # other episodes' first frames
    assert not torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="pass memory"):
        model(noisy, t, context, actions, state)
    with pytest.raises(ValueError, match="memory"):
        model(noisy, t, context, actions, state, memory=memory[:, :1])
    with pytest.raises(ValueError, match="no memory frames"):
        tiny(backbone)(noisy, t, context, actions, state, memory=memory)
    model.save_pretrained(tmp_path / "wm")
    loaded = WorldModel.from_pretrained(tmp_path / "wm").eval()
    assert loaded.spec.memory
    torch.testing.assert_close(loaded(noisy, t, context, actions, state, memory=memory).frames, a)


def test_the_imagined_env_gives_a_memory_model_each_episodes_first_frames():
    """Two starts with the same frames and state but different episode first frames: a memory model
    imagines them differently, a model without memory (same weights otherwise) identically."""
    from tests.test_imagined_env import VIEWS, tiny_models, unit_normalizer

    g = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 256, (1, V, 3, SIZE, SIZE), generator=g, dtype=torch.uint8).expand(2, -1, -1, -1, -1)
    first = torch.randint(0, 256, (2, V, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    starts = StartFrames(frames=frame.clone(), first_frames=first, state=torch.zeros(2, 8),
                         object_state=torch.zeros(2, 10), task=["lift"] * 2)
    _, pm = tiny_models()
    chunk = torch.zeros(2, 8, 7)
    imagined = {}
    for memory in (True, False):
        env = ImaginedEnv(moving_world_model(SIZE, memory=memory), pm, starts, unit_normalizer(), VIEWS,
                          ImaginedEnvConfig(num_envs=2, max_steps=16))
        env.reset(seed=0, options={"start_index": [0, 1]})
        env._generator.manual_seed(0)
        env.reset(seed=0, options={"start_index": [0, 1]})
        _, _, _, _, info = env.step(chunk)
        imagined[memory] = info["frames"]["front"].float()
    # the sampling noise differs per env; with one sampling step at t = 1 the scaled input removes it
    assert not torch.equal(imagined[True][0], imagined[True][1])
    assert torch.equal(imagined[False][0], imagined[False][1])


def test_clips_carry_the_episodes_first_frame_and_memory_training_reaches_it(tiny_dataset):
    clips = ClipDataset(root=tiny_dataset, config=ClipConfig(context=C, horizon=H, stride=2))
    item = clips[len(clips) - 1]  # a clip late in its episode
    assert item["frame_index"] > 0
    torch.testing.assert_close(item["first"], clips.decode(item["episode_index"], [0])[:, 0].float() / 255.0)
    batch = torch.utils.data.default_collate([clips[i] for i in range(0, len(clips), max(1, len(clips) // 8))])
    model = tiny("unet", memory=True)
    loss, _ = flow_matching_loss(model, batch, FlowMatchingConfig(), torch.Generator().manual_seed(0))
    loss.backward()
    grad = model.unet.conv_in.weight.grad  # input channels: memory (3 V) first, then context and noisy frames
    assert grad[:, :3 * V].abs().sum() > 0
    with pytest.raises(KeyError, match="first"):
        flow_matching_loss(model, {k: v for k, v in batch.items() if k != "first"}, FlowMatchingConfig())


def test_action_guidance_extrapolates_from_the_null_chunk():
    model = tiny("unet")
    _, _, context, actions, state = inputs(model)
    context = context.clamp(-1, 1)
    noise = lambda: torch.Generator().manual_seed(3)

    def sample(w: float, a: torch.Tensor = actions) -> torch.Tensor:
        return WorldModelSampler(model, num_steps=1, action_guidance=w).sample(context, a, state, noise()).frames

    x = torch.randn(B, V, F, 3, SIZE, SIZE, generator=noise())  # the sampler's first draw
    t = torch.ones(B)
    cond = model(x, t, context, actions, state).frames
    null = model(x, t, context, actions, state, drop_actions=torch.ones(B, dtype=torch.bool)).frames
    torch.testing.assert_close(sample(1.0), cond.clamp(-1, 1))
    torch.testing.assert_close(sample(2.5), (null + 2.5 * (cond - null)).clamp(-1, 1))
    torch.testing.assert_close(sample(0.0), sample(0.0, torch.randn_like(actions)))  # w = 0: the actions are ignored
    assert not torch.allclose(sample(1.0), sample(1.0, torch.randn_like(actions)))
    with pytest.raises(ValueError, match="action_guidance"):
        WorldModelSampler(model, action_guidance=-1.0)

