"""``reverie-train KIND [options]``: one entry point, one training stage per kind.

    reverie-train world_model --dataset.root outputs/demo/dataset
    reverie-train autoencoder --dataset.root outputs/demo/dataset   # for the latent backbone
    reverie-train progress --dataset.root outputs/demo/dataset      # the progress value model
    reverie-train policy --dataset.root outputs/demo/dataset        # behaviour cloning of a policy
    accelerate launch -m train.cli world_model --dataset.root ... --mixed_precision bf16

Options are the fields of the kind's config (draccus): ``reverie-train world_model --help``; a list
takes its values apart (``--model.channels 16 32``) or as YAML (``--model.channels [16,32]``).
"""

import importlib
import logging
import sys

from data import cli

# kind -> (module, config class, function that runs it, what it trains)
KINDS = {
    "world_model": ("train.world_model", "TrainWorldModelConfig", "train",
                    "the action-conditioned video diffusion world model"),
    "autoencoder": ("train.autoencoder", "TrainAutoencoderConfig", "train",
                    "the frame autoencoder of the latent world-model backbone"),
    "progress": ("train.progress", "TrainProgressConfig", "train", "the progress value model (progress + success)"),
    "policy": ("train.policy", "TrainPolicyConfig", "train", "a policy by behaviour cloning"),
}


def usage(kinds: dict, prog: str) -> str:
    width = max(map(len, kinds))
    lines = [f"  {kind:<{width}}  {about}" for kind, (*_, about) in kinds.items()]
    return "\n".join([f"usage: {prog} KIND [options]", "", "kinds:", *lines, "",
                      f"a kind's options: {prog} KIND --help"])


def dispatch(kinds: dict, prog: str, argv: list[str] | None = None) -> None:
    """Runs ``prog KIND [options]``: parses the kind's config with draccus and calls its function."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(usage(kinds, prog))
        return
    if not argv or argv[0] not in kinds:
        print(usage(kinds, prog), file=sys.stderr)
        cli.fail(f"KIND is one of {sorted(kinds)}, got {repr(argv[0]) if argv else 'nothing'}")
    module_name, config_name, fn_name, _ = kinds[argv[0]]
    module = importlib.import_module(module_name)
    cfg = cli.parse(getattr(module, config_name), argv[1:], prog=f"{prog} {argv[0]}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(f"done: {cli.run(getattr(module, fn_name), cfg)}")


def main(argv: list[str] | None = None) -> None:
    dispatch(KINDS, "reverie-train", argv)


if __name__ == "__main__":
    main()
