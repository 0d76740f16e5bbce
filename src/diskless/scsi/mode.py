"""Mode pages: MODE SENSE answers and MODE SELECT parsing (SPC-4 §6.11-6.14, §7.5; SBC-3 §6.4).

A logical unit has three pages: caching (0x08), control (0x0A) and informational exceptions
control (0x1C). Two bits can be changed: WCE in the caching page (write-back cache on, the
default, so initiators send SYNCHRONIZE CACHE and FUA; off makes every write FUA) and SWP in the
control page (software write protect). Saved values are not supported. The values are shared by
every I_T nexus of the logical unit, as SPC-4 §7.5.1 allows.
"""

from __future__ import annotations

from diskless.scsi.constants import Asc, ModePage, SenseKey
from diskless.scsi.sense import CheckCondition, FieldPointer

__all__ = [
    "PC_CHANGEABLE",
    "PC_CURRENT",
    "PC_DEFAULT",
    "PC_SAVED",
    "ModePages",
]

PC_CURRENT = 0
PC_CHANGEABLE = 1
PC_DEFAULT = 2
PC_SAVED = 3

_ALL_SUBPAGES = 0xFF
_WP = 0x80  # DEVICE-SPECIFIC PARAMETER: write protected (SBC-3 §6.4.1)
_DPOFUA = 0x10  # DEVICE-SPECIFIC PARAMETER: DPO and FUA bits are understood
_LONGLBA = 0x01
_SHORT_DESCRIPTOR = 8
_LONG_DESCRIPTOR = 16
_SPF = 0x40  # page byte 0: SUB_PAGE format
_WCE = 0x04  # caching page byte 2
_SWP = 0x08  # control page byte 4

# (default values, changeable mask) per page; byte 0 is the PAGE CODE (PS = 0: nothing is saved),
# byte 1 the PAGE LENGTH.
_CACHING_DEFAULT = bytes((ModePage.CACHING, 0x12, _WCE)) + bytes(17)
_CACHING_MASK = bytes((0, 0, _WCE)) + bytes(17)
_CONTROL_DEFAULT = bytes(
    (
        ModePage.CONTROL,
        0x0A,
        0x02,  # GLTSD: no log parameters are saved; D_SENSE 0: fixed-format sense
        0x10,  # QUEUE ALGORITHM MODIFIER 1: SIMPLE commands may be reordered; QERR 0
        0x00,  # SWP 0; UA_INTLCK_CTRL 0: a reported unit attention is cleared
        0x00,  # TAS 0: commands aborted for another nexus end without status
        0x00,
        0x00,
        0xFF,  # BUSY TIMEOUT PERIOD: unlimited
        0xFF,
        0x00,
        0x00,
    )
)
_CONTROL_MASK = bytes((0, 0, 0, 0, _SWP)) + bytes(7)
_IEC_DEFAULT = bytes((ModePage.INFORMATIONAL_EXCEPTIONS_CONTROL, 0x0A)) + bytes(10)
_IEC_MASK = bytes(12)

_PAGES: dict[int, tuple[bytes, bytes]] = {
    ModePage.CACHING: (_CACHING_DEFAULT, _CACHING_MASK),
    ModePage.CONTROL: (_CONTROL_DEFAULT, _CONTROL_MASK),
    ModePage.INFORMATIONAL_EXCEPTIONS_CONTROL: (_IEC_DEFAULT, _IEC_MASK),
}
_PAGE_ORDER = tuple(sorted(_PAGES))  # "all pages" answers list them by ascending page code


