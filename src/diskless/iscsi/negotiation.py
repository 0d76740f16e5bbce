"""Operational key negotiation during login (RFC 7143 §6.2, §13), target side, pure.

The initiator proposes, we answer: every key it offers gets exactly one answer, chosen so that
the result is legal and never ``Reject`` for a value a real initiator sends (iPXE treats any
``Reject`` as fatal). Unknown keys get ``NotUnderstood``, keys that mean nothing in a discovery
session get ``Irrelevant``, and anything never negotiated keeps its RFC default. What we can do
is described by :class:`TargetLimits`; what was agreed is a :class:`SessionParameters`.

:func:`negotiate` runs once per operational-stage Login PDU and threads a
:class:`NegotiationState` through the calls; :func:`finish` applies the cross-key sanity rules
when the login moves to full feature phase. Security keys (AuthMethod, CHAP) and the identity
keys (InitiatorName, TargetName, SessionType, InitiatorAlias) belong to login.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum, StrEnum
from typing import Any, Final

from diskless.errors import ConfigError

from .errors import MalformedText, NegotiationError
from .text import parse_number, split_list

__all__ = [
    "MAX_DATA_LENGTH",
    "MIN_DATA_LENGTH",
    "OPERATIONAL_KEYS",
    "Digest",
    "NegotiationState",
    "SessionParameters",
    "SessionType",
    "TargetLimits",
    "finish",
    "negotiate",
]

# RFC 7143 §13.12-13.14: data lengths are <numerical-value-512-to-(2**24 - 1)>.
MIN_DATA_LENGTH: Final = 512
MAX_DATA_LENGTH: Final = (1 << 24) - 1
# RFC 7143 §13.12: the MaxRecvDataSegmentLength both sides assume until one declares its own.
DEFAULT_DATA_SEGMENT_LENGTH: Final = 8192

# Answers that are themselves responses; an initiator sending one is answering, not offering,
# and responses are never answered (RFC 7143 §6.2).
_RESPONSE_VALUES: Final = frozenset({"NotUnderstood", "Irrelevant", "Reject"})
_NOT_UNDERSTOOD: Final = "NotUnderstood"
_IRRELEVANT: Final = "Irrelevant"
_REJECT: Final = "Reject"
_YES, _NO = "Yes", "No"
# Declarative keys may be stated again during login (the UNH-IOL reading of RFC 7143 §6.2).
_REDECLARABLE: Final = frozenset({"MaxRecvDataSegmentLength"})


class Digest(StrEnum):
    """HeaderDigest / DataDigest values (RFC 7143 §13.1)."""

    NONE = "None"
    CRC32C = "CRC32C"


class SessionType(StrEnum):
    """SessionType values (RFC 7143 §13.21)."""

    NORMAL = "Normal"
    DISCOVERY = "Discovery"


@dataclass(frozen=True, slots=True)
class TargetLimits:
    """What our side of a session can do; the answers never promise more."""

    # Largest data segment we accept in one PDU. 256 KiB: open-iscsi offers the same, so a 256 KiB
    # write arrives in one Data-Out, and a buffer that size per connection is cheap.
    max_recv_data_segment_length: int = 256 << 10
    # Largest solicited burst (one R2T) or Data-In sequence. 1 MiB keeps R2T round trips rare.
    max_burst_length: int = 1 << 20
    # Largest unsolicited burst (immediate data + unsolicited Data-Out) buffered per command.
    first_burst_length: int = 256 << 10
    header_digests: frozenset[Digest] = frozenset(Digest)
    data_digests: frozenset[Digest] = frozenset(Digest)
    # Honour InitialR2T=No (accept unsolicited Data-Out) and ImmediateData=Yes when offered.
    accept_unsolicited_data_out: bool = True
    accept_immediate_data: bool = True
    # R2Ts in flight per command; 1 is what every initiator we serve offers.
    max_outstanding_r2t: int = 1

    def __post_init__(self) -> None:
        lengths = (
            self.max_recv_data_segment_length,
            self.max_burst_length,
            self.first_burst_length,
        )
        if not all(MIN_DATA_LENGTH <= length <= MAX_DATA_LENGTH for length in lengths):
            raise ConfigError(f"iSCSI data lengths must be {MIN_DATA_LENGTH}..{MAX_DATA_LENGTH}")
        if self.first_burst_length > self.max_burst_length:
            raise ConfigError("FirstBurstLength must not exceed MaxBurstLength (RFC 7143 §13.14)")
        if Digest.NONE not in self.header_digests or Digest.NONE not in self.data_digests:
            raise ConfigError("digest None must stay supported: iPXE offers nothing else")
        if not 1 <= self.max_outstanding_r2t <= 65535:
            raise ConfigError("MaxOutstandingR2T must be 1..65535")


@dataclass(frozen=True, slots=True)
class SessionParameters:
    """The negotiated values, each starting at its RFC 7143 §13 default."""

    header_digest: Digest = Digest.NONE
    data_digest: Digest = Digest.NONE
    # What the initiator may send us in one PDU: the value we declared (RFC default until then).
    max_recv_data_segment_length: int = DEFAULT_DATA_SEGMENT_LENGTH
    # The initiator's declared MaxRecvDataSegmentLength: the cap on every PDU we send it.
    max_send_data_segment_length: int = DEFAULT_DATA_SEGMENT_LENGTH
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    initial_r2t: bool = True
    immediate_data: bool = True
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_connections: int = 1


@dataclass(frozen=True, slots=True)
class NegotiationState:
    """Progress of one login's negotiation, threaded through :func:`negotiate` calls."""

    parameters: SessionParameters = SessionParameters()
    negotiated: frozenset[str] = frozenset()  # keys the initiator already offered
    declared: bool = False  # our MaxRecvDataSegmentLength has been stated


