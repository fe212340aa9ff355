"""The SDK's client commands without a server: flags, dispatch, the atomic write, and export's
file handling (against a stand-in client that answers segment_everything)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from samserve_client import _files, cli
from samserve_client._convert import EVERYTHING_PARAMETERS
from samserve_client.cli import _connect, export

# --- flags and dispatch ---------------------------------------------------------------------


def test_segment_flags_and_env_twins(tmp_path: Path) -> None:
    env = {
        "SAMSERVE_EMBEDDING_ADDRESS": "e:1",
        "SAMSERVE_DECODER_ADDRESS": "d:2",
        "SAMSERVE_CLIENT_TLS_CA": "/ca.pem",
        "SAMSERVE_CLIENT_TLS_CERT": "/c.pem",
        "SAMSERVE_CLIENT_TLS_KEY": "/k.pem",
        "SAMSERVE_CLIENT_TOKEN_FILE": "/token",
    }
    ns = cli.build_parser(env).parse_args(
        ["segment", "img.png", "--point", "1,2", "--point", "3,4,0", "--box", "0,0,5,5",
         "--single-mask", "--out", "m.png", "--model", "tiny", "--timeout", "0"]
    )  # fmt: skip
    assert (ns.image, ns.point, ns.box, ns.single_mask, ns.out) == (
        "img.png", ["1,2", "3,4,0"], "0,0,5,5", True, "m.png",
    )  # fmt: skip
    assert (ns.embedding, ns.decoder, ns.model, ns.timeout) == ("e:1", "d:2", "tiny", 0.0)
    assert (ns.tls_ca, ns.tls_cert, ns.tls_key, ns.token_file) == (
        Path("/ca.pem"), Path("/c.pem"), Path("/k.pem"), Path("/token"),
    )  # fmt: skip
    ns = cli.build_parser({}).parse_args(["segment", "x.png", "--tls-ca", str(tmp_path)])
    assert ns.tls_ca == tmp_path
    assert ns.timeout == 60.0


def test_export_generator_flags_come_from_the_proto() -> None:
    names = set(EVERYTHING_PARAMETERS) - {"output_mode"}
    assert set(export.generator_flags()) == names
    ns = cli.build_parser({}).parse_args(["export", "in", "--out", "out"])
    assert all(getattr(ns, name) is None for name in names)  # unset: the server's defaults
    assert (ns.concurrency, ns.timeout, ns.max_image_bytes) == (2, 600.0, 32 * 1024 * 1024)
    ns = cli.build_parser({}).parse_args(
        ["export", "in", "--out", "out", "--points-per-side", "4", "--pred-iou-thresh", "0.5",
         "--crop-overlap-ratio", "0.25", "--max-image-bytes", "100"]
    )  # fmt: skip
    assert (ns.points_per_side, ns.pred_iou_thresh, ns.crop_overlap_ratio) == (4, 0.5, 0.25)
    assert ns.max_image_bytes == 100
    with pytest.raises(SystemExit):
        cli.build_parser({}).parse_args(["export", "in", "--out", "o", "--points-per-side", "x"])
    with pytest.raises(SystemExit):  # a bad env value is a usage error, not a traceback
        cli.build_parser({"SAMSERVE_MAX_IMAGE_BYTES": "lots"}).parse_args(
            ["export", "i", "--out", "o"]
        )


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["segment", "x.png"], "segment"),
        (["--log-level", "DEBUG", "export", "d"], "export"),
        (["--log-level=DEBUG", "up"], "up"),
        (["--help"], None),
        ([], None),
    ],
)
def test_command_word(argv: list[str], command: str | None) -> None:
    assert cli._command(argv) == command


def test_server_commands_need_the_server_package(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "samserve.cli", None)  # find_spec then finds nothing
    with pytest.raises(SystemExit) as info:
        cli.main(["up", "--model", "tiny"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "'up' needs the server package" in err


def test_server_commands_are_handed_to_the_server_cli(monkeypatch) -> None:
    import samserve.cli

    seen: list[list[str]] = []
    monkeypatch.setattr(samserve.cli, "main", seen.append)
    cli.main(["--log-level", "INFO", "up", "--model", "tiny"])
    assert seen == [["--log-level", "INFO", "up", "--model", "tiny"]]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--token-file", "{tmp}/empty"], "must hold one token"),
        (["--token-file", "{tmp}/missing"], "--token-file"),
        (["--tls-ca", "{tmp}/missing.pem"], "--tls-ca"),
        (["--tls-ca", "{tmp}/ca.pem", "--tls-cert", "{tmp}/ca.pem"], "tls_cert and tls_key"),
        (["--token-file", "{tmp}/token", "--decoder", "10.9.8.7:50052"], "plaintext"),
    ],
)
def test_bad_connection_flags_are_one_line(tmp_path, capsys, extra, message) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("not a certificate")
    argv = ["segment", "x.png", "--point", "1,1", *(a.format(tmp=tmp_path) for a in extra)]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("samserve segment: ")
    assert err.count("\n") == 1
    assert message in err


def test_token_file_is_stripped(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  s3cret \n")
    assert _connect.read_token(tmp_path / "token") == "s3cret"
    (tmp_path / "two").write_text("a b\n")
    with pytest.raises(_connect.UsageError):
        _connect.read_token(tmp_path / "two")


# --- the atomic write -----------------------------------------------------------------------


def test_atomic_write(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    _files.atomic_write(target, b"one")
    assert target.read_bytes() == b"one"
    assert target.stat().st_mode & 0o777 == 0o644
    _files.atomic_write(target, b"two", mode=0o755)
    assert target.read_bytes() == b"two"
    assert target.stat().st_mode & 0o777 == 0o755
    assert os.listdir(tmp_path) == ["doc.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "doc.json"
    target.write_bytes(b"old")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        _files.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["doc.json"]


def test_concurrent_writers_get_their_own_temp_files(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "doc.json"
    temps: list[str] = []
    real_mkstemp = _files.tempfile.mkstemp

    def spy(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        temps.append(name)
        return fd, name

    monkeypatch.setattr(_files.tempfile, "mkstemp", spy)
    payloads = [bytes([65 + i]) * 100_000 for i in range(4)]
    threads = [
        threading.Thread(target=lambda p=p: [_files.atomic_write(target, p) for _ in range(25)])
        for p in payloads
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(temps)) == len(temps) == 100
    assert all(Path(t).parent == tmp_path for t in temps)
    assert target.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["doc.json"]


# --- export's file handling -----------------------------------------------------------------


class StandIn:
    """Answers segment_everything with one mask record, and counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def segment_everything(self, image: Any, **params: Any) -> list[dict[str, Any]]:
        self.calls += 1
        assert params["output_mode"] == "coco_rle"
        return [{"segmentation": {"size": [2, 3], "counts": "06"}, "area": 6}]


