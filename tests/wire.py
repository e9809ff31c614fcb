"""What crosses the loopback interface, as a wiretapper on the network would see it: a packet capture (AF_PACKET on
lo, as root, with a kernel filter that keeps only IPv4 TCP to and from a set of ports, so that other tests' traffic
cannot fill its buffer) of that traffic, reassembled per connection and direction. ``interface=None`` captures on
every interface instead: the veth pairs of containers too, so traffic between containers on a Docker bridge.

    with Capture({3306, 2121, ...}) as capture:
        ...                                    # traffic
    capture.streams   -> {(src port, dst port, connection): bytes}
    capture.dropped   -> packets the kernel dropped (a capture with drops proves nothing)
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
import time
from collections import defaultdict
from pathlib import Path

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6  # struct tpacket_stats {unsigned int tp_packets, tp_drops}: reading it resets it
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33  # as root: past net.core.rmem_max
ETHERNET_HEADER = 14
# Classic BPF opcodes (linux/filter.h)
LD_H_ABS, LD_B_ABS, LD_H_IND, LDX_B_MSH = 0x28, 0x30, 0x48, 0xB1
JEQ, JGE, JGT, JSET, RET = 0x15, 0x35, 0x25, 0x45, 0x06


def port_ranges(ports: set[int]) -> list[tuple[int, int]]:
    """``ports`` as sorted runs of consecutive ports: (first, last)."""
    ranges: list[tuple[int, int]] = []
    for port in sorted(ports):
        if ranges and port == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return ranges


def tcp_port_filter(ports: set[int]) -> list[tuple[int, int, int, int]]:
    """A classic BPF program (code, jt, jf, k) that keeps the IPv4 TCP frames (not fragments) whose source or
    destination port is one of ``ports``, so that the kernel queues nothing else for us (what tcpdump's "tcp port
    A or portrange B-C" compiles to). Jumps are written with labels, then resolved to the relative offsets BPF
    wants (jt/jf: None is the next instruction, a number that many skipped)."""
    program: list[tuple[int, object, object, int]] = [
        (LD_H_ABS, None, None, 12), (JEQ, None, "reject", 0x0800),      # IPv4
        (LD_B_ABS, None, None, 23), (JEQ, None, "reject", 6),           # TCP
        (LD_H_ABS, None, None, 20), (JSET, "reject", None, 0x1FFF),     # no fragment offset
        (LDX_B_MSH, None, None, 14)]                                   # X = IP header length
    for offset in (14, 16):                                            # source port, then destination port
        program.append((LD_H_IND, None, None, offset))
        for first, last in port_ranges(ports):
            program.append((JGE, None, 1, first))                      # below: on to the next range
            program.append((JGT, None, "accept", last))                # within: keep
    program += [("reject", None, None, 0), ("accept", None, None, 0)]
    labels = {entry[0]: index for index, entry in enumerate(program) if isinstance(entry[0], str)}
    resolved = []
    for index, (code, jt, jf, k) in enumerate(program):
        if isinstance(code, str):
            resolved.append((RET, 0, 0, 0 if code == "reject" else 262144))
            continue

        def offset(target: object) -> int:  # None: the next instruction; a number: that many skipped; a label
            return 0 if target is None else target if isinstance(target, int) else labels[target] - index - 1
        resolved.append((code, offset(jt), offset(jf), k))
    return resolved


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(program), ctypes.addressof(buffer)))


def tcp_segment(frame: bytes) -> tuple[tuple[str, int, str, int], int, bytes] | None:
    """((source address, source port, destination address, destination port), sequence number, payload) of an
    IPv4 or IPv6 TCP frame as lo delivers it (with its all-zero Ethernet header); None for anything else."""
    if len(frame) < ETHERNET_HEADER + 20:
        return None
    ethertype = struct.unpack("!H", frame[12:14])[0]
    ip = frame[ETHERNET_HEADER:]
    if ethertype == 0x0800 and ip[9] == 6:
        header = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        source, destination = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(socket.AF_INET, ip[16:20])
        tcp = ip[header:total]
    elif ethertype == 0x86DD and ip[6] == 6:  # no extension headers on loopback TCP
        length = struct.unpack("!H", ip[4:6])[0]
        source, destination = socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40])
        tcp = ip[40:40 + length]
    else:
        return None
    if len(tcp) < 20:
        return None
    sport, dport, sequence = struct.unpack("!HHI", tcp[:8])
    offset = (tcp[12] >> 4) * 4
    return (source, sport, destination, dport), sequence, tcp[offset:]


class Capture:
    """Every TCP payload to or from ``ports`` on ``interface`` (None: every interface) while the block runs, per
    connection and direction."""

    def __init__(self, ports: set[int], interface: str | None = "lo"):
        self.ports = set(ports)
        self._segments: dict[tuple, dict[int, bytes]] = defaultdict(dict)
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        attach_filter(self._socket, tcp_port_filter(self.ports))  # before bind: nothing else is ever queued
        self._socket.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
        if interface is not None:
            self._socket.bind((interface, 0))  # unbound, a packet socket sees every interface
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self.dropped = 0
        self.packets = 0

    def _read(self) -> None:
        drain_until = None
        while True:
            if self._stop.is_set() and drain_until is None:
                drain_until = time.monotonic() + 10  # what the kernel queued before the block ended is read too
            try:
                frame = self._socket.recv(262144)
            except socket.timeout:
                if drain_until is not None:
                    return  # stopped, and nothing more queued
                continue
            if drain_until is not None and time.monotonic() > drain_until:
                return
            segment = tcp_segment(frame)
            if segment is None:
                continue
            flow, sequence, payload = segment
            if payload and (flow[1] in self.ports or flow[3] in self.ports):
                # lo delivers each packet twice (out and in), a bridge's ports each once: one copy per sequence number
                self._segments[flow][sequence] = payload

    def __enter__(self) -> "Capture":
        self._socket.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)  # reset the counters
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.packets, self.dropped = struct.unpack("II", self._socket.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self._socket.close()

    @property
    def streams(self) -> dict[tuple, bytes]:
        """Each direction of each connection, its payload in sequence order (relative to its first segment seen)."""
        streams = {}
        for flow, segments in self._segments.items():
            first = next(iter(segments))
            ordered = sorted(segments.items(), key=lambda item: (item[0] - first) % 2**32)
            streams[flow] = b"".join(payload for _, payload in ordered)
        return streams

    def find(self, needle: bytes) -> list[tuple]:
        """The flows whose bytes hold ``needle``."""
        return [flow for flow, data in self.streams.items() if needle in data]


def model_pieces(folder: Path) -> list[bytes]:
    """Three 32-byte pieces from the middle of the model's largest file (its weights)."""
    largest = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = largest.read_bytes()
    assert len(data) >= 256, largest
    return [data[i:i + 32] for i in (len(data) // 4, len(data) // 2, 3 * len(data) // 4)]


def assert_nothing_in_clear(streams: dict[tuple, bytes], secrets: list[str], models: list[Path]) -> None:
    """No secret, no HTTP Authorization header and no piece of any model's weights in ``streams``."""
    for secret in secrets:
        assert not [f for f, data in streams.items() if secret.encode() in data], "a secret crossed in clear"
    assert not [f for f, data in streams.items() if b"authorization:" in data.lower()], \
        "an Authorization header crossed in clear"
    for model in models:
        for piece in model_pieces(model):
            assert not [f for f, data in streams.items() if piece in data], f"model bytes of {model} in clear"
