"""On-policy RL of a policy inside the frozen world model (``reverie-rl``).

    reverie-rl --policy outputs/policy/model --world_model outputs/world_model/model \\
        --progress outputs/progress/model --dataset.root outputs/demo/dataset --algorithm grpo

Each iteration resets ``num_envs`` imagined envs at real start frames (the first frames of the
dataset's training episodes, and keyframes inside them with ``--start_every``), rolls the policy
out for at most ``max_steps`` env steps, and lets the algorithm update the policy; the world
model and the progress model stay frozen. Before the first iteration and after the last, the
policy is evaluated in physics (the ground truth) and in imagination from the same matched
physics starts (``eval.rl``): the gain that counts is the physics one, and imagined success above
physics success measures how much the policy exploits the world model.

``--env physics`` runs the same algorithm with rollouts in physics instead, from the seeds that
collected the same training episodes and with physics' sparse success reward: the control that
says what the algorithm could gain were the imagined simulator faithful.

Every iteration is checkpointed (policy, optimiser, RNG, metrics): re-running the same command
resumes. Outputs: <output_dir>/policy (the trained policy), metrics.jsonl (the learning curve),
rl_eval.json/.md and learning_curve.png.

Dimension legend: B envs, T chunk steps.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from data.clips import DemoSplitDatasetConfig
from policy.base import LIKELIHOOD_ALGORITHMS, OTHER_ALGORITHMS
from train.rl.advantage_conditioned import AdvantageConditionedConfig
from train.rl.base import collect
from train.rl.filtered_imitation import FilteredImitationConfig
from train.rl.grpo import GRPO, GRPOConfig
from train.rl.ppo import PPO, PPOConfig

log = logging.getLogger(__name__)

ALGORITHMS = LIKELIHOOD_ALGORITHMS + OTHER_ALGORITHMS
ENVS = ("imagined", "physics")


@dataclass
class RLConfig:
    policy: Path = Path("outputs/policy/model")  # the base policy (reverie-train policy)
    world_model: Path = Path("outputs/world_model/model")
    progress: Path = Path("outputs/progress/model")
    # Start frames come from the training episodes of this dataset (the held-out ones are never used).
    dataset: DemoSplitDatasetConfig = field(default_factory=DemoSplitDatasetConfig)
    stats_root: Path | None = None  # for world models saved without normalization.json
    task: str = "lift"
    algorithm: str = "grpo"  # grpo | ppo | advantage_conditioned | filtered_imitation
    # Where the rollouts run: "imagined" (the point) or "physics", the control that tells an
    # algorithm that cannot improve the policy from a world model that cannot show it how.
    env: str = "imagined"
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    advantage_conditioned: AdvantageConditionedConfig = field(default_factory=AdvantageConditionedConfig)
    filtered_imitation: FilteredImitationConfig = field(default_factory=FilteredImitationConfig)
    iterations: int = 20
    num_envs: int = 32  # imagined episodes per iteration
    max_steps: int = 80  # imagined horizon in env steps: short rollouts from real frames
    start_every: int | None = None  # also start from every n-th frame inside the episodes (keyframes)
    sampling_steps: int = 1  # world-model denoising steps per chunk
    # World-model samples per chunk; with >= 2 (and >= 2 sampling steps) an imagined episode is
    # truncated as a failure once their spread passes uncertainty_limit (benchmarks.imagined_uncertainty
    # measures which limit, if any, tells the imagined successes that physics fails).
    num_samples: int = 1
    uncertainty_limit: float | None = None
    success_threshold: float = 0.5
    # Physics and imagined evaluation before and after, from the same matched physics starts.
    eval_episodes: int = 100
    # The imagined half of that evaluation; off, the physics control needs no world model at all.
    eval_imagined: bool = True
    eval_num_envs: int = 10
    eval_seed: int = 100_000  # physics seed of start 0; data collection uses seeds from 0 up
    output_dir: Path = Path("outputs/rl")
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        self.dataset.require()
        for name in ("policy", "world_model", "progress", "output_dir"):
            setattr(self, name, Path(getattr(self, name)))
        if self.env not in ENVS:
            raise ValueError(f"unknown {self.env=}; choose one of {ENVS}")
        if self.env == "physics" and self.start_every:
            raise ValueError("env=physics starts only where episodes start (their seeds); drop start_every")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown {self.algorithm=}; choose one of {ALGORITHMS}")
        self._check_lerobot_policy()
        for name in ("iterations", "num_envs", "max_steps", "eval_num_envs", "sampling_steps", "num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        if self.env == "imagined":  # the imagined env's own checks, before any evaluation runs
            from simulator.env import ImaginedEnvConfig

            ImaginedEnvConfig(num_envs=self.num_envs, max_steps=self.max_steps, sampling_steps=self.sampling_steps,
                              num_samples=self.num_samples, uncertainty_limit=self.uncertainty_limit,
                              success_threshold=self.success_threshold)
        if self.eval_episodes < 0:
            raise ValueError(f"eval_episodes must be >= 0, got {self.eval_episodes=}")
        if self.env == "imagined" and not self.eval_imagined:
            raise ValueError("RL in imagination is evaluated in imagination too (its exploitation gap); "
                             "eval_imagined=false is for env=physics")

    def _check_lerobot_policy(self) -> None:
        """A lerobot checkpoint as the policy: the algorithm must be one that trains its adapter."""
        from policy.lerobot_adapter import LerobotPolicy, lerobot_policy_type

        kind = lerobot_policy_type(self.policy)
        if kind is None:
            return
        fits = LerobotPolicy.adapter_class(kind).rl_algorithms()
        if self.algorithm in fits:
            return
        why = ("it conditions the policy on advantage words appended to its task, which the lerobot adapter does not do "
               "(lerobot's Diffusion Policy reads no text at all)" if self.algorithm == "advantage_conditioned" else
               "it needs the log-probabilities of the policy's actions, which only lerobot's Diffusion Policy gives (DPPO)")
        raise ValueError(f"{self.algorithm=} cannot train the lerobot {kind!r} policy in {self.policy}: {why}. "
                         f"Algorithms that train it: {', '.join(fits)}")


def make_algorithm(cfg: RLConfig, policy, views: tuple[str, ...]):
    """The configured algorithm around ``policy`` (a clear error when the policy cannot serve it)."""
    if cfg.algorithm == "grpo":
        return GRPO(policy, cfg.grpo, views)
    if cfg.algorithm == "ppo":
        return PPO(policy, cfg.ppo, views)
    # their real share trains on the dataset's training episodes, labelled by success
    if cfg.algorithm == "filtered_imitation":
        from train.rl.filtered_imitation import FilteredImitation

        return FilteredImitation(policy, cfg.filtered_imitation, views, dataset=cfg.dataset)
    from train.rl.advantage_conditioned import AdvantageConditioned

    return AdvantageConditioned(policy, cfg.advantage_conditioned, views, dataset=cfg.dataset)


class PhysicsStarts:
    """The physics env behind the imagined env's ``start_index`` option: start i is the physics seed
    that collected the dataset's i-th training episode, so RL in physics starts where RL in
    imagination does. Rewards are physics': 1 at success."""

    def __init__(self, env, seeds: list[int]):
        self.env, self.seeds, self.num_envs = env, seeds, env.num_envs

    def reset(self, seed: int | None = None, options: dict | None = None):
        index = torch.as_tensor(options["start_index"]).tolist()
        return self.env.reset(options={"seeds": [self.seeds[i] for i in index]})

    def step(self, actions):
        return self.env.step(actions)

    def close(self) -> None:
        self.env.close()


