"""reverie-demo runs every stage that exists on a tiny preset, and a second run reuses its work."""

import subprocess
import sys

from train.demo import DemoConfig, run


def test_demo_collects_summarises_and_resumes(tmp_path, capsys):
    cfg = DemoConfig(preset="quick", output_dir=tmp_path, episodes=2)
    results = run(cfg)
    out = capsys.readouterr().out
    assert "=== stage: collect ===" in out and "episodes  2" in out
    assert (tmp_path / "dataset_strip.png").stat().st_size > 1000
    data_files = sorted((results["collect"] / "data").rglob("*.parquet"))
    mtimes = [p.stat().st_mtime_ns for p in data_files]
    run(DemoConfig(preset="quick", output_dir=tmp_path, episodes=2))  # nothing left to do
    assert [p.stat().st_mtime_ns for p in sorted((results["collect"] / "data").rglob("*.parquet"))] == mtimes


def test_demo_cli_rejects_unknown_preset(tmp_path):
    out = subprocess.run([sys.executable, "-m", "train.demo", "--preset", "huge", "--output_dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "unknown preset 'huge'" in out.stderr
