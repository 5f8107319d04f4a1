"""reverie-demo runs every stage that exists on a tiny preset, and a second run reuses its work."""

import pytest

from tests.conftest import DEMO_PRESET
from train.demo import PRESETS, DemoConfig, main, run


def test_demo_runs_every_stage_and_resumes(demo_run, capsys, monkeypatch):
    """The first run is tests/conftest.py's ``demo_run`` (the quick preset with fewer steps), which the
    report and notebook tests read too: one demo run serves them all."""
    tmp_path, results, out = demo_run
    assert "=== stage: collect ===" in out and "episodes  3" in out
    assert (tmp_path / "dataset_strip.png").stat().st_size > 1000
    assert "=== stage: world_model ===" in out and "| horizon (frames) | PSNR model |" in out
    assert (results["world_model"] / "config.json").exists()
    assert (tmp_path / "world_model_eval" / "strips.png").stat().st_size > 1000
    assert "=== stage: progress ===" in out and "re-generated frames: success AUROC" in out
    assert (results["progress"] / "config.json").exists()
    assert "=== stage: policy_eval ===" in out and "| policy | imagined success" in out and "Spearman rho" in out
    assert (results["policy_eval"] / "policy_eval.png").stat().st_size > 1000
    assert "=== stage: policy ===" in out and (results["policy"] / "config.json").exists()
    assert "=== stage: rl ===" in out and "| physics before |" in out and "Physics gain:" in out
    assert (results["rl"] / "learning_curve.png").stat().st_size > 1000
    assert "=== stage: report ===" in out and results["report"] == tmp_path / "report" / "index.html"
    assert results["report"].is_file() and (tmp_path / "report" / "report.md").is_file()

    def written():
        files = [*(results["collect"] / "data").rglob("*.parquet"), *results["world_model"].parent.rglob("*.safetensors"),
                 *(tmp_path / "progress").rglob("*.safetensors"), tmp_path / "world_model_eval" / "fidelity.json",
                 tmp_path / "progress_eval" / "value.json", tmp_path / "policy_eval" / "policy_eval.json",
                 *(tmp_path / "policy").rglob("*.safetensors"), tmp_path / "rl" / "rl_eval.json"]
        return {p: p.stat().st_mtime_ns for p in files}

    before = written()
    monkeypatch.setitem(PRESETS, "tiny", PRESETS["quick"] | DEMO_PRESET)
    run(DemoConfig(preset="tiny", output_dir=tmp_path, episodes=3))  # nothing left to do
    assert written() == before
    out = capsys.readouterr().out
    assert f"world model already trained for {DEMO_PRESET['wm_steps']} + {DEMO_PRESET['wm_second_cycle']} steps" in out
    assert f"progress model already trained for {DEMO_PRESET['progress_steps']} steps" in out
    assert f"policy already trained for {DEMO_PRESET['bc_steps']} steps" in out


def test_demo_cli_rejects_unknown_preset(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # what ``python -m train.demo`` runs
        main(["--preset", "huge", "--output_dir", str(tmp_path / "demo")])
    assert exit_.value.code != 0 and "unknown preset 'huge'" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