def make_env(cfg: RLConfig, views: tuple[str, ...], size: int):
    """The rollout env at the dataset's training-episode starts; returns (env, number of starts)."""
    from simulator.env import ImaginedEnv
    from simulator.starts import StartFrames

    train_episodes, _ = cfg.dataset.split()
    if cfg.env == "physics":
        from simulator.physics.env import PhysicsEnv, PhysicsEnvConfig

        meta = Path(cfg.dataset.root or "") / "meta" / "reverie.json"
        if not meta.is_file():
            raise ValueError(f"env=physics starts from the physics seeds of the dataset's episodes, and {meta} (written "
                             "by reverie-collect) is missing: give a dataset collected by reverie-collect")
        first = json.loads(meta.read_text())["collect"]["seed"]  # episode i was collected from seed first + i
        env = PhysicsEnv(PhysicsEnvConfig(task=cfg.task, num_envs=cfg.num_envs, views=views, height=size or 64,
                                          width=size or 64, max_steps=cfg.max_steps))
        return PhysicsStarts(env, [first + int(e) for e in train_episodes]), len(train_episodes)
    clips = cfg.dataset.clips(train_episodes, context=1, horizon=1, normalize=False, cache_frames=False)
    starts = StartFrames.from_dataset(clips, train_episodes, every=cfg.start_every)
    env = ImaginedEnv.from_pretrained(cfg.world_model, cfg.progress, starts, views, stats_root=cfg.stats_root,
                                      device=cfg.device, num_envs=cfg.num_envs, max_steps=cfg.max_steps,
                                      sampling_steps=cfg.sampling_steps, success_threshold=cfg.success_threshold,
                                      num_samples=cfg.num_samples, uncertainty_limit=cfg.uncertainty_limit)
    return env, len(starts)


