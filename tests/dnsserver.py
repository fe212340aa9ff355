"""A tiny authoritative DNS server on UDP loopback, for tests of clients that resolve a name
again while traffic flows (gRPC's ``dns://127.0.0.1:port/name:port`` targets).

It answers A queries for one name with a list of IPv4 addresses the test changes at run time
(TTL 0, so nothing caches them), rotated by one at each answer as CoreDNS's ``loadbalance``
plugin (on in Kubernetes' default Corefile) does: a fresh gRPC channel's first call goes to
the first address it finds ready, so a fixed order would favour the first. Any other question
about that name (AAAA, SRV, ...) gets NOERROR with no answers, and other names (gRPC's
``_grpc_config.<name>`` TXT lookup among them) NXDOMAIN: both mean "nothing here" to a
resolver. Runs in a thread; stdlib only.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_TYPE_A = 1
_CLASS_IN = 1
_FLAG_QR = 0x8000
_FLAG_AA = 0x0400
_FLAG_RD = 0x0100
_RCODE_FORMERR = 1
_RCODE_NXDOMAIN = 3
_RCODE_NOTIMP = 4


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    """The question's name (no compression: queries do not use it) and the offset after it."""
    labels: list[str] = []
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            return ".".join(labels), offset
        if length & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(packet[offset : offset + length].decode("ascii"))
        offset += length


class DnsServer:
    """``127.0.0.1:port`` answering ``name``'s A records with :attr:`addresses`.

    Attributes:
        queries: how many A queries for ``name`` were answered (to see re-resolution).
    """

    def __init__(self, name: str, addresses: list[str], host: str = "127.0.0.1") -> None:
        self.name = name.lower().rstrip(".")
        self._addresses = list(addresses)
        self._lock = threading.Lock()
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.2)  # how often the thread looks at _closed
        self._closed = threading.Event()
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="dnsserver", daemon=True)
        self._thread.start()

    @property
    def addresses(self) -> list[str]:
        with self._lock:
            return list(self._addresses)

    def set_addresses(self, addresses: list[str]) -> None:
        """What the next A query for ``name`` gets (in this order; later ones rotated)."""
        with self._lock:
            self._addresses = list(addresses)

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                packet, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(Exception):  # a malformed query: no answer
                self._sock.sendto(self._answer(packet), peer)

    def _answer(self, packet: bytes) -> bytes:
        ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
        reply_flags = _FLAG_QR | _FLAG_AA | (flags & _FLAG_RD)
        if flags & 0x7800 or qdcount != 1:  # not a standard query with one question
            return struct.pack("!HHHHHH", ident, reply_flags | _RCODE_NOTIMP, 0, 0, 0, 0)
        try:
            name, end = _read_name(packet, 12)
            qtype, qclass = struct.unpack("!HH", packet[end : end + 4])
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            return struct.pack("!HHHHHH", ident, reply_flags | _RCODE_FORMERR, 0, 0, 0, 0)
        question = packet[12 : end + 4]
        answers: list[bytes] = []
        rcode = 0
        if name.lower().rstrip(".") != self.name:
            rcode = _RCODE_NXDOMAIN
        elif qtype == _TYPE_A and qclass == _CLASS_IN:
            with self._lock:
                self.queries += 1
                addresses = list(self._addresses)
                self._addresses = addresses[1:] + addresses[:1]
            for address in addresses:
                # A pointer to the question's name (offset 12), type A, class IN, TTL 0.
                answers.append(
                    struct.pack("!HHHIH", 0xC00C, _TYPE_A, _CLASS_IN, 0, 4)
                    + socket.inet_aton(address)
                )
        header = struct.pack("!HHHHHH", ident, reply_flags | rcode, 1, len(answers), 0, 0)
        return header + question + b"".join(answers)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
