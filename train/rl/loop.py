"""On-policy RL of a policy inside the frozen world model (``reverie-rl``).

    reverie-rl --policy outputs/policy/model --world_model outputs/world_model/model \\
        --progress outputs/progress/model --dataset.root outputs/demo/dataset
    reverie-rl --config_path train/recipes/rl_lift.yaml --dataset.root outputs/demo/dataset
    reverie-rl --algorithm.type grpo --algorithm.lr 1e-5 --env.sampling_steps 2 ...
    reverie-rl --algorithm.type ppo --help      # the settings of one algorithm

Each iteration resets ``env.num_envs`` imagined envs at real start frames (the first frames of the
dataset's training episodes, and keyframes inside them with ``--start_every``), rolls the policy
out for at most ``env.max_steps`` env steps, and lets the algorithm update the policy; the world
model and the progress model stay frozen. Before the first iteration and after the last, the
policy is evaluated in physics (the ground truth) and in imagination from the same matched
physics starts (``eval.rl``), the imagined half with the run's own env settings: the gain that
counts is the physics one, and imagined success above physics success measures how much the
policy exploits the world model.

The defaults are the Lift recipe measured best (``RLConfig.algorithm``). A recipe is also a file:
``--config_path FILE.yaml`` reads any of these settings, nested as on the command line (the flags
given beside it win); ``train/recipes/rl_lift.yaml`` writes the default recipe out, and every
run saves its own settings as ``rl_config.json``, which ``--config_path`` reads back.

``--simulator physics`` runs the same algorithm with rollouts in physics instead, from the seeds
that collected the same training episodes and with physics' sparse success reward: the control
that says what the algorithm could gain were the imagined simulator faithful (with
``--world_model null`` it is evaluated in physics only and needs no world model).

Every iteration is checkpointed (policy, optimiser, RNG, metrics): re-running the same command
resumes. Outputs: <output_dir>/policy (the trained policy), metrics.jsonl (the learning curve),
rl_config.json, rl_eval.json/.md and learning_curve.png.

Dimension legend: B envs, T chunk steps.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import pickle
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import draccus
import torch
from tqdm import tqdm

from data import cli
from data.clips import DatasetConfig
from data.episodes import DEMO_HELD_OUT
from simulator.env import ImaginedEnvConfig
from train.rl.advantage_conditioned import AdvantageConditioned
from train.rl.base import DEFAULT_ALGORITHM, AlgorithmConfig, collect
from train.rl.filtered_imitation import FilteredImitation, FilteredImitationConfig
from train.rl.grpo import GRPO
from train.rl.ppo import PPO

log = logging.getLogger(__name__)

# Each algorithm under the name its config is registered with (``--algorithm.type``).
ALGORITHM_CLASSES = {cls.name: cls for cls in (FilteredImitation, GRPO, PPO, AdvantageConditioned)}
ALGORITHMS = tuple(ALGORITHM_CLASSES)
SIMULATORS = ("imagined", "physics")
RECIPES = Path(__file__).resolve().parent.parent / "recipes"  # train/recipes: recipes as config files


@dataclass
class RLConfig:
    """The settings of reverie-rl. A YAML file nested as the flags are gives any of them: all with
    --config_path FILE (train/recipes/rl_lift.yaml: the default recipe; a run's rl_config.json), one
    group with --dataset FILE, --algorithm FILE or --env FILE. Flags given beside a file win."""

    policy: Path = Path("outputs/policy/model")  # the base policy (reverie-train policy, or a lerobot checkpoint)
    # Frozen: imagines the rollouts and the imagined half of the evaluation (reverie-train world_model).
    # null with --simulator physics: the control, evaluated in physics only, needs no world model.
    world_model: Path | None = Path("outputs/world_model/model")
    progress: Path = Path("outputs/progress/model")  # frozen: rewards imagined frames, judges success
    # Start frames come from the training episodes of this dataset (the held-out ones are never used).
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(val_episodes=DEMO_HELD_OUT))  # the demo's split
    task: str = "lift"  # the physics task: the evaluation's, and the rollouts' with --simulator physics
    # The algorithm (--algorithm.type). The default, filtered imitation with its defaults, is the
    # recipe measured best: physics gain +0.07 over 3 seeds (docs/benchmarks.md, "RL in imagination
    # (filtered_imitation, real share 0.25, memory 40)"); GRPO's was -0.20.
    algorithm: AlgorithmConfig = field(default_factory=FilteredImitationConfig)
    # Where the rollouts run: "imagined" (the point) or "physics", the control that tells an
    # algorithm that cannot improve the policy from a world model that cannot show it how.
    simulator: str = "imagined"
    # The rollout env; the evaluation's imagined env uses the same settings. Its batch and horizon
    # serve both simulators: 32 episodes per iteration (4 groups of 8 from shared starts), 80 env
    # steps (short rollouts from real frames); the rest configures the imagined one.
    env: ImaginedEnvConfig = field(default_factory=lambda: ImaginedEnvConfig(num_envs=32, max_steps=80))
    iterations: int = 40  # RL iterations (the recipe's memory keeps all 40 iterations' kept episodes)
    start_every: int | None = None  # also start from every n-th frame inside the episodes (keyframes)
    # Physics and imagined evaluation episodes before and after, from the same matched physics starts.
    eval_episodes: int = 100
    eval_num_envs: int = 10  # envs of the evaluation, in each simulator
    output_dir: Path = Path("outputs/rl")  # the run's folder; re-running the same command resumes it
    seed: int = 0  # starts, the policy's noise and the algorithm's batches
    device: str = "cpu"  # where the models run (cpu, cuda)

    def __post_init__(self):
        self.dataset.require()
        for name in ("policy", "world_model", "progress", "output_dir"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        if not isinstance(self.algorithm, AlgorithmConfig):
            raise TypeError(f"algorithm must be an algorithm's config (FilteredImitationConfig(), GRPOConfig(), ...; "
                            f"on the command line --algorithm.type NAME), got {self.algorithm!r}")
        if self.simulator not in SIMULATORS:
            raise ValueError(f"unknown {self.simulator=}; choose one of {SIMULATORS}")
        if self.simulator == "physics" and self.start_every:
            raise ValueError("simulator=physics starts only where episodes start (their seeds); drop start_every")
        self._check_lerobot_policy()
        for name in ("iterations", "eval_num_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        if self.eval_episodes < 0:
            raise ValueError(f"eval_episodes must be >= 0, got {self.eval_episodes=}")
        if self.simulator == "imagined" and self.world_model is None:
            raise ValueError("RL in imagination needs a world model (--world_model); without one, only the physics "
                             "control runs (--simulator physics)")

    def _check_lerobot_policy(self) -> None:
        """A lerobot checkpoint as the policy: the algorithm must be one that trains its adapter."""
        from policy.lerobot_adapter import LerobotPolicy, lerobot_policy_type

        kind = lerobot_policy_type(self.policy)
        if kind is None:
            return
        fits = LerobotPolicy.adapter_class(kind).rl_algorithms()
        algorithm = self.algorithm.type
        if algorithm in fits:
            return
        why = ("it conditions the policy on advantage words appended to its task, which the lerobot adapter does not do "
               "(lerobot's Diffusion Policy reads no text at all)" if algorithm == "advantage_conditioned" else
               "it needs the log-probabilities of the policy's actions, which only lerobot's Diffusion Policy gives (DPPO)")
        raise ValueError(f"algorithm {algorithm!r} cannot train the lerobot {kind!r} policy in {self.policy}: {why}. "
                         f"Algorithms that train it: {', '.join(fits)}")


def make_algorithm(cfg: RLConfig, policy, views: tuple[str, ...]):
    """The algorithm that ``cfg.algorithm``'s type names, around ``policy`` (a clear error when the
    policy cannot serve it). The imitating ones draw their real share from the dataset's training
    episodes, labelled by success."""
    algorithm_class = ALGORITHM_CLASSES[cfg.algorithm.type]
    if issubclass(algorithm_class, AdvantageConditioned):
        return algorithm_class(policy, cfg.algorithm, views, dataset=cfg.dataset)
    return algorithm_class(policy, cfg.algorithm, views)


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
    if cfg.simulator == "physics":
        from data.episodes import episode_seeds
        from simulator.physics.env import PhysicsEnv, PhysicsEnvConfig

        seeds = episode_seeds(cfg.dataset.root, [int(e) for e in train_episodes])
        env = PhysicsEnv(PhysicsEnvConfig(task=cfg.task, num_envs=cfg.env.num_envs, views=views, height=size or 64,
                                          width=size or 64, max_steps=cfg.env.max_steps))
        return PhysicsStarts(env, seeds), len(train_episodes)
    clips = cfg.dataset.clips(train_episodes, context=1, horizon=1, normalize=False, cache_frames=False)
    starts = StartFrames.from_dataset(clips, train_episodes, every=cfg.start_every)
    env = ImaginedEnv.from_pretrained(cfg.world_model, cfg.progress, starts, views, device=cfg.device, **asdict(cfg.env))
    return env, len(starts)


def train(cfg: RLConfig) -> Path:
    """Runs (or resumes) RL for ``cfg.iterations``; returns the output folder."""
    from eval.rl import evaluate_before_after, save_rl_report
    from policy import camera_views, load_policy

    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    policy = load_policy(cfg.policy, cfg.task, num_envs=cfg.env.num_envs, device=cfg.device)
    views, size = camera_views(policy)
    algorithm = make_algorithm(cfg, policy, views)  # fails fast for a policy that cannot serve it
    with driving(policy, cfg.eval_num_envs):
        before = evaluate_before_after(cfg, policy, "before") if cfg.eval_episodes else None
    env, num_starts = make_env(cfg, views, size)
    done, generator = resume(out, policy, algorithm, cfg.seed)
    # the settings the run goes on with: a resumed run may be extended (more iterations)
    (out / "rl_config.json").write_text(json.dumps(draccus.encode(cfg), indent=1))  # --config_path reads it back
    for iteration in tqdm(range(done, cfg.iterations), initial=done, total=cfg.iterations,
                          desc=f"RL ({cfg.algorithm.type})"):
        clock = time.perf_counter()
        start_index = algorithm.start_index(cfg.env.num_envs, num_starts, generator)
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
    env.close()  # with --simulator physics, 32 robosuite envs hold GBs that the evaluation's own envs need
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print_help(argv)
        return
    cfg = cli.parse(RLConfig, argv, prog="reverie-rl")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(f"done: {cli.run(train, cfg)}")


def print_help(argv: list[str]) -> None:
    """draccus's help, with the settings of one algorithm only (the one ``--algorithm.type`` names,
    else the default), where draccus would list every registered algorithm's at once; with the
    default algorithm named as ``--algorithm.type``'s default; and without draccus's flags that read
    one group from a file (``--env FILE``), which it lists once or twice each and RLConfig's
    docstring names instead."""
    chosen = chosen_algorithm(argv)
    with AlgorithmConfig.listing_only(chosen):
        parser = cli.help_parser(RLConfig, prog="reverie-rl")
    shown = cli.actions_of(parser)
    for action in shown:
        if (action.help or "").startswith("Config file for"):  # draccus's per-group files, some listed twice
            action.help = argparse.SUPPRESS  # RLConfig's docstring names them
        if "--algorithm.type" in action.option_strings:
            action.choices, action.default = list(ALGORITHMS), DEFAULT_ALGORITHM
            action.help = f"the algorithm; this help shows {chosen}'s settings (--algorithm.type NAME --help: NAME's)"
    for group in parser.parser._action_groups:  # class docstrings, without their source indentation
        group.description = inspect.cleandoc(group.description) if group.description else group.description
    parser.parser.print_help()


def chosen_algorithm(argv: list[str]) -> str:
    """The algorithm that ``--algorithm.type NAME`` (or ``=NAME``) in ``argv`` names; the default without one."""
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag == "--algorithm.type":
            name = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            if name not in ALGORITHMS:
                cli.fail(f"--algorithm.type is one of {ALGORITHMS}, got {name!r}")
            return name
    return DEFAULT_ALGORITHM


if __name__ == "__main__":
    main()