class ModePages:
    """The current mode parameters of one logical unit. Not thread-safe: the LU serialises."""

    def __init__(self) -> None:
        self._current = {code: bytearray(default) for code, (default, _) in _PAGES.items()}

    @property
    def write_cache_enabled(self) -> bool:
        return bool(self._current[ModePage.CACHING][2] & _WCE)

    @property
    def software_write_protect(self) -> bool:
        return bool(self._current[ModePage.CONTROL][4] & _SWP)

    def reset(self) -> bool:
        """Return every page to its default (after a reset); True if anything changed."""
        changed = False
        for code, (default, _) in _PAGES.items():
            if self._current[code] != default:
                self._current[code][:] = default
                changed = True
        return changed

    def sense(
        self,
        cdb: bytes,
        *,
        ten: bool,
        blocks: int,
        block_size: int,
        write_protected: bool,
    ) -> bytes:
        """The whole MODE SENSE(6) or (10) answer for ``cdb``, before cutting to ALLOCATION LENGTH.

        Raises :class:`CheckCondition` for saved values (39h/00h) and unknown pages or subpages.
        """
        pc = cdb[2] >> 6
        page_code = cdb[2] & 0x3F
        subpage = cdb[3]
        if pc == PC_SAVED:
            raise CheckCondition(
                SenseKey.ILLEGAL_REQUEST,
                Asc.SAVING_PARAMETERS_NOT_SUPPORTED,
                field=FieldPointer(2, 7),
            )
        if page_code == ModePage.ALL_PAGES:
            codes = _PAGE_ORDER
        elif page_code in _PAGES:
            codes = (page_code,)
        else:
            raise CheckCondition(
                SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, field=FieldPointer(2, 5)
            )
        # None of our pages has subpages: only subpage 0 and "all subpages" (FFh) name anything.
        if subpage not in (0, _ALL_SUBPAGES):
            raise CheckCondition(
                SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, field=FieldPointer(3)
            )
        pages = b"".join(self._page(code, pc) for code in codes)

        dbd = bool(cdb[1] & 0x08)
        llbaa = ten and bool(cdb[1] & 0x10)
        descriptor = b"" if dbd else _block_descriptor(blocks, block_size, long=llbaa)
        device_specific = _DPOFUA | (_WP if write_protected else 0)
        if ten:
            total = 8 + len(descriptor) + len(pages)
            header = (
                (total - 2).to_bytes(2, "big")
                + bytes((0, device_specific, _LONGLBA if llbaa and descriptor else 0, 0))
                + len(descriptor).to_bytes(2, "big")
            )
        else:
            total = 4 + len(descriptor) + len(pages)
            header = bytes((min(total - 1, 0xFF), 0, device_specific, len(descriptor)))
        return header + descriptor + pages

    def _page(self, code: int, pc: int) -> bytes:
        default, mask = _PAGES[code]
        if pc == PC_CHANGEABLE:
            return default[:2] + mask[2:]
        if pc == PC_DEFAULT:
            return default
        return bytes(self._current[code])

    def select(
        self, params: bytes | bytearray | memoryview, *, ten: bool, blocks: int, block_size: int
    ) -> bool:
        """Apply a MODE SELECT parameter list; True if a current value changed.

        All-or-nothing: every page is checked before any is applied. A value may differ from the
        current one only in changeable bits (else INVALID FIELD IN PARAMETER LIST, pointing at the
        byte); a page running past the list is a PARAMETER LIST LENGTH ERROR.
        """
        data = bytes(params)
        header_length = 8 if ten else 4
        if not data:
            return False
        if len(data) < header_length:
            raise _length_error()
        medium_type = data[2] if ten else data[1]
        if medium_type:
            raise _param_error(2 if ten else 1)
        if ten:
            descriptor_length = int.from_bytes(data[6:8], "big")
            descriptor_size = _LONG_DESCRIPTOR if data[4] & _LONGLBA else _SHORT_DESCRIPTOR
        else:
            descriptor_length = data[3]
            descriptor_size = _SHORT_DESCRIPTOR
        pos = header_length
        if pos + descriptor_length > len(data):
            raise _length_error()
        if descriptor_length % descriptor_size:
            raise _param_error(6 if ten else 3)
        for start in range(pos, pos + descriptor_length, descriptor_size):
            _check_block_descriptor(data, start, descriptor_size, blocks, block_size)
        pos += descriptor_length

        staged: list[tuple[int, bytes]] = []
        while pos < len(data):
            code, page_end = _page_bounds(data, pos)
            if code not in _PAGES:
                raise _param_error(pos, 5)
            default, mask = _PAGES[code]
            if page_end - pos != len(default):
                raise _param_error(pos + 1)
            current = self._current[code]
            for index in range(2, len(default)):
                forbidden = (data[pos + index] ^ current[index]) & ~mask[index] & 0xFF
                if forbidden:
                    raise _param_error(pos + index, forbidden.bit_length() - 1)
            staged.append((code, data[pos:page_end]))
            pos = page_end

        changed = False
        for code, page in staged:
            current = self._current[code]
            updated = bytes(current[:2]) + page[2:]
            if updated != current:
                current[:] = updated
                changed = True
        return changed


def _page_bounds(data: bytes, pos: int) -> tuple[int, int]:
    """(page code, end offset) of the page starting at ``pos``; SPF pages are never ours."""
    if pos + 2 > len(data):
        raise _length_error()
    if data[pos] & _SPF:
        if pos + 4 > len(data):
            raise _length_error()
        end = pos + 4 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        code = -1  # a subpage: we have none
    else:
        end = pos + 2 + data[pos + 1]
        code = data[pos] & 0x3F
    if end > len(data):
        raise _length_error()
    return code, end


def _block_descriptor(blocks: int, block_size: int, *, long: bool) -> bytes:
    if long:
        return blocks.to_bytes(8, "big") + bytes(4) + block_size.to_bytes(4, "big")
    # SPC-4 §7.5.5.2: a capacity that does not fit 32 bits is reported as FFFFFFFFh.
    return min(blocks, 0xFFFFFFFF).to_bytes(4, "big") + b"\x00" + block_size.to_bytes(3, "big")


def _check_block_descriptor(
    data: bytes, start: int, size: int, blocks: int, block_size: int
) -> None:
    """A block descriptor may restate the capacity (or give 0: no change), never change it."""
    if size == _LONG_DESCRIPTOR:
        count = int.from_bytes(data[start : start + 8], "big")
        length = int.from_bytes(data[start + 12 : start + 16], "big")
        length_at = start + 12
    else:
        count = int.from_bytes(data[start : start + 4], "big")
        length = int.from_bytes(data[start + 5 : start + 8], "big")
        length_at = start + 5
        blocks = min(blocks, 0xFFFFFFFF)
    if count not in (0, blocks):
        raise _param_error(start)
    if length != block_size:
        raise _param_error(length_at)


def _length_error() -> CheckCondition:
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)


def _param_error(byte: int, bit: int | None = None) -> CheckCondition:
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
        field=FieldPointer(byte, bit, in_cdb=False),
    )
