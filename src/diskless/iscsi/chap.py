"""Target-side CHAP for iSCSI logins (RFC 1994; RFC 7143 §12.1.3), one-way and mutual.

One :class:`ChapAuthenticator` runs the exchange of one login: it picks the algorithm from the
initiator's ``CHAP_A`` list, issues ``CHAP_I``/``CHAP_C`` from an injected random source, checks
``CHAP_N``/``CHAP_R`` in constant time and, when the initiator sends its own ``CHAP_I``/``CHAP_C``,
proves the target's identity back. Failures raise :class:`AuthenticationFailed` carrying the
login status to answer with. Algorithm numbers are IANA's PPP ones (5 MD5, 6 SHA-1, 7 SHA-256),
not tgt's private mapping.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Final

from .errors import AuthenticationFailed, LocalProtocolError, MalformedText
from .text import MAX_VALUE_LENGTH, decode_binary, encode_hex, parse_number, split_list

__all__ = [
    "CHALLENGE_LENGTH",
    "MAX_CHALLENGE_LENGTH",
    "SUPPORTED_ALGORITHMS",
    "ChapAlgorithm",
    "ChapAuthenticator",
    "ChapCredentials",
    "chap_response",
]


class ChapAlgorithm(IntEnum):
    """CHAP_A values: IANA "PPP Authentication Algorithms" numbers (RFC 7143 §12.1.3)."""

    MD5 = 5
    SHA1 = 6
    SHA256 = 7


_HASHES: Final = {
    ChapAlgorithm.MD5: hashlib.md5,
    ChapAlgorithm.SHA1: hashlib.sha1,
    ChapAlgorithm.SHA256: hashlib.sha256,
}
# Every algorithm we implement; MD5 is the one RFC 7143 requires and the only one iPXE offers.
SUPPORTED_ALGORITHMS: Final = tuple(ChapAlgorithm)

# Our challenge: 16 random bytes, the length LIO sends (and every initiator we serve accepts).
CHALLENGE_LENGTH: Final = 16
# The initiator's challenge (mutual CHAP): tgt refuses more than 1024 bytes; so do we. RFC 1994
# allows any non-empty challenge; iPXE and open-iscsi send 16 bytes, but no source documents what
# Windows sends, so only an empty one is refused.
MAX_CHALLENGE_LENGTH: Final = 1024
MIN_CHALLENGE_LENGTH: Final = 1
_MAX_IDENTIFIER = 255  # CHAP_I is one byte (RFC 1994 §4.1)
_STATUS_MISSING_PARAMETER = 0x07


@dataclass(frozen=True, slots=True)
class ChapCredentials:
    """A CHAP name and secret; the secret never appears in a repr."""

    user: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.user or not self.secret:
            raise LocalProtocolError("CHAP credentials need a user name and a secret")
        if "\0" in self.user or len(self.user.encode("utf-8")) > MAX_VALUE_LENGTH:
            # CHAP_N travels as an ordinary text value (RFC 7143 §6.1).
            raise LocalProtocolError(f"CHAP user name must be 1..{MAX_VALUE_LENGTH} bytes")

    @classmethod
    def from_text(cls, user: str, secret: str) -> ChapCredentials:
        """Credentials from configuration, where secrets are text (UTF-8 on the wire)."""
        return cls(user, secret.encode("utf-8"))


def chap_response(
    algorithm: ChapAlgorithm, identifier: int, secret: bytes, challenge: bytes
) -> bytes:
    """RFC 1994 §4.1: H(identifier || secret || challenge)."""
    digest = _HASHES[algorithm]()
    digest.update(bytes((identifier,)) + secret + challenge)
    return digest.digest()


class _Step(Enum):
    AWAIT_ALGORITHM = "await CHAP_A"
    AWAIT_RESPONSE = "await CHAP_N/CHAP_R"
    DONE = "done"


class ChapAuthenticator:
    """The target side of one CHAP exchange.

    ``credentials`` authenticate the initiator; ``mutual`` (optional) are what the target proves
    itself with when the initiator asks. ``random_bytes(n)`` supplies the challenge and
    identifier (``secrets.token_bytes`` in production, a fixed source in tests).
    """

    def __init__(
        self,
        credentials: ChapCredentials,
        mutual: ChapCredentials | None,
        random_bytes: Callable[[int], bytes],
        *,
        algorithms: tuple[ChapAlgorithm, ...] = SUPPORTED_ALGORITHMS,
    ) -> None:
        if mutual is not None and hmac.compare_digest(mutual.secret, credentials.secret):
            # RFC 7143 §12.1.3: a secret used to authenticate initiators MUST NOT authenticate
            # the target.
            raise LocalProtocolError("the mutual CHAP secret must differ from the initiator's")
        self._credentials = credentials
        self._mutual = mutual
        self._random_bytes = random_bytes
        self._algorithms = algorithms
        self._step = _Step.AWAIT_ALGORITHM
        self._algorithm = ChapAlgorithm.MD5
        self._identifier = 0
        self._challenge = b""

    @property
    def done(self) -> bool:
        """Whether the initiator has authenticated."""
        return self._step is _Step.DONE

    @property
    def expects_algorithm(self) -> bool:
        return self._step is _Step.AWAIT_ALGORITHM

    @property
    def expects_response(self) -> bool:
        return self._step is _Step.AWAIT_RESPONSE

    def challenge(self, offered_algorithms: str) -> list[tuple[str, str]]:
        """Answer ``CHAP_A``: the chosen algorithm, our identifier and our challenge."""
        if self._step is not _Step.AWAIT_ALGORITHM:
            raise AuthenticationFailed("CHAP_A sent twice")
        algorithm = self._choose(offered_algorithms)
        identifier = self._random_bytes(1)
        challenge = self._random_bytes(CHALLENGE_LENGTH)
        if len(identifier) != 1 or len(challenge) != CHALLENGE_LENGTH:
            raise LocalProtocolError("random source returned the wrong number of bytes")
        self._algorithm = algorithm
        self._identifier = identifier[0]
        self._challenge = challenge
        self._step = _Step.AWAIT_RESPONSE
        return [
            ("CHAP_A", str(int(algorithm))),
            ("CHAP_I", str(self._identifier)),
            ("CHAP_C", encode_hex(challenge)),
        ]

    def verify(self, keys: Mapping[str, str]) -> list[tuple[str, str]]:
        """Check ``CHAP_N``/``CHAP_R``; answer ``CHAP_N``/``CHAP_R`` if mutual CHAP was asked.

        Raises :class:`AuthenticationFailed`: 0x0207 when a key is missing, 0x0201 otherwise.
        """
        if self._step is not _Step.AWAIT_RESPONSE:
            raise AuthenticationFailed("CHAP response before the challenge")
        name, response = keys.get("CHAP_N"), keys.get("CHAP_R")
        if name is None or response is None:
            raise AuthenticationFailed(
                "CHAP_N and CHAP_R are required", status_detail=_STATUS_MISSING_PARAMETER
            )
        received = self._binary(response, "CHAP_R")
        secret = self._credentials.secret
        expected = chap_response(self._algorithm, self._identifier, secret, self._challenge)
        # Compare both before deciding, so the time taken does not reveal which one failed.
        name_ok = hmac.compare_digest(name.encode("utf-8"), self._credentials.user.encode("utf-8"))
        response_ok = hmac.compare_digest(received, expected)
        if not (name_ok and response_ok):
            raise AuthenticationFailed(f"CHAP authentication failed for {name[:64]!r}")
        if self._mutual is not None and hmac.compare_digest(
            received,
            chap_response(self._algorithm, self._identifier, self._mutual.secret, self._challenge),
        ):
            # RFC 7143 §12.1.3: a response we would have produced ourselves means one secret
            # serves both directions; that MUST be treated as an authentication failure.
            raise AuthenticationFailed("initiator and target share a CHAP secret")
        answers = self._prove_target(keys)
        self._step = _Step.DONE
        return answers

    def _prove_target(self, keys: Mapping[str, str]) -> list[tuple[str, str]]:
        identifier_text, challenge_text = keys.get("CHAP_I"), keys.get("CHAP_C")
        if identifier_text is None and challenge_text is None:
            return []  # one-way CHAP
        if identifier_text is None or challenge_text is None:
            raise AuthenticationFailed(
                "mutual CHAP needs both CHAP_I and CHAP_C", status_detail=_STATUS_MISSING_PARAMETER
            )
        if self._mutual is None:
            raise AuthenticationFailed("initiator asked for mutual CHAP; no target secret is set")
        try:
            identifier = parse_number(identifier_text)
        except MalformedText as exc:
            raise AuthenticationFailed(f"bad CHAP_I: {exc}") from exc
        if identifier > _MAX_IDENTIFIER:
            raise AuthenticationFailed(f"CHAP_I {identifier} does not fit one byte")
        challenge = self._binary(challenge_text, "CHAP_C")
        if not MIN_CHALLENGE_LENGTH <= len(challenge) <= MAX_CHALLENGE_LENGTH:
            raise AuthenticationFailed(
                f"CHAP_C of {len(challenge)} bytes "
                f"({MIN_CHALLENGE_LENGTH}..{MAX_CHALLENGE_LENGTH} allowed)"
            )
        if hmac.compare_digest(challenge, self._challenge):
            # RFC 7143 §12.1.3: a reflected challenge would make us compute the answer to our
            # own question; the connection MUST be refused.
            raise AuthenticationFailed("initiator reflected the target's CHAP challenge")
        proof = chap_response(self._algorithm, identifier, self._mutual.secret, challenge)
        return [("CHAP_N", self._mutual.user), ("CHAP_R", encode_hex(proof))]

    def _choose(self, offered: str) -> ChapAlgorithm:
        """The first algorithm in the initiator's list that we support (RFC 7143 §6.2.1)."""
        for item in split_list(offered):
            try:
                number = parse_number(item)
            except MalformedText:
                continue
            for algorithm in self._algorithms:
                if algorithm.value == number:
                    return algorithm
        raise AuthenticationFailed(f"no supported CHAP algorithm in CHAP_A={offered[:40]!r}")

    def _binary(self, value: str, key: str) -> bytes:
        try:
            return decode_binary(value)
        except MalformedText as exc:
            raise AuthenticationFailed(f"{key} is not a binary value: {exc}") from exc
