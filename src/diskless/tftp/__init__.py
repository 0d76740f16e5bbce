"""The read-only TFTP server (RFC 1350) that hands the iPXE programs to PXE firmware.

Layers, bottom up; everything but the endpoint is sans-I/O:

* ``codec``: packets as dataclasses, ``parse_packet`` and the encoders (RFC 1350, RFC 2347).
* ``files``: the jail, the :class:`FileCatalog` (virtual files, iPXE programs, the TFTP root) and
  the byte sources a transfer reads from (octet and netascii).
* ``session``: option negotiation and :class:`ReadTransfer`, one transfer's state machine
  (windows, rollover, retransmission, the end of a transfer).
* ``stats``: the server's counters.
* ``endpoint``: :class:`TftpService`, the I/O shell with one UDP port per transfer, served by one
  thread on ``select.epoll`` off the asyncio loop.
"""

from .codec import (
    DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    Ack,
    Data,
    ErrorCode,
    ErrorPacket,
    MalformedPacket,
    Mode,
    Opcode,
    OptionAck,
    Packet,
    Request,
    encode_ack,
    encode_data,
    encode_error,
    encode_option_ack,
    encode_request,
    parse_packet,
)
from .endpoint import MacResolver, TftpService
from .files import ClientAddress, FileCatalog, FileRefused, VirtualFiles, normalize_name
from .session import Negotiated, Outcome, ReadTransfer, TransferLimits, negotiate, open_transfer
from .stats import TftpStats

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "MAX_BLOCK_SIZE",
    "MIN_BLOCK_SIZE",
    "Ack",
    "ClientAddress",
    "Data",
    "ErrorCode",
    "ErrorPacket",
    "FileCatalog",
    "FileRefused",
    "MacResolver",
    "MalformedPacket",
    "Mode",
    "Negotiated",
    "Opcode",
    "OptionAck",
    "Outcome",
    "Packet",
    "ReadTransfer",
    "Request",
    "TftpService",
    "TftpStats",
    "TransferLimits",
    "VirtualFiles",
    "encode_ack",
    "encode_data",
    "encode_error",
    "encode_option_ack",
    "encode_request",
    "negotiate",
    "normalize_name",
    "open_transfer",
    "parse_packet",
]
