"""INQUIRY: standard data and VPD pages, byte for byte against SPC-4 §6.6 / §7.8 and SBC-3 §6.5."""

from __future__ import annotations

import struct

import pytest
from scsi_cdbs import (
    IDENTITY,
    assert_check,
    assert_good,
    data_of,
    inquiry,
    run,
)

from diskless.scsi import (
    CommandPlan,
    LogicalUnit,
    LuIdentity,
    naa_locally_assigned,
    naa_registered_extended,
)
from diskless.scsi.constants import Asc, SenseKey
from diskless.storage.blockdev import RawImage


def test_standard_inquiry_layout(unit: LogicalUnit) -> None:
    result = run(unit, inquiry(255))
    assert_good(result)
    data = data_of(result)

    assert len(data) == 96
    assert data[0] == 0x00  # PQ 0, direct access block device
    assert data[1] == 0x00  # not removable
    assert data[2] == 0x06  # SPC-4
    assert data[3] == 0x12  # HISUP, RESPONSE DATA FORMAT 2; AERC/TRMTSK clear
    assert data[4] == len(data) - 5
    assert data[5] == 0
    assert data[6] == 0
    assert data[7] == 0x02  # CMDQUE
    assert data[8:16] == b"DISKLESS"
    assert data[16:32] == b"VIRTUAL DISK    "
    assert data[32:36] == b"0001"
    descriptors = struct.unpack(">8H", data[58:74])
    assert descriptors[:4] == (0x00A0, 0x0960, 0x0460, 0x04C0)  # SAM-5, iSCSI, SPC-4, SBC-3
    assert set(descriptors[4:]) == {0}


def test_removable_unit_sets_rmb(raw: RawImage) -> None:
    unit = LogicalUnit(raw, IDENTITY, removable=True, power_on_unit_attention=False)

    assert data_of(run(unit, inquiry(36)))[1] == 0x80


@pytest.mark.parametrize("alloc", [0, 1, 5, 35, 36, 95, 96, 255, 256, 4096])
def test_allocation_length_cuts_the_data(unit: LogicalUnit, alloc: int) -> None:
    plan = unit.plan(inquiry(alloc))
    result = run(unit, inquiry(alloc))

    assert_good(result)
    assert isinstance(plan, CommandPlan)
    assert plan.transfer_length == alloc
    full = data_of(run(unit, inquiry(255)))
    assert data_of(result) == full[:alloc]


def test_page_code_without_evpd_is_invalid(unit: LogicalUnit) -> None:
    result = run(unit, inquiry(256, page=0x01))

    assert_check(result, SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, field=(2, None))


def test_cmddt_is_invalid(unit: LogicalUnit) -> None:
    result = run(unit, bytes((0x12, 0x02, 0, 0, 255, 0)))

    assert_check(result, SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, field=(1, 1))


@pytest.mark.parametrize("page", [0x01, 0x81, 0x86, 0x89, 0xB3, 0xB7, 0xFF])
def test_unsupported_vpd_page_is_invalid(unit: LogicalUnit, page: int) -> None:
    result = run(unit, inquiry(255, evpd=True, page=page))

    assert_check(result, SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, field=(2, None))


def _vpd(unit: LogicalUnit, page: int, alloc: int = 1024) -> bytes:
    result = run(unit, inquiry(alloc, evpd=True, page=page))
    assert_good(result)
    data = data_of(result)
    assert data[0] == 0x00
    assert data[1] == page
    assert int.from_bytes(data[2:4], "big") == len(data) - 4
    return data


def test_supported_pages_are_sorted_and_all_answer(unit: LogicalUnit) -> None:
    data = _vpd(unit, 0x00)
    pages = list(data[4:])

    assert pages == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    assert pages == sorted(pages)
    for page in pages:
        _vpd(unit, page)


def test_unit_serial_number(unit: LogicalUnit) -> None:
    assert _vpd(unit, 0x80)[4:] == b"DL0123456789"


