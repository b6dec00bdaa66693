"""Debian's own kernels and busybox for the Linux boot tests: fetched with ``apt-get download``
into a cache (``~/.cache/hvsim/debian``, or ``$HVSIM_DEBIAN_CACHE``), unpacked in Python (a
.deb is an ar archive holding data.tar.*), and a busybox initramfs built from them (newc cpio,
gzip).

The kernel is whatever ``linux-image-cloud-<arch>`` (Debian's meta package) depends on today;
once fetched, the cache answers without the network.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("HVSIM_DEBIAN_CACHE", Path.home() / ".cache" / "hvsim" / "debian"))
DEB_ARCH = {"intel_vtx": "amd64", "amd_svm": "amd64", "arm_el2": "arm64"}


class Unavailable(Exception):
    """The packages cannot be fetched here (no apt-get, no network) and are not cached."""


def _ar_members(data: bytes):
    if data[:8] != b"!<arch>\n":
        raise ValueError("not an ar archive")
    off = 8
    while off + 60 <= len(data):
        name = data[off:off + 16].decode().strip().rstrip("/")
        size = int(data[off + 48:off + 58].decode().strip())
        yield name, data[off + 60:off + 60 + size]
        off += 60 + size + (size & 1)


def _tar(deb: Path, prefix: str) -> tarfile.TarFile:
    for name, body in _ar_members(deb.read_bytes()):
        if name.startswith(prefix):
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            elif name.endswith(".gz"):
                body = gzip.decompress(body)
            elif name.endswith(".zst"):
                raise Unavailable(f"{deb.name}: zstd-compressed packages are not supported here")
            return tarfile.open(fileobj=io.BytesIO(body))
    raise ValueError(f"{deb.name}: no {prefix} member")


def _deb_file(deb: Path, pattern: str) -> bytes:
    tar = _tar(deb, "data.tar")
    for member in tar.getmembers():
        if member.isfile() and re.fullmatch(pattern, member.name.lstrip("./")):
            return tar.extractfile(member).read()
    raise ValueError(f"{deb.name}: nothing matches {pattern}")


def _depends(deb: Path) -> str:
    control = _tar(deb, "control.tar").extractfile("./control").read().decode()
    return re.search(r"^Depends: (.*)$", control, re.M).group(1)


def _download(package: str, arch: str) -> Path:
    """The .deb of ``package:arch``, from the cache or ``apt-get download``."""
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = package.split("=")[0]
    found = sorted(CACHE.glob(f"{stem}_*_{arch}.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None:
        raise Unavailable("apt-get is not installed and the Debian packages are not cached")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "download", "-q", f"{package}:{arch}" if "=" not in package else
           f"{stem}:{arch}={package.split('=')[1]}"]
    r = subprocess.run(cmd, cwd=CACHE, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and os.geteuid() == 0:
        # a fresh machine: apt's package lists may be empty, a foreign architecture unknown
        native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
        if arch != native:
            subprocess.run(["dpkg", "--add-architecture", arch], capture_output=True, timeout=60)
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        r = subprocess.run(cmd, cwd=CACHE, env=env, capture_output=True, text=True, timeout=300)
    found = sorted(CACHE.glob(f"{stem}_*_{arch}.deb"))
    if r.returncode != 0 or not found:
        raise Unavailable(f"apt-get download {package}:{arch} failed: {(r.stderr or r.stdout).strip()[-300:]}")
    return found[-1]


def kernel(arch: str) -> Path:
    """Debian's cloud kernel for ``arch`` (hvsim's name), as a file in the cache."""
    deb_arch = DEB_ARCH[arch]
    out = CACHE / f"vmlinuz-cloud-{deb_arch}"
    if out.exists():
        return out
    meta = _download(f"linux-image-cloud-{deb_arch}", deb_arch)
    image_pkg = re.match(r"(linux-image-[^ ,]+)", _depends(meta)).group(1)
    deb = _download(image_pkg, deb_arch)
    out.write_bytes(_deb_file(deb, r"boot/vmlinuz-.*"))
    return out


def busybox(arch: str) -> bytes:
    deb = _download("busybox-static", DEB_ARCH[arch])
    return _deb_file(deb, r"bin/busybox")


def _cpio_entry(out: io.BytesIO, ino: int, name: str, mode: int, data: bytes = b"",
                rdev: tuple[int, int] = (0, 0)) -> None:
    name_b = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0, rdev[0], rdev[1],
              len(name_b), 0)
    out.write(b"070701" + "".join(f"{v:08x}" for v in fields).encode() + name_b)
    out.write(b"\0" * (-(110 + len(name_b)) % 4))
    out.write(data + b"\0" * (-len(data) % 4))


def initramfs(arch: str, init: str) -> bytes:
    """A gzip'd newc cpio: busybox, /init (the given shell script), /dev/console."""
    out = io.BytesIO()
    ino = 1
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "usr", "usr/bin", "usr/sbin"):
        _cpio_entry(out, ino, d, stat.S_IFDIR | 0o755)
        ino += 1
    _cpio_entry(out, ino, "dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    _cpio_entry(out, ino + 1, "bin/busybox", stat.S_IFREG | 0o755, busybox(arch))
    _cpio_entry(out, ino + 2, "init", stat.S_IFREG | 0o755, init.encode())
    _cpio_entry(out, ino + 3, "TRAILER!!!", 0)
    data = out.getvalue()
    return gzip.compress(data + b"\0" * (-len(data) % 512), 6)
