"""The installed names: the toolkit lives under one namespace, `wmrl`, so a PyPI package with a
generic top-level name (`envs`, `planners`, `worldmodels` exist there) installs beside it."""

import subprocess
import sys


def test_a_top_level_envs_package_and_wmrl_envs_import_side_by_side(tmp_path):
    # A stand-in for PyPI's `envs`, first on the path as an installed package would be.
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "__init__.py").write_text("WHO = 'pypi'\n")
    code = (
        "import envs, wmrl.envs, wmrl.planners.cem\n"
        "assert envs.WHO == 'pypi', envs.__file__\n"
        "assert wmrl.envs.make is not None and not hasattr(wmrl.envs, 'WHO')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
