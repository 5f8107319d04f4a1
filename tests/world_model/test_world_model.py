"""World model: save/load round trip, copy-last start, training lowers the loss on real clips,
sampler and rollout shapes and determinism, clear errors for inputs that do not fit, still pixels."""

import pytest
import torch

from data.clips import ClipConfig, ClipDataset
from simulator.world_model import FlowMatchingConfig, WorldModel, WorldModelSampler, flow_matching_loss
from simulator.world_model.objective import to_model_range

TINY = dict(views=2, image_size=32, context=2, future=2, horizon=4, action_dim=7, state_dim=8,
            block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cond_dim=32)


@pytest.fixture(scope="module")
def batch(tiny_dataset):
    clips = ClipDataset(root=tiny_dataset, config=ClipConfig(context=2, horizon=4, stride=2))
    loader = torch.utils.data.DataLoader(clips, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    return next(iter(loader))


def inputs(batch):
    context = to_model_range(batch["context"])
    return context, batch["action"], batch["context_state"]


def test_untrained_model_predicts_copy_last_frame(batch):
    model = WorldModel(**TINY)
    context, actions, state = inputs(batch)
    noisy = torch.randn(8, 2, 2, 3, 32, 32)
    pred = model(noisy, torch.full((8,), 0.7), context, actions, state)
    assert torch.equal(pred.frames, context[:, :, -1:].expand_as(pred.frames))
    assert torch.equal(pred.state, state[:, -1:].expand(-1, 2, -1))


def test_save_load_round_trip_is_exact(batch, tmp_path):
    torch.manual_seed(0)
    model = WorldModel(**TINY)
    for p in model.parameters():  # move off the zero init so the round trip checks real weights
        p.data.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "wm")
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    assert loaded.spec == model.spec and not loaded.training
    context, actions, state = inputs(batch)
    noisy, t = torch.randn(8, 2, 2, 3, 32, 32), torch.rand(8)
    model.eval()
    a, b = model(noisy, t, context, actions, state), loaded(noisy, t, context, actions, state)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.state, b.state)


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(batch):
    torch.manual_seed(0)
    model = WorldModel(**TINY)
    cfg = FlowMatchingConfig()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def loss_at(seed):
        return flow_matching_loss(model, batch, cfg, torch.Generator().manual_seed(seed))

    with torch.no_grad():
        before = torch.stack([loss_at(s)[0] for s in range(4)]).mean()
    for step in range(30):
        loss, metrics = loss_at(100 + step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = torch.stack([loss_at(s)[0] for s in range(4)]).mean()
    assert set(metrics) == {"loss", "frame_mse", "state_mse"}
    assert after < 0.8 * before, (before.item(), after.item())


def assert_sampler_contract(model, context, actions, state):
    """Shapes, range and seeding of sample and rollout (8 clips, 2 views, 2 frames per chunk, 32x32),
    for a model whose output depends on the noise. Shared by both backbones' tests."""
    sampler = WorldModelSampler(model, num_steps=3)
    a = sampler.sample(context, actions, state, generator=torch.Generator().manual_seed(1))
    b = sampler.sample(context, actions, state, generator=torch.Generator().manual_seed(1))
    c = sampler.sample(context, actions, state, generator=torch.Generator().manual_seed(2))
    assert a.frames.shape == (8, 2, 2, 3, 32, 32) and a.state.shape == (8, 2, 8)
    assert a.frames.min() >= -1 and a.frames.max() <= 1
    assert torch.equal(a.frames, b.frames) and not torch.equal(a.frames, c.frames)
    roll = sampler.rollout(context, torch.stack([actions] * 3, dim=1), state, generator=torch.Generator().manual_seed(1))
    assert roll.frames.shape == (8, 2, 6, 3, 32, 32) and roll.state.shape == (8, 6, 8)
    assert roll.frames.min() >= -1 and roll.frames.max() <= 1
    assert torch.equal(roll.frames[:, :, :2], a.frames)  # the first chunk is the single-chunk sample


def test_sampler_shapes_range_and_determinism(batch):
    model = WorldModel(**TINY).eval()
    for p in model.unet.conv_out.parameters():
        p.data.normal_(0, 0.1)  # a model that changes frames, so noise matters
    assert_sampler_contract(model, *inputs(batch))


def test_still_pixels_keep_the_last_frame_and_the_rollout_continues_from_them(batch):
    model = WorldModel(**TINY).eval()
    for p in model.unet.conv_out.parameters():
        p.data.normal_(0, 0.02)  # small changes everywhere, as a trained model's shimmer
    context, actions, state = inputs(batch)
    gen = lambda: torch.Generator().manual_seed(1)
    raw = WorldModelSampler(model, num_steps=1).sample(context, actions, state, gen()).frames
    tau = 8 / 255
    sampler = WorldModelSampler(model, num_steps=1, still_threshold=tau)
    kept = sampler.sample(context, actions, state, gen()).frames
    last = context[:, :, -1:].expand_as(raw)
    moved = (raw - last).abs().amax(3, keepdim=True) >= 2 * tau  # in [-1, 1] units
    assert moved.any() and (~moved).any()
    assert torch.equal(kept, torch.where(moved, raw, last))  # pixels that move are the model's, the rest the last frame's
    # The second chunk of a rollout starts from the thresholded first chunk, as the imagined env's frames do.
    roll = sampler.rollout(context, torch.stack([actions] * 2, dim=1), state, gen()).frames
    assert torch.equal(roll[:, :, :2], kept)
    g = gen()  # one generator across both chunks, as the rollout draws its noise
    first = sampler.sample(context, actions, state, g)
    next_context = torch.cat([context, first.frames], 2)[:, :, -2:]
    next_state = torch.cat([state, first.state], 1)[:, -2:]
    torch.testing.assert_close(roll[:, :, 2:], sampler.sample(next_context, actions, next_state, g).frames)
    with pytest.raises(ValueError, match="still_threshold is an intensity"):
        WorldModelSampler(model, still_threshold=2.0)


def test_inputs_that_do_not_fit_are_named(batch):
    model = WorldModel(**TINY)
    context, actions, state = inputs(batch)
    noisy, t = torch.randn(8, 2, 2, 3, 32, 32), torch.rand(8)
    with pytest.raises(ValueError, match=r"actions must have shape \(B, H, A\) = \(B, 4, 7\), got \(8, 4, 6\)"):
        model(noisy, t, context, actions[..., :6], state)
    with pytest.raises(ValueError, match=r"context must have shape \(B, V, C, 3, h, w\) = \(B, 2, 2, 3, 32, 32\), got \(8, 1, 2"):
        model(noisy, t, context[:, :1], actions, state)
    with pytest.raises(ValueError, match=r"context must have shape .* got \(8, 2, 1, 3, 32, 32\)"):
        model(noisy, t, context[:, :, :1], actions, state)
    with pytest.raises(TypeError, match="context must be a floating-point tensor, got torch.uint8"):
        model(noisy, t, (context * 127).to(torch.uint8), actions, state)
    with pytest.raises(ValueError, match="state has batch size 4, other inputs have 8"):
        model(noisy, t, context, actions, state[:4])
    with pytest.raises(ValueError, match="unknown backbone 'dit'"):
        WorldModel(**{**TINY, "backbone": "dit"})


def test_unrolled_training_continues_from_the_models_own_chunks(tiny_dataset):
    from simulator.world_model.objective import unrolled_inputs

    clips = ClipDataset(root=tiny_dataset, config=ClipConfig(context=2, horizon=8, stride=2))  # 2 chunks of 4
    batch = torch.utils.data.default_collate([clips[i] for i in range(0, 40, 5)])
    model = WorldModel(**TINY)  # untrained: predicts copy-last and an unchanged state
    cfg = FlowMatchingConfig(unroll_chunks=2)
    gen = torch.Generator().manual_seed(0)
    context, x0, actions, state, future_state, mask = unrolled_inputs(model, batch, cfg, gen)
    real_context = to_model_range(batch["context"])
    imagined = [i for i in range(8) if not torch.equal(context[i], real_context[i])]
    assert 0 < len(imagined) < 8  # some samples train on chunk 2 from an imagined chunk 1
    for i in range(8):
        k = 1 if i in imagined else 0
        assert torch.equal(x0[i], to_model_range(batch["future"][i, :, 2 * k:2 * k + 2]))
        assert torch.equal(actions[i], batch["action"][i, 4 * k:4 * k + 4])
        assert torch.equal(future_state[i], batch["future_state"][i, 2 * k:2 * k + 2])
    for i in imagined:  # copy-last imagined chunk 1 = the last real frame, held
        assert torch.equal(context[i], real_context[i, :, -1:].expand_as(context[i]))
        assert torch.equal(state[i], batch["context_state"][i, -1:].expand_as(state[i]))
    loss, _ = flow_matching_loss(model, batch, cfg, gen)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="unroll_chunks=3 needs clips of 12 actions"):
        unrolled_inputs(model, batch, FlowMatchingConfig(unroll_chunks=3), gen)


