"""Policy evaluation without a robot, checked against physics (``reverie-eval policy``).

    reverie-eval policy --world_model outputs/world_model/model --progress outputs/progress/model

Every policy of a family runs N episodes in the ``ImaginedEnv`` and N in the ``PhysicsEnv`` from
matched start states: start i is the physics env reset with seed ``seed + i`` (seeds the data
collection never used), rendered once and handed to the imagined env as its start frames, and
the policy's own randomness for episode i is seeded with i in both. A policy sees only what a
robot's policy sees (cameras, proprioception, task); scripted experts also read the start
frame's object state, then act on proprioception. The report: success rates with Wilson
intervals in both simulators, Pearson and Spearman correlations over the family with bootstrap
intervals, MMRV and the mean |imagined - physics| (``eval.success``), and a scatter of imagined
against physics success.

Closed loop, episode by episode (``closed_loop``; the measuring stick of imagination): per policy,
the phi correlation of the imagined and physics outcomes of the same starts with its interval;
beside it the physics ceiling, the phi of two physics runs of the same policy from the same starts
with its sampling noise reseeded (``physics_ceiling``; how far physics agrees with itself); and,
where a start succeeds in both, the imagined success step minus the physics one (imagined time
must run neither slow nor fast). Over the family, the reseeded run scored as if it were imagination
is the floor under its correlations and mean |gap| (``eval.closed_loop.physics_against_itself``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from eval.closed_loop import closed_loop, compare, family_markdown, physics_against_itself
from eval.ppi import MIN_PAIRED
from eval.success import PolicyComparison
from simulator.env import ImaginedEnvConfig
from simulator.rollout import Rollout

log = logging.getLogger(__name__)
RESEEDED = 1_000_000  # offset of the policy seeds of the physics ceiling's second run


@dataclass
class EpisodeResults:
    success: list[bool]  # per episode
    steps: list[int]  # env steps until the episode ended
    seconds: float  # wall time of all episodes
    # per imagined episode: its imagined proprioception left the dataset's range (ImaginedEnv's
    # info["outside_data"]); None in physics
    outside_data: list[bool] | None = None

    @classmethod
    def from_dict(cls, saved: dict) -> EpisodeResults:
        """Results saved with ``asdict``. Files from before the uncertainty limit was removed also
        hold each episode's ``peak_uncertainty``, which nothing reads any more: it is dropped."""
        return cls(**{k: v for k, v in saved.items() if k != "peak_uncertainty"})


def run_episodes(env, policy, episodes: int, seed: int = 0, desc: str | None = None,
                 recorder=None, policy_seed: int = 0) -> EpisodeResults:
    """Runs ``policy`` for ``episodes`` episodes in ``env`` (PhysicsEnv or ImaginedEnv), in rounds
    of ``env.num_envs``; episode i is the env's reset number ``seed + i`` and the policy's seed
    ``policy_seed + i``.
    An episode succeeds when the env reports it terminated (solved). A
    ``simulator.recording.EpisodeRecorder`` records every episode (the extra envs of a last,
    partial round too)."""
    B = env.num_envs
    if getattr(policy, "num_envs", B) != B:
        raise ValueError(f"the policy drives {policy.num_envs} envs, the env has {B}")
    success, steps, outside = [], [], []
    start_time = time.perf_counter()
    for first in tqdm(range(0, episodes, B), desc=desc, disable=desc is None, leave=False):
        rollout = Rollout(env, seed=seed + first)
        policy.reset(rollout.obs, rollout.info, seeds=list(range(policy_seed + first, policy_seed + first + B)))
        if recorder is not None:
            recorder.start(rollout.obs, rollout.info)
        for step in rollout.run(policy.select_action_chunk):
            if recorder is not None:
                recorder.step(step.actions, step.reward, step.terminated, step.truncated, step.info)
        n = min(B, episodes - first)
        success += rollout.solved[:n].tolist()
        steps += rollout.info["steps"][:n].tolist()
        if "outside_data" in rollout.info:  # imagined
            outside += rollout.info["outside_data"][:n].tolist()
    return EpisodeResults(success=success, steps=steps, seconds=time.perf_counter() - start_time,
                          outside_data=outside if len(outside) == len(success) else None)


