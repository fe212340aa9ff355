"""The command lines the manifests run, run here as rendered.

- Triton's init container script: copies the variant's model folder, checks the checkpoint
  against the model id (``samserve checkpoint wait``, the real module), and writes the
  ConfigMap's checkpoint path into config.pbtxt; refuses a wrong file and odd paths.
- Redis's command line with each overlay's environment, on a real redis-server: the overlay's
  snapshot schedule and maxmemory take effect; dev requires its password; prod serves TLS
  only, wants client certificates, and its ACL users (the component's template) let the
  embedding service write samserve:*, the decoder only read it, the monitor only see state.
- The redis_exporter sidecar's arguments against that Redis (Debian's
  prometheus-redis-exporter): it reports Redis up, its maxmemory and its snapshot status.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT, config, find, pod_spec, render

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- Triton's model repository init container ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, str]:
    import torch

    from samserve.core.models import load_model, random_sam

    path = tmp_path_factory.mktemp("checkpoints") / "sam_tiny.pth"
    torch.save(random_sam("tiny", seed=5).state_dict(), path)
    return path, load_model("tiny", path).model_id


def _run_init(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Triton's rendered init script, with `samserve checkpoint` as samserve.cli.checkpoint."""
    init = pod_spec(find(render("prod"), "Deployment", "samserve-triton"))["initContainers"][0]
    assert init["command"] == ["/bin/sh", "-c"]
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "samserve"
    shim.write_text(
        f'#!/bin/sh\n[ "$1" = checkpoint ] || exit 2\nshift\n'
        f'exec {sys.executable} -m samserve.cli.checkpoint "$@"\n'
    )
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    repo = tmp_path / "models"
    repo.mkdir(exist_ok=True)
    full_env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "TRITON_MODELS_SOURCE": str(ROOT / "triton_models"),
        "TRITON_MODEL_REPOSITORY": str(repo),
        "SAMSERVE_MODEL": "tiny",
        **env,
    }
    return subprocess.run(
        ["/bin/sh", "-c", init["args"][0]],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def _checkpoint_param(config_text: str) -> str:
    m = re.search(r'key: "checkpoint" value: \{ string_value: "([^"]*)" \}', config_text)
    assert m, config_text
    return m.group(1)


def test_triton_init_serves_the_configmaps_checkpoint(tmp_path, tiny_checkpoint):
    path, model_id = tiny_checkpoint
    proc = _run_init(tmp_path, SAMSERVE_CHECKPOINT=str(path), SAMSERVE_EXPECT_MODEL_ID=model_id)
    assert proc.returncode == 0, proc.stderr
    served = (tmp_path / "models" / "sam_image_encoder_tiny" / "config.pbtxt").read_text()
    shipped = (ROOT / "triton_models" / "sam_image_encoder_tiny" / "config.pbtxt").read_text()
    assert _checkpoint_param(served) == str(path)
    # Nothing else changed, and the model code came along (links resolved).
    assert served.replace(str(path), "") == shipped
    model_py = tmp_path / "models" / "sam_image_encoder_tiny" / "1" / "model.py"
    assert model_py.is_file() and not model_py.is_symlink()


def test_triton_init_writes_the_encoder_dtype_the_model_id_names(tmp_path, tiny_checkpoint):
    path, model_id = tiny_checkpoint
    env = {"SAMSERVE_CHECKPOINT": str(path), "SAMSERVE_EXPECT_MODEL_ID": model_id}
    proc = _run_init(tmp_path, SAMSERVE_ENCODER_DTYPE="bfloat16", **env)
    assert proc.returncode == 0, proc.stderr
    served = (tmp_path / "models" / "sam_image_encoder_tiny" / "config.pbtxt").read_text()
    assert 'key: "dtype" value: { string_value: "bfloat16" }' in served
    (tmp_path / "again").mkdir()
    proc = _run_init(tmp_path / "again", SAMSERVE_ENCODER_DTYPE="int8", **env)
    assert proc.returncode != 0 and "must be float32, bfloat16 or float16" in proc.stderr


def test_triton_init_refuses_other_weights(tmp_path, tiny_checkpoint):
    path, model_id = tiny_checkpoint
    wrong = "tiny-0000000000000000"
    proc = _run_init(tmp_path, SAMSERVE_CHECKPOINT=str(path), SAMSERVE_EXPECT_MODEL_ID=wrong)
    assert proc.returncode != 0
    assert f"gives model id {model_id}, expected {wrong}" in proc.stderr


def test_triton_init_refuses_paths_it_cannot_write(tmp_path, tiny_checkpoint):
    _, model_id = tiny_checkpoint
    proc = _run_init(
        tmp_path, SAMSERVE_CHECKPOINT="/checkpoints/a|b.pth", SAMSERVE_EXPECT_MODEL_ID=model_id
    )
    assert proc.returncode != 0 and "may not contain" in proc.stderr


def test_triton_init_without_a_checkpoint_keeps_the_shipped_config(tmp_path):
    proc = _run_init(tmp_path)
    assert proc.returncode == 0, proc.stderr
    served = (tmp_path / "models" / "sam_image_encoder_tiny" / "config.pbtxt").read_text()
    assert _checkpoint_param(served) == ""


@pytest.mark.parametrize(
    ("variant", "name"),
    [
        ("sam2.1_hiera_l", "sam_image_encoder_sam2_1_hiera_l"),
        ("sam2.1_hiera_b+", "sam_image_encoder_sam2_1_hiera_b_plus"),
    ],
)
def test_triton_init_copies_a_sam2_model(tmp_path, variant, name):
    """A SAM 2.1 variant's model folder has "." and "+" spelled out; the init script finds it."""
    from samserve.core.variants import triton_model_name

    assert triton_model_name(variant) == name
    proc = _run_init(tmp_path, SAMSERVE_MODEL=variant)
    assert proc.returncode == 0, proc.stderr
    served = (tmp_path / "models" / name / "config.pbtxt").read_text()
    assert f'string_value: "{variant}"' in served
    assert (tmp_path / "models" / name / "1" / "model.py").is_file()


# --- Redis and its exporter ------------------------------------------------------------------


def _expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def _redis_cli(port: int, password: str, *args: str) -> str:
    proc = subprocess.run(
        ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", password, *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return proc.stdout.strip()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _pki(d: Path) -> None:
    """A CA, a server certificate for loopback (also a client one, as Redis's is), and the
    services' client certificates: what cert-manager puts in the Secrets."""
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "1", "-subj", "/CN=samserve-ca", "-keyout", "ca.key", "-out", "ca.crt",
             cwd=d)  # fmt: skip
    for name, ext in (
        (
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth",
        ),
        ("embedding", "extendedKeyUsage=clientAuth"),
        ("decoder", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(ext.replace("\\n", "\n") + "\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt", cwd=d)  # fmt: skip


PASSWORDS = {"EMBEDDING": "emb-secret", "DECODER": "dec-secret", "MONITOR": "mon-secret"}


def _acl(path: Path) -> None:
    """users.acl from the component's template, as docs/deploy.md makes it."""
    import hashlib

    text = (ROOT / "deploy" / "components" / "tls" / "redis-users.acl.in").read_text()
    for user, password in PASSWORDS.items():
        text = text.replace(f"@{user}_SHA256@", hashlib.sha256(password.encode()).hexdigest())
    assert not re.search(r"@[A-Z]+_SHA256@", text)
    path.write_text(text)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_redis_runs_the_rendered_command(overlay, tmp_path):
    """dev: a password. prod: TLS only, client certificates, the ACL users: the embedding
    user writes samserve:*, the decoder only reads it, the monitor reads server state."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    docs = render(overlay)
    pod = pod_spec(find(docs, "StatefulSet", "samserve-redis"))
    redis = next(c for c in pod["containers"] if c["name"] == "redis")
    env = {e["name"]: e["value"] for e in redis["env"] if "value" in e}
    env["REDIS_PASSWORD"] = "test-password"
    tls = "--tls-port" in redis["command"]
    pki, acl = tmp_path / "pki", tmp_path / "acl"
    if tls:
        if shutil.which("openssl") is None:
            pytest.skip("openssl not found")
        _pki(pki)
        acl.mkdir()
        _acl(acl / "users.acl")
    # The Secrets' files, where the pod mounts them: tls.crt/tls.key/ca.crt and users.acl.
    files = {"/tls/tls.crt": pki / "server.crt", "/tls/tls.key": pki / "server.key",
             "/tls/ca.crt": pki / "ca.crt", "/acl/users.acl": acl / "users.acl"}  # fmt: skip

    def local(arg: str) -> str:
        for mounted, here in files.items():
            arg = arg.replace(mounted, str(here))
        return arg

    conf = tmp_path / "redis.conf"
    text = config(docs, "samserve-redis-config")["redis.conf"]
    # Only what a laptop needs changed: the data directory, the port, loopback.
    conf.write_text(re.sub(r"^dir /data$", f"dir {tmp_path}", text, flags=re.M))
    argv = [local(_expand(a, env)) for a in redis["command"]]
    argv = [str(conf) if a == "/etc/redis/redis.conf" else a for a in argv]
    port = _free_port()
    port_flag = "--tls-port" if tls else "--port"
    argv += [port_flag, str(port), "--bind", "127.0.0.1"]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def cli(
        *args: str, user: str | None = None, password: str = "", cert: str | None = "server"
    ) -> str:
        base = ["redis-cli", "-p", str(port), "--no-auth-warning"]
        if tls:
            base += ["--tls", "--cacert", str(pki / "ca.crt")]
            if cert:
                base += ["--cert", str(pki / f"{cert}.crt"), "--key", str(pki / f"{cert}.key")]
        if user:
            base += ["--user", user]
        if password:
            base += ["--pass", password]
        proc = subprocess.run([*base, *args], capture_output=True, text=True, timeout=10)
        return (proc.stdout + proc.stderr).strip()

    admin = {"user": "samserve-monitor", "password": PASSWORDS["MONITOR"]} if tls else {
        "password": "test-password"}  # fmt: skip
    exporter = None
    try:
        deadline = time.monotonic() + 20
        while cli("ping", **admin) != "PONG":
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.1)
        assert cli("config", "get", "save", **admin).splitlines()[1] == env["REDIS_SAVE"]
        m = re.fullmatch(r"(\d+)(mb|gb)", env["REDIS_MAXMEMORY"])
        assert m
        maxmemory = int(m.group(1)) * {"mb": 2**20, "gb": 2**30}[m.group(2)]
        assert int(cli("config", "get", "maxmemory", **admin).splitlines()[1]) == maxmemory
        assert cli("config", "get", "maxmemory-policy", **admin).splitlines()[1] == "allkeys-lru"
        if not tls:
            assert "NOAUTH" in cli("ping", cert=None)
        else:
            emb = {
                "user": "samserve-embedding",
                "password": PASSWORDS["EMBEDDING"],
                "cert": "embedding",
            }
            dec = {"user": "samserve-decoder", "password": PASSWORDS["DECODER"], "cert": "decoder"}
            assert cli("set", "samserve:x", "1", **emb) == "OK"
            assert cli("get", "samserve:x", **emb) == "1"
            assert cli("get", "samserve:x", **dec) == "1"
            assert "NOPERM" in cli("set", "samserve:x", "2", **dec)  # the decoder cannot write
            assert "NOPERM" in cli("del", "samserve:x", **dec)
            assert "NOPERM" in cli("get", "other:x", **emb)  # outside samserve:*
            assert "NOPERM" in cli("flushall", **emb)
            assert "NOPERM" in cli("get", "samserve:x", **admin)  # the monitor reads no data
            assert "redis_version" in cli("info", "server", **admin)
            # Without a client certificate, or as the default user: refused.
            assert cli("ping", **{**emb, "cert": None}) != "PONG"
            assert cli("ping", password="test-password") != "PONG"
            # The readiness probe, as rendered.
            probe = local(" ".join(redis["readinessProbe"]["exec"]["command"][2:]))
            probe = probe.replace("-h 127.0.0.1", f"-h 127.0.0.1 -p {port}")
            probe_env = {**os.environ, "REDISCLI_AUTH": PASSWORDS["MONITOR"]}
            proc = subprocess.run(["sh", "-c", probe], env=probe_env,
                                  capture_output=True, text=True, timeout=10)  # fmt: skip
            assert proc.returncode == 0, proc.stdout + proc.stderr

        binary = shutil.which("prometheus-redis-exporter")
        if binary is None:
            return
        side = next(c for c in pod["containers"] if c["name"] == "redis-exporter")
        metrics_port = _free_port()
        args = [
            f"-web.listen-address=127.0.0.1:{metrics_port}"
            if a.startswith("-web.listen-address=")
            else local(a).replace("127.0.0.1:6379", f"127.0.0.1:{port}")
            for a in side["args"]
        ]
        exporter_password = PASSWORDS["MONITOR"] if tls else "test-password"
        exporter = subprocess.Popen(
            [binary, *args],
            env={**os.environ, "REDIS_PASSWORD": exporter_password},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        body = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=2
                ) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert re.search(r"^redis_up 1$", body, re.M), body[:2000]
        reported = re.search(r"^redis_memory_max_bytes (\S+)$", body, re.M)
        assert reported and float(reported.group(1)) == maxmemory
        assert re.search(r"^redis_rdb_last_bgsave_status 1$", body, re.M)
    finally:
        for proc in (exporter, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        if server.stdout is not None:
            server.stdout.close()