def test_scaled_noisy_input_makes_t1_a_deterministic_prediction(batch):
    torch.manual_seed(0)
    model = WorldModel(**TINY, scale_noisy_input=True).eval()
    for p in model.unet.conv_out.parameters():
        p.data.normal_(0, 0.1)  # a model that changes frames
    context, actions, state = inputs(batch)
    a, b = torch.randn(8, 2, 2, 3, 32, 32), torch.randn(8, 2, 2, 3, 32, 32)
    with torch.no_grad():
        at_one = [model(x, torch.ones(8), context, actions, state).frames for x in (a, b)]
        at_half = [model(x, torch.full((8,), 0.5), context, actions, state).frames for x in (a, b)]
    assert torch.equal(at_one[0], at_one[1])  # no noise reaches the network at t = 1
    assert not torch.allclose(at_half[0], at_half[1])
    one_step = WorldModelSampler(model, num_steps=1)
    x = one_step.sample(context, actions, state, generator=torch.Generator().manual_seed(1)).frames
    y = one_step.sample(context, actions, state, generator=torch.Generator().manual_seed(2)).frames
    torch.testing.assert_close(x, y, atol=1e-5, rtol=0)  # one sampling step: the deterministic prediction
    torch.testing.assert_close(x, at_one[0].clamp(-1, 1), atol=1e-5, rtol=0)  # (x - v = x0, up to round-off)
    with pytest.raises(ValueError, match="regression_share must be in"):
        FlowMatchingConfig(regression_share=1.5)