@dataclass
class EvalPolicyConfig:
    world_model: Path = Path("outputs/world_model/model")  # the frozen world model (reverie-train world_model)
    progress: Path = Path("outputs/progress/model")  # judges imagined success (reverie-train progress)
    # The dataset the world model was trained on: its statistics, for world models saved without
    # normalization.json beside them.
    stats_root: Path | None = None
    task: str = "lift"  # the physics task, whose horizon the imagined episodes share
    # Names from policy.scripted.policy_family(), or NAME=FOLDER of a saved policy (reverie-train
    # policy, reverie-rl, a lerobot checkpoint); None = the whole scripted family.
    policies: tuple[str, ...] | None = None
    episodes: int = 20  # per policy and simulator
    num_envs: int = 10  # episodes run together in one batch, in either simulator
    seed: int = 100_000  # physics seed of start 0; collections use seeds from 0 up
    # The imagined env's settings (sampling steps, action guidance, success threshold, reward); its
    # num_envs and max_steps are the evaluation's: --num_envs and the task's physics horizon.
    env: ImaginedEnvConfig = field(default_factory=ImaginedEnvConfig)
    device: str = "cpu"  # where the models and policies run
    output_dir: Path = Path("outputs/policy_eval")  # policy_eval.json, .md, .png
    # Record the imagined episodes (LeRobotDataset + one mp4 each) under <output_dir>/imagined/<policy>
    record: bool = False
    # Also re-run every policy in physics from the same starts with its sampling noise reseeded:
    # the physics ceiling of the per-episode agreement (one more physics run per policy).
    physics_ceiling: bool = True
    # policy_eval.json of an earlier evaluation with the same task, seed, episodes, envs and policies:
    # its physics runs are reused instead of simulated again (comparing world models on one physics run);
    # a reseeded run it lacks is simulated when the physics ceiling is on.
    physics_from: Path | None = None
    # n: only the first n starts run in physics, every start in imagination; the report adds the
    # prediction-powered estimate of each policy's physics success (eval.ppi) from both.
    paired: int | None = None

    def __post_init__(self):
        if self.episodes < 1 or self.num_envs < 1:
            raise ValueError(f"episodes and num_envs must be >= 1, got {self.episodes=} {self.num_envs=}")
        self.world_model, self.progress, self.output_dir = Path(self.world_model), Path(self.progress), Path(self.output_dir)
        if self.paired is not None and not MIN_PAIRED <= self.paired <= self.episodes - 2:
            raise ValueError(f"paired must be in [{MIN_PAIRED}, episodes - 2 = {self.episodes - 2}] (the rest are "
                             f"imagined only), got {self.paired=}")

    @property
    def physics_episodes(self) -> int:
        return self.paired or self.episodes


def matched_starts(task: str, views: tuple[str, ...], size: int, episodes: int, seed: int, num_envs: int):
    """The physics start states seed, seed + 1, ... rendered as the imagined env's start frames."""
    from simulator.physics.env import PhysicsEnv, PhysicsEnvConfig
    from simulator.starts import StartFrames

    env = PhysicsEnv(PhysicsEnvConfig(task=task, num_envs=num_envs, views=views, height=size, width=size))
    parts = []
    for first in range(0, episodes, num_envs):
        obs, info = env.reset(seed=seed + first)
        parts.append(StartFrames.from_observation(obs, info, views))
    env.close()
    return StartFrames.cat(parts)


def named_policies(entries: tuple[str, ...] | None) -> dict[str, str]:
    """{name: scripted name or folder} from ``--policies`` entries (NAME or NAME=FOLDER)."""
    from policy.scripted import policy_family

    family = [p.name for p in policy_family()]
    if not entries:
        return {n: n for n in family}
    named = dict(e.split("=", 1) if "=" in e else (e, e) for e in entries)
    unknown = [n for n, src in named.items() if src not in family and not Path(src).is_dir()]
    if unknown:
        raise ValueError(f"unknown policies {unknown}: give names of the scripted family {family} or NAME=FOLDER "
                         f"of a saved policy")
    return named


