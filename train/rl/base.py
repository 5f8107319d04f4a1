"""What the RL algorithms share: rollouts in the frozen imagined env, the small maths, and the
base class each algorithm extends.

An iteration (``train.rl.loop``) resets ``num_envs`` imagined envs at start frames that the
algorithm picks (GRPO: groups of envs at identical starts), runs the policy chunk by chunk until
every episode ended (solved or ``max_steps``) and hands the ``Rollouts`` to
``Algorithm.update``. Rewards are the env's: gamma·Φ(next) − Φ(now) from the progress model,
plus a bonus at success.

Each algorithm's settings are a dataclass registered under the algorithm's name with
``AlgorithmConfig.register_subclass`` (as lerobot registers its policies' configs), so that the
command line picks one with ``--algorithm.type NAME`` and shows only its settings.

Pure functions, unit-tested: ``group_advantages``, ``gae``, ``clipped_surrogate``, ``kl_k3``.

Dimension legend: T chunk steps, B envs, K stochastic denoising steps, V views, S state dim,
H chunk length, A action dim, h x w image size.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import draccus
import torch
from torch import Tensor

from policy.base import ActionSample, RLPolicy, no_log_prob_message
from simulator import keys
from simulator.rollout import Rollout

DEFAULT_ALGORITHM = "filtered_imitation"  # the recipe measured best: the comment on train.rl.loop.RLConfig.algorithm


@dataclass
class AlgorithmConfig(draccus.ChoiceRegistry):
    """The settings of one RL algorithm: a registered subclass per algorithm, picked on the command
    line by ``--algorithm.type NAME`` (lerobot's ``PreTrainedConfig`` and ``--policy.type``)."""

    @property
    def type(self) -> str:
        """The name the config is registered under (``grpo``, ``filtered_imitation``, ...)."""
        return self.get_choice_name(self.__class__)

    @classmethod
    def default_choice_name(cls) -> str:
        # ``--algorithm.lr 3e-5`` without ``--algorithm.type`` sets the default algorithm's lr
        return DEFAULT_ALGORITHM

    @classmethod
    @contextmanager
    def listing_only(cls, name: str) -> Iterator[None]:
        """Inside the block the registry holds ``name`` alone: a draccus parser built there shows
        that algorithm's settings only, where it would list every registered algorithm's at once."""
        registry = cls._choice_registry
        cls._choice_registry = {name: registry[name]}
        try:
            yield
        finally:
            cls._choice_registry = registry


@dataclass
class Rollouts:
    """T chunk steps of B imagined episodes. Step t of env b counts only where ``alive[t, b]``."""

    images: Tensor  # (T, B, V, 3, h, w) uint8: the observation each chunk was chosen from
    state: Tensor  # (T, B, S)
    task: list[str]  # B
    actions: Tensor  # (T, B, H, A) executed, env units
    samples: ActionSample | None  # flattened over (T, B) in t-major order; None for policies without log-probs
    rewards: Tensor  # (T, B)
    alive: Tensor  # (T, B) bool
    success: Tensor  # (B,) bool: the episode ended solved
    starts: Tensor  # (B,) start index of each env
    # The obs one env step before (keys.previous_key), as the env gave it, for a policy that reads
    # it (``obs_steps`` > 1); None otherwise.
    previous_images: Tensor | None = None  # (T, B, V, 3, h, w) uint8
    previous_state: Tensor | None = None  # (T, B, S)

    @property
    def returns(self) -> Tensor:
        """(B,) undiscounted sum of each episode's rewards."""
        return (self.rewards * self.alive).sum(0)

    def observation(self, t_idx: Tensor, b_idx: Tensor, views: tuple[str, ...], task_suffix: str = "") -> dict:
        """The policy's observation at steps (t_idx, b_idx) (N,) as the env gave it."""
        images = self.images[t_idx, b_idx].float() / 255.0  # (N, V, 3, h, w)
        obs = {keys.image_key(v): images[:, i] for i, v in enumerate(views)}
        if self.previous_images is not None:  # the history the policy acted on, for log_prob
            before = self.previous_images[t_idx, b_idx].float() / 255.0
            obs |= {keys.previous_key(keys.image_key(v)): before[:, i] for i, v in enumerate(views)}
            obs[keys.previous_key(keys.STATE)] = self.previous_state[t_idx, b_idx]
        return obs | {keys.STATE: self.state[t_idx, b_idx], keys.TASK: [self.task[b] + task_suffix for b in b_idx.tolist()]}


def collect(env, policy, views: tuple[str, ...], start_index: Tensor, seed: int,
            generator: torch.Generator | None = None, log_prob: bool = True) -> Rollouts:
    """Runs one imagined episode per env from ``start_index`` (B,), chunk by chunk. With
    ``log_prob``, policies with log-probabilities (``RLPolicy``) sample through ``sample`` (the
    stochastic denoising kernel) and the samples are kept. Otherwise the policy acts as it
    normally does (``select_action_chunk``; a flow policy: its ODE from fresh noise, seeded per env
    from ``generator``): an algorithm that imitates its own rollouts must see its own action
    distribution, not the kernel's wider one, whose extra noise it would learn."""
    B = env.num_envs
    rollout = Rollout(env, seed=seed, options={"start_index": start_index})
    obs = rollout.obs
    with_log_prob = log_prob and isinstance(policy, RLPolicy)
    if not with_log_prob:
        seeds = torch.randint(0, 2**31 - 1, (B,), generator=generator).tolist() if generator is not None else None
        policy.reset(obs, rollout.info, seeds=seeds)
    steps: dict[str, list] = {k: [] for k in ("images", "state", "actions", "samples", "rewards", "alive",
                                              "previous_images", "previous_state")}
    # The obs one env step before, kept only for a policy that reads it (twice the image memory).
    history = getattr(policy, "obs_steps", 1) > 1 and keys.previous_key(keys.STATE) in obs
    task = list(obs[keys.TASK]) if not isinstance(obs[keys.TASK], str) else [obs[keys.TASK]] * B

    @torch.no_grad()
    def act(obs: dict) -> Tensor:
        if not with_log_prob:
            return policy.select_action_chunk(obs).float().cpu()
        sample = policy.sample(obs, generator)
        steps["samples"].append(sample)
        return sample.actions.float().cpu()

    for step in rollout.run(act):
        steps["images"].append(torch.stack([(step.obs[keys.image_key(v)] * 255).round().to(torch.uint8) for v in views], 1))
        steps["state"].append(step.obs[keys.STATE].float().cpu())
        if history:
            before = [step.obs[keys.previous_key(keys.image_key(v))] * 255 for v in views]
            steps["previous_images"].append(torch.stack([x.round().to(torch.uint8) for x in before], 1))
            steps["previous_state"].append(step.obs[keys.previous_key(keys.STATE)].float().cpu())
        steps["actions"].append(step.actions)
        steps["alive"].append(step.alive)
        steps["rewards"].append(torch.where(step.alive, step.reward.float().cpu(), torch.zeros(B)))
    stack = lambda k: torch.stack(steps[k])
    samples = ActionSample.cat([s.to("cpu") for s in steps["samples"]]) if with_log_prob else None
    return Rollouts(images=stack("images"), state=stack("state"), task=task, actions=stack("actions"), samples=samples,
                    rewards=stack("rewards"), alive=stack("alive"), success=rollout.solved,
                    starts=torch.as_tensor(start_index),
                    previous_images=stack("previous_images") if history else None,
                    previous_state=stack("previous_state") if history else None)


def group_advantages(returns: Tensor, group_size: int, scale_by_std: bool = True,
                     min_std: float = 1e-6) -> tuple[Tensor, Tensor]:
    """GRPO: return − group mean over consecutive groups of ``group_size`` episodes that started
    from the same frames, divided by the group's std with ``scale_by_std`` (Dr. GRPO leaves that
    out: where a group's returns differ only by noise, the division blows the noise up into
    advantages of ±1). Returns (advantages (B,), kept (B,) bool): groups whose returns are all
    equal (a std of at most ``min_std``) teach nothing and are dropped."""
    if returns.ndim != 1 or returns.shape[0] % group_size:
        raise ValueError(f"returns must be (B,) with B a multiple of group_size {group_size}, got {tuple(returns.shape)}")
    groups = returns.view(-1, group_size)
    std = groups.std(1, correction=0, keepdim=True)
    adv = groups - groups.mean(1, keepdim=True)
    if scale_by_std:
        adv = adv / std.clamp_min(min_std)
    kept = (std > min_std).expand_as(groups)
    return (adv * kept).flatten(), kept.flatten()


def group_starts(num_envs: int, num_starts: int, group_size: int, generator: torch.Generator) -> Tensor:
    """(B,) start indices in groups: ``group_size`` consecutive envs share a randomly drawn start."""
    if num_envs % group_size:
        raise ValueError(f"num_envs ({num_envs}) must be a multiple of the group size ({group_size})")
    return torch.randint(0, num_starts, (num_envs // group_size,), generator=generator).repeat_interleave(group_size)


def gae(rewards: Tensor, values: Tensor, alive: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over chunk steps. rewards, alive (T, B); values (T + 1, B)
    with values[T] the bootstrap (0 where the episode ended). An episode ends at its last alive
    step: nothing flows back across it. Returns (advantages (T, B), value targets (T, B))."""
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    alive = alive.float()
    for t in reversed(range(T)):
        next_alive = alive[t + 1] if t + 1 < T else torch.zeros_like(alive[0])
        delta = rewards[t] + gamma * values[t + 1] * next_alive - values[t]
        running = delta + gamma * lam * next_alive * running
        adv[t] = running * alive[t]
    return adv, (adv + values[:-1]) * alive


def clipped_surrogate(new_log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: float,
                      dims: int = 1) -> tuple[Tensor, dict]:
    """PPO's clipped objective, per stochastic denoising step (DPPO): log-probs (N, K), advantages
    (N,). The log-ratio of a step is divided by ``dims``, the dimensions of its Gaussian (H x A),
    as Flow-GRPO does: summed over a 56-dimensional chunk, the slightest change of the mean moves
    the ratio past any clip, and the clip stops meaning a trust region. Returns (loss to minimise,
    metrics: clip fraction, approximate KL per dimension, mean ratio)."""
    ratio = ((new_log_probs - old_log_probs) / dims).exp()
    adv = advantages[:, None].expand_as(ratio)
    loss = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
    with torch.no_grad():
        metrics = {"clip_fraction": ((ratio - 1).abs() > clip).float().mean().item(),
                   "approx_kl": ((ratio - 1) - ratio.log()).mean().item(), "ratio": ratio.mean().item()}
    return loss, metrics


def kl_k3(log_probs: Tensor, reference_log_probs: Tensor, dims: int = 1) -> Tensor:
    """Schulman's k3 estimate of KL(policy || reference) from samples of the policy: mean of
    (r − 1) − log r with r = p_ref / p; >= 0, unbiased, low variance. ``dims`` as in
    ``clipped_surrogate`` (then a KL per dimension)."""
    log_r = (reference_log_probs - log_probs) / dims
    return (log_r.exp() - 1 - log_r).mean()


class Algorithm:
    """One RL algorithm: how it picks starts and how it updates the policy from rollouts."""

    name = "base"
    needs_log_prob = True

    def __init__(self, policy, config: AlgorithmConfig, views: tuple[str, ...]):
        if self.needs_log_prob and not isinstance(policy, RLPolicy):
            raise TypeError(no_log_prob_message(type(policy).__name__, self.name))
        self.policy, self.config, self.views = policy, config, tuple(views)

    def start_index(self, num_envs: int, num_starts: int, generator: torch.Generator) -> Tensor:
        """(B,) the start of each env: independent draws by default."""
        return torch.randint(0, num_starts, (num_envs,), generator=generator)

    def update(self, rollouts: Rollouts, generator: torch.Generator) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def fine_tuning_setup(policy, lr: float) -> tuple:
    """What a likelihood-based algorithm sets up: the policy's early denoising steps frozen when it
    can (DPPO fine-tunes only the last K), a frozen copy of it as the KL anchor, and AdamW over what
    is left to train. Returns (reference, optimiser)."""
    if hasattr(policy, "start_fine_tuning"):
        policy.start_fine_tuning()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    return reference, torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


def minibatches(n: int, size: int, generator: torch.Generator):
    """Shuffled index batches of at most ``size`` over range(n)."""
    order = torch.randperm(n, generator=generator)
    return [order[i:i + size] for i in range(0, n, size)]
