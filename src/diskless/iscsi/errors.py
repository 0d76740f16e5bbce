"""The errors of the iSCSI protocol core, rooted at :class:`ProtocolError`.

Two kinds, as h11 splits them: the peer's fault (:class:`MalformedPdu`, :class:`MalformedText`,
:class:`NegotiationError`, :class:`LoginRejected`) and our own misuse of the API
(:class:`LocalProtocolError`). The codecs raise only the first kind on bad input, so the
connection layer can count them and answer with a Reject or a failed login; anything else that
escapes is a bug.
"""

from __future__ import annotations

from diskless.errors import DisklessError

__all__ = [
    "AuthenticationFailed",
    "DigestError",
    "LocalProtocolError",
    "LoginRejected",
    "MalformedPdu",
    "MalformedText",
    "NegotiationError",
    "ProtocolError",
]

# Reject reason "protocol error" (RFC 7143 §11.17.1). Repeated here because pdu.py imports this
# module, not the other way round.
_REJECT_PROTOCOL_ERROR = 0x04


class ProtocolError(DisklessError):
    """Root of every iSCSI protocol error."""


class LocalProtocolError(ProtocolError):
    """We asked the protocol core for something iSCSI cannot express (a bug on our side)."""


class MalformedPdu(ProtocolError):  # noqa: N818 (the name the connection layer codes against)
    """The initiator sent a PDU that cannot be decoded.

    ``reject_reason`` is the Reject reason code (RFC 7143 §11.17.1) to answer with. ``bhs`` is
    the offending 48-byte header when known (a Reject carries it back as its data segment).
    ``total_ahs_length`` and ``data_segment_length`` are set when the header's length fields
    could still be read, so the caller can skip the rest of the PDU and keep the connection;
    when they are ``None`` the framing is lost and the connection must close.
    """

    def __init__(
        self,
        reason: str,
        *,
        reject_reason: int = _REJECT_PROTOCOL_ERROR,
        bhs: bytes | None = None,
        total_ahs_length: int | None = None,
        data_segment_length: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reject_reason = reject_reason
        self.bhs = bhs
        self.total_ahs_length = total_ahs_length
        self.data_segment_length = data_segment_length


class DigestError(MalformedPdu):
    """A header or data digest did not match (RFC 7143 §7.8: header → close, data → Reject)."""


class MalformedText(ProtocolError):  # noqa: N818
    """A text segment (``key=value`` pairs) breaks the rules of RFC 7143 §6.1."""


class NegotiationError(ProtocolError):
    """The initiator's keys cannot lead to a legal session (login fails with 0x0200)."""


class LoginRejected(ProtocolError):  # noqa: N818
    """A login must fail with this Status-Class/Status-Detail (RFC 7143 §11.13.5)."""

    def __init__(self, status_class: int, status_detail: int, reason: str = "") -> None:
        super().__init__(
            reason or f"login rejected with status {status_class:02x}{status_detail:02x}"
        )
        self.status_class = status_class
        self.status_detail = status_detail
        self.reason = reason


class AuthenticationFailed(LoginRejected):
    """The initiator did not authenticate (status 0x0201 unless told otherwise)."""

    def __init__(self, reason: str, *, status_detail: int = 0x01) -> None:
        super().__init__(0x02, status_detail, reason)