class PairedEvaluation:
    """The one imagined-vs-physics evaluator: policies run from the same starts in both simulators.
    Start i is the physics env reset with seed ``seed + i`` (``matched_starts``), rendered once and
    handed to the imagined env as its start frames; the policy's own randomness for episode i is
    seeded with i in both. ``reverie-eval policy`` (a family) and the RL evaluation (one policy,
    before and after) both run through it. Without a ``world_model``, physics only."""

    def __init__(self, task: str, views: tuple[str, ...], size: int, episodes: int, seed: int, num_envs: int,
                 world_model: Path | None = None, progress: Path | None = None, env: ImaginedEnvConfig | None = None,
                 stats_root: Path | None = None, device: str = "cpu"):
        from simulator.env import ImaginedEnv
        from simulator.physics.tasks import get_task

        self.task, self.size, self.episodes, self.seed, self.num_envs = task, size, episodes, seed, num_envs
        self._physics: dict[tuple, object] = {}  # PhysicsEnv per (views, size): made once, reused across runs
        self.imagined_env = None
        if world_model is not None:
            starts = matched_starts(task, views, size, episodes, seed, num_envs)
            settings = replace(env or ImaginedEnvConfig(), num_envs=num_envs, max_steps=get_task(task).max_steps)
            self.imagined_env = ImaginedEnv.from_pretrained(world_model, progress, starts, views, stats_root=stats_root,
                                                            device=device, **asdict(settings))

    @torch.no_grad()
    def imagined(self, policy, desc: str | None = None, recorder=None) -> EpisodeResults:
        if self.imagined_env is None:
            raise ValueError("this evaluation has no world model: it runs in physics only")
        return run_episodes(self.imagined_env, policy, self.episodes, 0, desc, recorder)

    @torch.no_grad()
    def physics(self, policy, desc: str | None = None, episodes: int | None = None,
                policy_seed: int = 0) -> EpisodeResults:
        """The first ``episodes`` (default all) starts in physics; ``policy_seed`` offsets the
        policy's seeds (``RESEEDED``: the physics ceiling's second run)."""
        from policy import camera_views
        from simulator.physics.env import PhysicsEnv, PhysicsEnvConfig

        # Scripted experts read no images: their physics runs without rendering (the starts were rendered apart).
        seen, seen_size = camera_views(policy)
        size = seen_size or self.size
        if (tuple(seen), size) not in self._physics:
            self._physics[tuple(seen), size] = PhysicsEnv(PhysicsEnvConfig(
                task=self.task, num_envs=self.num_envs, views=seen, height=size, width=size))
        env = self._physics[tuple(seen), size]
        return run_episodes(env, policy, episodes or self.episodes, self.seed, desc, policy_seed=policy_seed)

    def close(self) -> None:
        for env in self._physics.values():
            env.close()
        self._physics.clear()


def evaluate(cfg: EvalPolicyConfig) -> tuple[PolicyComparison, dict]:
    from policy import load_policy
    from simulator.progress import ProgressModel

    named = named_policies(cfg.policies)
    earlier = earlier_physics_runs(cfg, named) if cfg.physics_from is not None else None
    progress = ProgressModel.from_pretrained(cfg.progress).spec  # a clear error for a folder of another kind
    views, size = tuple(progress.views), progress.image_size
    paired = PairedEvaluation(cfg.task, views, size, cfg.episodes, cfg.seed, cfg.num_envs, cfg.world_model,
                              cfg.progress, cfg.env, cfg.stats_root, cfg.device)
    runs = {}
    for name, source in named.items():
        policy = load_policy(source, cfg.task, num_envs=cfg.num_envs, device=cfg.device)
        recorder = imagined_recorder(cfg, name, views) if cfg.record else None
        runs[name] = {"imagined": paired.imagined(policy, f"{name}: imagined", recorder)}
        if recorder is not None:
            recorder.close()
        if earlier:
            runs[name] |= earlier[name]
        else:
            runs[name]["physics"] = paired.physics(policy, f"{name}: physics", cfg.physics_episodes)
        if cfg.physics_ceiling and "physics_reseeded" not in runs[name]:
            runs[name]["physics_reseeded"] = paired.physics(policy, f"{name}: physics, reseeded",
                                                            cfg.physics_episodes, policy_seed=RESEEDED)
        log.info("%s: imagined %.2f, physics %.2f", name,
                 *(sum(runs[name][k].success) / len(runs[name][k].success) for k in ("imagined", "physics")))
    paired.close()
    comparison = compare(runs)
    return comparison, runs


