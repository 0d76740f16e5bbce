"""iPXE scripts: golden text per boot target kind, and no way for a record to inject commands.

The golden files in ``golden/`` are the reviewed scripts; after an intended change, rewrite them
with ``DISKLESS_UPDATE_GOLDEN=1 uv run pytest tests/boot/test_script.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskless.boot import (
    BootPlan,
    BootSite,
    BootTarget,
    ChainTarget,
    LinuxTarget,
    LocalDiskTarget,
    Machine,
    MenuItem,
    MenuTarget,
    NetbootXyzTarget,
    RequestFacts,
    SanbootTarget,
    ScriptError,
    WimbootTarget,
    check_target,
    classify_arch,
    decide,
    parse_mac,
    render_chain_script,
    render_error_script,
    render_script,
)

GOLDEN = Path(__file__).parent / "golden"
SITE = BootSite(server=IPv4Address("198.18.0.1"), http_port=8080, menu_timeout=7)
MACHINE = Machine(mac=parse_mac("52:54:00:18:00:10"), hostname="seat-01")
WITH_CHAP = MACHINE.model_copy(
    update={"chap_secret": "s3cret-1234", "initiator_name": "iqn.2010-04.org.ipxe:seat-01"}
)
INSTALL_MENU = MenuTarget(
    title="seat-01: what now?",
    items=[
        MenuItem(label="Windows disk", target=SanbootTarget()),
        MenuItem(label="Install Windows onto it", target=SanbootTarget(keep_san=True)),
        MenuItem(
            label="Debian installer",
            target=LinuxTarget(kernel="debian/linux", initrd=["debian/initrd.gz"]),
        ),
    ],
    default=1,
)


def plan_for(target: BootTarget, machine: Machine | None = MACHINE) -> BootPlan:
    return BootPlan(
        machine=machine, platform=classify_arch(None), loader=None, target=target, once=False
    )


GOLDEN_CASES: dict[str, tuple[BootTarget, Machine | None]] = {
    "sanboot": (SanbootTarget(), MACHINE),
    "sanboot-chap": (SanbootTarget(disk="Shared-Win11"), WITH_CHAP),
    "sanboot-keep-san": (SanbootTarget(keep_san=True), MACHINE),
    "local": (LocalDiskTarget(), MACHINE),
    "linux": (
        LinuxTarget(
            kernel="/debian/linux",
            initrd=["debian/initrd.gz", "https://mirror.example/firmware.cpio.gz"],
            cmdline="auto=true priority=critical -- quiet",
        ),
        MACHINE,
    ),
    "winpe": (WimbootTarget(folder="winpe/amd64/", wimboot="tools/wimboot"), MACHINE),
    "chain": (ChainTarget(url="http://198.18.0.9/custom.ipxe"), MACHINE),
    "netbootxyz": (NetbootXyzTarget(), MACHINE),
    "menu": (INSTALL_MENU, MACHINE),
    "menu-no-timeout": (INSTALL_MENU.model_copy(update={"timeout": 0}), MACHINE),
    "unknown-machine": (
        MenuTarget(items=[MenuItem(label="Local", target=LocalDiskTarget())]),
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_script_matches_its_reviewed_golden_text(case: str) -> None:
    target, machine = GOLDEN_CASES[case]
    script = render_script(plan_for(target, machine), SITE)

    path = GOLDEN / f"{case}.ipxe"
    if os.environ.get("DISKLESS_UPDATE_GOLDEN"):
        path.write_text(script, encoding="utf-8")
    assert script == path.read_text(encoding="utf-8")


def test_every_golden_file_is_a_case() -> None:
    assert sorted(path.stem for path in GOLDEN.glob("*.ipxe")) == sorted(GOLDEN_CASES)


def test_sanboot_names_the_derived_initiator_and_the_target_at_lun_0() -> None:
    script = render_script(plan_for(SanbootTarget(), MACHINE), SITE)

    assert script.startswith("#!ipxe\n")
    assert "set initiator-iqn iqn.2026-11.org.diskless:client.seat-01\n" in script
    assert "sanboot iscsi:198.18.0.1::3260:0:iqn.2026-11.org.diskless:disk.seat-01 ||" in script
    assert "set password" not in script
    assert "set keep-san" not in script


def test_chap_uses_the_initiator_name_as_user_name() -> None:
    script = render_script(plan_for(SanbootTarget(), WITH_CHAP), SITE)

    assert "set username iqn.2010-04.org.ipxe:seat-01\n" in script
    assert "set password s3cret-1234\n" in script


def test_linux_names_each_initrd_in_the_command_line() -> None:
    target = LinuxTarget(
        kernel="k/vmlinuz", initrd=["a/initrd.img", "b/initrd.img", "c/odd name.img"]
    )

    script = render_script(plan_for(target), SITE)

    kernel_line = next(line for line in script.splitlines() if line.startswith("kernel "))
    assert kernel_line.split()[2:5] == ["initrd=initrd.img", "initrd=initrd1", "initrd=initrd2"]
    assert "initrd --name initrd1 http://198.18.0.1:8080/files/b/initrd.img ||" in script
    assert "http://198.18.0.1:8080/files/c/odd%20name.img" in script


def test_relative_paths_are_percent_encoded_under_files() -> None:
    target = LinuxTarget(kernel="boot/#1 ${x} || $y;")

    script = render_script(plan_for(target), SITE)

    assert (
        "kernel http://198.18.0.1:8080/files/boot/%231%20%24%7Bx%7D%20%7C%7C%20%24y%3B " in script
    )


def test_unknown_machines_get_the_site_menu_with_the_site_timeout() -> None:
    plan = decide(None, RequestFacts(mac=MACHINE.mac), SITE)
    assert plan is not None

    script = render_script(plan, SITE)

    assert "choose --default boot-0 --timeout 7000 diskless-choice" in script
    assert "echo diskless: this unknown machine boots from its local disk" in script


def test_the_generic_script_chains_by_the_mac_ipxe_spells() -> None:
    assert render_chain_script(SITE) == (
        "#!ipxe\n"
        "# diskless: fetch this machine's own boot script, named by the MAC of the device iPXE "
        "booted from.\n"
        "chain --autofree http://198.18.0.1:8080/boot/${netX/mac:hexhyp}.ipxe || exit 1\n"
    )


def test_an_error_script_shows_a_sanitised_reason() -> None:
    script = render_error_script("boot.cmdline: bad ${x}\nchain evil || ok", SITE)

    assert "echo diskless: cannot boot this machine: boot.cmdline: bad ??x??chain evil ?? ok\n" in (
        script
    )
    assert "${x}" not in script


@pytest.mark.parametrize(
    ("target", "machine", "field"),
    [
        (LinuxTarget(kernel="k", cmdline="quiet\nchain http://evil"), MACHINE, "boot.cmdline"),
        (LinuxTarget(kernel="k", cmdline="root=${root-path}"), MACHINE, "boot.cmdline"),
        (LinuxTarget(kernel="k", cmdline="quiet || shell"), MACHINE, "boot.cmdline"),
        (LinuxTarget(kernel="k", cmdline="quiet ; shell"), MACHINE, "boot.cmdline"),
        (LinuxTarget(kernel="k", cmdline="quiet #comment"), MACHINE, "boot.cmdline"),
        (LinuxTarget(kernel="k", cmdline="caf\u00e9"), MACHINE, "boot.cmdline"),
        (LinuxTarget(kernel="../etc/shadow"), MACHINE, "boot.kernel"),
        (LinuxTarget(kernel="a//b"), MACHINE, "boot.kernel"),
        (LinuxTarget(kernel="http://x/a b"), MACHINE, "boot.kernel"),
        (LinuxTarget(kernel="ftp://x/k"), MACHINE, "boot.kernel"),
        (LinuxTarget(kernel="k", initrd=["x/../../y"]), MACHINE, "boot.initrd[0]"),
        (WimbootTarget(folder="../outside"), MACHINE, "boot.folder"),
        (ChainTarget(url="http://x/${net0/ip}"), MACHINE, "boot.url"),
        (ChainTarget(url="-x"), MACHINE, "boot.url"),
        (ChainTarget(url="file:///etc/passwd"), MACHINE, "boot.url"),
        (SanbootTarget(), MACHINE.model_copy(update={"chap_secret": "two words"}), "chap_secret"),
        (SanbootTarget(), MACHINE.model_copy(update={"chap_secret": "-opt"}), "chap_secret"),
        (
            SanbootTarget(),
            MACHINE.model_copy(update={"initiator_name": "iqn.x\nshell"}),
            "initiator_name",
        ),
        (SanbootTarget(disk="a b"), MACHINE, "boot.disk"),
        (SanbootTarget(), None, "boot"),
        (
            MenuTarget(title="-t", items=[MenuItem(label="x", target=LocalDiskTarget())]),
            MACHINE,
            "boot.title",
        ),
        (
            MenuTarget(items=[MenuItem(label="a\rb", target=LocalDiskTarget())]),
            MACHINE,
            "boot.items[0].label",
        ),
        (
            MenuTarget(items=[MenuItem(label="ok", target=LinuxTarget(kernel="k", cmdline="#"))]),
            MACHINE,
            "boot.items[0].target.cmdline",
        ),
        (MenuTarget(items=[]), MACHINE, "boot.items"),
        (
            MenuTarget(items=[MenuItem(label="x", target=LocalDiskTarget())], default=1),
            MACHINE,
            "boot.default",
        ),
    ],
)
def test_unsafe_records_are_refused_naming_the_field(
    target: BootTarget, machine: Machine | None, field: str
) -> None:
    with pytest.raises(ScriptError, match=rf"^{re.escape(field)}: "):
        render_script(plan_for(target, machine), SITE)
    with pytest.raises(ScriptError):
        check_target(target, machine, SITE)


def test_a_record_value_is_never_echoed_in_the_error() -> None:
    with pytest.raises(ScriptError) as caught:
        render_script(plan_for(LinuxTarget(kernel="k", cmdline="SECRET\n${x}")), SITE)

    assert "SECRET" not in str(caught.value)


# --------------------------------------------------------------------------------------------
# Property: whatever a record holds, the script has the same commands as with a benign value.

ALLOWED_EXPANSIONS = {"${errno}", "${netX/mac:hexhyp}", "${diskless-choice}"}
TERMINATORS = {"||", "&&", ";"}


def command_skeleton(script: str) -> list[tuple[str, ...]]:
    """The script as iPXE parses it: per line, each command's name and its leading options.

    Lines are split on whitespace as iPXE does (exec.c ``split_command``); a word starting with
    ``#`` ends the line; ``||``, ``&&`` and ``;`` separate commands. Argument values are dropped,
    options before the first plain argument are kept (that is where an injected ``-x`` lands).
    """
    skeleton: list[tuple[str, ...]] = []
    for line in script.splitlines():
        if line.startswith(":"):
            skeleton.append(("label", line))
            continue
        words = line.split()
        commands: list[list[str]] = [[]]
        for word in words:
            if word.startswith("#"):
                break
            if word in TERMINATORS:
                commands.append([word])
            else:
                commands[-1].append(word)
        shape: list[str] = []
        for command in commands:
            leading = [command[0]] if command else []
            for argument in command[1:]:
                if not argument.startswith("-"):
                    break
                leading.append(argument)
            shape.append(" ".join(leading))
        skeleton.append(tuple(shape))
    return skeleton


def expansions(script: str) -> set[str]:
    return set(re.findall(r"\$\{[^}]*\}?", script))


hostile_text = st.lists(
    st.one_of(
        st.characters(max_codepoint=0x7F),
        st.sampled_from(["${", "}", "||", "&&", ";", "#", "-", " ", "\n", "\r", "\t", "\u00e9"]),
    ),
    max_size=16,
).map("".join)


def targets_with(value: str) -> list[tuple[str, BootTarget, Machine]]:
    return [
        ("cmdline", LinuxTarget(kernel="k", cmdline=value), MACHINE),
        ("kernel path", LinuxTarget(kernel=f"dir/{value}"), MACHINE),
        ("kernel url", LinuxTarget(kernel=f"http://x/{value}"), MACHINE),
        ("initrd", LinuxTarget(kernel="k", initrd=[value]), MACHINE),
        ("wimboot folder", WimbootTarget(folder=value), MACHINE),
        ("chain url", ChainTarget(url=f"http://x/{value}"), MACHINE),
        ("disk", SanbootTarget(disk=value), MACHINE),
        ("chap secret", SanbootTarget(), MACHINE.model_copy(update={"chap_secret": value})),
        ("initiator", SanbootTarget(), MACHINE.model_copy(update={"initiator_name": value})),
        (
            "menu",
            MenuTarget(title=value, items=[MenuItem(label=value, target=LocalDiskTarget())]),
            MACHINE,
        ),
    ]


BENIGN = {name: render_script(plan_for(t, m), SITE) for name, t, m in targets_with("ok")}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=hostile_text)
def test_no_record_value_changes_the_commands_a_script_runs(value: str) -> None:
    for name, target, machine in targets_with(value):
        try:
            script = render_script(plan_for(target, machine), SITE)
        except ScriptError:
            continue
        benign = BENIGN[name]
        assert command_skeleton(script) == command_skeleton(benign), name
        assert expansions(script) == expansions(benign) <= ALLOWED_EXPANSIONS, name
        assert script.isascii(), name
        assert "\r" not in script, name
        assert "\t" not in script, name
