"""The latent_transformer backbone: a frozen AutoencoderKL inside the model (saved and loaded with
it, or loaded from a local folder), copy-last start in latent space, training lowers the loss,
the sampler returns pixel frames, unrolled training, the autoencoder trainer, named errors."""

import importlib.util
import shutil

import pytest
import torch

from data.clips import ClipConfig, ClipDataset
from simulator.world_model import FlowMatchingConfig, WorldModel, WorldModelSampler, flow_matching_loss
from simulator.world_model import autoencoder as ae
from simulator.world_model.objective import to_model_range, unrolled_inputs
from simulator.world_model.transformer import SelfAttention
from tests.world_model.test_world_model import assert_sampler_contract

TINY = {"backbone": "latent_transformer", "views": 2, "image_size": 32, "context": 2, "future": 2, "horizon": 4,
        "action_dim": 7, "state_dim": 8, "cond_dim": 32, "norm_num_groups": 8, "latent_channels": 4,
        "latent_downsample": 4, "autoencoder_width": 8, "patch_size": 2, "depth": 2, "heads": 2, "width": 32}
LATENT = (4, 8, 8)  # (c, h/4, w/4) of a 32x32 frame


@pytest.fixture(scope="module")
def batch(tiny_dataset):
    clips = ClipDataset(root=tiny_dataset, config=ClipConfig(context=2, horizon=4, stride=2))
    loader = torch.utils.data.DataLoader(clips, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    return next(iter(loader))


@pytest.fixture(scope="module")
def vae_dir(batch, tmp_path_factory):
    """A tiny untrained autoencoder, its latent scale fitted on the batch, saved in a folder."""
    torch.manual_seed(0)
    vae = ae.build_autoencoder(latent_channels=4, downsample=4, width=8, norm_num_groups=8)
    ae.fit_latent_scale(vae, [to_model_range(torch.cat([batch["context"], batch["future"]], dim=2))])
    folder = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(folder)
    return folder


def make_model(vae_dir, **overrides) -> WorldModel:
    return WorldModel(**{**TINY, "autoencoder": str(vae_dir), **overrides})


def inputs(batch):
    return to_model_range(batch["context"]), batch["action"], batch["context_state"]


def test_untrained_model_predicts_copy_last_latent(batch, vae_dir):
    model = make_model(vae_dir)
    context, actions, state = inputs(batch)
    latents = model.encode(context)
    assert model.sample_shape == LATENT and latents.shape == (8, 2, 2, *LATENT)
    assert 0.5 < latents.std() < 2  # the fitted scale puts the latents near unit spread
    pred = model(torch.randn(8, 2, 2, *LATENT), torch.full((8,), 0.7), latents, actions, state)
    assert torch.equal(pred.frames, latents[:, :, -1:].expand_as(pred.frames))
    assert torch.equal(pred.state, state[:, -1:].expand(-1, 2, -1))
    assert model.decode(latents).shape == context.shape


def test_autoencoder_is_frozen_and_round_trips_with_the_model(batch, vae_dir, tmp_path):
    torch.manual_seed(0)
    model = make_model(vae_dir)
    assert all(not p.requires_grad for p in model.vae.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("vae."))
    for p in model.parameters():  # move every weight, the autoencoder's too, off its initial value
        p.data.add_(0.01 * torch.randn_like(p))
    ae.fit_latent_scale(model.vae, [to_model_range(batch["context"])])  # the latent scale changes after building
    model.save_pretrained(tmp_path / "wm")
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    assert loaded.spec == model.spec and not loaded.training
    assert all(not p.requires_grad for p in loaded.vae.parameters())
    assert loaded.vae.config.scaling_factor == model.vae.config.scaling_factor
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model.eval()
    context, actions, state = inputs(batch)
    latents = model.encode(context)
    assert torch.equal(latents, loaded.encode(context))
    noisy, t = torch.randn(8, 2, 2, *LATENT), torch.rand(8)
    pa, pb = model(noisy, t, latents, actions, state), loaded(noisy, t, latents, actions, state)
    assert torch.equal(pa.frames, pb.frames) and torch.equal(pa.state, pb.state)
    assert torch.equal(model.decode(pa.frames), loaded.decode(pb.frames))


def test_world_model_loads_an_autoencoder_from_a_local_folder(batch, vae_dir, tmp_path):
    vae = ae.load_autoencoder(vae_dir)
    model = make_model(vae_dir)
    assert all(torch.equal(p, q) for p, q in zip(vae.parameters(), model.vae.parameters(), strict=True))
    context = to_model_range(batch["context"])
    with torch.no_grad():
        expected = ae.encode(vae, context.flatten(0, 2)).unflatten(0, (8, 2, 2))
    assert torch.equal(model.encode(context), expected)
    # a diffusers pipeline folder (the VAE in vae/), as a downloaded Stable Diffusion has it
    shutil.copytree(vae_dir, tmp_path / "pipeline" / "vae")
    assert torch.equal(make_model(tmp_path / "pipeline").encode(context), expected)
    # the saved world model holds the autoencoder: it loads after the folder is gone
    make_model(tmp_path / "pipeline").save_pretrained(tmp_path / "wm")
    shutil.rmtree(tmp_path / "pipeline")
    assert torch.equal(WorldModel.from_pretrained(tmp_path / "wm").encode(context), expected)
    with pytest.raises(FileNotFoundError, match="no diffusers AutoencoderKL in"):
        make_model(tmp_path / "pipeline")
    with pytest.raises(ValueError, match=r"has in_channels=3, latent_channels=4, latent_downsample=4; .* "
                                         r"cfg.latent_downsample=2"):
        make_model(vae_dir, latent_downsample=2)


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(batch, vae_dir):
    torch.manual_seed(0)
    model = make_model(vae_dir)
    cfg = FlowMatchingConfig()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    vae_before = [p.clone() for p in model.vae.parameters()]

    def metrics_at(seed):
        return flow_matching_loss(model, batch, cfg, torch.Generator().manual_seed(seed))[1]

    def mean_metrics():
        with torch.no_grad():
            runs = [metrics_at(s) for s in range(4)]
        return {k: torch.stack([r[k] for r in runs]).mean() for k in runs[0]}

    before = mean_metrics()
    for step in range(30):
        loss, _ = flow_matching_loss(model, batch, cfg, torch.Generator().manual_seed(100 + step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mean_metrics()
    assert after["loss"] < 0.8 * before["loss"], (before, after)
    assert after["frame_mse"] < 0.85 * before["frame_mse"], (before, after)  # the transformer learns, not only the state head
    assert all(torch.equal(p, q) for p, q in zip(vae_before, model.vae.parameters()))  # AdamW left the frozen VAE alone


def test_gradient_checkpointing_gives_the_same_gradients(batch, vae_dir):
    torch.manual_seed(0)
    model = make_model(vae_dir)
    for p in model.transformer.parameters():  # past the zero init, so every layer gets a gradient
        p.data.add_(0.02 * torch.randn_like(p))

    def grads():
        model.zero_grad()
        flow_matching_loss(model, batch, FlowMatchingConfig(), torch.Generator().manual_seed(0))[0].backward()
        return [p.grad.clone() for p in model.transformer.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.transformer.gradient_checkpointing
    checkpointed = grads()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))


def test_sampler_and_rollout_give_pixel_frames(batch, vae_dir):
    model = make_model(vae_dir).eval()
    for p in model.transformer.proj_out.parameters():
        p.data.normal_(0, 0.1)  # a model that changes latents, so noise matters
    assert_sampler_contract(model, *inputs(batch))
    context, actions, state = inputs(batch)
    sampler = WorldModelSampler(model, num_steps=2)
    one = sampler.sample(context, actions, state, generator=torch.Generator().manual_seed(1))
    other = sampler.sample(context, actions, state, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(one.frames, other.frames)  # the sampled noise reaches the frames


def test_unrolled_training_continues_from_the_models_own_chunks(tiny_dataset, vae_dir):
    clips = ClipDataset(root=tiny_dataset, config=ClipConfig(context=2, horizon=8, stride=2))  # 2 chunks of 4
    batch = torch.utils.data.default_collate([clips[i] for i in range(0, 40, 5)])
    model = make_model(vae_dir)  # untrained: holds the last latent
    cfg = FlowMatchingConfig(unroll_chunks=2)
    context, x0, actions, state, future_state, mask = unrolled_inputs(model, batch, cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        real_context = model.encode(to_model_range(batch["context"]))
        future = model.encode(to_model_range(batch["future"]))
    assert context.shape == (8, 2, 2, *LATENT) and x0.shape == (8, 2, 2, *LATENT)
    imagined = [i for i in range(8) if not torch.equal(context[i], real_context[i])]
    assert 0 < len(imagined) < 8
    for i in range(8):
        k = 1 if i in imagined else 0
        assert torch.equal(x0[i], future[i, :, 2 * k:2 * k + 2])
        assert torch.equal(actions[i], batch["action"][i, 4 * k:4 * k + 4])
        assert torch.equal(future_state[i], batch["future_state"][i, 2 * k:2 * k + 2])
        assert torch.equal(mask[i], batch["future_mask"][i, 2 * k:2 * k + 2])
        if k:  # the untrained state head holds the last state
            assert torch.equal(state[i], batch["context_state"][i, -1:].expand_as(state[i]))
    with torch.no_grad():  # the imagined chunk is the last latent held, through decode -> clamp -> encode
        held = model.encode(model.decode(real_context[:, :, -1:]).clamp(-1, 1))
    for i in imagined:
        assert torch.allclose(context[i], held[i].expand_as(context[i]), atol=1e-3)  # batch sizes differ
    loss, _ = flow_matching_loss(model, batch, cfg, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_autoencoder_training_lowers_reconstruction_error_and_sets_the_scale(batch):
    torch.manual_seed(0)
    frames = to_model_range(torch.cat([batch["context"], batch["future"]], dim=2)).flatten(0, 2)  # (64, 3, 32, 32)
    loader = torch.utils.data.DataLoader(frames, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    vae = ae.build_autoencoder(latent_channels=4, downsample=4, width=8, norm_num_groups=8)

    def reconstruction_error():
        with torch.no_grad():
            return (ae.decode(vae, ae.encode(vae, frames)) - frames).square().mean()

    before = reconstruction_error()
    cfg = ae.AutoencoderTrainConfig(steps=40, lr=2e-3, scale_batches=4, progress=False)
    assert ae.train_autoencoder(vae, loader, cfg) is vae and not vae.training
    after = reconstruction_error()
    assert after < 0.5 * before, (before.item(), after.item())
    with torch.no_grad():
        latents = ae.encode(vae, frames)  # the 4 scale batches are the 64 frames: mean 0, std 1 exactly
    assert abs(latents.mean()) < 1e-3 and abs(latents.std(unbiased=False) - 1) < 1e-3
    with pytest.raises(ValueError, match="give a re-iterable"):
        ae.train_autoencoder(vae, (x for x in [frames[:4]]), ae.AutoencoderTrainConfig(steps=2, progress=False))


def test_inputs_that_do_not_fit_are_named(batch, vae_dir):
    model = make_model(vae_dir)
    context, actions, state = inputs(batch)
    latents = model.encode(context)
    noisy, t = torch.randn(8, 2, 2, *LATENT), torch.rand(8)
    with pytest.raises(ValueError, match=r"noisy must have shape \(B, V, F, c, h/4, w/4\) = \(B, 2, 2, 4, 8, 8\), "
                                         r"got \(8, 2, 2, 3, 32, 32\) \(pixel frames\? the latent backbone takes latents"):
        model(torch.randn(8, 2, 2, 3, 32, 32), t, latents, actions, state)
    with pytest.raises(ValueError, match=r"context must have shape \(B, V, C, c, h/4, w/4\) = \(B, 2, 2, 4, 8, 8\), got \(8, 2, 1"):
        model(noisy, t, latents[:, :, :1], actions, state)
    with pytest.raises(ValueError, match=r"actions must have shape \(B, H, A\) = \(B, 4, 7\), got \(8, 4, 6\)"):
        model(noisy, t, latents, actions[..., :6], state)
    with pytest.raises(ValueError, match=r"frames to encode must have shape \(B, V, N, 3, h, w\) = \(B, 2, N, 3, 32, 32\), "
                                         r"got \(8, 1, 2, 3, 32, 32\)"):
        model.encode(context[:, :1])
    with pytest.raises(TypeError, match="frames to encode must be a floating-point tensor, got torch.uint8"):
        model.encode((context * 127).to(torch.uint8))
    with pytest.raises(ValueError, match=r"samples to decode must have shape \(B, V, N, c, h/4, w/4\) = \(B, 2, N, 4, 8, 8\)"):
        model.decode(context)
    with pytest.raises(ValueError, match="image_size must be divisible by latent_downsample \\* patch_size"):
        WorldModel(**{**TINY, "patch_size": 3})
    with pytest.raises(ValueError, match="width must be a multiple of heads"):
        WorldModel(**{**TINY, "heads": 3})
    with pytest.raises(ValueError, match="latent_downsample must be a power of 2"):
        WorldModel(**{**TINY, "latent_downsample": 3})


def test_xformers_switch():
    attention = SelfAttention(32, 2)
    if importlib.util.find_spec("xformers") is None:
        with pytest.raises(ImportError, match="xformers is not installed"):
            attention.set_use_memory_efficient_attention_xformers(True)
        assert not attention.use_xformers
        return
    if not torch.cuda.is_available():
        pytest.skip("xformers' kernels need a GPU")
    attention = attention.cuda().half()
    x = torch.randn(4, 16, 32, device="cuda", dtype=torch.half)
    sdpa = attention(x)
    attention.set_use_memory_efficient_attention_xformers(True)
    torch.testing.assert_close(attention(x), sdpa, atol=2e-3, rtol=2e-3)


def test_actions_and_other_views_reach_the_predicted_latents(batch, vae_dir):
    torch.manual_seed(0)
    model = make_model(vae_dir).eval()
    for p in model.transformer.parameters():  # past the zero init, so every path carries signal
        p.data.add_(0.05 * torch.randn_like(p))
    context, actions, state = inputs(batch)
    latents, noisy, t = model.encode(context), torch.randn(8, 2, 2, *LATENT), torch.rand(8)
    with torch.no_grad():
        base = model(noisy, t, latents, actions, state).frames
        pushed = model(noisy, t, latents, actions + 1.0, state).frames
        dropped = torch.ones(8, dtype=torch.bool)
        assert torch.equal(model(noisy, t, latents, actions, state, drop_actions=dropped).frames,
                           model(noisy, t, latents, actions + 1.0, state, drop_actions=dropped).frames)
        other_view = latents.clone()
        other_view[:, 0] += 1.0
        seen = model(noisy, t, other_view, actions, state).frames
    assert not torch.allclose(base, pushed)
    assert not torch.allclose(base[:, 1], seen[:, 1])  # view 1's prediction attends to view 0's context


def test_autoencoder_command_trains_one_the_world_model_loads(tiny_dataset, tmp_path):
    from data.clips import DatasetConfig
    from train.autoencoder import TrainAutoencoderConfig, train

    cfg = TrainAutoencoderConfig(dataset=DatasetConfig(root=tiny_dataset, val_episodes=2), width=32, batch_size=8,
                                 training=ae.AutoencoderTrainConfig(steps=3, scale_batches=2, progress=False),
                                 device="cpu", output_dir=tmp_path)
    folder = train(cfg)
    vae = ae.load_autoencoder(folder)
    assert vae.config.scaling_factor != 1.0  # the latent scale was fitted on the frames
    model = WorldModel(**{**TINY, "autoencoder": str(folder)})
    assert torch.equal(model.vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)
