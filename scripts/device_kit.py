"""Build the device kit: what a lent GPU machine lacks to run `scripts/gpu_check.sh`.

    python scripts/device_kit.py            # .kit/ (wheels) and .gl/ (GL loader packages)
    python scripts/device_kit.py --no-gl    # the wheels only

The device image (Python 3.12, manylinux x86_64) holds torch, numpy, lxml, absl-py, etils,
imageio, einops, tqdm, h5py, tensorboard and matplotlib, and reaches no package registry. This
downloads, from PyPI, the wheels it lacks, at the versions installed here (the ones the tests
ran with): mujoco, dm-control, dm-env, dm-tree, pyopengl, gymnasium, farama-notifications, cma
and minari. dm-control's wheel is rebuilt without `dm_control/locomotion` (its walker and arena
assets, which the suite never imports), with a RECORD that lists what is left, so that the kit
fits the 64 MiB that travel with the working tree. With `--gl` (the default) it also downloads
Debian's GL loader packages (libEGL, libOpenGL and their dispatch library) into `.gl/`, which
the device's EGL rendering needs; `gpu_check.sh` unpacks them there.

Both folders are ignored by git; the device tool's `run` carries them (`carry: [".kit", ".gl"]`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the device image lacks, by distribution name.
PACKAGES = ("mujoco", "dm-control", "dm-env", "dm-tree", "pyopengl", "gymnasium",
            "farama-notifications", "cma", "minari")  # fmt: skip
# Parts of dm-control the suite does not import (locomotion: 85 MB of walker and arena assets).
DM_CONTROL_DROP = ("dm_control/locomotion/",)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
GL_PACKAGES = ("libegl1", "libglvnd0", "libopengl0", "libgl1", "libglx0")
KIT_LIMIT_MB = 60  # the working tree and the carried folders travel in 64 MiB


def record_hash(data: bytes) -> str:
    """A RECORD hash: sha256=<urlsafe base64 without padding>."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def trim_wheel(path: Path, drop: tuple[str, ...]) -> tuple[int, int]:
    """Rewrite the wheel at `path` without the entries under the prefixes `drop`, with a RECORD
    that lists exactly the files kept (hash and size of each, as PEP 376 wants). Returns the
    sizes in bytes before and after."""
    before = path.stat().st_size
    with zipfile.ZipFile(path) as src:
        infos = [i for i in src.infolist() if not i.filename.startswith(drop)]
        record = next(i.filename for i in infos if i.filename.endswith(".dist-info/RECORD"))
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".whl")
        os.close(fd)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            lines = []
            for info in infos:
                if info.filename == record or info.is_dir():
                    continue
                data = src.read(info)
                out.writestr(info, data)
                lines.append(f"{info.filename},{record_hash(data)},{len(data)}")
            lines.append(f"{record},,")
            out.writestr(record, "\n".join(lines) + "\n")
    os.replace(tmp, path)
    return before, path.stat().st_size


def installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(
            f"device_kit.py: error: {name} is not installed here; install the project first "
            '(pip install -e ".[dev]"): the kit takes the versions the tests ran with'
        )


def download_wheels(kit: Path) -> None:
    pins = [f"{name}=={installed_version(name)}" for name in PACKAGES]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    *platforms, "--dest", str(kit), *pins], check=True)  # fmt: skip


def download_gl(gl: Path) -> None:
    """Debian's GL loader packages for amd64 into `gl` (apt-get download, as the device tool's
    README says)."""
    lists = Path(tempfile.mkdtemp(prefix="amd64-"))
    (lists / "partial").mkdir()
    opts = ["-oAPT::Architecture=amd64", "-oAPT::Architectures=amd64",
            f"-oDir::State::Lists={lists}"]  # fmt: skip
    subprocess.run(["apt-get", *opts, "update", "-qq"], check=True)
    subprocess.run(["apt-get", *opts, "download", "-qq", *GL_PACKAGES], check=True, cwd=gl)
    shutil.rmtree(lists, ignore_errors=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-gl", action="store_true", help="skip the GL loader packages")
    args = parser.parse_args(argv)
    kit, gl = ROOT / ".kit", ROOT / ".gl"
    shutil.rmtree(kit, ignore_errors=True)
    kit.mkdir()
    download_wheels(kit)
    for wheel in kit.glob("dm_control-*.whl"):
        before, after = trim_wheel(wheel, DM_CONTROL_DROP)
        print(f"{wheel.name}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB without "
              f"{', '.join(DM_CONTROL_DROP)}")  # fmt: skip
    if not args.no_gl:
        shutil.rmtree(gl, ignore_errors=True)
        gl.mkdir()
        download_gl(gl)
    total = 0
    for folder in (kit, gl):
        for f in sorted(folder.glob("*")) if folder.exists() else []:
            total += f.stat().st_size
            print(f"{f.stat().st_size / 1e6:7.2f} MB  {folder.name}/{f.name}")
    print(f"{total / 1e6:7.2f} MB  in all (the limit that travels: 64 MiB with the working tree)")
    if total / 1e6 > KIT_LIMIT_MB:
        sys.exit(f"device_kit.py: error: the kit is {total / 1e6:.1f} MB, over {KIT_LIMIT_MB} MB")


if __name__ == "__main__":
    main()
