"""``reverie-eval KIND [options]``: evaluations, one per kind.

    reverie-eval world_model --model outputs/world_model/model --dataset.root outputs/demo/dataset
    reverie-eval progress --model outputs/progress/model --dataset.root outputs/demo/dataset
    reverie-eval policy --world_model outputs/world_model/model --progress outputs/progress/model
    reverie-eval report --demo_dir outputs/demo    # one HTML page over the demo's outputs
"""

from train.cli import dispatch

KINDS = {
    "world_model": ("eval.fidelity", "EvalWorldModelConfig", "main"),
    "progress": ("eval.value", "EvalProgressConfig", "main"),
    "policy": ("eval.policy", "EvalPolicyConfig", "main"),
    "report": ("eval.report", "ReportConfig", "main"),
}


def main(argv: list[str] | None = None) -> None:
    dispatch(KINDS, "reverie-eval", argv)


if __name__ == "__main__":
    main()
