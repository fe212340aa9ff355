"""A private ``tritonserver`` child with the SAM image encoder (``samserve up --encoder triton``).

The binary, its libraries and the python backend come from the ``nvidia-pytriton`` wheel
(``pip install 'samserve[triton]'``); this module starts that binary the way pytriton's own
launcher does (``LD_LIBRARY_PATH`` with the wheel's libraries, the venv's ``bin`` first on
``PATH`` so the backend stub's embedded Python finds this environment) without pytriton's
model-proxy machinery, against a per-run copy of ``triton_models/`` whose ``config.pbtxt``
parameters (variant, checkpoint, device, dtype, python_path) are filled in.

In production Triton runs as its own container; see ``triton_models/README.md``.
"""

from __future__ import annotations

import contextlib
import filecmp
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from samserve.core.triton_encoder import triton_model_name
from samserve.procs.common import dies_with_parent, free_port
from samserve_client._files import atomic_write

log = logging.getLogger(__name__)

#: The model repository in a source checkout (``triton_models/`` at the repository root).
DEFAULT_REPOSITORY = Path(__file__).resolve().parents[3] / "triton_models"

#: Default shared-memory sizes for the python backend: one batch of 8 images in and 8
#: embeddings out is ~56 MiB, so grow in large steps instead of the 1 MiB default.
_SHM_DEFAULT_BYTES = 16 * 1024 * 1024
_SHM_GROWTH_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TritonDist:
    """Where the wheel keeps tritonserver, its libraries and the python backend."""

    binary: Path
    backends: Path
    libs: Path
    stub: Path

    @property
    def python_backend(self) -> Path:
        return self.backends / "python"


def find_tritonserver() -> TritonDist | None:
    """The ``tritonserver`` shipped in the installed ``nvidia-pytriton`` wheel, or None."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = TritonDist(
        binary=dist / "bin" / "tritonserver",
        backends=dist / "backends",
        # Where auditwheel put the binary's libraries (pytriton's get_libs_path(), non-editable).
        libs=root.parent / "nvidia_pytriton.libs",
        stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    if not (found.binary.is_file() and (found.python_backend / "libtriton_python.so").is_file()):
        return None
    return found


def install_python_stub(dist: TritonDist, fallback_dir: Path) -> Path:
    """Put the backend stub for this Python next to ``libtriton_python.so``; idempotent.

    The wheel ships one stub per Python version and leaves the choice to the launcher. The copy
    goes through a temporary file and a rename, so concurrent launches never see half a stub.
    When site-packages is read-only the whole backends folder (3 MB) is copied into
    ``fallback_dir`` instead.

    Returns:
        The backends directory to pass to ``--backend-directory``.
    """
    if not dist.stub.is_file():
        raise RuntimeError(
            f"nvidia-pytriton has no python backend stub for Python "
            f"{sys.version_info.major}.{sys.version_info.minor} ({dist.stub} is missing)"
        )
    target = dist.python_backend / "triton_python_backend_stub"
    if target.is_file() and filecmp.cmp(dist.stub, target, shallow=False):
        return dist.backends
    try:
        atomic_write(target, dist.stub.read_bytes(), mode=0o755)
        return dist.backends
    except PermissionError:
        backends = fallback_dir / "backends"
        shutil.copytree(dist.backends, backends, dirs_exist_ok=True)
        atomic_write(
            backends / "python" / "triton_python_backend_stub",
            dist.stub.read_bytes(),
            mode=0o755,
        )
        return backends


def server_env(dist: TritonDist) -> dict[str, str]:
    """The environment pytriton gives tritonserver, plus this interpreter's libpython.

    ``LD_LIBRARY_PATH`` carries the wheel's libraries; putting this Python's ``LIBDIR`` first
    makes the stub embed the same libpython build as the interpreter that launched it (it would
    otherwise take whatever ``libpython3.X.so`` the system has). The stub finds this
    environment's site-packages by looking up ``python3`` on ``PATH``, so ``sys.exec_prefix/bin``
    goes first. PYTHONPATH is ignored by the stub, hence the ``python_path`` model parameter.
    """
    env = os.environ.copy()
    libs = [str(dist.libs)]
    libdir = sysconfig.get_config_var("LIBDIR")
    # The soname the stub links against (libpython3.X.so.1.0), not the -dev symlink.
    soname = sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / str(soname)).is_file():
        libs.insert(0, str(libdir))
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env["PATH"] = os.pathsep.join([str(Path(sys.exec_prefix) / "bin"), env.get("PATH", "")])
    return env


def python_path() -> str:
    """This interpreter's import path, for the stub (``os.pathsep``-separated directories)."""
    return os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())


