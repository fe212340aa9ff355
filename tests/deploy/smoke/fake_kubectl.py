"""A stand-in for kubectl that answers from recorded output (tests/deploy/test_smoke.py).

Every call is appended to $FAKE_KUBECTL_LOG as a JSON list. Answers come from the scenario
file $FAKE_KUBECTL_SCENARIO: the first rule whose regular expression matches the arguments
(after ``-n NAMESPACE``) gives stdout (inline or a file next to the scenario), stderr and the
exit status. ``port-forward svc/NAME :PORT`` listens on a free loopback port, prints kubectl's
"Forwarding from" lines and relays connections to the scenario's address for NAME (a local
samserve), until it is killed; its pid goes to $FAKE_KUBECTL_PIDS.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import threading
from pathlib import Path


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def port_forward(target: str, remote_port: str) -> None:
    host, _, port = target.rpartition(":")
    listener = socket.create_server(("127.0.0.1", 0))
    local = listener.getsockname()[1]
    with open(os.environ["FAKE_KUBECTL_PIDS"], "a") as f:
        f.write(f"{os.getpid()}\n")
    print(f"Forwarding from 127.0.0.1:{local} -> {remote_port}", flush=True)
    print(f"Forwarding from [::1]:{local} -> {remote_port}", flush=True)
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection((host, int(port)))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def main() -> int:
    argv = sys.argv[1:]
    with open(os.environ["FAKE_KUBECTL_LOG"], "a") as f:
        f.write(json.dumps(argv) + "\n")
    scenario_file = Path(os.environ["FAKE_KUBECTL_SCENARIO"])
    scenario = json.loads(scenario_file.read_text())
    args = argv[2:] if argv[:1] == ["-n"] else argv
    if args[:1] == ["port-forward"]:
        service = args[1].split("/", 1)[1]
        port_forward(scenario["forward"][service], args[2].lstrip(":"))
        return 0
    line = " ".join(args)
    for rule in scenario["rules"]:
        if re.search(rule["match"], line):
            out = rule.get("stdout", "")
            if "file" in rule:
                out = (scenario_file.parent / rule["file"]).read_text()
            sys.stdout.write(out)
            sys.stderr.write(rule.get("stderr", ""))
            return int(rule.get("rc", 0))
    sys.stderr.write(f"fake kubectl: nothing recorded for: {line}\n")
    return 99


if __name__ == "__main__":
    sys.exit(main())
