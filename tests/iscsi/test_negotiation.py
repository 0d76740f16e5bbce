"""Operational negotiation against the exact key sets real initiators send.

The key sets come from the research notes (§1.4): iPXE's ``iscsi_build_login_request_strings``,
open-iscsi's ``fill_op_params_text`` (normal and discovery), libiscsi's ``lib/login.c`` and the
Windows initiator's documented registry defaults. Each must get a complete, legal answer with no
``Reject``, since iPXE treats any ``Reject`` as fatal.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskless.errors import ConfigError
from diskless.iscsi.errors import NegotiationError
from diskless.iscsi.negotiation import (
    OPERATIONAL_KEYS,
    Digest,
    NegotiationState,
    SessionParameters,
    SessionType,
    TargetLimits,
    finish,
    negotiate,
)

LIMITS = TargetLimits()

IPXE = [
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("MaxConnections", "1"),
    ("InitialR2T", "Yes"),
    ("ImmediateData", "No"),
    ("MaxRecvDataSegmentLength", "8192"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "65536"),
    ("DefaultTime2Wait", "0"),
    ("DefaultTime2Retain", "0"),
    ("MaxOutstandingR2T", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("ErrorRecoveryLevel", "0"),
]
OPEN_ISCSI = [
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("IFMarker", "No"),
    ("OFMarker", "No"),
    ("ErrorRecoveryLevel", "0"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "16776192"),
    ("FirstBurstLength", "262144"),
    ("MaxOutstandingR2T", "1"),
    ("MaxConnections", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("MaxRecvDataSegmentLength", "262144"),
]
OPEN_ISCSI_DISCOVERY = [
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("IFMarker", "No"),
    ("OFMarker", "No"),
    ("ErrorRecoveryLevel", "0"),
    ("MaxRecvDataSegmentLength", "32768"),
]
LIBISCSI = [
    ("HeaderDigest", "None,CRC32C"),
    ("DataDigest", "None"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "262144"),
    ("MaxRecvDataSegmentLength", "262144"),
    ("DataPDUInOrder", "Yes"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("IFMarker", "No"),
    ("OFMarker", "No"),
    ("MaxConnections", "1"),
    ("MaxOutstandingR2T", "1"),
    ("ErrorRecoveryLevel", "0"),
    ("DataSequenceInOrder", "Yes"),
]
# Registry defaults (MSDN SAN blog, 2008); the exact wire set still needs a capture.
WINDOWS = [
    ("HeaderDigest", "None,CRC32C"),
    ("DataDigest", "None,CRC32C"),
    ("ErrorRecoveryLevel", "2"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "65536"),
    ("MaxRecvDataSegmentLength", "65536"),
    ("MaxConnections", "8"),
    ("MaxOutstandingR2T", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("DefaultTime2Wait", "0"),
    ("DefaultTime2Retain", "20"),
    ("IFMarker", "No"),
    ("OFMarker", "No"),
]

_MINIMUM = {
    "MaxConnections",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "ErrorRecoveryLevel",
    "iSCSIProtocolLevel",
}
_MAXIMUM = {"DefaultTime2Wait"}
_OR = {"InitialR2T", "DataPDUInOrder", "DataSequenceInOrder"}
_AND = {"ImmediateData", "IFMarker", "OFMarker", "RDMAExtensions"}
_LIST = {"HeaderDigest", "DataDigest", "TaskReporting"}


def assert_legal(offered: list[tuple[str, str]], answers: list[tuple[str, str]]) -> None:
    """Every offered key answered exactly once, with a value its result function allows."""
    answered = dict(answers)
    assert len(answered) == len(answers), "a key was answered twice"
    for key, value in offered:
        answer = answered[key]
        assert answer != "Reject", f"{key}={value} was rejected"
        if answer == "Irrelevant":
            continue
        if key in _MINIMUM:
            assert int(answer) <= int(value)
        elif key in _MAXIMUM:
            assert int(answer) >= int(value)
        elif key in _OR:
            assert value == "No" or answer == "Yes"
        elif key in _AND:
            assert value == "Yes" or answer == "No"
        elif key in _LIST:
            assert answer in value.split(",")
    assert "MaxRecvDataSegmentLength" in answered  # we always declare our receive limit


def run(
    offered: list[tuple[str, str]], session_type: SessionType = SessionType.NORMAL
) -> tuple[list[tuple[str, str]], SessionParameters]:
    answers, state = negotiate(offered, NegotiationState(), LIMITS, session_type)
    assert_legal(offered, answers)
    return answers, finish(state, session_type)


def test_ipxe_gets_its_simple_session() -> None:
    answers, params = run(IPXE)

    assert dict(answers) == {
        "HeaderDigest": "None",
        "DataDigest": "None",
        "MaxConnections": "1",
        "InitialR2T": "Yes",
        "ImmediateData": "No",
        "MaxRecvDataSegmentLength": "262144",
        "MaxBurstLength": "262144",
        "FirstBurstLength": "65536",
        "DefaultTime2Wait": "0",
        "DefaultTime2Retain": "0",
        "MaxOutstandingR2T": "1",
        "DataPDUInOrder": "Yes",
        "DataSequenceInOrder": "Yes",
        "ErrorRecoveryLevel": "0",
    }
    assert [key for key, _ in answers] == [key for key, _ in IPXE]  # answered in offered order
    assert params == SessionParameters(
        max_recv_data_segment_length=262144,
        max_send_data_segment_length=8192,
        initial_r2t=True,
        immediate_data=False,
        default_time2wait=0,
        default_time2retain=0,
    )


def test_open_iscsi_gets_unsolicited_data_and_large_bursts() -> None:
    answers, params = run(OPEN_ISCSI)

    assert dict(answers)["MaxBurstLength"] == str(1 << 20)
    assert dict(answers)["IFMarker"] == "No"
    assert params.initial_r2t is False
    assert params.immediate_data is True
    assert params.first_burst_length == 262144
    assert params.max_burst_length == 1 << 20
    assert params.max_send_data_segment_length == 262144
    assert params.default_time2wait == 2


def test_open_iscsi_discovery_session() -> None:
    _, params = run(OPEN_ISCSI_DISCOVERY, SessionType.DISCOVERY)
    assert params.max_send_data_segment_length == 32768


def test_libiscsi_prefers_no_header_digest() -> None:
    answers, params = run(LIBISCSI)
    assert dict(answers)["HeaderDigest"] == "None"
    assert params.header_digest is Digest.NONE


def test_windows_defaults_negotiate_down_to_what_we_do() -> None:
    answers, params = run(WINDOWS)
    assert dict(answers)["ErrorRecoveryLevel"] == "0"
    assert dict(answers)["MaxConnections"] == "1"
    assert params.error_recovery_level == 0
    assert params.max_connections == 1
    assert params.default_time2retain == 0
    assert params.max_send_data_segment_length == 65536


def test_normal_only_keys_are_irrelevant_in_discovery() -> None:
    answers, params = run(OPEN_ISCSI, SessionType.DISCOVERY)
    answered = dict(answers)
    normal_only = {"InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength"}
    normal_only |= {"MaxOutstandingR2T", "MaxConnections", "DataPDUInOrder", "DataSequenceInOrder"}
    for key in normal_only:
        assert answered[key] == "Irrelevant"
    assert answered["HeaderDigest"] == "None"
    assert params.max_burst_length == SessionParameters().max_burst_length


def test_crc32c_is_chosen_when_the_initiator_prefers_it() -> None:
    answers, params = run([("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C")])
    assert dict(answers)["HeaderDigest"] == "CRC32C"
    assert params.header_digest is Digest.CRC32C
    assert params.data_digest is Digest.CRC32C


def test_crc32c_is_refused_when_disabled() -> None:
    limits = TargetLimits(data_digests=frozenset({Digest.NONE}))
    answers, _ = negotiate(
        [("DataDigest", "CRC32C,None")], NegotiationState(), limits, SessionType.NORMAL
    )
    assert dict(answers)["DataDigest"] == "None"
    answers, _ = negotiate(
        [("DataDigest", "CRC32C")], NegotiationState(), limits, SessionType.NORMAL
    )
    assert dict(answers)["DataDigest"] == "Reject"  # no common value: the only legal answer


def test_policies_can_force_r2t_and_refuse_immediate_data() -> None:
    limits = TargetLimits(accept_unsolicited_data_out=False, accept_immediate_data=False)
    answers, state = negotiate(OPEN_ISCSI, NegotiationState(), limits, SessionType.NORMAL)
    assert dict(answers)["InitialR2T"] == "Yes"
    assert dict(answers)["ImmediateData"] == "No"
    assert state.parameters.initial_r2t is True
    assert state.parameters.immediate_data is False


def test_unknown_keys_are_not_understood_and_markers_intervals_rejected() -> None:
    answers, _ = negotiate(
        [("X-com.example.Feature", "1"), ("IFMarkInt", "2048"), ("TargetAlias", "x")],
        NegotiationState(),
        LIMITS,
        SessionType.NORMAL,
    )
    answered = dict(answers)
    assert answered["X-com.example.Feature"] == "NotUnderstood"
    assert answered["IFMarkInt"] == "Reject"  # RFC 7143 §13.26 says MUST
    assert answered["TargetAlias"] == "NotUnderstood"  # a target-only key


def test_protocol_level_and_task_reporting() -> None:
    answers, _ = negotiate(
        [("iSCSIProtocolLevel", "2"), ("TaskReporting", "ResponseFence,RFC3720")],
        NegotiationState(),
        LIMITS,
        SessionType.NORMAL,
    )
    assert dict(answers) == {
        "iSCSIProtocolLevel": "1",
        "TaskReporting": "RFC3720",
        "MaxRecvDataSegmentLength": "262144",
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [("MaxBurstLength", "100"), ("MaxBurstLength", "lots"), ("InitialR2T", "Maybe"),
     ("ErrorRecoveryLevel", "3"), ("MaxConnections", "0"), ("DefaultTime2Wait", "3601")],
)  # fmt: skip
def test_illegal_values_are_rejected_and_keep_the_default(key: str, value: str) -> None:
    answers, state = negotiate([(key, value)], NegotiationState(), LIMITS, SessionType.NORMAL)
    assert dict(answers)[key] == "Reject"
    defaults = SessionParameters()
    assert state.parameters.max_burst_length == defaults.max_burst_length
    assert state.parameters.initial_r2t == defaults.initial_r2t


def test_responses_from_the_initiator_are_not_answered() -> None:
    answers, _ = negotiate(
        [("HeaderDigest", "Irrelevant"), ("Foo", "NotUnderstood")],
        NegotiationState(),
        LIMITS,
        SessionType.NORMAL,
    )
    assert answers == [("MaxRecvDataSegmentLength", "262144")]


def test_our_limit_is_declared_once_across_pdus() -> None:
    first, state = negotiate(
        [("HeaderDigest", "None")], NegotiationState(), LIMITS, SessionType.NORMAL
    )
    second, state = negotiate([("DataDigest", "None")], state, LIMITS, SessionType.NORMAL)
    assert ("MaxRecvDataSegmentLength", "262144") in first
    assert second == [("DataDigest", "None")]
    assert state.parameters.max_recv_data_segment_length == 262144


def test_renegotiating_a_key_is_an_initiator_error() -> None:
    _, state = negotiate(
        [("MaxBurstLength", "65536")], NegotiationState(), LIMITS, SessionType.NORMAL
    )
    with pytest.raises(NegotiationError):
        negotiate([("MaxBurstLength", "4096")], state, LIMITS, SessionType.NORMAL)
    with pytest.raises(NegotiationError):
        negotiate([("DataDigest", "None")] * 2, NegotiationState(), LIMITS, SessionType.NORMAL)


def test_max_recv_data_segment_length_may_be_redeclared() -> None:
    _, state = negotiate(
        [("MaxRecvDataSegmentLength", "8192")], NegotiationState(), LIMITS, SessionType.NORMAL
    )
    answers, state = negotiate(
        [("MaxRecvDataSegmentLength", "16384")], state, LIMITS, SessionType.NORMAL
    )
    assert answers == [("MaxRecvDataSegmentLength", "262144")]
    assert state.parameters.max_send_data_segment_length == 16384


@pytest.mark.parametrize("value", ["511", "16777216", "big"])
def test_out_of_range_declaration_fails_the_login(value: str) -> None:
    with pytest.raises(NegotiationError):
        negotiate(
            [("MaxRecvDataSegmentLength", value)], NegotiationState(), LIMITS, SessionType.NORMAL
        )


def test_first_burst_is_capped_at_max_burst_in_the_same_pdu() -> None:
    offered = [
        ("FirstBurstLength", "262144"),
        ("MaxBurstLength", "65536"),
        ("ImmediateData", "Yes"),
    ]
    answers, state = negotiate(offered, NegotiationState(), LIMITS, SessionType.NORMAL)
    assert dict(answers)["FirstBurstLength"] == "65536"
    assert finish(state, SessionType.NORMAL).first_burst_length == 65536


def test_first_burst_above_max_burst_across_pdus_fails_when_it_matters() -> None:
    _, state = negotiate(
        [("FirstBurstLength", "65536")], NegotiationState(), LIMITS, SessionType.NORMAL
    )
    _, state = negotiate([("MaxBurstLength", "4096")], state, LIMITS, SessionType.NORMAL)
    with pytest.raises(NegotiationError):
        finish(state, SessionType.NORMAL)  # ImmediateData defaults to Yes: unsolicited possible


def test_first_burst_above_max_burst_is_harmless_without_unsolicited_data() -> None:
    offered = [("MaxBurstLength", "4096"), ("InitialR2T", "Yes"), ("ImmediateData", "No")]
    _, state = negotiate(offered, NegotiationState(), LIMITS, SessionType.NORMAL)
    assert finish(state, SessionType.NORMAL).first_burst_length == 65536


@pytest.mark.parametrize(
    "limits",
    [
        {"max_recv_data_segment_length": 511},
        {"max_burst_length": 1 << 24},
        {"first_burst_length": 2 << 20},
        {"header_digests": frozenset({Digest.CRC32C})},
        {"max_outstanding_r2t": 0},
    ],
)
def test_limits_are_validated(limits: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TargetLimits(**limits)  # type: ignore[arg-type]


_VALUES = st.sampled_from(
    ["Yes", "No", "None", "CRC32C", "None,CRC32C", "0", "1", "2", "512", "8192", "65536",
     "16777215", "16777216", "0x2000", "Irrelevant", "Reject", "", "abc", "RFC3720"]
)  # fmt: skip
_KEYS = st.sampled_from(sorted(OPERATIONAL_KEYS | {"X-foo", "TargetAlias", "SendTargets"}))


@settings(max_examples=300, derandomize=True, database=None)
@given(st.lists(st.tuples(_KEYS, _VALUES), max_size=20), st.sampled_from(SessionType))
def test_any_offer_gets_one_answer_per_key_or_a_negotiation_error(
    offered: list[tuple[str, str]], session_type: SessionType
) -> None:
    try:
        answers, state = negotiate(offered, NegotiationState(), LIMITS, session_type)
        parameters = finish(state, session_type)
    except NegotiationError:
        return
    answered = dict(answers)
    assert len(answered) == len(answers)
    for key, value in offered:
        if value not in {"Irrelevant", "Reject", "NotUnderstood"}:
            assert key in answered
    assert 512 <= parameters.max_send_data_segment_length < 1 << 24
    assert parameters.max_burst_length <= LIMITS.max_burst_length
    assert parameters.error_recovery_level == 0
