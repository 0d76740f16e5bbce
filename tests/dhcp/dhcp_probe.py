"""Send crafted DHCP client messages from inside a test namespace and print the replies as JSON.

Run by the namespace tests as ``nsenter --net=... python dhcp_probe.py INTERFACE PROBES_JSON``:
each probe is ``{"kind": "discover"|"request", "mac": ..., "arch": ..., "vendor": ...,
"user_class": ..., "to": "255.255.255.255", "port": 67, "bind": "0.0.0.0", "wait": 1.0}`` and the
output is one JSON list per probe of ``{"from": ..., "type": ..., "yiaddr": ..., "file": ...,
"options": {code: hex}}``.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time
from ipaddress import IPv4Address

from dhcp_packets import client_message

from diskless.boot import parse_mac
from diskless.dhcp.codec import DhcpFormatError, MessageType, parse_message


def probe(interface: str, spec: dict[str, object]) -> list[dict[str, object]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    sock.bind((str(spec.get("bind", "0.0.0.0")), int(spec.get("client_port", 68))))  # type: ignore[call-overload]
    xid = random.getrandbits(32)
    kind = MessageType.DISCOVER if spec["kind"] == "discover" else MessageType.REQUEST
    ciaddr = IPv4Address(str(spec.get("ciaddr", "0.0.0.0"))).packed
    datagram = client_message(
        kind,
        parse_mac(str(spec["mac"])),
        xid=xid,
        arch=spec.get("arch"),  # type: ignore[arg-type]
        vendor=str(spec["vendor"]).encode() if "vendor" in spec else None,
        user_class=str(spec["user_class"]).encode() if "user_class" in spec else None,
        ciaddr=ciaddr,
        flags=0 if ciaddr != bytes(4) else 0x8000,
    )
    sock.sendto(datagram, (str(spec.get("to", "255.255.255.255")), int(spec.get("port", 67))))  # type: ignore[call-overload]
    replies: list[dict[str, object]] = []
    deadline = time.monotonic() + float(spec.get("wait", 1.0))  # type: ignore[arg-type]
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data, source = sock.recvfrom(4096)
        except TimeoutError:
            break
        try:
            reply = parse_message(data)
        except DhcpFormatError:
            continue
        if reply.xid != xid:
            continue
        replies.append(
            {
                "from": source[0],
                "type": reply.message_type.name if reply.message_type else None,
                "yiaddr": str(IPv4Address(reply.yiaddr)),
                "siaddr": str(IPv4Address(reply.siaddr)),
                "file": reply.file.decode(errors="replace"),
                "options": {str(code): value.hex() for code, value in reply.options.items()},
            }
        )
    sock.close()
    return replies


def main() -> None:
    interface, specs = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps([probe(interface, spec) for spec in specs]))


if __name__ == "__main__":
    main()