def _png(path: Path, color: int) -> Path:
    Image.new("RGB", (3, 2), (color, 0, 0)).save(path)
    return path


def _export(src: Path, out: Path, **kwargs: Any) -> tuple[export.Summary, StandIn]:
    client = StandIn()
    summary = asyncio.run(export.export_folder(client, src, out, {}, **kwargs))  # type: ignore[arg-type]
    return summary, client


def test_outputs_never_collide(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _png(src / "a.png", 10)
    Image.new("RGB", (3, 2), (0, 200, 0)).save(src / "a.jpg")
    summary, _ = _export(src, out)
    assert (summary.exported, summary.failed) == (2, [])
    assert sorted(os.listdir(out)) == ["a.jpg.json", "a.png.json"]
    for name in ("a.jpg", "a.png"):
        doc = json.loads((out / f"{name}.json").read_text())
        assert doc["image"]["file_name"] == name


def test_symlinks_and_large_files_are_reported_and_skipped(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _png(src / "ok.png", 10)
    (src / "link.png").symlink_to(_png(tmp_path / "elsewhere.png", 20))
    (src / "dangling.png").symlink_to(tmp_path / "nothing.png")
    big = src / "big.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(big)
    limit = big.stat().st_size - 1
    assert (src / "ok.png").stat().st_size <= limit
    summary, client = _export(src, out, max_image_bytes=limit)
    assert summary.total == 4
    assert summary.exported == client.calls == 1
    reasons = dict(summary.failed)
    assert set(reasons) == {"big.png", "dangling.png", "link.png"}
    assert "symlink" in reasons["link.png"]
    assert "symlink" in reasons["dangling.png"]
    assert "over --max-image-bytes" in reasons["big.png"]
    assert os.listdir(out) == ["ok.png.json"]


def test_symlink_swapped_in_after_listing_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "link.png").symlink_to(_png(tmp_path / "real.png", 1))
    with pytest.raises(export.Refused, match="symlink"):
        export.read_image(tmp_path / "link.png", 1 << 20)


def test_only_complete_outputs_count_as_done(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    names = ("done", "empty", "partial", "stale", "other")
    for i, name in enumerate(names):
        _png(src / f"{name}.png", 40 * i)
    first, _ = _export(src, out)
    assert first.exported == 5
    (out / "empty.png.json").write_bytes(b"")
    (out / "partial.png.json").write_bytes((out / "partial.png.json").read_bytes()[:40])
    stale = json.loads((out / "stale.png.json").read_text())
    stale["image"]["image_id"] = "0" * 64  # the image changed since
    (out / "stale.png.json").write_text(json.dumps(stale))
    (out / "other.png.json").write_text('["not", "an", "export"]')
    again, client = _export(src, out)
    assert (again.skipped, again.exported, client.calls) == (1, 4, 4)
    for name in names:
        assert export.is_done(out / f"{name}.png.json", f"{name}.png", _id(src / f"{name}.png"))
    assert sorted(os.listdir(out)) == sorted(f"{n}.png.json" for n in names)


def _id(path: Path) -> str:
    from samserve_client import image_id

    return image_id(path.read_bytes())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_only_on_a_terminal(tmp_path: Path, monkeypatch, terminal: bool) -> None:
    if terminal:
        pytest.importorskip("tqdm", reason="the bar is tqdm's: samserve-client[cli]")
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png", 1)
    _png(src / "b.png", 2)
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    _export(src, tmp_path / "out", progress=True)
    written = stderr.getvalue()
    if terminal:
        assert "2/2" in written
        assert "\r" in written
    else:
        assert written == ""  # no progress bar, and no \r, in a log file
