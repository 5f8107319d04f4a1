"""Re-generating whole episodes with the world model (the progress model trains and is scored on them)."""

import pytest
import torch

from simulator import keys
from simulator.normalization import Normalizer
from simulator.world_model import WorldModel, WorldModelSampler
from simulator.world_model.sampler import regenerate_episodes


def normalizer() -> Normalizer:
    return Normalizer({keys.ACTION: {"mean": [0.0] * 7, "std": [0.5] * 7}, keys.STATE: {"mean": [0.0] * 8, "std": [1.0] * 8}})


def episode(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (2, n, 3, 16, 16), generator=g, dtype=torch.uint8),
            torch.rand(n, 7, generator=g) * 2 - 1, torch.randn(n, 8, generator=g))


def test_episodes_are_reimagined_from_their_first_frame_with_their_actions():
    torch.manual_seed(0)
    model = WorldModel(views=2, image_size=16, context=2, horizon=4, future=4, block_out_channels=(32, 32),
                       cond_dim=32, scale_noisy_input=True).eval()  # 1 step: deterministic
    with torch.no_grad():  # a copy-last model at initialisation: let it move with the actions
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sampler = WorldModelSampler(model, num_steps=1)
    episodes = [episode(7, 0), episode(10, 1), episode(1, 2)]
    out = regenerate_episodes(sampler, episodes, normalizer(), batch_size=2, desc=None)
    for (frames, actions, _), regen in zip(episodes, out):
        assert regen.shape == frames.shape and regen.dtype == torch.uint8
        assert torch.equal(regen[:, 0], frames[:, 0])  # the real first frame
    assert not torch.equal(out[0][:, 1:], out[0][:, :1].expand_as(out[0][:, 1:]))  # it imagined motion
    # an episode's re-generation depends on its own actions only, not on its batch (up to rounding)
    alone = regenerate_episodes(sampler, [episodes[0]], normalizer(), desc=None)[0]
    assert (alone.int() - out[0].int()).abs().max() <= 1
    other = (episodes[0][0], -episodes[0][1], episodes[0][2])
    assert not torch.equal(regenerate_episodes(sampler, [other], normalizer(), desc=None)[0], out[0])


def test_a_strided_model_is_refused():
    model = WorldModel(views=2, image_size=16, context=2, horizon=4, future=2, block_out_channels=(32, 32), cond_dim=32)
    with pytest.raises(ValueError, match="frame stride 1"):
        regenerate_episodes(WorldModelSampler(model), [episode(5, 0)], normalizer(), desc=None)