def _designators(data: bytes) -> list[tuple[int, int, bytes]]:
    found = []
    pos = 4
    while pos < len(data):
        header = data[pos : pos + 4]
        length = header[3]
        found.append((header[0], header[1], data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    assert pos == len(data)
    return found


def test_device_identification(unit: LogicalUnit) -> None:
    designators = _designators(_vpd(unit, 0x83))

    naa, t10, name = designators
    assert naa == (0x01, 0x03, IDENTITY.naa)  # binary; LU association; NAA
    assert naa[2][0] >> 4 == 0x3  # locally assigned
    assert t10 == (0x02, 0x01, b"DISKLESS" + b"DL0123456789")  # ASCII; LU; T10 vendor ID
    assert name[0] == 0x53  # protocol iSCSI (5), code set UTF-8 (3)
    assert name[1] == 0xA8  # PIV, target device association, SCSI name string
    assert name[2] == b"iqn.2024-01.org.diskless:client-1\x00\x00\x00"
    assert len(name[2]) % 4 == 0


def test_device_identification_without_target_name(raw: RawImage) -> None:
    identity = LuIdentity(serial="S1", naa=naa_registered_extended(0x001405, b"x"))
    unit = LogicalUnit(raw, identity, power_on_unit_attention=False)

    naa, _t10 = _designators(_vpd(unit, 0x83))
    assert len(naa[2]) == 16
    assert naa[2][0] >> 4 == 0x6
    assert int.from_bytes(naa[2][:4], "big") >> 4 & 0xFFFFFF == 0x001405


def test_block_limits(unit: LogicalUnit) -> None:
    data = _vpd(unit, 0xB0)

    assert len(data) == 64
    assert data[3] == 0x3C  # SBC-3 page length, as libiscsi checks
    assert data[4] & 0x01  # WSNZ
    assert data[5] == 0  # no COMPARE AND WRITE
    (granularity,) = struct.unpack_from(">H", data, 6)
    max_transfer, optimal, prefetch, max_unmap, max_descriptors, unmap_granularity, uga = (
        struct.unpack_from(">7I", data, 8)
    )
    assert granularity == 8
    assert max_transfer == unit.limits.max_transfer_blocks == 2048
    assert optimal == 0
    assert prefetch == 0
    assert 0 < max_unmap <= 1024 * 1024  # libiscsi BlockLimits: non-zero and sane
    assert 256 <= max_descriptors <= 1024 * 1024
    assert unmap_granularity == 128
    assert uga == 0x80000000  # UGAVALID, alignment 0
    assert struct.unpack_from(">Q", data, 36)[0] == unit.limits.max_write_same_blocks


def test_block_device_characteristics_say_non_rotating(unit: LogicalUnit) -> None:
    data = _vpd(unit, 0xB1)

    assert data[3] == 0x3C
    assert struct.unpack_from(">H", data, 4)[0] == 0x0001


def test_logical_block_provisioning(unit: LogicalUnit) -> None:
    data = _vpd(unit, 0xB2)

    assert data[2:4] == b"\x00\x04"
    assert data[5] == 0x80 | 0x40 | 0x20 | 0x04  # LBPU, LBPWS, LBPWS10, LBPRZ; no ANC_SUP
    assert data[6] & 0x07 == 0x02  # thin


def test_vpd_allocation_length(unit: LogicalUnit) -> None:
    assert data_of(run(unit, inquiry(3, evpd=True, page=0xB0))) == _vpd(unit, 0xB0)[:3]


def test_inquiry_needs_no_medium_and_reports_no_unit_attention(raw: RawImage) -> None:
    unit = LogicalUnit(raw, IDENTITY)  # power-on unit attention pending

    assert_good(run(unit, inquiry(36)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vendor": "TOO LONG VENDOR"}, "vendor"),
        ({"product": "é"}, "product"),
        ({"revision": ""}, "revision"),
        ({"serial": "a\x01"}, "serial"),
        ({"naa": b"\x31\x02"}, "naa"),
        ({"naa": bytes(16)}, "naa"),
        ({"naa": b"\x61" + bytes(7)}, "naa"),
        ({"target_name": "x" * 300}, "target_name"),
    ],
)
def test_identity_is_validated(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"serial": "S", "naa": naa_locally_assigned(b"a")} | kwargs
    with pytest.raises(ValueError, match=message):
        LuIdentity(**fields)  # type: ignore[arg-type]


def test_naa_helpers_are_stable() -> None:
    assert naa_locally_assigned(b"disk-1") == naa_locally_assigned(b"disk-1")
    assert naa_locally_assigned(b"disk-1") != naa_locally_assigned(b"disk-2")
    with pytest.raises(ValueError, match="OUI"):
        naa_registered_extended(1 << 24, b"x")


def test_longest_serial_fits_the_designators(raw: RawImage) -> None:
    identity = LuIdentity(serial="S" * 64, naa=naa_locally_assigned(b"x"), target_name="i" * 223)
    unit = LogicalUnit(raw, identity, power_on_unit_attention=False)

    assert _vpd(unit, 0x80)[4:] == b"S" * 64
    assert len(_designators(_vpd(unit, 0x83))) == 3
    with pytest.raises(ValueError, match="serial"):
        LuIdentity(serial="S" * 65, naa=naa_locally_assigned(b"x"))