@dataclass(frozen=True, slots=True)
class TritonModelOptions:
    """What the private tritonserver serves: which encoder, which weights, on what.

    Attributes:
        variant: ``tiny``, ``vit_b``, ``vit_l`` or ``vit_h``.
        checkpoint: official ``.pth`` path or ``"random"``; None keeps the config's value.
        seed: seed for random weights.
        device: ``cpu`` or ``cuda``; also sets the instance_group kind and, unless ``dtype`` is
            given, the dtype (float32 on cpu, bfloat16 on cuda). None keeps the config's.
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto``; None keeps the config's.
        max_batch_size: overrides the config's dynamic batching limit.
        parameters: other config parameters to set (``warmup``, ``torch_threads``, ...).
        repository: a repository laid out like ``triton_models/`` to copy (None: the one in
            this source checkout); it is never modified.
    """

    variant: str
    checkpoint: str | Path | None = None
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    max_batch_size: int | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    repository: Path | None = None

    @property
    def model_name(self) -> str:
        return triton_model_name(self.variant)

    def config_parameters(self) -> dict[str, str]:
        """The ``config.pbtxt`` parameters these options set (python_path aside)."""
        params: dict[str, str] = {"variant": self.variant, "seed": str(self.seed)}
        if self.checkpoint is not None:
            params["checkpoint"] = str(self.checkpoint)
        if self.device is not None:
            if self.device not in ("cpu", "cuda"):
                raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
            params["device"] = self.device
            params["dtype"] = self.dtype or ("float32" if self.device == "cpu" else "bfloat16")
        elif self.dtype is not None:
            params["dtype"] = self.dtype
        params.update(self.parameters)
        return params


def write_model_repository(
    options: TritonModelOptions, target: Path, *, extra_python_path: str = ""
) -> str:
    """Copy the options' model into ``target`` (created) with its parameters filled in.

    ``python_path`` is set to ``extra_python_path`` followed by this interpreter's path.

    Returns:
        The model name.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    source = options.repository or DEFAULT_REPOSITORY
    name = options.model_name
    src = source / name
    if not (src / "config.pbtxt").is_file():
        raise RuntimeError(f"no Triton model {name} in {source} ({src}/config.pbtxt is missing)")
    shutil.copytree(src, target / name)
    config_path = target / name / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    config.name = name
    if options.device is not None:
        kind = (
            mc.ModelInstanceGroup.KIND_CPU
            if options.device == "cpu"
            else mc.ModelInstanceGroup.KIND_GPU
        )
        for group in config.instance_group:
            group.kind = kind
    if options.max_batch_size is not None:
        config.max_batch_size = options.max_batch_size
    params = options.config_parameters()
    params["python_path"] = os.pathsep.join(p for p in (extra_python_path, python_path()) if p)
    for key, value in params.items():
        config.parameters[key].string_value = value
    config_path.write_text(text_format.MessageToString(config))
    return name


def _uses_gpu(options: TritonModelOptions, repository: Path) -> bool:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    path = repository / options.model_name / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    return any(g.kind != mc.ModelInstanceGroup.KIND_CPU for g in config.instance_group)


def server_args(
    dist: TritonDist,
    backends: Path,
    repository: Path,
    host: str,
    ports: tuple[int, int, int],
    shm_prefix: str,
    gpu_metrics: bool,
) -> list[str]:
    """tritonserver's command line: model control mode none, strict readiness, our ports."""
    grpc_port, http_port, metrics_port = ports
    return [
        str(dist.binary),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--cache-directory={dist.binary.parent.parent / 'caches'}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--exit-timeout-secs=5",
        f"--grpc-address={host}", f"--grpc-port={grpc_port}",
        # Keepalive both ways, as deploy/base/triton.yaml: the embedding service pings every
        # 10 s (--triton-keepalive), so that a hung Triton's calls fail fast.
        "--grpc-keepalive-permit-without-calls=true",
        "--grpc-http2-min-recv-ping-interval-without-data=5000",
        "--grpc-http2-max-pings-without-data=0",
        "--grpc-keepalive-time=30000",
        "--grpc-keepalive-timeout=10000",
        f"--http-address={host}", f"--http-port={http_port}",
        f"--metrics-address={host}", f"--metrics-port={metrics_port}",
        f"--allow-gpu-metrics={str(gpu_metrics).lower()}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        f"--backend-config=python,shm-default-byte-size={_SHM_DEFAULT_BYTES}",
        f"--backend-config=python,shm-growth-byte-size={_SHM_GROWTH_BYTES}",
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class TritonTls:
    """TLS of the private tritonserver's gRPC endpoint: its certificate and key, and with
    ``client_ca`` mutual TLS (clients must present a certificate signed by it)."""

    cert: str
    key: str
    client_ca: str | None = None

    def args(self) -> list[str]:
        """tritonserver's flags for this TLS."""
        out = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}",
               f"--grpc-server-key={self.key}"]  # fmt: skip
        if self.client_ca is not None:
            out += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.client_ca}"]
        return out


