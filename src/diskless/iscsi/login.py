"""The login phase of one connection (RFC 7143 §6, §11.12-11.13) as a sans-I/O state machine.

Feed each decoded :class:`LoginRequest` to :meth:`LoginMachine.receive`; it returns a
:class:`LoginStep` holding the Login Response to send, whether to close the connection after it
(any failure status), and, on the response that enters full feature phase, a
:class:`LoginResult` with everything the session needs. The machine owns the login rules:
identity keys, stage transitions and the T bit, AuthMethod and CHAP, operational negotiation
(through negotiation.py), TargetPortalGroupTag, StatSN numbering and the status codes. It never
touches a socket or a clock; randomness (CHAP challenges) comes from ``random_bytes``.

Stages run security (0) → operational (1) → full feature (3), or security → full feature, or
operational → full feature when no authentication is needed (RFC 7143 §6.3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Protocol

from .chap import ChapAuthenticator
from .discovery import MAX_NAME_LENGTH, PortalInfo, TargetAccess, TargetDirectory
from .errors import (
    AuthenticationFailed,
    LocalProtocolError,
    LoginRejected,
    MalformedText,
    NegotiationError,
)
from .negotiation import (
    OPERATIONAL_KEYS,
    NegotiationState,
    SessionParameters,
    SessionType,
    TargetLimits,
    finish,
    negotiate,
)
from .pdu import BasicHeader, LoginRequest, LoginStage, LoginStatus, encode_login_response
from .pdu import pad_length as _pad_length
from .text import encode_text, parse_text, split_list
from .window import DEFAULT_WINDOW, serial_add

__all__ = [
    "LOGIN_MAX_DATA_SEGMENT_LENGTH",
    "MAX_LOGIN_TEXT_LENGTH",
    "LoginMachine",
    "LoginResult",
    "LoginStep",
    "SessionAdmission",
]

# RFC 7143 §13.12: until full feature phase both sides hold each other to the default
# MaxRecvDataSegmentLength, so a login PDU never carries more than this.
LOGIN_MAX_DATA_SEGMENT_LENGTH: Final = 8192
# Text assembled from C=1 continuations. Real key sets are under 2 KiB; 64 KiB bounds what one
# connection may make us buffer before it has authenticated.
MAX_LOGIN_TEXT_LENGTH: Final = 64 << 10
_VERSION: Final = 0x00  # RFC 7143 §11.12.4: the only version ever defined

_IDENTITY_KEYS: Final = frozenset({"InitiatorName", "TargetName", "SessionType", "InitiatorAlias"})
_CHAP_KEYS: Final = frozenset({"CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"})
_SECURITY_KEYS: Final = frozenset({"AuthMethod"}) | _CHAP_KEYS
_AUTH_CHAP: Final = "CHAP"
_AUTH_NONE: Final = "None"


class SessionAdmission(Protocol):
    """The server's session table, asked once per login as it enters full feature phase."""

    def admit(
        self,
        initiator_name: str,
        isid: bytes,
        target_name: str | None,
        session_type: SessionType,
        tsih: int,
    ) -> int:
        """Return the TSIH (1..65535) of the new session, or raise :class:`LoginRejected`.

        Reinstatement (same initiator name and ISID as a live session, RFC 7143 §6.3.5) is the
        admission's job. ``tsih`` is the login's TSIH; it is always 0 here, since this machine
        answers a non-zero TSIH (adding a connection to a session) with 0x020A itself.
        """
        ...


@dataclass(frozen=True, slots=True)
class LoginResult:
    """What a successful login hands to full feature phase."""

    parameters: SessionParameters
    session_type: SessionType
    initiator_name: str
    initiator_alias: str | None
    target: TargetAccess | None  # None for discovery sessions
    isid: bytes
    tsih: int
    cid: int
    chap_user: str | None  # the CHAP_N that authenticated, if CHAP was used
    expcmdsn: int  # CmdSN the first non-immediate command will carry
    maxcmdsn: int  # advertised in the final Login Response
    statsn: int  # StatSN of this connection's next response

    @property
    def target_name(self) -> str | None:
        return self.target.name if self.target is not None else None


