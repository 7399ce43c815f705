"""Stand-ins for the compose stack's third-party images, for machines that reach no container registry.

For every image that docker-compose.yml and the Dockerfile name (the Python base, postgres, redis,
minio) and that is missing locally, build an image of the same name from Debian 12 packages:
mmdebstrap makes a bookworm rootfs once (``clipadapt-standin/bookworm-rootfs``), ``docker import``
turns it into an image, and the Dockerfile in this folder named after the image adds the service.
A real image that is present is always used instead; stand-ins carry a ``clipadapt.standin`` label
saying what they stand in for (``docker image inspect -f '{{json .Config.Labels}}' IMAGE``).

    .venv/bin/python -m tests.compose.standins.build        # what tests/compose/run.py does
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
ROOTFS_IMAGE = "clipadapt-standin/bookworm-rootfs:latest"
# Debian's Python is the base of every stand-in; postgres and redis add packages with apt-get.
ROOTFS_PACKAGES = ["ca-certificates", "python3", "python3-venv", "python-is-python3"]
MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]
# Image repository -> folder with the stand-in's Dockerfile.
STANDINS = {"python": "python", "postgres": "postgres", "redis": "redis", "minio/minio": "minio"}


def wanted_images(repo: Path = REPO) -> list[str]:
    """Third-party images the deployment needs: the Dockerfile's base and the compose services'."""
    dockerfile = (repo / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())
    built = {s["image"] for s in compose["services"].values() if "build" in s}
    images = [base] + [s["image"] for s in compose["services"].values() if "image" in s]
    return sorted({i for i in images if i not in built})


def image_exists(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(c.split("=", 1)[0] + "=..." if "CERTIFICATE" in c else c for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def build_rootfs() -> None:
    if image_exists(ROOTFS_IMAGE):
        return
    if shutil.which("mmdebstrap") is None:
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", "mmdebstrap"], env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    with tempfile.TemporaryDirectory(prefix="clipadapt-rootfs-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}",
             "--aptopt=Acquire::Retries \"3\"", "bookworm", str(tar), *MIRRORS])
        run(["docker", "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["bash"]', str(tar), ROOTFS_IMAGE],
            stdout=subprocess.DEVNULL)


def build_standin(image: str, ca_certificates: str) -> None:
    repository = image.rsplit(":", 1)[0]
    folder = STANDINS.get(repository)
    if folder is None:
        raise SystemExit(f"{image} is missing and there is no stand-in for it in {HERE}")
    build_rootfs()
    run(["docker", "build", "--quiet", "--build-arg", f"CA_CERTIFICATES={ca_certificates}", "-t", image,
         str(HERE / folder)], stdout=subprocess.DEVNULL)


def extra_ca_certificates() -> str:
    """The host's extra CA certificates (a TLS-intercepting proxy): what pip in a build must trust."""
    return "\n".join(p.read_text() for p in sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")))


def ensure(images: list[str] | None = None) -> dict[str, str]:
    """Build a stand-in for each missing image; returns image -> 'present' or 'stand-in built'."""
    outcome = {}
    for image in images or wanted_images():
        if image_exists(image):
            outcome[image] = "present"
            continue
        build_standin(image, extra_ca_certificates())
        outcome[image] = "stand-in built"
    return outcome


if __name__ == "__main__":
    for image, what in ensure(sys.argv[1:] or None).items():
        print(f"{image}: {what}")