@dataclass
class TritonProcess:
    """A running tritonserver child serving one SAM image encoder model on loopback."""

    process: subprocess.Popen[bytes]
    model_name: str
    host: str
    grpc_port: int
    http_port: int
    metrics_port: int
    workdir: Path
    log_path: Path
    shm_prefix: str
    _stopped: bool = field(default=False, repr=False)

    @property
    def grpc_address(self) -> str:
        """``host:port`` of the KServe v2 gRPC endpoint (what :class:`TritonEncoder` takes)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics (``nv_inference_count``, ``nv_inference_exec_count``, ...)."""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @classmethod
    def start(
        cls,
        options: TritonModelOptions,
        *,
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        log_path: str | Path | None = None,
        timeout: float = 180.0,
        attempts: int = 3,
        extra_args: Sequence[str] = (),
        tls: TritonTls | None = None,
    ) -> TritonProcess:
        """Start tritonserver with the options' model and wait until it is ready.

        Args:
            options: the model to serve and how.
            host: address every endpoint binds (loopback by default).
            grpc_port, http_port, metrics_port: 0 picks a free port.
            log_path: where tritonserver's output goes (appended; default: ``triton.log`` in
                the run's temporary folder, which :meth:`stop` removes).
            timeout: seconds to wait for the model to be ready (a checkpoint loads first).
            attempts: tries when a picked port was taken meanwhile.
            extra_args: more tritonserver flags.
            tls: serve gRPC over TLS (HTTP, used only for the readiness wait, stays on
                ``host``, loopback by default).

        Raises:
            RuntimeError: no tritonserver installed, or it exited or was not ready in time
                (the message carries the end of its log).
        """
        dist = find_tritonserver()
        if dist is None:
            raise RuntimeError(
                "tritonserver not found: pip install 'samserve[triton]' (the nvidia-pytriton "
                "wheel ships the binary), or point the embedding service at a running Triton"
            )
        picked = 0 in (grpc_port, http_port, metrics_port)
        last = ""
        for _ in range(attempts):
            ports = (grpc_port or free_port(host), http_port or free_port(host),
                     metrics_port or free_port(host))  # fmt: skip
            try:
                args = [*extra_args, *(tls.args() if tls else [])]
                return cls._launch(dist, options, host, ports, log_path, timeout, args)
            except RuntimeError as e:
                # Triton binds its ports only after loading the model, so a port picked here
                # can be taken meanwhile; it then exits with "Socket ... already in use".
                if not (picked and "already in use" in str(e)):
                    raise
                last = str(e)
        raise RuntimeError(f"could not start tritonserver: {last}")

    @classmethod
    def _launch(
        cls,
        dist: TritonDist,
        options: TritonModelOptions,
        host: str,
        ports: tuple[int, int, int],
        log_path: str | Path | None,
        timeout: float,
        extra_args: Sequence[str],
    ) -> TritonProcess:
        """One attempt: a fresh work folder, the server, and the wait for readiness."""
        workdir = Path(tempfile.mkdtemp(prefix="samserve-triton-"))
        try:
            backends = install_python_stub(dist, workdir)
            name = write_model_repository(options, workdir / "models")
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        shm_prefix = f"samserve_{os.getpid()}_{workdir.name.rsplit('-', 1)[-1]}_"
        logfile = Path(log_path) if log_path is not None else workdir / "triton.log"
        args = server_args(
            dist, backends, workdir / "models", host, ports, shm_prefix,
            _uses_gpu(options, workdir / "models"),
        )  # fmt: skip
        with logfile.open("ab") as out:
            proc = subprocess.Popen(
                dies_with_parent([*args, *extra_args]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=server_env(dist),
            )
        triton = cls(proc, name, host, *ports, workdir, logfile, shm_prefix)
        try:
            triton._wait_ready(timeout)
        except BaseException:
            triton.stop()
            raise
        log.info("tritonserver %s on %s (pid %d), log %s", name, triton.grpc_address, proc.pid,
                 logfile)  # fmt: skip
        return triton

    def _wait_ready(self, timeout: float) -> None:
        """Poll the model's readiness over HTTP until ready, exited, or ``timeout``."""
        url = f"{self.http_url}/v2/models/{self.model_name}/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"tritonserver not ready after {timeout:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of tritonserver's log (startup errors, python backend tracebacks)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        # Skip the startup tables (backends, models, options): they crowd out the error.
        kept = [ln for ln in text.splitlines() if not ln.startswith(("|", "+-"))]
        return "\n".join(kept[-lines:])

    def kill(self) -> None:
        """SIGKILL, as a crash would (for tests); then clean up like :meth:`stop`."""
        if self.process.poll() is None:
            self.process.kill()
        self.stop()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; reaps the child and removes its files."""
        if self._stopped:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        self._stopped = True
        # A killed server leaves its python backend shared memory behind; the prefix is ours.
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                region.unlink()
        shutil.rmtree(self.workdir, ignore_errors=True)
