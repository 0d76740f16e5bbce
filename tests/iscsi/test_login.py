"""Whole login flows, driven the way real initiators drive them, plus every failure status.

Each Login Request is laid out as bytes with ``struct`` and decoded by the codec, then fed to the
machine; each response is read back from its bytes. Flows: iPXE (T=1 from the first PDU, with
and without CHAP), open-iscsi (security then operational), libiscsi (straight to operational, or
CHAP with the identity keys sent again), discovery sessions and SendTargets.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskless.iscsi.chap import ChapCredentials
from diskless.iscsi.discovery import PortalInfo, TargetAccess, answer_text_request, send_targets
from diskless.iscsi.errors import LocalProtocolError, LoginRejected
from diskless.iscsi.login import (
    MAX_LOGIN_TEXT_LENGTH,
    LoginMachine,
    LoginResult,
    LoginStep,
)
from diskless.iscsi.negotiation import Digest, SessionType, TargetLimits
from diskless.iscsi.pdu import LoginRequest, Opcode, decode_request, parse_bhs
from diskless.iscsi.text import encode_text, parse_text

IPXE_ISID = bytes.fromhex("40002723abcd")
IPXE_NAME = "iqn.2010-04.org.ipxe:pc1"
PC1_DISK = "iqn.2025-01.org.diskless:pc1"
PC2_DISK = "iqn.2025-01.org.diskless:pc2"
SHARED = "iqn.2025-01.org.diskless:tools"
CHAP_DISK = "iqn.2025-01.org.diskless:secure"
INITIATOR_SECRET = ChapCredentials.from_text("pc1", "initiator-secret-12")
TARGET_SECRET = ChapCredentials.from_text("diskless", "target-secret-1234")

IPXE_OPERATIONAL = [
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
OPEN_ISCSI_OPERATIONAL = [
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


class Directory:
    """An in-memory TargetDirectory."""

    def __init__(self, *targets: TargetAccess) -> None:
        self._targets = {target.name.casefold(): target for target in targets}

    def lookup(self, target_name: str) -> TargetAccess | None:
        return self._targets.get(target_name.casefold())

    def visible_to(self, initiator_name: str) -> list[TargetAccess]:
        # Deliberately careless: send_targets must filter on its own as well.
        return list(self._targets.values())


class Admission:
    """An in-memory SessionAdmission that records its calls."""

    def __init__(self, tsih: int = 0x0102, reject: LoginRejected | None = None) -> None:
        self.tsih = tsih
        self.reject = reject
        self.calls: list[tuple[str, bytes, str | None, SessionType, int]] = []

    def admit(
        self,
        initiator_name: str,
        isid: bytes,
        target_name: str | None,
        session_type: SessionType,
        tsih: int,
    ) -> int:
        self.calls.append((initiator_name, isid, target_name, session_type, tsih))
        if self.reject is not None:
            raise self.reject
        return self.tsih


DIRECTORY = Directory(
    TargetAccess(PC1_DISK, alias="pc1 disk", allowed_initiators=frozenset({IPXE_NAME})),
    TargetAccess(PC2_DISK, allowed_initiators=frozenset({"iqn.2010-04.org.ipxe:pc2"})),
    TargetAccess(SHARED),
    TargetAccess(CHAP_DISK, chap=INITIATOR_SECRET, mutual_chap=TARGET_SECRET),
)
PORTAL = PortalInfo(
    target_portal_group_tag=1, addresses=(("192.0.2.10", 3260), ("2001:db8::a", 3260))
)


def counting_random() -> Callable[[int], bytes]:
    state = {"next": 0x40}

    def random_bytes(n: int) -> bytes:
        start = state["next"]
        state["next"] += n
        return bytes((start + i) % 256 for i in range(n))

    return random_bytes


def machine(
    admission: Admission | None = None, *, initial_statsn: int = 0x1000, window: int = 32
) -> LoginMachine:
    return LoginMachine(
        PORTAL,
        DIRECTORY,
        admission or Admission(),
        TargetLimits(),
        counting_random(),
        initial_statsn=initial_statsn,
        cmdsn_window=window,
    )


def login_pdu(
    pairs: Sequence[tuple[str, str]] = (),
    *,
    csg: int,
    nsg: int,
    transit: bool = True,
    cont: bool = False,
    isid: bytes = IPXE_ISID,
    tsih: int = 0,
    itt: int = 0x18AE0000,
    cid: int = 0,
    cmdsn: int = 1,
    expstatsn: int = 0,
    version_max: int = 0,
    version_min: int = 0,
    data: bytes | None = None,
) -> LoginRequest:
    """A Login Request as bytes (RFC 7143 §11.12), decoded by the codec."""
    text = encode_text(pairs) if data is None else data
    flags = (0x80 if transit else 0) | (0x40 if cont else 0) | (csg << 2) | nsg
    raw = struct.pack(
        ">BBBBB3s6sHIHHII16x",
        0x43,
        flags,
        version_max,
        version_min,
        0,
        len(text).to_bytes(3, "big"),
        isid,
        tsih,
        itt,
        cid,
        0,
        cmdsn,
        expstatsn,
    )
    header = parse_bhs(raw, max_data_segment_length=1 << 20)
    request = decode_request(header, b"", text)
    assert isinstance(request, LoginRequest)
    return request


@dataclass(frozen=True)
class Response:
    transit: bool
    cont: bool
    csg: int
    nsg: int
    isid: bytes
    tsih: int
    itt: int
    statsn: int
    expcmdsn: int
    maxcmdsn: int
    status: int
    keys: dict[str, str]


def read(step: LoginStep) -> Response:
    """A Login Response read back from its bytes (RFC 7143 §11.13)."""
    h = step.header
    assert len(h) == 48
    assert h[0] == Opcode.LOGIN_RESPONSE
    assert (h[2], h[3]) == (0, 0)  # Version-max, Version-active
    assert int.from_bytes(h[5:8], "big") == len(step.data)
    (tsih,) = struct.unpack_from(">H", h, 14)
    itt, _, statsn, expcmdsn, maxcmdsn = struct.unpack_from(">5I", h, 16)
    pairs = parse_text(step.data)
    assert len(dict(pairs)) == len(pairs), "a key answered twice"
    return Response(
        transit=bool(h[1] & 0x80),
        cont=bool(h[1] & 0x40),
        csg=(h[1] >> 2) & 3,
        nsg=h[1] & 3,
        isid=h[8:14],
        tsih=tsih,
        itt=itt,
        statsn=statsn,
        expcmdsn=expcmdsn,
        maxcmdsn=maxcmdsn,
        status=(h[36] << 8) | h[37],
        keys=dict(pairs),
    )


def ipxe_security(target: str = PC1_DISK, auth: str = "None") -> list[tuple[str, str]]:
    return [
        ("InitiatorName", IPXE_NAME),
        ("TargetName", target),
        ("SessionType", "Normal"),
        ("AuthMethod", auth),
    ]


def assert_failed(step: LoginStep, status: int) -> Response:
    response = read(step)
    assert response.status == status, step.reason
    assert step.close
    assert step.result is None
    assert (step.status_class, step.status_detail) == (status >> 8, status & 0xFF)
    assert not response.transit
    assert step.data == b""
    return response


def complete(step: LoginStep) -> LoginResult:
    assert step.result is not None, step.reason
    assert not step.close
    return step.result


# --- successful flows ---------------------------------------------------------------------


def test_ipxe_login_without_authentication() -> None:
    admission = Admission()
    login = machine(admission)

    first = login.receive(login_pdu(ipxe_security(), csg=0, nsg=1))
    response = read(first)
    assert (response.transit, response.csg, response.nsg, response.status) == (True, 0, 1, 0)
    assert response.keys == {
        "TargetAlias": "pc1 disk",
        "TargetPortalGroupTag": "1",
        "AuthMethod": "None",
    }
    assert (response.isid, response.tsih, response.itt) == (IPXE_ISID, 0, 0x18AE0000)
    assert (response.statsn, response.expcmdsn, response.maxcmdsn) == (0x1000, 1, 32)
    assert first.result is None
    assert admission.calls == []

    final = login.receive(login_pdu(IPXE_OPERATIONAL, csg=1, nsg=3, expstatsn=0x1001))
    response = read(final)
    assert (response.transit, response.csg, response.nsg, response.status) == (True, 1, 3, 0)
    assert response.tsih == 0x0102
    assert response.statsn == 0x1001
    assert "Reject" not in response.keys.values()
    assert set(response.keys) == {key for key, _ in IPXE_OPERATIONAL}
    assert response.keys["MaxRecvDataSegmentLength"] == "262144"

    result = complete(final)
    assert result.initiator_name == IPXE_NAME
    assert result.target_name == PC1_DISK
    assert result.session_type is SessionType.NORMAL
    assert (result.isid, result.tsih, result.cid) == (IPXE_ISID, 0x0102, 0)
    assert (result.expcmdsn, result.maxcmdsn, result.statsn) == (1, 32, 0x1002)
    assert result.parameters.initial_r2t is True
    assert result.parameters.immediate_data is False
    assert result.parameters.max_send_data_segment_length == 8192
    assert result.chap_user is None
    assert admission.calls == [(IPXE_NAME, IPXE_ISID, PC1_DISK, SessionType.NORMAL, 0)]
    assert login.finished


def test_open_iscsi_two_stage_login() -> None:
    login = machine()
    isid = bytes.fromhex("00023d000001")
    security = [
        ("InitiatorName", IPXE_NAME),
        ("InitiatorAlias", "pc1"),
        ("TargetName", PC1_DISK),
        ("SessionType", "Normal"),
        ("AuthMethod", "None"),
    ]

    first = read(login.receive(login_pdu(security, csg=0, nsg=1, isid=isid, itt=0)))
    assert first.transit
    assert first.keys["AuthMethod"] == "None"
    assert first.keys["TargetPortalGroupTag"] == "1"

    step = login.receive(login_pdu(OPEN_ISCSI_OPERATIONAL, csg=1, nsg=3, isid=isid, itt=0))
    response = read(step)
    assert response.nsg == 3
    assert "TargetPortalGroupTag" not in response.keys  # only in the first response
    result = complete(step)
    assert result.initiator_alias == "pc1"
    assert result.parameters.immediate_data is True
    assert result.parameters.initial_r2t is False
    assert result.parameters.max_burst_length == 1 << 20


def test_straight_to_operational_when_no_auth_is_needed() -> None:
    # libiscsi without CHAP starts in the operational stage with everything in one PDU.
    pairs = [
        ("InitiatorName", "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"),
        ("InitiatorAlias", "libiscsi"),
        ("TargetName", SHARED),
        ("SessionType", "Normal"),
        ("HeaderDigest", "None,CRC32C"),
        ("DataDigest", "None"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
    ]
    step = machine().receive(login_pdu(pairs, csg=1, nsg=3))
    response = read(step)
    assert (response.csg, response.nsg, response.transit) == (1, 3, True)
    assert response.keys["TargetPortalGroupTag"] == "1"
    assert response.keys["HeaderDigest"] == "None"
    assert complete(step).parameters.header_digest is Digest.NONE


def test_auth_method_none_is_answered_when_security_is_skipped() -> None:
    pairs = [("InitiatorName", IPXE_NAME), ("TargetName", SHARED), ("AuthMethod", "None")]
    step = machine().receive(login_pdu([*pairs, ("HeaderDigest", "None")], csg=1, nsg=3))
    assert read(step).keys["AuthMethod"] == "None"
    assert complete(step).target_name == SHARED


def test_security_straight_to_full_feature_keeps_defaults() -> None:
    pairs = [("InitiatorName", IPXE_NAME), ("TargetName", SHARED), ("AuthMethod", "None")]
    step = machine().receive(login_pdu(pairs, csg=0, nsg=3))
    assert read(step).nsg == 3
    parameters = complete(step).parameters
    assert parameters.max_recv_data_segment_length == 8192  # never declared, RFC default holds
    assert parameters.max_send_data_segment_length == 8192


def test_a_security_pdu_with_t0_waits_for_the_transition() -> None:
    login = machine()
    waiting = read(login.receive(login_pdu(ipxe_security(), csg=0, nsg=0, transit=False)))
    assert (waiting.transit, waiting.nsg) == (False, 0)
    assert waiting.keys["AuthMethod"] == "None"
    moving = read(login.receive(login_pdu([], csg=0, nsg=1)))
    assert (moving.transit, moving.nsg) == (True, 1)
    assert moving.keys == {}


def test_operational_negotiation_may_take_several_pdus() -> None:
    login = machine()
    login.receive(login_pdu(ipxe_security(), csg=0, nsg=1))
    partial = read(login.receive(login_pdu(IPXE_OPERATIONAL[:5], csg=1, nsg=1, transit=False)))
    assert not partial.transit
    assert partial.keys["MaxRecvDataSegmentLength"] == "262144"
    step = login.receive(login_pdu(IPXE_OPERATIONAL[5:], csg=1, nsg=3))
    assert complete(step).parameters.max_send_data_segment_length == 8192


def chap_reply(response: Response, secret: bytes = INITIATOR_SECRET.secret) -> str:
    identifier = int(response.keys["CHAP_I"])
    challenge = bytes.fromhex(response.keys["CHAP_C"][2:])
    return "0x" + hashlib.md5(bytes([identifier]) + secret + challenge).hexdigest()


def test_ipxe_one_way_chap_answers_t0_until_authenticated() -> None:
    login = machine()

    first = read(login.receive(login_pdu(ipxe_security(CHAP_DISK, "CHAP,None"), csg=0, nsg=1)))
    assert (first.transit, first.status) == (False, 0)  # iPXE sent T=1; CHAP is not done
    assert first.keys == {"TargetPortalGroupTag": "1", "AuthMethod": "CHAP"}

    challenge = read(login.receive(login_pdu([("CHAP_A", "5")], csg=0, nsg=1)))
    assert not challenge.transit
    assert challenge.keys["CHAP_A"] == "5"
    assert challenge.keys["CHAP_C"].startswith("0x")

    proven = read(
        login.receive(
            login_pdu([("CHAP_N", "pc1"), ("CHAP_R", chap_reply(challenge))], csg=0, nsg=1)
        )
    )
    assert (proven.transit, proven.nsg, proven.keys) == (True, 1, {})

    step = login.receive(login_pdu(IPXE_OPERATIONAL, csg=1, nsg=3))
    result = complete(step)
    assert result.chap_user == "pc1"
    assert result.target_name == CHAP_DISK
    assert [read(step).statsn] == [0x1003]


def test_mutual_chap_proves_the_target_in_the_transition_response() -> None:
    login = machine()
    login.receive(login_pdu(ipxe_security(CHAP_DISK, "CHAP"), csg=0, nsg=1))
    challenge = read(login.receive(login_pdu([("CHAP_A", "5")], csg=0, nsg=1)))
    ours = bytes(range(16))

    proven = read(
        login.receive(
            login_pdu(
                [
                    ("CHAP_N", "pc1"),
                    ("CHAP_R", chap_reply(challenge)),
                    ("CHAP_I", "9"),
                    ("CHAP_C", "0x" + ours.hex()),
                ],
                csg=0,
                nsg=1,
            )
        )
    )

    assert proven.transit
    assert proven.keys["CHAP_N"] == "diskless"
    expected = hashlib.md5(bytes([9]) + TARGET_SECRET.secret + ours).hexdigest()
    assert proven.keys["CHAP_R"] == "0x" + expected


def test_libiscsi_chap_with_identity_keys_sent_again() -> None:
    login = machine()
    identity = [("InitiatorName", IPXE_NAME), ("TargetName", CHAP_DISK), ("SessionType", "Normal")]
    # libiscsi sends AuthMethod=CHAP,None, then CHAP_A, then the response, all with T=1 NSG=1.
    login.receive(login_pdu([*identity, ("AuthMethod", "CHAP,None")], csg=0, nsg=1))
    challenge = read(login.receive(login_pdu([("CHAP_A", "5")], csg=0, nsg=1)))
    login.receive(login_pdu([("CHAP_N", "pc1"), ("CHAP_R", chap_reply(challenge))], csg=0, nsg=1))

    step = login.receive(login_pdu([*identity, ("HeaderDigest", "None")], csg=1, nsg=3))

    assert complete(step).chap_user == "pc1"


def test_chap_algorithm_may_come_with_the_auth_method() -> None:
    login = machine()
    first = read(
        login.receive(
            login_pdu([*ipxe_security(CHAP_DISK, "CHAP"), ("CHAP_A", "7,5")], csg=0, nsg=1)
        )
    )
    assert first.keys["AuthMethod"] == "CHAP"
    assert first.keys["CHAP_A"] == "7"


def test_authenticated_initiator_may_transit_with_a_later_pdu() -> None:
    login = machine()
    login.receive(login_pdu(ipxe_security(CHAP_DISK, "CHAP"), csg=0, nsg=1))
    challenge = read(login.receive(login_pdu([("CHAP_A", "5")], csg=0, nsg=0, transit=False)))
    proven = read(
        login.receive(
            login_pdu(
                [("CHAP_N", "pc1"), ("CHAP_R", chap_reply(challenge))],
                csg=0,
                nsg=0,
                transit=False,
            )
        )
    )
    assert not proven.transit
    step = login.receive(login_pdu([], csg=0, nsg=3))
    assert complete(step).chap_user == "pc1"


def test_continued_text_is_assembled_before_answering() -> None:
    login = machine()
    text = encode_text(ipxe_security())
    half = len(text) // 2

    ack = login.receive(login_pdu(data=text[:half], csg=0, nsg=0, transit=False, cont=True))
    assert read(ack).keys == {}
    assert not read(ack).transit

    answer = read(login.receive(login_pdu(data=text[half:], csg=0, nsg=1)))
    assert answer.keys["AuthMethod"] == "None"
    assert answer.keys["TargetPortalGroupTag"] == "1"
    assert answer.statsn == 0x1001


def test_statsn_wraps_and_maxcmdsn_follows_the_window() -> None:
    login = machine(initial_statsn=0xFFFFFFFF, window=4)
    first = read(login.receive(login_pdu(ipxe_security(), csg=0, nsg=1, cmdsn=0xFFFFFFFE)))
    step = login.receive(login_pdu(IPXE_OPERATIONAL, csg=1, nsg=3, cmdsn=0xFFFFFFFE))
    assert (first.statsn, read(step).statsn) == (0xFFFFFFFF, 0)
    assert (first.expcmdsn, first.maxcmdsn) == (0xFFFFFFFE, 1)
    result = complete(step)
    assert (result.statsn, result.expcmdsn, result.maxcmdsn) == (1, 0xFFFFFFFE, 1)


def test_target_names_match_case_insensitively() -> None:
    step = machine().receive(login_pdu(ipxe_security(PC1_DISK.upper()), csg=0, nsg=3))
    assert complete(step).target_name == PC1_DISK


# --- discovery ----------------------------------------------------------------------------


def test_discovery_session_login_and_send_targets() -> None:
    admission = Admission()
    login = machine(admission)
    pairs = [("InitiatorName", IPXE_NAME), ("SessionType", "Discovery"), ("AuthMethod", "None")]
    first = read(login.receive(login_pdu(pairs, csg=0, nsg=1)))
    assert first.keys == {"AuthMethod": "None"}  # no TargetPortalGroupTag without a target
    operational = [("HeaderDigest", "None"), ("MaxRecvDataSegmentLength", "32768"),
                   ("InitialR2T", "Yes")]  # fmt: skip
    step = login.receive(login_pdu(operational, csg=1, nsg=3))
    assert read(step).keys["InitialR2T"] == "Irrelevant"
    result = complete(step)
    assert result.session_type is SessionType.DISCOVERY
    assert result.target is None
    assert admission.calls == [(IPXE_NAME, IPXE_ISID, None, SessionType.DISCOVERY, 0)]

    listing = parse_text(send_targets("All", IPXE_NAME, DIRECTORY, PORTAL))

    assert listing == [
        ("TargetName", PC1_DISK),
        ("TargetAddress", "192.0.2.10:3260,1"),
        ("TargetAddress", "[2001:db8::a]:3260,1"),
        ("TargetName", SHARED),
        ("TargetAddress", "192.0.2.10:3260,1"),
        ("TargetAddress", "[2001:db8::a]:3260,1"),
        ("TargetName", CHAP_DISK),
        ("TargetAddress", "192.0.2.10:3260,1"),
        ("TargetAddress", "[2001:db8::a]:3260,1"),
    ]
    assert PC2_DISK.encode() not in send_targets("All", IPXE_NAME, DIRECTORY, PORTAL)


def test_send_targets_never_names_another_clients_disk() -> None:
    assert send_targets(PC2_DISK, IPXE_NAME, DIRECTORY, PORTAL) == b""
    assert send_targets("iqn.nope", IPXE_NAME, DIRECTORY, PORTAL) == b""
    own = parse_text(send_targets(PC1_DISK, IPXE_NAME, DIRECTORY, PORTAL))
    assert own[0] == ("TargetName", PC1_DISK)


def test_send_targets_in_a_normal_session() -> None:
    current = parse_text(
        send_targets(
            "",
            IPXE_NAME,
            DIRECTORY,
            PORTAL,
            session_type=SessionType.NORMAL,
            current_target=PC1_DISK,
        )
    )
    assert current[0] == ("TargetName", PC1_DISK)
    everything = send_targets("All", IPXE_NAME, DIRECTORY, PORTAL, session_type=SessionType.NORMAL)
    assert parse_text(everything) == [("SendTargets", "Reject")]


def test_text_requests_in_full_feature_phase() -> None:
    answer = answer_text_request(
        [("SendTargets", "All"), ("MaxBurstLength", "4096"), ("X-foo", "1")],
        IPXE_NAME,
        DIRECTORY,
        PORTAL,
        session_type=SessionType.DISCOVERY,
    )
    pairs = parse_text(answer)
    assert pairs[0] == ("TargetName", PC1_DISK)
    assert pairs[-2:] == [("MaxBurstLength", "Reject"), ("X-foo", "NotUnderstood")]


def test_portal_and_target_configuration_is_validated() -> None:
    from diskless.errors import ConfigError

    with pytest.raises(ConfigError):
        PortalInfo(target_portal_group_tag=0)
    with pytest.raises(ConfigError):
        TargetAccess("")
    with pytest.raises(ConfigError):
        TargetAccess("iqn.x", mutual_chap=TARGET_SECRET)
    with pytest.raises(ConfigError):
        TargetAccess("iqn.x", chap=INITIATOR_SECRET, mutual_chap=INITIATOR_SECRET)
    with pytest.raises(ConfigError):
        TargetAccess("iqn.x", alias="a" * 256)


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "status"),
    [
        pytest.param([("TargetName", PC1_DISK)], 0x0207, id="no-initiator-name"),
        pytest.param([("InitiatorName", IPXE_NAME)], 0x0207, id="no-target-name"),
        pytest.param(
            [("InitiatorName", IPXE_NAME), ("TargetName", "iqn.nope")], 0x0203, id="unknown-target"
        ),
        pytest.param(
            [("InitiatorName", IPXE_NAME), ("TargetName", PC2_DISK)], 0x0202, id="not-allowed"
        ),
        pytest.param(
            [("InitiatorName", IPXE_NAME), ("SessionType", "Other")], 0x0209, id="session-type"
        ),
        pytest.param([("InitiatorName", "")], 0x0200, id="empty-initiator-name"),
        pytest.param([("InitiatorName", "i" * 224)], 0x0200, id="long-initiator-name"),
        pytest.param([*ipxe_security(CHAP_DISK, "None")], 0x0201, id="chap-required-none-offered"),
        pytest.param([*ipxe_security(PC1_DISK, "CHAP")], 0x0201, id="chap-only-but-no-secret"),
        pytest.param([*ipxe_security(), ("InitiatorName", "iqn.other")], 0x0200, id="name-twice"),
        pytest.param([*ipxe_security(), ("MaxBurstLength", "512")], 0x0200, id="op-key-in-sec"),
        pytest.param([*ipxe_security(), ("AuthMethod", "None")], 0x0200, id="auth-twice"),
        pytest.param([*ipxe_security(), ("CHAP_A", "5")], 0x0201, id="chap-without-chap"),
    ],
)
def test_first_pdu_failures(pairs: list[tuple[str, str]], status: int) -> None:
    step = machine().receive(login_pdu(pairs, csg=0, nsg=1))
    response = assert_failed(step, status)
    assert response.isid == IPXE_ISID


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        pytest.param({"tsih": 5}, 0x020A, id="connection-for-unknown-session"),
        pytest.param({"version_min": 1, "version_max": 1}, 0x0205, id="version"),
        pytest.param({"transit": True, "cont": True}, 0x0200, id="t-and-c"),
        pytest.param({"csg": 2, "nsg": 3}, 0x0200, id="reserved-csg"),
        pytest.param({"csg": 3, "nsg": 3}, 0x0200, id="full-feature-csg"),
        pytest.param({"csg": 0, "nsg": 2}, 0x0200, id="reserved-nsg"),
        pytest.param({"csg": 1, "nsg": 1}, 0x0200, id="no-progress"),
        pytest.param({"data": b"InitiatorName=x"}, 0x0200, id="malformed-text"),
    ],
)
def test_header_failures(fields: dict[str, object], status: int) -> None:
    arguments: dict[str, object] = {"csg": 0, "nsg": 1, **fields}
    request = login_pdu(ipxe_security(), **arguments)  # type: ignore[arg-type]
    assert_failed(machine().receive(request), status)


def test_wrong_chap_response_is_an_authentication_failure() -> None:
    login = machine()
    login.receive(login_pdu(ipxe_security(CHAP_DISK, "CHAP"), csg=0, nsg=1))
    challenge = read(login.receive(login_pdu([("CHAP_A", "5")], csg=0, nsg=1)))
    reply = chap_reply(challenge, b"wrong-secret")
    step = login.receive(login_pdu([("CHAP_N", "pc1"), ("CHAP_R", reply)], csg=0, nsg=1))
    assert_failed(step, 0x0201)


def test_chap_target_refuses_a_login_that_skips_security() -> None:
    pairs = [("InitiatorName", IPXE_NAME), ("TargetName", CHAP_DISK)]
    assert_failed(machine().receive(login_pdu(pairs, csg=1, nsg=3)), 0x0201)


def test_chap_target_refuses_a_transit_without_auth_method() -> None:
    pairs = [("InitiatorName", IPXE_NAME), ("TargetName", CHAP_DISK)]
    assert_failed(machine().receive(login_pdu(pairs, csg=0, nsg=1)), 0x0201)


def test_chap_target_waits_for_auth_method_on_t0() -> None:
    login = machine()
    pairs = [("InitiatorName", IPXE_NAME), ("TargetName", CHAP_DISK)]
    waiting = read(login.receive(login_pdu(pairs, csg=0, nsg=0, transit=False)))
    assert (waiting.status, waiting.transit) == (0, False)
    answer = read(login.receive(login_pdu([("AuthMethod", "CHAP")], csg=0, nsg=1)))
    assert answer.keys == {"AuthMethod": "CHAP"}


@pytest.mark.parametrize(
    ("second", "status"),
    [
        pytest.param(login_pdu([("AuthMethod", "None")], csg=1, nsg=3), 0x0200, id="auth-again"),
        pytest.param(login_pdu([("CHAP_A", "5")], csg=1, nsg=3), 0x0200, id="chap-key-in-op"),
        pytest.param(
            login_pdu([("MaxBurstLength", "512")] * 2, csg=1, nsg=3), 0x0200, id="renegotiation"
        ),
        pytest.param(
            login_pdu([("MaxRecvDataSegmentLength", "1")], csg=1, nsg=3), 0x0200, id="bad-mrdsl"
        ),
        pytest.param(
            login_pdu([("TargetName", SHARED)], csg=1, nsg=3), 0x0200, id="target-changed"
        ),
        pytest.param(login_pdu([], csg=0, nsg=1), 0x0200, id="stage-went-back"),
        pytest.param(login_pdu([], csg=1, nsg=3, isid=bytes(6)), 0x0200, id="isid-changed"),
        pytest.param(login_pdu([], csg=1, nsg=3, cid=1), 0x0200, id="cid-changed"),
        pytest.param(
            login_pdu([("FirstBurstLength", "65536")], csg=1, nsg=1, transit=False),
            None,
            id="fine",
        ),
    ],
)
def test_operational_stage_failures(second: LoginRequest, status: int | None) -> None:
    login = machine()
    login.receive(login_pdu(ipxe_security(), csg=0, nsg=1))
    step = login.receive(second)
    if status is None:
        assert read(step).status == 0
    else:
        assert_failed(step, status)


def test_admission_decides_the_final_status() -> None:
    admission = Admission(reject=LoginRejected(0x02, 0x06, "too many connections"))
    login = machine(admission)
    step = login.receive(login_pdu(ipxe_security(), csg=0, nsg=3))
    assert_failed(step, 0x0206)
    assert "too many" in step.reason


def test_admission_must_return_a_real_tsih() -> None:
    login = machine(Admission(tsih=0))
    with pytest.raises(LocalProtocolError):
        login.receive(login_pdu(ipxe_security(), csg=0, nsg=3))


def test_first_burst_above_max_burst_fails_the_login() -> None:
    login = machine()
    login.receive(login_pdu(ipxe_security(), csg=0, nsg=1))
    login.receive(login_pdu([("FirstBurstLength", "65536")], csg=1, nsg=1, transit=False))
    step = login.receive(login_pdu([("MaxBurstLength", "4096")], csg=1, nsg=3))
    assert_failed(step, 0x0200)


def test_continued_text_has_a_limit() -> None:
    login = machine()
    chunk = b"X-pad=" + b"p" * 200 + b"\0"
    step = login.receive(login_pdu(data=chunk * 40, csg=0, nsg=0, transit=False, cont=True))
    while not step.close:
        step = login.receive(login_pdu(data=chunk * 40, csg=0, nsg=0, transit=False, cont=True))
    assert_failed(step, 0x0200)
    assert len(chunk) * 40 * 8 > MAX_LOGIN_TEXT_LENGTH


def test_answers_too_big_for_one_pdu_fail_the_login() -> None:
    pairs = [*ipxe_security(), *((f"X-key{i:04}", "1") for i in range(700))]
    assert_failed(machine().receive(login_pdu(pairs, csg=0, nsg=1)), 0x0200)


def test_nothing_after_the_login_is_over() -> None:
    failed = machine()
    failed.receive(login_pdu([("TargetName", PC1_DISK)], csg=0, nsg=1))
    with pytest.raises(LocalProtocolError):
        failed.receive(login_pdu(ipxe_security(), csg=0, nsg=1))

    done = machine()
    complete(done.receive(login_pdu(ipxe_security(), csg=0, nsg=3)))
    with pytest.raises(LocalProtocolError):
        done.receive(login_pdu(ipxe_security(), csg=0, nsg=3))


def test_other_pdus_during_login() -> None:
    nop = parse_bhs(
        bytes([0x40, 0x80]) + bytes(14) + b"\0\0\0\x07" + bytes(28), max_data_segment_length=0
    )

    fresh = machine()
    assert fresh.receive_other(nop) is None  # before any login: just close (RFC 7143 §6.1)
    assert fresh.finished

    started = machine()
    started.receive(login_pdu(ipxe_security(), csg=0, nsg=1))
    step = started.receive_other(nop)
    assert step is not None
    response = assert_failed(step, 0x020B)
    assert response.itt == 7


# --- fuzz ---------------------------------------------------------------------------------

_KEY = st.sampled_from(
    ["InitiatorName", "TargetName", "SessionType", "AuthMethod", "CHAP_A", "CHAP_N", "CHAP_R",
     "CHAP_I", "CHAP_C", "HeaderDigest", "MaxBurstLength", "FirstBurstLength", "InitialR2T",
     "MaxRecvDataSegmentLength", "X-vendor", "TargetAlias", "InitiatorAlias", "IFMarkInt"]
)  # fmt: skip
_VALUE = st.sampled_from(
    [IPXE_NAME, PC1_DISK, PC2_DISK, CHAP_DISK, SHARED, "Normal", "Discovery", "None", "CHAP",
     "CHAP,None", "5", "7,5", "pc1", "0x00", "0x" + "ab" * 16, "0bAAAA", "1", "512", "65536",
     "Yes", "No", "CRC32C", "", "Reject"]
)  # fmt: skip
_REAL_FLAGS = st.sampled_from(
    [(0, 1, True, False), (0, 3, True, False), (1, 3, True, False),
     (0, 0, False, False), (1, 1, False, False), (0, 0, False, True)]
)  # fmt: skip
_ANY_FLAGS = st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans(), st.booleans())
# Mostly the transitions real initiators make, one time in four anything the bits allow.
_FLAGS = st.integers(0, 3).flatmap(lambda n: _ANY_FLAGS if n == 0 else _REAL_FLAGS)
_PDU = st.tuples(st.one_of(st.just([]), st.lists(st.tuples(_KEY, _VALUE), max_size=5)), _FLAGS)
_OPENINGS = st.sampled_from(
    [
        [],
        ipxe_security(),
        ipxe_security(SHARED, "CHAP,None"),
        ipxe_security(CHAP_DISK, "CHAP"),
        [("InitiatorName", IPXE_NAME), ("SessionType", "Discovery")],
    ]
)


@settings(max_examples=300, derandomize=True, database=None)
@given(_OPENINGS, st.lists(_PDU, min_size=1, max_size=6))
def test_random_key_sets_never_crash_the_machine(
    opening: list[tuple[str, str]],
    pdus: list[tuple[list[tuple[str, str]], tuple[int, int, bool, bool]]],
) -> None:
    # Invariant: every request gets a response; the login either goes on, completes, or fails
    # with a non-zero status and a close. Nothing else escapes.
    login = machine()
    statsn = 0x1000
    pdus[0] = (opening + pdus[0][0], pdus[0][1])
    for pairs, (csg, nsg, transit, cont) in pdus:
        step = login.receive(login_pdu(pairs, csg=csg, nsg=nsg, transit=transit, cont=cont))
        response = read(step)
        assert response.statsn == statsn
        statsn += 1
        if step.close:
            assert response.status != 0
            assert step.result is None
            break
        assert response.status == 0
        assert "Reject" not in response.keys.values() or "IFMarkInt" in response.keys
        if step.result is not None:
            assert response.tsih == 0x0102
            assert (response.transit, response.nsg) == (True, 3)
            break
        if response.transit:
            assert response.nsg > response.csg
            assert transit
    assert login.finished or not (step.close or step.result)
