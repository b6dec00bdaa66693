"""Build and install hvsim's patched Unicorn into a virtual environment.

    python tools/build_unicorn.py .venv/bin/python

Downloads Unicorn 2.1.4's source distribution from PyPI, applies
tools/unicorn-2.1.4-hvsim.patch (what it changes and why is written at its top), builds a wheel
(x86 and AArch64 targets only: about a minute on two cores; it needs cmake, make and a C
compiler) and installs it with pip. The wheel is kept in ~/.cache/hvsim (or $XDG_CACHE_HOME),
named after the patch's hash, so a second checkout on the same machine installs it at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "2.1.4"
HERE = Path(__file__).resolve().parent
PATCH = HERE / f"unicorn-{VERSION}-hvsim.patch"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(PATCH.read_bytes()).hexdigest()[:16]
    return base / "hvsim" / f"unicorn-{VERSION}-{key}"


def build(python: str, out: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="hvsim-unicorn-") as tmp:
        tmp = Path(tmp)
        run([python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"unicorn=={VERSION}", "-d", str(tmp)])
        sdist = next(tmp.glob(f"unicorn-{VERSION}.tar.gz"))
        with tarfile.open(sdist) as tar:
            try:
                tar.extractall(tmp, filter="data")
            except TypeError:  # Python before 3.11.4 has no extraction filters
                tar.extractall(tmp)
        src = tmp / f"unicorn-{VERSION}"
        run(["git", "apply", "-p1", str(PATCH)], cwd=src)
        env = dict(os.environ, THREADS=str(os.cpu_count() or 2))
        if shutil.which("cmake") is None:  # PyPI's cmake, into the same environment
            run([python, "-m", "pip", "install", "--quiet", "cmake"])
            env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
        wheels = tmp / "wheels"
        run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(src)], env=env)
        out.mkdir(parents=True, exist_ok=True)
        wheel = next(wheels.glob("unicorn-*.whl"))
        shutil.copy(wheel, out / wheel.name)
        return out / wheel.name


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def main() -> int:
    python = sys.argv[1] if len(sys.argv) > 1 else sys.executable
    out = cache_dir()
    wheel = next(out.glob("unicorn-*.whl"), None) if out.is_dir() else None
    if wheel is None:
        print(f"building hvsim's patched Unicorn {VERSION} (about a minute)", flush=True)
        wheel = build(python, out)
    run([python, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", str(wheel)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