def synthetic_inputs(batch_size: int = 2):
    """Inputs that fit TINY, drawn without a dataset: context in [-1, 1], normalised actions and states."""
    g = torch.Generator().manual_seed(0)
    return (torch.rand(batch_size, 2, 2, 3, 32, 32, generator=g) * 2 - 1, torch.randn(batch_size, 4, 7, generator=g),
            torch.randn(batch_size, 2, 8, generator=g))


def test_the_sampler_names_inputs_that_do_not_fit():
    sampler = WorldModelSampler(WorldModel(**TINY).eval(), num_steps=1)
    context, actions, state = synthetic_inputs()
    chunks = torch.stack([actions] * 2, 1)
    with pytest.raises(TypeError, match=r"context must be floating-point frames in \[-1, 1\], got torch.uint8 .*"
                                        r"frames.float\(\) / 127.5 - 1"):
        sampler.sample(((context + 1) * 127.5).to(torch.uint8), actions, state)
    with pytest.raises(ValueError, match=r"context must be in \[-1, 1\], got values in \[0, 255\]"):
        sampler.rollout(((context + 1) * 127.5).round(), chunks, state)
    with pytest.raises(TypeError, match="actions must be a floating-point tensor, got torch.int64"):
        sampler.sample(context, actions.long(), state)
    with pytest.raises(ValueError, match=r"actions must have shape \(B, H, A\) = \(2, 4, 7\), got \(2, 0, 7\)"):
        sampler.sample(context, actions[:, :0], state)
    with pytest.raises(ValueError, match=r"got \(2, 3, 7\).* chunks of 4 actions"):
        sampler.sample(context, actions[:, :3], state)
    with pytest.raises(ValueError, match=r"actions must have shape \(B, N, H, A\) = \(2, N, 4, 7\), got \(2, 8, 7\)"
                                         r".*unflatten\(1, \(N, 4\)\)"):
        sampler.rollout(context, chunks.flatten(1, 2), state)
    with pytest.raises(ValueError, match=r"actions must hold at least one chunk \(N >= 1\), got \(2, 0, 4, 7\)"):
        sampler.rollout(context, chunks[:, :0], state)
    with pytest.raises(ValueError, match=r"state must have shape \(B, C, S\) = \(2, 2, 8\), got \(1, 2, 8\)"):
        sampler.sample_latent(context, actions, state[:1])
    for name, i in (("context", 0), ("actions", 1), ("state", 2)):
        bad = [x.clone() for x in (context, chunks, state)]
        bad[i].view(-1)[5] = float("nan")
        with pytest.raises(ValueError, match=rf"{name} must be finite, got nan at index \(0, "):
            sampler.rollout(*bad)


def test_float64_inputs_are_cast_to_the_models_dtype():
    """Actions and states from numpy arrive as float64: the sampler runs them in the model's dtype."""
    model = WorldModel(**TINY).eval()
    for p in model.unet.conv_out.parameters():
        p.data.normal_(0, 0.1)
    sampler = WorldModelSampler(model, num_steps=2)
    context, actions, state = synthetic_inputs()
    a = sampler.sample(context, actions, state, torch.Generator().manual_seed(1))
    b = sampler.sample(context.double(), actions.double(), state.double(), torch.Generator().manual_seed(1))
    assert b.frames.dtype == torch.float32 and b.state.dtype == torch.float32
    assert torch.equal(a.frames, b.frames) and torch.equal(a.state, b.state)


def test_non_finite_predictions_stay_non_finite_through_the_clamp():
    """Clamping to [-1, 1] would turn an infinite pixel into a white one: it stays non-finite, for the
    caller's check to see."""
    sampler = WorldModelSampler(WorldModel(**TINY).eval(), num_steps=1, still_threshold=8 / 255)
    last = torch.zeros(2, 2, 1, 3, 32, 32)
    samples = last.repeat(1, 1, 2, 1, 1, 1)
    samples[0, 1, 0, 2, 5, 7] = float("inf")
    samples[1, 0, 1, 0, 3, 3] = -float("inf")
    samples[1, 1, 1, 1, 0, 0] = 3.0
    frames = sampler.decoded(samples, last)
    assert torch.isinf(frames[0, 1, 0, 2, 5, 7]) and torch.isinf(frames[1, 0, 1, 0, 3, 3])
    assert frames[1, 1, 1, 1, 0, 0] == 1.0 and torch.isfinite(frames).sum() == frames.numel() - 2