class _Kind(Enum):
    LIST = "list"  # RFC 7143 §6.2.1: pick the first offered value we support
    OR = "or"  # boolean, result function OR
    AND = "and"  # boolean, result function AND
    MINIMUM = "minimum"
    MAXIMUM = "maximum"
    DECLARATIVE = "declarative"  # each side states its own value
    OBSOLETE = "obsolete"  # RFC 7143 §13.25: marker intervals MUST be answered Reject


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: _Kind
    # Our own value: the supported set (LIST), our boolean (OR/AND), our number (MINIMUM/MAXIMUM).
    ours: Callable[[TargetLimits], Any]
    field: str | None = None  # the SessionParameters field it sets, if we keep the result
    low: int = 0
    high: int = 0
    discovery_irrelevant: bool = False  # "Irrelevant when: SessionType=Discovery"


def _fixed(value: Any) -> Callable[[TargetLimits], Any]:
    return lambda _limits: value


# The operational keys of RFC 7143 §13 (and RFC 7144/7145 additions), with how we answer them.
# MaxConnections, ErrorRecoveryLevel and the Time2* keys are pinned: one connection per session
# and ERL 0 (no task reassignment) are all this target implements.
_RULES: Final[dict[str, _Rule]] = {
    "HeaderDigest": _Rule(_Kind.LIST, lambda lim: lim.header_digests, "header_digest"),
    "DataDigest": _Rule(_Kind.LIST, lambda lim: lim.data_digests, "data_digest"),
    "MaxConnections": _Rule(
        _Kind.MINIMUM, _fixed(1), "max_connections", 1, 65535, discovery_irrelevant=True
    ),
    "InitialR2T": _Rule(
        _Kind.OR,
        lambda lim: not lim.accept_unsolicited_data_out,
        "initial_r2t",
        discovery_irrelevant=True,
    ),
    "ImmediateData": _Rule(
        _Kind.AND,
        lambda lim: lim.accept_immediate_data,
        "immediate_data",
        discovery_irrelevant=True,
    ),
    "MaxRecvDataSegmentLength": _Rule(
        _Kind.DECLARATIVE,
        lambda lim: lim.max_recv_data_segment_length,
        "max_send_data_segment_length",
        MIN_DATA_LENGTH,
        MAX_DATA_LENGTH,
    ),
    "MaxBurstLength": _Rule(
        _Kind.MINIMUM,
        lambda lim: lim.max_burst_length,
        "max_burst_length",
        MIN_DATA_LENGTH,
        MAX_DATA_LENGTH,
        discovery_irrelevant=True,
    ),
    "FirstBurstLength": _Rule(
        _Kind.MINIMUM,
        lambda lim: lim.first_burst_length,
        "first_burst_length",
        MIN_DATA_LENGTH,
        MAX_DATA_LENGTH,
        discovery_irrelevant=True,
    ),
    "DefaultTime2Wait": _Rule(_Kind.MAXIMUM, _fixed(0), "default_time2wait", 0, 3600),
    "DefaultTime2Retain": _Rule(_Kind.MINIMUM, _fixed(0), "default_time2retain", 0, 3600),
    "MaxOutstandingR2T": _Rule(
        _Kind.MINIMUM,
        lambda lim: lim.max_outstanding_r2t,
        "max_outstanding_r2t",
        1,
        65535,
        discovery_irrelevant=True,
    ),
    "DataPDUInOrder": _Rule(_Kind.OR, _fixed(True), "data_pdu_in_order", discovery_irrelevant=True),
    "DataSequenceInOrder": _Rule(
        _Kind.OR, _fixed(True), "data_sequence_in_order", discovery_irrelevant=True
    ),
    "ErrorRecoveryLevel": _Rule(_Kind.MINIMUM, _fixed(0), "error_recovery_level", 0, 2),
    # RFC 7143 §13.25 lets us answer the obsolete marker switches "No" (open-iscsi sends them).
    "IFMarker": _Rule(_Kind.AND, _fixed(False)),
    "OFMarker": _Rule(_Kind.AND, _fixed(False)),
    "IFMarkInt": _Rule(_Kind.OBSOLETE, _fixed(None)),
    "OFMarkInt": _Rule(_Kind.OBSOLETE, _fixed(None)),
    # RFC 7143 §13.24: protocol level 1 is RFC 7143 itself, which is what we speak.
    "iSCSIProtocolLevel": _Rule(_Kind.MINIMUM, _fixed(1), None, 0, 31),
    "TaskReporting": _Rule(_Kind.LIST, _fixed(frozenset({"RFC3720"}))),
    # RFC 7145 (iSER): no RDMA here.
    "RDMAExtensions": _Rule(_Kind.AND, _fixed(False)),
}

