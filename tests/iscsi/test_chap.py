"""Target-side CHAP: one-way, mutual, wrong secrets, reflection, encodings, algorithms.

The initiator side is computed here straight from RFC 1994 §4.1 with hashlib, independently of
the code under test.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest

from diskless.iscsi.chap import (
    CHALLENGE_LENGTH,
    MAX_CHALLENGE_LENGTH,
    ChapAlgorithm,
    ChapAuthenticator,
    ChapCredentials,
    chap_response,
)
from diskless.iscsi.errors import AuthenticationFailed, LocalProtocolError

INITIATOR = ChapCredentials.from_text("pc1", "initiator-secret-12")
TARGET = ChapCredentials.from_text("diskless", "target-secret-1234")


def counting_random() -> Callable[[int], bytes]:
    """Deterministic stand-in for ``secrets.token_bytes``."""
    state = {"next": 0}

    def random_bytes(n: int) -> bytes:
        start = state["next"]
        state["next"] += n
        return bytes((start + i) % 256 for i in range(n))

    return random_bytes


def md5_response(identifier: int, secret: bytes, challenge: bytes) -> bytes:
    return hashlib.md5(bytes([identifier]) + secret + challenge).digest()


def challenged(
    mutual: ChapCredentials | None = None, offered: str = "5"
) -> tuple[ChapAuthenticator, dict[str, str]]:
    auth = ChapAuthenticator(INITIATOR, mutual, counting_random())
    return auth, dict(auth.challenge(offered))


def test_one_way_chap_as_ipxe_runs_it() -> None:
    auth, keys = challenged()
    assert keys["CHAP_A"] == "5"
    identifier = int(keys["CHAP_I"])
    challenge = bytes.fromhex(keys["CHAP_C"].removeprefix("0x"))
    assert len(challenge) == CHALLENGE_LENGTH
    assert not auth.done

    response = md5_response(identifier, INITIATOR.secret, challenge)
    answers = auth.verify({"CHAP_N": "pc1", "CHAP_R": "0x" + response.hex().upper()})

    assert answers == []
    assert auth.done


def test_base64_response_is_accepted() -> None:
    auth, keys = challenged()
    challenge = bytes.fromhex(keys["CHAP_C"][2:])
    response = md5_response(int(keys["CHAP_I"]), INITIATOR.secret, challenge)
    auth.verify({"CHAP_N": "pc1", "CHAP_R": "0b" + base64.b64encode(response).decode()})
    assert auth.done


def test_mutual_chap_proves_the_target() -> None:
    auth, keys = challenged(mutual=TARGET)
    challenge = bytes.fromhex(keys["CHAP_C"][2:])
    response = md5_response(int(keys["CHAP_I"]), INITIATOR.secret, challenge)
    our_challenge = bytes(range(100, 116))

    answers = dict(
        auth.verify(
            {
                "CHAP_N": "pc1",
                "CHAP_R": "0x" + response.hex(),
                "CHAP_I": "77",
                "CHAP_C": "0x" + our_challenge.hex(),
            }
        )
    )

    assert answers["CHAP_N"] == "diskless"
    assert answers["CHAP_R"] == "0x" + md5_response(77, TARGET.secret, our_challenge).hex()


@pytest.mark.parametrize(
    ("offered", "algorithm", "hash_name"),
    [("5", ChapAlgorithm.MD5, "md5"), ("7,5", ChapAlgorithm.SHA256, "sha256"),
     ("6", ChapAlgorithm.SHA1, "sha1"), ("8,99,x,5", ChapAlgorithm.MD5, "md5")],
)  # fmt: skip
def test_first_supported_algorithm_in_the_initiators_order(
    offered: str, algorithm: ChapAlgorithm, hash_name: str
) -> None:
    auth, keys = challenged(offered=offered)
    assert keys["CHAP_A"] == str(int(algorithm))
    challenge = bytes.fromhex(keys["CHAP_C"][2:])
    identifier = int(keys["CHAP_I"])
    digest = hashlib.new(hash_name, bytes([identifier]) + INITIATOR.secret + challenge).digest()
    assert chap_response(algorithm, identifier, INITIATOR.secret, challenge) == digest
    auth.verify({"CHAP_N": "pc1", "CHAP_R": "0x" + digest.hex()})
    assert auth.done


def test_tgts_private_numbering_is_not_ours() -> None:
    # tgt calls SHA-1 "7"; IANA's 7 is SHA-256, whose responses are 32 bytes.
    _, keys = challenged(offered="7")
    assert keys["CHAP_A"] == "7"
    assert len(chap_response(ChapAlgorithm(7), 0, b"s", b"c")) == 32


def test_unsupported_algorithms_fail_authentication() -> None:
    auth = ChapAuthenticator(INITIATOR, None, counting_random())
    with pytest.raises(AuthenticationFailed) as caught:
        auth.challenge("8,128")
    assert (caught.value.status_class, caught.value.status_detail) == (2, 1)


def test_wrong_secret_fails() -> None:
    auth, keys = challenged()
    challenge = bytes.fromhex(keys["CHAP_C"][2:])
    response = md5_response(int(keys["CHAP_I"]), b"not-the-secret", challenge)
    with pytest.raises(AuthenticationFailed):
        auth.verify({"CHAP_N": "pc1", "CHAP_R": "0x" + response.hex()})
    assert not auth.done


def test_wrong_name_fails_even_with_the_right_response() -> None:
    auth, keys = challenged()
    challenge = bytes.fromhex(keys["CHAP_C"][2:])
    response = md5_response(int(keys["CHAP_I"]), INITIATOR.secret, challenge)
    with pytest.raises(AuthenticationFailed):
        auth.verify({"CHAP_N": "pc2", "CHAP_R": "0x" + response.hex()})


def test_reflected_challenge_is_refused() -> None:
    auth, keys = challenged(mutual=TARGET)
    challenge = bytes.fromhex(keys["CHAP_C"][2:])
    response = md5_response(int(keys["CHAP_I"]), INITIATOR.secret, challenge)
    with pytest.raises(AuthenticationFailed, match="reflected"):
        auth.verify(
            {
                "CHAP_N": "pc1",
                "CHAP_R": "0x" + response.hex(),
                "CHAP_I": keys["CHAP_I"],
                "CHAP_C": keys["CHAP_C"],
            }
        )


@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        ({"CHAP_I": "1"}, 0x07),  # CHAP_C missing
        ({"CHAP_C": "0x" + "00" * 16}, 0x07),  # CHAP_I missing
        ({"CHAP_I": "256", "CHAP_C": "0x" + "00" * 16}, 0x01),
        ({"CHAP_I": "x", "CHAP_C": "0x" + "00" * 16}, 0x01),
        ({"CHAP_I": "1", "CHAP_C": "0x"}, 0x01),
        ({"CHAP_I": "1", "CHAP_C": "0x" + "00" * (MAX_CHALLENGE_LENGTH + 1)}, 0x01),
    ],
)
def test_bad_mutual_challenges(extra: dict[str, str], detail: int) -> None:
    auth, keys = challenged(mutual=TARGET)
    challenge = bytes.fromhex(keys["CHAP_C"][2:])
    response = md5_response(int(keys["CHAP_I"]), INITIATOR.secret, challenge)
    with pytest.raises(AuthenticationFailed) as caught:
        auth.verify({"CHAP_N": "pc1", "CHAP_R": "0x" + response.hex(), **extra})
    assert caught.value.status_detail == detail


def test_mutual_requested_without_a_target_secret_fails() -> None:
    auth, keys = challenged(mutual=None)
    challenge = bytes.fromhex(keys["CHAP_C"][2:])
    response = md5_response(int(keys["CHAP_I"]), INITIATOR.secret, challenge)
    with pytest.raises(AuthenticationFailed, match="mutual"):
        auth.verify(
            {"CHAP_N": "pc1", "CHAP_R": "0x" + response.hex(), "CHAP_I": "1", "CHAP_C": "0x01"}
        )


@pytest.mark.parametrize(
    "keys",
    [{"CHAP_N": "pc1"}, {"CHAP_R": "0x00"}, {}],
)
def test_missing_name_or_response_is_a_missing_parameter(keys: dict[str, str]) -> None:
    auth, _ = challenged()
    with pytest.raises(AuthenticationFailed) as caught:
        auth.verify(keys)
    assert caught.value.status_detail == 0x07


@pytest.mark.parametrize("response", ["abcdef", "0xzz", "0x" + "00" * 15, "0b!!"])
def test_malformed_or_short_responses_fail(response: str) -> None:
    auth, _ = challenged()
    with pytest.raises(AuthenticationFailed):
        auth.verify({"CHAP_N": "pc1", "CHAP_R": response})


def test_steps_must_come_in_order() -> None:
    auth = ChapAuthenticator(INITIATOR, None, counting_random())
    with pytest.raises(AuthenticationFailed):
        auth.verify({"CHAP_N": "pc1", "CHAP_R": "0x00"})
    auth.challenge("5")
    with pytest.raises(AuthenticationFailed):
        auth.challenge("5")


def test_initiator_and_target_secrets_must_differ() -> None:
    same = ChapCredentials("diskless", INITIATOR.secret)
    with pytest.raises(LocalProtocolError):
        ChapAuthenticator(INITIATOR, same, counting_random())


def test_secrets_stay_out_of_reprs() -> None:
    assert "initiator-secret" not in repr(INITIATOR)


def test_credentials_need_a_name_and_a_secret() -> None:
    with pytest.raises(LocalProtocolError):
        ChapCredentials("", b"x")
    with pytest.raises(LocalProtocolError):
        ChapCredentials("x", b"")
    with pytest.raises(LocalProtocolError):
        ChapCredentials("u" * 256, b"x")


def test_random_source_must_deliver() -> None:
    auth = ChapAuthenticator(INITIATOR, None, lambda n: b"")
    with pytest.raises(LocalProtocolError):
        auth.challenge("5")