def imagined_recorder(cfg: EvalPolicyConfig, name: str, views: tuple[str, ...]):
    """An EpisodeRecorder for ``name``'s imagined episodes under <output_dir>/imagined/<name>."""
    from simulator.recording import EpisodeRecorder

    folder = cfg.output_dir / "imagined" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if folder.exists():
        log.info("replacing the recordings of an earlier evaluation in %s", folder)
        shutil.rmtree(folder)
    return EpisodeRecorder(folder / "dataset", views=views, video_dir=folder / "mp4",
                           repo_id=f"reverie/imagined_{folder.name}")


def earlier_physics_runs(cfg: EvalPolicyConfig, named: dict[str, str]) -> dict[str, dict[str, EpisodeResults]]:
    """The physics runs of ``cfg.physics_from``, refused unless they come from the same starts and
    policies (a different seed, episode count or env count gives other episodes)."""
    path = Path(cfg.physics_from)
    if not path.is_file():
        raise FileNotFoundError(f"physics_from: no such file {path} (a policy_eval.json of reverie-eval policy)")
    saved = json.loads(path.read_text())
    old = saved["config"]
    for key in ("task", "seed", "episodes", "num_envs", "paired"):
        if old.get(key) != getattr(cfg, key):
            raise ValueError(f"physics_from {path} was run with {key}={old.get(key)!r}, this evaluation has "
                             f"{getattr(cfg, key)!r}: its physics episodes are not these")
    old_named = named_policies(tuple(old["policies"]) if old["policies"] else None)
    out = {}
    for name, source in named.items():
        if old_named.get(name) != source or name not in saved["runs"]:
            raise ValueError(f"physics_from {path} has no physics run of policy {name}={source} (it has "
                             f"{sorted(f'{n}={s}' for n, s in old_named.items())})")
        # the physics ceiling's reseeded run is reused where it was run, and run here where it was not
        kinds = ("physics", "physics_reseeded") if cfg.physics_ceiling else ("physics",)
        out[name] = {k: EpisodeResults.from_dict(saved["runs"][name][k]) for k in kinds if k in saved["runs"][name]}
    log.info("physics runs of %s reused from %s", sorted(out), path)
    return out


def save_report(comparison: PolicyComparison, runs: dict, cfg: EvalPolicyConfig) -> Path:
    """policy_eval.json (config, summary, per-episode results), policy_eval.md and policy_eval.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.success import wilson_interval

    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    summary = comparison.summary() if len(comparison.names) >= 3 else {}
    ceiling = physics_against_itself(runs)
    (out / "policy_eval.json").write_text(json.dumps(
        {"config": asdict(cfg), "summary": summary, "ceiling": ceiling.summary() if ceiling else None,
         "closed_loop": closed_loop(runs),
         "runs": {n: {k: asdict(v) for k, v in r.items()} for n, r in runs.items()}}, indent=1, default=str))
    (out / "policy_eval.md").write_text(family_markdown(comparison, runs) + "\n")
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, x, y, xs, ys, n in zip(comparison.names, comparison.physics, comparison.imagined,
                                     comparison.physics_successes, comparison.imagined_successes, comparison.physics_n):
        (xl, xh), (yl, yh) = wilson_interval(xs, n), wilson_interval(ys, n)
        ax.errorbar(x, y, xerr=[[x - xl], [xh - x]], yerr=[[y - yl], [yh - y]], fmt="o", capsize=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="imagined = physics")
    ax.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), xlabel="physics success", ylabel="imagined success")
    if summary:
        ax.set_title(f"Spearman {summary['spearman']:.2f}, Pearson {summary['pearson']:.2f}, "
                     f"MMRV {summary['mmrv']:.3f}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "policy_eval.png", dpi=110)
    plt.close(fig)
    return out


def main(cfg: EvalPolicyConfig) -> Path:
    comparison, runs = evaluate(cfg)
    print(family_markdown(comparison, runs))
    save_report(comparison, runs, cfg)
    log.info("report in %s", cfg.output_dir)
    return cfg.output_dir