def train(cfg: RLConfig) -> Path:
    """Runs (or resumes) RL for ``cfg.iterations``; returns the output folder."""
    from eval.rl import evaluate_before_after, save_rl_report
    from policy import camera_views, load_policy

    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    policy = load_policy(cfg.policy, cfg.task, num_envs=cfg.num_envs, device=cfg.device)
    views, size = camera_views(policy)
    algorithm = make_algorithm(cfg, policy, views)  # fails fast for a policy that cannot serve it
    with driving(policy, cfg.eval_num_envs):
        before = evaluate_before_after(cfg, policy, "before") if cfg.eval_episodes else None
    env, num_starts = make_env(cfg, views, size)
    done, generator = resume(out, policy, algorithm, cfg.seed)
    # the settings the run goes on with: a resumed run may be extended (more iterations)
    (out / "rl_config.json").write_text(json.dumps(asdict(cfg), indent=1, default=str))
    for iteration in tqdm(range(done, cfg.iterations), initial=done, total=cfg.iterations, desc=f"RL ({cfg.algorithm})"):
        clock = time.perf_counter()
        start_index = algorithm.start_index(cfg.num_envs, num_starts, generator)
        rollouts = collect(env, policy, views, start_index, seed=cfg.seed * 1_000_003 + iteration, generator=generator,
                           log_prob=algorithm.needs_log_prob)
        collect_s = time.perf_counter() - clock
        metrics = algorithm.update(rollouts, generator)
        record = {"iteration": iteration + 1, "success": rollouts.success.float().mean().item(),
                  "return": rollouts.returns.mean().item(), "chunks": int(rollouts.alive.sum()),
                  "collect_s": round(collect_s, 1), "update_s": round(time.perf_counter() - clock - collect_s, 1),
                  **{k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}}
        log.info("iteration %d: %s", iteration + 1, record)
        save_checkpoint(out, policy, algorithm, generator, iteration + 1, record)
    env.close()  # with --env physics, 32 robosuite envs hold GBs that the evaluation's own envs need
    if cfg.eval_episodes:
        # a finished run re-run (to rebuild its report) reuses its evaluation
        with driving(policy, cfg.eval_num_envs):
            after = evaluate_before_after(cfg, policy, "after", reuse=done == cfg.iterations)
        save_rl_report(cfg, before, after)
    return out


@contextmanager
def driving(policy, num_envs: int) -> Iterator[None]:
    """``policy`` sized for ``num_envs`` envs inside the block, when it keeps state per env (a
    lerobot adapter's noise generators: ``num_envs``); the rollouts' size again after it."""
    before = getattr(policy, "num_envs", None)
    if before is None:
        yield
        return
    policy.num_envs = num_envs
    try:
        yield
    finally:
        policy.num_envs = before


def save_checkpoint(out: Path, policy, algorithm, generator: torch.Generator, iteration: int, record: dict) -> None:
    """The policy (ready to load), the algorithm's state and the RNG, written atomically; the
    iteration's metrics appended to metrics.jsonl. state.pt holds tensors and plain containers
    only (the RNG state is a tensor), so that it loads with ``weights_only``."""
    tmp = out / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp / "policy")
    torch.save({"iteration": iteration, "algorithm": algorithm.state_dict(), "generator": generator.get_state()},
               tmp / "state.pt")
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    tmp.rename(out / "checkpoint")
    shutil.rmtree(out / "policy", ignore_errors=True)
    shutil.copytree(out / "checkpoint" / "policy", out / "policy")


def resume(out: Path, policy, algorithm, seed: int) -> tuple[int, torch.Generator]:
    """(iteration, generator) of the last checkpoint in ``out`` with the policy and the algorithm
    restored; (0, a fresh generator) for a new run. Metrics past the checkpoint are dropped."""
    from policy import load_policy

    generator = torch.Generator().manual_seed(seed)
    ckpt = out / "checkpoint"
    if not (ckpt / "state.pt").is_file():
        return 0, generator
    policy.load_state_dict(load_policy(ckpt / "policy").state_dict())
    try:  # weights_only: a checkpoint cannot run code when it is read
        state = torch.load(ckpt / "state.pt", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{ckpt / 'state.pt'} holds more than tensors and plain containers, which an RL checkpoint "
                         f"never does; it was not written by reverie-rl (or was altered), and is not loaded: {e}") from e
    algorithm.load_state_dict(state["algorithm"])
    generator.set_state(state["generator"])
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines[:state["iteration"]]))
    log.info("resumed RL from iteration %d", state["iteration"])
    return state["iteration"], generator


def main(argv: list[str] | None = None) -> None:
    from data import cli

    cfg = cli.parse(RLConfig, argv, prog="reverie-rl")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(f"done: {cli.run(train, cfg)}")


if __name__ == "__main__":
    main()