@dataclass(frozen=True, slots=True)
class LoginStep:
    """One Login Response, and what the connection does after sending it."""

    header: bytes  # 48-byte BHS; login PDUs never carry digests (RFC 7143 §13.1)
    data: bytes  # text segment, unpadded
    close: bool = False  # failure: close the connection once the response is sent
    result: LoginResult | None = None  # set when this response enters full feature phase
    status_class: int = 0
    status_detail: int = 0
    reason: str = ""  # why the login failed, for the log

    @property
    def pdu(self) -> bytes:
        """Header, data and padding, ready to write."""
        return self.header + self.data + bytes(_pad_length(len(self.data)))


class _Phase(Enum):
    START = "start"
    LOGIN = "login"
    FULL_FEATURE = "full feature"
    FAILED = "failed"


def _reject(status: LoginStatus, reason: str) -> LoginRejected:
    return LoginRejected(status.status_class, status.status_detail, reason)


class LoginMachine:
    """The login phase of one connection; see the module docstring."""

    def __init__(
        self,
        portal: PortalInfo,
        targets: TargetDirectory,
        sessions: SessionAdmission,
        limits: TargetLimits,
        random_bytes: Callable[[int], bytes],
        *,
        initial_statsn: int = 0,
        cmdsn_window: int = DEFAULT_WINDOW,
    ) -> None:
        self._portal = portal
        self._targets = targets
        self._sessions = sessions
        self._limits = limits
        self._random_bytes = random_bytes
        self._window = cmdsn_window
        self._statsn = initial_statsn % (1 << 32)
        self._phase = _Phase.START
        self._stage = LoginStage.SECURITY_NEGOTIATION
        self._isid = b""
        self._tsih = 0
        self._cid = 0
        self._cmdsn = 0
        self._pending_text = b""
        self._identity: dict[str, str] = {}
        self._initiator_name = ""
        self._session_type = SessionType.NORMAL
        self._target: TargetAccess | None = None
        self._auth_method: str | None = None
        self._chap: ChapAuthenticator | None = None
        self._chap_user: str | None = None
        self._negotiation = NegotiationState()
        self._keys_sent = False

    @property
    def finished(self) -> bool:
        """Whether the login is over, in full feature phase or failed."""
        return self._phase in (_Phase.FULL_FEATURE, _Phase.FAILED)

    def receive(self, request: LoginRequest) -> LoginStep:
        """Answer one Login Request. Raises :class:`LocalProtocolError` once the login is over."""
        if self.finished:
            raise LocalProtocolError(f"login request after the login {self._phase.value}")
        try:
            return self._receive(request)
        except LoginRejected as exc:
            status = (exc.status_class << 8) | exc.status_detail
            return self._fail(request.itt, request.csg, request.cmdsn, status, str(exc))
        except (MalformedText, NegotiationError) as exc:
            status = LoginStatus.INITIATOR_ERROR
            return self._fail(request.itt, request.csg, request.cmdsn, status, str(exc))

    def receive_other(self, header: BasicHeader) -> LoginStep | None:
        """Answer a PDU that is not a Login Request, received before full feature phase.

        ``None`` before any login request: RFC 7143 §6.3 says to drop the connection without a
        word. Later, a 0x020B "invalid during login" response, then close.
        """
        if self._phase is _Phase.START:
            self._phase = _Phase.FAILED
            return None
        if self.finished:
            raise LocalProtocolError(f"PDU after the login {self._phase.value}")
        status = LoginStatus.INVALID_DURING_LOGIN
        reason = f"{header.opcode.name} PDU during login"
        return self._fail(header.itt, self._stage, self._cmdsn, status, reason)

    # -- one request ------------------------------------------------------------------------

    def _receive(self, request: LoginRequest) -> LoginStep:
        self._check_header(request)
        if request.cont:
            self._buffer(request.data)
            return self._respond(request, [], transit=False)
        text, self._pending_text = self._pending_text + request.data, b""
        if len(text) > MAX_LOGIN_TEXT_LENGTH:
            raise _reject(LoginStatus.INITIATOR_ERROR, "login text too long")
        pairs = parse_text(text)
        self._identify(request, pairs)
        pairs = [(key, value) for key, value in pairs if key not in _IDENTITY_KEYS]
        if request.csg == LoginStage.SECURITY_NEGOTIATION:
            answers = self._security_stage(pairs)
            ready = self._authenticated(request.transit)
        else:
            answers = self._operational_stage(pairs)
            ready = True
        answers = self._first_keys() + answers
        transit = request.transit and ready
        if transit and request.nsg == LoginStage.FULL_FEATURE_PHASE:
            return self._enter_full_feature(request, answers)
        if transit:
            self._stage = LoginStage(request.nsg)
        return self._respond(request, answers, transit=transit)

    def _check_header(self, request: LoginRequest) -> None:
        self._cmdsn = request.cmdsn
        leading = self._phase is _Phase.START
        if leading:
            # Recorded first, so that even a failure response echoes the initiator's ISID.
            self._phase = _Phase.LOGIN
            self._isid, self._tsih, self._cid = request.isid, request.tsih, request.cid
        if request.version_min > _VERSION:
            raise _reject(LoginStatus.UNSUPPORTED_VERSION, f"version {request.version_min}")
        if request.transit and request.cont:
            raise _reject(LoginStatus.INITIATOR_ERROR, "T and C both set (RFC 7143 §11.12.2)")
        if request.csg not in (LoginStage.SECURITY_NEGOTIATION, LoginStage.OPERATIONAL_NEGOTIATION):
            raise _reject(LoginStatus.INITIATOR_ERROR, f"CSG {request.csg} is not a login stage")
        if request.transit and (
            request.nsg not in (LoginStage.OPERATIONAL_NEGOTIATION, LoginStage.FULL_FEATURE_PHASE)
            or request.nsg <= request.csg
        ):
            raise _reject(
                LoginStatus.INITIATOR_ERROR, f"cannot move from {request.csg} to {request.nsg}"
            )
        if leading:
            self._stage = LoginStage(request.csg)
            if request.tsih != 0:
                # MaxConnections is 1: no connection can join an existing session (ctld agrees).
                raise _reject(LoginStatus.SESSION_DOES_NOT_EXIST, f"TSIH {request.tsih}")
            return
        if (request.isid, request.tsih, request.cid) != (self._isid, self._tsih, self._cid):
            raise _reject(LoginStatus.INITIATOR_ERROR, "ISID, TSIH or CID changed during login")
        if request.csg != self._stage:
            raise _reject(
                LoginStatus.INITIATOR_ERROR, f"CSG {request.csg} while in stage {self._stage.value}"
            )

    def _buffer(self, data: bytes) -> None:
        self._pending_text += data
        if len(self._pending_text) > MAX_LOGIN_TEXT_LENGTH:
            raise _reject(LoginStatus.INITIATOR_ERROR, "login text too long")

    # -- identity ---------------------------------------------------------------------------

    def _identify(self, request: LoginRequest, pairs: Sequence[tuple[str, str]]) -> None:
        """Check the identity keys; the first complete text must name initiator and target."""
        first = not self._identity
        seen: dict[str, str] = {}
        for key, value in pairs:
            if key not in _IDENTITY_KEYS:
                continue
            known = seen.get(key, self._identity.get(key))
            if known is not None and known != value:
                raise _reject(LoginStatus.INITIATOR_ERROR, f"{key} changed during login")
            if not first and known is None and key != "InitiatorAlias":
                raise _reject(LoginStatus.INITIATOR_ERROR, f"{key} after the first login PDU")
            seen[key] = value
        if not first:
            self._identity.update(seen)
            return
        name = seen.get("InitiatorName")
        if name is None:
            raise _reject(LoginStatus.MISSING_PARAMETER, "no InitiatorName (RFC 7143 §13.5)")
        if not name or len(name.encode("utf-8")) > MAX_NAME_LENGTH:
            raise _reject(LoginStatus.INITIATOR_ERROR, "InitiatorName is not an iSCSI name")
        kind = seen.get("SessionType", SessionType.NORMAL.value)
        if kind not in SessionType._value2member_map_:
            raise _reject(LoginStatus.SESSION_TYPE_NOT_SUPPORTED, f"SessionType={kind[:40]}")
        self._identity = {**seen, "SessionType": kind}
        self._initiator_name = name
        self._session_type = SessionType(kind)
        if self._session_type is SessionType.NORMAL:
            self._target = self._find_target(name, seen.get("TargetName"))
        if request.csg == LoginStage.OPERATIONAL_NEGOTIATION and self._auth_required:
            raise AuthenticationFailed("initiator skipped authentication; CHAP is required")

    def _find_target(self, initiator_name: str, target_name: str | None) -> TargetAccess:
        if target_name is None:
            raise _reject(LoginStatus.MISSING_PARAMETER, "no TargetName in a normal session")
        target = self._targets.lookup(target_name)
        if target is None:
            raise _reject(LoginStatus.NOT_FOUND, f"no target {target_name[:80]!r}")
        if not target.allows(initiator_name):
            raise _reject(
                LoginStatus.AUTHORIZATION_FAILURE,
                f"{initiator_name[:80]!r} may not use {target.name!r}",
            )
        return target

    @property
    def _auth_required(self) -> bool:
        return self._target is not None and self._target.chap is not None

    def _first_keys(self) -> list[tuple[str, str]]:
        """TargetAlias and TargetPortalGroupTag, once, in the first response (RFC 7143 §13.9)."""
        if self._keys_sent or self._target is None:
            return []
        self._keys_sent = True
        keys = [("TargetAlias", self._target.alias)] if self._target.alias else []
        return [*keys, ("TargetPortalGroupTag", str(self._portal.target_portal_group_tag))]

    # -- security stage ---------------------------------------------------------------------

    def _security_stage(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        security: dict[str, str] = {}
        answers: list[tuple[str, str]] = []
        for key, value in pairs:
            if key in _SECURITY_KEYS:
                if key in security:
                    raise _reject(LoginStatus.INITIATOR_ERROR, f"{key} twice in one PDU")
                security[key] = value
            elif key in OPERATIONAL_KEYS:
                # RFC 7143 §13: only keys marked Any-Stage may appear in the security stage.
                raise _reject(LoginStatus.INITIATOR_ERROR, f"{key} in the security stage")
            else:
                answers.append((key, "NotUnderstood"))
        return self._authenticate(security) + answers

    def _authenticate(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        answers: list[tuple[str, str]] = []
        if "AuthMethod" in keys:
            if self._auth_method is not None:
                raise _reject(LoginStatus.INITIATOR_ERROR, "AuthMethod negotiated twice")
            self._auth_method = self._choose_auth_method(keys["AuthMethod"])
            answers.append(("AuthMethod", self._auth_method))
        chap_keys = {key: value for key, value in keys.items() if key in _CHAP_KEYS}
        if not chap_keys:
            return answers
        chap = self._chap
        if chap is None:
            raise AuthenticationFailed("CHAP keys without AuthMethod=CHAP")
        if "CHAP_A" in chap_keys:
            if len(chap_keys) > 1:
                raise AuthenticationFailed("CHAP_A must come alone, before the response")
            return answers + chap.challenge(chap_keys["CHAP_A"])
        answers += chap.verify(chap_keys)
        self._chap_user = chap_keys["CHAP_N"]
        return answers

    def _choose_auth_method(self, offered: str) -> str:
        """RFC 7143 §12.1: CHAP when the target has credentials (None is then refused)."""
        methods = split_list(offered)
        target = self._target
        if target is not None and target.chap is not None:
            if _AUTH_CHAP not in methods:
                raise AuthenticationFailed(f"target requires CHAP; offered {offered[:60]!r}")
            self._chap = ChapAuthenticator(target.chap, target.mutual_chap, self._random_bytes)
            return _AUTH_CHAP
        if _AUTH_NONE not in methods:
            raise AuthenticationFailed(f"no CHAP secret is set here; offered {offered[:60]!r}")
        return _AUTH_NONE

    def _authenticated(self, wants_transit: bool) -> bool:
        """Whether the security stage may end; fails a T=1 request that skips required CHAP."""
        if not self._auth_required:
            return True
        if self._chap is not None:
            return self._chap.done  # answer T=0 while CHAP runs, even to T=1 (iPXE sends it)
        if wants_transit:
            raise AuthenticationFailed("initiator tried to skip CHAP")
        return False

    # -- operational stage ------------------------------------------------------------------

    def _operational_stage(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        auth: dict[str, str] = {}
        operational: list[tuple[str, str]] = []
        for key, value in pairs:
            if key in _CHAP_KEYS or key in auth:
                raise _reject(LoginStatus.INITIATOR_ERROR, f"{key} outside the security stage")
            if key == "AuthMethod":
                # An initiator that skips the security stage may still say AuthMethod=None;
                # answer it rather than fail (a target needing CHAP has refused already).
                auth[key] = value
            else:
                operational.append((key, value))
        answers, self._negotiation = negotiate(
            operational, self._negotiation, self._limits, self._session_type
        )
        return self._authenticate(auth) + answers

    # -- responses --------------------------------------------------------------------------

    def _enter_full_feature(
        self, request: LoginRequest, answers: list[tuple[str, str]]
    ) -> LoginStep:
        parameters = finish(self._negotiation, self._session_type)
        target_name = self._target.name if self._target is not None else None
        tsih = self._sessions.admit(
            self._initiator_name, self._isid, target_name, self._session_type, request.tsih
        )
        if not 1 <= tsih <= 0xFFFF:
            raise LocalProtocolError(f"session admission returned TSIH {tsih}")
        step = self._respond(request, answers, transit=True, tsih=tsih)
        self._phase = _Phase.FULL_FEATURE
        result = LoginResult(
            parameters=parameters,
            session_type=self._session_type,
            initiator_name=self._initiator_name,
            initiator_alias=self._identity.get("InitiatorAlias"),
            target=self._target,
            isid=self._isid,
            tsih=tsih,
            cid=self._cid,
            chap_user=self._chap_user,
            expcmdsn=request.cmdsn,
            maxcmdsn=self._maxcmdsn(request.cmdsn),
            statsn=self._statsn,
        )
        return LoginStep(step.header, step.data, result=result)

    def _respond(
        self,
        request: LoginRequest,
        answers: list[tuple[str, str]],
        *,
        transit: bool,
        tsih: int = 0,
    ) -> LoginStep:
        data = encode_text(answers)
        if len(data) > LOGIN_MAX_DATA_SEGMENT_LENGTH:
            # Only an initiator flooding us with unknown keys gets here.
            raise _reject(LoginStatus.INITIATOR_ERROR, "answer exceeds one login PDU")
        header = encode_login_response(
            transit=transit,
            cont=False,
            csg=request.csg,
            nsg=request.nsg if transit else request.csg,
            isid=self._isid,
            tsih=tsih,
            itt=request.itt,
            statsn=self._next_statsn(),
            expcmdsn=request.cmdsn,
            maxcmdsn=self._maxcmdsn(request.cmdsn),
            version_max=_VERSION,
            version_active=_VERSION,
            data_length=len(data),
        )
        return LoginStep(header, data)

    def _fail(self, itt: int, csg: int, cmdsn: int, status: int, reason: str) -> LoginStep:
        """A Login Response with an error status; the connection closes after it (§11.13.5)."""
        self._phase = _Phase.FAILED
        status_class, status_detail = status >> 8, status & 0xFF
        isid = self._isid if len(self._isid) == 6 else bytes(6)
        header = encode_login_response(
            transit=False,
            cont=False,
            csg=csg,
            nsg=0,
            isid=isid,
            tsih=self._tsih,
            itt=itt,
            statsn=self._next_statsn(),
            expcmdsn=cmdsn,
            maxcmdsn=self._maxcmdsn(cmdsn),
            status_class=status_class,
            status_detail=status_detail,
            data_length=0,
        )
        return LoginStep(
            header,
            b"",
            close=True,
            status_class=status_class,
            status_detail=status_detail,
            reason=reason,
        )

    def _next_statsn(self) -> int:
        """StatSN for this response; the next response of any kind carries it + 1 (§11.13.4)."""
        statsn = self._statsn
        self._statsn = serial_add(statsn, 1)
        return statsn

    def _maxcmdsn(self, expcmdsn: int) -> int:
        return serial_add(expcmdsn, self._window - 1)
