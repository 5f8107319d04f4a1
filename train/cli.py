"""``reverie-train KIND [options]``: one entry point, one training stage per kind.

    reverie-train world_model --dataset.root outputs/demo/dataset
    reverie-train autoencoder --dataset.root outputs/demo/dataset   # for the latent backbone
    reverie-train progress --dataset.root outputs/demo/dataset      # the progress value model
    reverie-train policy --dataset.root outputs/demo/dataset        # behaviour cloning of a policy
    accelerate launch -m train.cli world_model --dataset.root ... --mixed_precision bf16

Options are the fields of the kind's config (draccus): ``reverie-train world_model --help``.
"""

import importlib
import logging
import sys

import draccus

# kind -> (module, config class, function that runs it)
KINDS = {
    "world_model": ("train.world_model", "TrainWorldModelConfig", "train"),
    "autoencoder": ("train.autoencoder", "TrainAutoencoderConfig", "train"),
    "progress": ("train.progress", "TrainProgressConfig", "train"),
    "policy": ("train.policy", "TrainPolicyConfig", "train"),
}


def dispatch(kinds: dict, prog: str, argv: list[str] | None = None) -> None:
    """Runs ``prog KIND [options]``: parses the kind's config with draccus and calls its function."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in kinds:
        got = repr(argv[0]) if argv else "nothing"
        sys.exit(f"usage: {prog} KIND [options]; KIND is one of {sorted(kinds)}, got {got}")
    module_name, config_name, fn_name = kinds[argv[0]]
    module = importlib.import_module(module_name)
    cfg = draccus.parse(getattr(module, config_name), args=argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        result = getattr(module, fn_name)(cfg)
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"done: {result}")


def main(argv: list[str] | None = None) -> None:
    dispatch(KINDS, "reverie-train", argv)


if __name__ == "__main__":
    main()
