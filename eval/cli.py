"""``reverie-eval KIND [options]``: evaluations, one per kind.

    reverie-eval world_model --model outputs/world_model/model --dataset.root outputs/demo/dataset
    reverie-eval progress --model outputs/progress/model --dataset.root outputs/demo/dataset
    reverie-eval policy --world_model outputs/world_model/model --progress outputs/progress/model
    reverie-eval report --demo_dir outputs/demo    # one HTML page over the demo's outputs
    reverie-eval policy --policies expert bc=outputs/policy/model ...   # a list flag takes values apart
"""

from data.cli import dispatch

KINDS = {
    "world_model": ("eval.fidelity", "EvalWorldModelConfig", "main",
                    "world-model fidelity per horizon step (PSNR, SSIM) on held-out episodes"),
    "progress": ("eval.value", "EvalProgressConfig", "main",
                 "value quality of the progress model, on real and on imagined frames"),
    "policy": ("eval.policy", "EvalPolicyConfig", "main", "policies in the imagined simulator against physics"),
    "report": ("eval.report", "ReportConfig", "main", "one HTML page over the demo's outputs"),
}


def main(argv: list[str] | None = None) -> None:
    dispatch(KINDS, "reverie-eval", argv)


if __name__ == "__main__":
    main()
