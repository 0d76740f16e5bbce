"""Boot policy: who a client is, what it boots, and the one function that decides.

* ``arch``: option-93 client architectures → firmware family and HTTP boot.
* ``machines``: :class:`Machine` records, boot targets and the :class:`MachineBook` snapshot
  (loaded from a TOML file until the inventory lands).
* ``policy``: :func:`decide` (pure) → :class:`BootPlan`, shared by DHCP, TFTP and HTTP, and
  :func:`iscsi_names`, the target and initiator names derived from a machine.
* ``events``: :class:`BootEvent` and the in-memory :class:`BootTimeline` every service reports to.
* ``script``: :func:`render_script` (pure), a :class:`BootPlan` as the iPXE script that runs it.
* ``site``: :func:`site_from_settings`, the :class:`BootSite` the settings describe.
"""

from diskless.boot.arch import Firmware, Platform, classify_arch
from diskless.boot.events import BootEvent, BootStage, BootTimeline
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
    IscsiNames,
    Loader,
    RequestFacts,
    decide,
    default_unknown_menu,
    iscsi_names,
    iscsi_shard,
    script_path,
)
from diskless.boot.script import (
    ScriptError,
    check_target,
    render_chain_script,
    render_error_script,
    render_script,
)
from diskless.boot.site import boot_loaders, site_from_settings

__all__ = [
    "BootEvent",
    "BootStage",
    "BootTimeline",
    "BootPlan",
    "BootSite",
    "BootTarget",
    "ChainTarget",
    "Firmware",
    "IscsiNames",
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
    "ScriptError",
    "WimbootTarget",
    "boot_loaders",
    "check_target",
    "classify_arch",
    "decide",
    "default_unknown_menu",
    "format_mac",
    "iscsi_names",
    "iscsi_shard",
    "load_machine_book",
    "parse_mac",
    "render_chain_script",
    "render_error_script",
    "render_script",
    "script_path",
    "site_from_settings",
]
