"""``reverie-train KIND [options]``: one entry point, one training stage per kind.

    reverie-train world_model --dataset.root outputs/demo/dataset
    reverie-train autoencoder --dataset.root outputs/demo/dataset   # for the latent backbone
    reverie-train progress --dataset.root outputs/demo/dataset      # the progress value model
    reverie-train policy --dataset.root outputs/demo/dataset        # behaviour cloning of a policy
    accelerate launch -m train.cli world_model --dataset.root ... --mixed_precision bf16

Options are the fields of the kind's config (draccus): ``reverie-train world_model --help``; a list
takes its values apart (``--model.channels 16 32``) or as YAML (``--model.channels [16,32]``).
"""

from data.cli import dispatch

# kind -> (module, config class, function that runs it, what it trains)
KINDS = {
    "world_model": ("train.world_model", "TrainWorldModelConfig", "train",
                    "the action-conditioned video diffusion world model"),
    "autoencoder": ("train.autoencoder", "TrainAutoencoderConfig", "train",
                    "the frame autoencoder of the latent world-model backbone"),
    "progress": ("train.progress", "TrainProgressConfig", "train", "the progress value model (progress + success)"),
    "policy": ("train.policy", "TrainPolicyConfig", "train", "a policy by behaviour cloning"),
}


def main(argv: list[str] | None = None) -> None:
    dispatch(KINDS, "reverie-train", argv)


if __name__ == "__main__":
    main()