OPERATIONAL_KEYS: Final = frozenset(_RULES)


def negotiate(
    offered: Sequence[tuple[str, str]],
    state: NegotiationState,
    limits: TargetLimits,
    session_type: SessionType,
) -> tuple[list[tuple[str, str]], NegotiationState]:
    """Answer one Login PDU's operational keys.

    Returns the answers in the order offered (plus our own MaxRecvDataSegmentLength the first
    time) and the new state. Raises :class:`NegotiationError` when a key is negotiated twice
    (RFC 7143 §6.2: renegotiation during login is an initiator error) or a declarative value is
    out of range.
    """
    answers: list[tuple[str, str]] = []
    changes: dict[str, Any] = {}
    negotiated = set(state.negotiated)
    for key, value in offered:
        if value in _RESPONSE_VALUES:
            continue
        if key in negotiated and key not in _REDECLARABLE:
            raise NegotiationError(f"{key} negotiated twice during login")
        negotiated.add(key)
        rule = _RULES.get(key)
        if rule is None:
            answers.append((key, _NOT_UNDERSTOOD))
            continue
        if rule.discovery_irrelevant and session_type is SessionType.DISCOVERY:
            answers.append((key, _IRRELEVANT))
            continue
        answer, result = _ANSWER_BY_KIND[rule.kind](key, value, rule, limits)
        answers.append((key, answer))
        if rule.field is not None and result is not None:
            changes[rule.field] = result

    parameters = replace(state.parameters, **changes)
    declared = state.declared
    if not declared:
        # RFC 7143 §13.12: our receive limit holds only once declared, so state it now.
        ours = limits.max_recv_data_segment_length
        parameters = replace(parameters, max_recv_data_segment_length=ours)
        if "MaxRecvDataSegmentLength" not in dict(answers):
            answers.append(("MaxRecvDataSegmentLength", str(ours)))
        declared = True
    if "first_burst_length" in changes and (
        parameters.first_burst_length > parameters.max_burst_length
    ):
        # Lowering a Minimum-function answer is always legal; it keeps FirstBurstLength=262144
        # offered with MaxBurstLength=65536 from ending in an illegal pair (RFC 7143 §13.14).
        capped = parameters.max_burst_length
        parameters = replace(parameters, first_burst_length=capped)
        answers = [(k, str(capped) if k == "FirstBurstLength" else v) for k, v in answers]
    return answers, NegotiationState(parameters, frozenset(negotiated), declared)


