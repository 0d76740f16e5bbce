"""Boot policy: who a client is, what it boots, and the one function that decides.

* ``arch``: option-93 client architectures → firmware family and HTTP boot.
* ``machines``: :class:`Machine` records, boot targets and the :class:`MachineBook` snapshot
  (loaded from a TOML file until the inventory lands).
* ``policy``: :func:`decide` (pure) → :class:`BootPlan`, shared by DHCP, TFTP and HTTP.
"""

from diskless.boot.arch import Firmware, Platform, classify_arch
from diskless.boot.machines import (
    BootTarget,
    ChainTarget,
    LinuxTarget,
    LocalDiskTarget,
    Machine,
    MachineBook,
    MenuItem,
    MenuTarget,
    NetbootXyzTarget,
    SanbootTarget,
    WimbootTarget,
    format_mac,
    load_machine_book,
    parse_mac,
)
from diskless.boot.policy import (
    BootPlan,
    BootSite,
    Loader,
    RequestFacts,
    decide,
    default_unknown_menu,
    script_path,
)

__all__ = [
    "BootPlan",
    "BootSite",
    "BootTarget",
    "ChainTarget",
    "Firmware",
    "LinuxTarget",
    "Loader",
    "LocalDiskTarget",
    "Machine",
    "MachineBook",
    "MenuItem",
    "MenuTarget",
    "NetbootXyzTarget",
    "Platform",
    "RequestFacts",
    "SanbootTarget",
    "WimbootTarget",
    "classify_arch",
    "decide",
    "default_unknown_menu",
    "format_mac",
    "load_machine_book",
    "parse_mac",
    "script_path",
]
