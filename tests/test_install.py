"""The installed distribution provides every package and console script (run from outside the repo)."""

import subprocess
import sys
from importlib.metadata import distribution

PACKAGES = ["simulator", "simulator.physics", "simulator.world_model", "policy", "data", "train", "eval"]


def test_every_package_imports_from_the_installed_distribution(tmp_path):
    code = "import importlib, sys; [importlib.import_module(p) for p in sys.argv[1:]]; print('ok')"
    out = subprocess.run([sys.executable, "-c", code, *PACKAGES], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_console_scripts_resolve():
    scripts = {ep.name: ep for ep in distribution("reverie").entry_points if ep.group == "console_scripts"}
    assert {"reverie-collect", "reverie-demo"} <= set(scripts)
    for ep in scripts.values():
        assert callable(ep.load())


def test_distribution_requires_python_312():
    assert distribution("reverie").metadata["Requires-Python"] == ">=3.12"