def finish(state: NegotiationState, session_type: SessionType) -> SessionParameters:
    """The agreed parameters, once the login reaches full feature phase.

    Raises :class:`NegotiationError` if FirstBurstLength ended above MaxBurstLength while
    unsolicited data is possible (RFC 7143 §13.14; FreeBSD ctld fails such logins too).
    """
    parameters = state.parameters
    unsolicited = not parameters.initial_r2t or parameters.immediate_data
    if (
        session_type is SessionType.NORMAL
        and unsolicited
        and parameters.first_burst_length > parameters.max_burst_length
    ):
        raise NegotiationError(
            f"FirstBurstLength {parameters.first_burst_length} exceeds "
            f"MaxBurstLength {parameters.max_burst_length}"
        )
    return parameters


# Each kind answers (key, offered value, rule, limits) with (answer, result to record or None).
_Answer = tuple[str, Any]


def _answer_list(key: str, value: str, rule: _Rule, limits: TargetLimits) -> _Answer:
    supported = rule.ours(limits)
    for item in split_list(value):
        if item in supported:
            return item, (Digest(item) if key in ("HeaderDigest", "DataDigest") else item)
    return _REJECT, None


def _boolean(value: str) -> bool | None:
    return {_YES: True, _NO: False}.get(value)


def _answer_or(key: str, value: str, rule: _Rule, limits: TargetLimits) -> _Answer:
    offered = _boolean(value)
    if offered is None:
        return _REJECT, None
    result = offered or bool(rule.ours(limits))
    return (_YES if result else _NO), result


def _answer_and(key: str, value: str, rule: _Rule, limits: TargetLimits) -> _Answer:
    offered = _boolean(value)
    if offered is None:
        return _REJECT, None
    result = offered and bool(rule.ours(limits))
    return (_YES if result else _NO), result


def _number(value: str, rule: _Rule) -> int | None:
    try:
        number = parse_number(value)
    except MalformedText:
        return None
    return number if rule.low <= number <= rule.high else None


def _answer_minimum(key: str, value: str, rule: _Rule, limits: TargetLimits) -> _Answer:
    offered = _number(value, rule)
    if offered is None:
        return _REJECT, None
    result = min(offered, int(rule.ours(limits)))
    return str(result), result


def _answer_maximum(key: str, value: str, rule: _Rule, limits: TargetLimits) -> _Answer:
    offered = _number(value, rule)
    if offered is None:
        return _REJECT, None
    result = max(offered, int(rule.ours(limits)))
    return str(result), result


def _answer_declarative(key: str, value: str, rule: _Rule, limits: TargetLimits) -> _Answer:
    declared = _number(value, rule)
    if declared is None:
        raise NegotiationError(f"{key}={value[:40]!r} is out of range {rule.low}..{rule.high}")
    return str(rule.ours(limits)), declared


def _answer_obsolete(key: str, value: str, rule: _Rule, limits: TargetLimits) -> _Answer:
    return _REJECT, None


_ANSWER_BY_KIND: Final[dict[_Kind, Callable[[str, str, _Rule, TargetLimits], _Answer]]] = {
    _Kind.LIST: _answer_list,
    _Kind.OR: _answer_or,
    _Kind.AND: _answer_and,
    _Kind.MINIMUM: _answer_minimum,
    _Kind.MAXIMUM: _answer_maximum,
    _Kind.DECLARATIVE: _answer_declarative,
    _Kind.OBSOLETE: _answer_obsolete,
}
