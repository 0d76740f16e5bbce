"""Receives Wake-on-LAN packets on UDP port 9 (run inside a test's namespace, never the root
one): prints ``ready``, then one JSON line per datagram (hex payload, sender), then exits."""

from __future__ import annotations

import json
import socket
import sys


def main() -> None:
    count = int(sys.argv[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 9))
        sock.settimeout(60)
        print("ready", flush=True)
        for _ in range(count):
            payload, sender = sock.recvfrom(2048)
            print(json.dumps({"payload": payload.hex(), "from": sender[0]}), flush=True)


if __name__ == "__main__":
    main()
