"""The wheels the GPU check needs on a machine without network, and their offline install there.

    python tools/gpu_wheels.py download   # here, with a network: `make gpu-wheels`
    python tools/gpu_wheels.py install    # on the GPU machine: `make gpu-check` runs it first

The GPU machine's image has torch, accelerate, numpy, scipy, scikit-learn, tqdm, pyyaml, requests,
pytest's own needs and more, but transformers below this project's pin and none of gguf, optuna
(the short search) or bayesian-optimization. `download` fetches, for CPython 3.12 on manylinux
x86_64 and without their dependencies, the versions requirements.lock pins of the packages in
WHEELS, into .gpu-wheels/, and fails if they come to more than LIMIT_MIB (what travels with one
command to the machine is at most 64 MiB, the working tree included). torch is never downloaded.

`install` puts them (offline) into .gpu-site/ (`pip install --target`), which `make gpu-check` puts first
on PYTHONPATH: nothing in the image is changed, and these versions win over the image's.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS_DIR = ROOT / ".gpu-wheels"
SITE_DIR = ROOT / ".gpu-site"
LOCK = ROOT / "requirements.lock"
LIMIT_MIB = 56  # what one command carries is at most 64 MiB, the working tree (about 3 MiB) included
PIP_TIMEOUT_S = 300

# what the image lacks or has too old, with the dependencies of these that it lacks: transformers'
# pinned version needs huggingface_hub 2 (httpx2, httpcore2, truststore, hf-xet), tokenizers 0.23,
# safetensors 0.8, regex >= 2025.10 and click >= 8.4; optuna needs colorlog (its SQL storages need
# sqlalchemy and alembic, which the check does not use: its study is kept in memory); runner imports
# bayesian-optimization; pytest with the pluggy and iniconfig it was tested with
WHEELS = ("transformers", "huggingface_hub", "tokenizers", "safetensors", "regex", "click", "typer",
          "httpx2", "httpcore2", "truststore", "hf-xet", "gguf", "optuna", "colorlog", "bayesian-optimization",
          "pytest", "pluggy", "iniconfig")
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64", "--platform", "any"]


def fail(message: str) -> None:
    print(f"gpu-wheels: {message}", file=sys.stderr)
    sys.exit(1)


def pinned(lock: Path = LOCK) -> dict[str, str]:
    """Normalised name -> version, from the lock's `name==version` lines."""
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[normalise(match[1])] = match[2]
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def download() -> None:
    pins = pinned()
    missing = [name for name in WHEELS if normalise(name) not in pins]
    if missing:
        fail(f"{', '.join(missing)} not pinned in {LOCK.name}; add them to the lock (make lock) first")
    WHEELS_DIR.mkdir(exist_ok=True)
    for stale in WHEELS_DIR.glob("*.whl"):  # one version of each: two would stop the install
        stale.unlink()
    requirements = [f"{name}=={pins[normalise(name)]}" for name in WHEELS]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               *PLATFORM, "--dest", str(WHEELS_DIR), *requirements]
    try:
        done = subprocess.run(command, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        fail(f"pip download took over {PIP_TIMEOUT_S} s; is the package index reachable?")
    if done.returncode:
        fail("pip download failed (above); is the package index reachable?")
    wheels = sorted(WHEELS_DIR.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"  {wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
    print(f"gpu-wheels: {len(wheels)} wheels, {total / 2**20:.1f} MiB in {WHEELS_DIR.relative_to(ROOT)}/")
    if total > LIMIT_MIB * 2**20:
        fail(f"the wheels come to {total / 2**20:.1f} MiB, over the {LIMIT_MIB} MiB that may travel beside "
             "the working tree; drop a package from WHEELS")


def install() -> None:
    wheels = sorted(WHEELS_DIR.glob("*.whl"))
    if not wheels:  # the image may have all it needs; the check warns of versions out of range
        print(f"gpu-wheels: no wheels in {WHEELS_DIR.relative_to(ROOT)}/, so the image's packages are used "
              "(`make gpu-wheels` where there is a network downloads them; carry the folder along)")
        return
    stamp = SITE_DIR / ".installed"
    names = "\n".join(w.name for w in wheels)
    if stamp.is_file() and stamp.read_text() == names:
        return
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
               "--disable-pip-version-check", "--upgrade", "--target", str(SITE_DIR), *map(str, wheels)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        fail(f"installing the wheels took over {PIP_TIMEOUT_S} s")
    if done.returncode:
        lines = (done.stdout + done.stderr).strip().splitlines()
        fail(f"the wheels in {WHEELS_DIR.relative_to(ROOT)}/ do not install on Python "
             f"{sys.version.split()[0]} here (they are for CPython 3.12 on manylinux x86_64): "
             f"{lines[-1] if lines else 'pip failed'}")
    stamp.write_text(names)
    print(f"gpu-wheels: installed {len(wheels)} wheels into {SITE_DIR.relative_to(ROOT)}/")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("download", "install"))
    args = parser.parse_args(argv)
    download() if args.action == "download" else install()


if __name__ == "__main__":
    main()
