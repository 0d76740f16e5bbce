"""Machines, discovered MACs, groups, settings and boot events through the REST API."""

from __future__ import annotations

import time

import pytest
from api_support import RunningApi

from diskless.boot.events import BootEvent, BootStage
from diskless.boot.machines import parse_mac
from diskless.inventory import Sighting

PC01 = {"mac": "52-54-00-AA-00-01", "hostname": "PC01", "ip": "192.168.1.50"}


def _field(response: object) -> list[object]:
    """The location of the first validation error of a 422 response."""
    body = response.json()  # type: ignore[attr-defined]
    loc: list[object] = body["detail"][0]["loc"]
    return loc


def test_machine_lifecycle(api: RunningApi) -> None:
    client = api.client()

    created = client.post("/machines", json=PC01)
    assert created.status_code == 201
    assert created.json()["mac"] == "52:54:00:aa:00:01"
    assert created.json()["hostname"] == "pc01"
    by_mac = client.get("/machines/525400aa0001").json()
    assert by_mac == client.get("/machines/pc01").json()
    assert [m["hostname"] for m in client.get("/machines").json()] == ["pc01"]

    patched = client.patch("/machines/pc01", json={"notes": "room 2", "ip": None})
    assert patched.status_code == 200
    assert (patched.json()["notes"], patched.json()["ip"]) == ("room 2", None)

    deleted = client.delete("/machines/52:54:00:aa:00:01")
    assert deleted.status_code == 200
    missing = client.get("/machines/pc01")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no machine 'pc01'"


def test_a_new_machine_reaches_the_snapshot_the_boot_services_read(api: RunningApi) -> None:
    api.client().post("/machines", json=PC01)

    deadline = time.monotonic() + 10
    while api.service.book().by_mac(parse_mac(PC01["mac"])) is None:
        assert time.monotonic() < deadline, "the snapshot never saw the new machine"
        time.sleep(0.05)
    assert api.client(token=None).get("/health").json()["machines"] == 1


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({**PC01, "hostname": "not a hostname!"}, ["body", "hostname"]),
        ({**PC01, "mac": "52:54:00"}, ["body", "mac"]),
        ({**PC01, "ip": "300.1.1.1"}, ["body", "ip"]),
        ({**PC01, "boot": {"kind": "teleport"}}, ["body", "boot"]),
        ({**PC01, "chap_secret": "short"}, ["body", "chap_secret"]),
        ({**PC01, "colour": "red"}, ["body", "colour"]),
        ({"mac": "52:54:00:aa:00:01"}, ["body", "hostname"]),
    ],
)
def test_a_bad_machine_is_422_naming_the_field(
    api: RunningApi, body: dict[str, object], loc: list[str]
) -> None:
    response = api.client().post("/machines", json=body)

    assert response.status_code == 422
    assert _field(response)[: len(loc)] == loc
    assert api.client().get("/machines").json() == []


def test_inventory_rules_are_422_or_409_naming_the_field(api: RunningApi) -> None:
    client = api.client()
    client.post("/machines", json=PC01)

    taken = client.post("/machines", json={**PC01, "mac": "52:54:00:aa:00:02"})
    assert taken.status_code == 409
    assert taken.json()["field"] == "hostname"
    cleared = client.patch("/machines/pc01", json={"hostname": None})
    assert cleared.status_code == 422
    assert _field(cleared) == ["body", "hostname"]
    version_alone = client.put("/machines/pc01/image", json={"image": None, "version": 3})
    assert version_alone.status_code == 422
    assert _field(version_alone) == ["body", "image_version"]
    bad_path = client.get("/boot-events/not-a-mac")
    assert bad_path.status_code == 422
    assert _field(bad_path) == ["path", "mac"]


def test_image_mode_boot_and_next_boot_once(api: RunningApi) -> None:
    client = api.client()
    client.post("/machines", json=PC01)

    imaged = client.put(
        "/machines/pc01/image", json={"image": "win11", "version": 2, "mode": "reset-on-boot"}
    ).json()
    assert (imaged["image"], imaged["image_version"], imaged["disk_mode"]) == (
        "win11",
        2,
        "reset-on-boot",
    )
    assert client.put("/machines/pc01/mode", json={"mode": "persistent"}).json()["disk_mode"] == (
        "persistent"
    )
    booted = client.put("/machines/pc01/boot", json={"target": {"kind": "local"}}).json()
    assert booted["boot"]["kind"] == "local"

    once = client.put(
        "/machines/pc01/next-boot-once", json={"target": {"kind": "netbootxyz"}}
    ).json()
    assert once["next_boot_once"]["kind"] == "netbootxyz"
    api.inventory.consume_next_boot_once(parse_mac(PC01["mac"]))  # what the HTTP plane does
    assert client.get("/machines/pc01").json()["next_boot_once"] is None
    client.put("/machines/pc01/next-boot-once", json={"target": {"kind": "local"}})
    assert client.delete("/machines/pc01/next-boot-once").json()["next_boot_once"] is None
    actions = [e["action"] for e in client.get("/audit", params={"limit": 3}).json()]
    assert actions == [
        "machine.set-next-boot",
        "machine.set-next-boot",
        "machine.consume-next-boot",
    ]


def test_discovered_macs_are_approved_or_forgotten(api: RunningApi) -> None:
    now = time.time()
    api.inventory.record_discovered(
        [
            Sighting(mac=parse_mac("52:54:00:bb:00:01"), at=now, arch=7),
            Sighting(mac=parse_mac("52:54:00:bb:00:02"), at=now - 5),
        ]
    )
    client = api.client()
    client.post("/groups", json={"name": "lab", "image": "debian"})

    listed = client.get("/discovered").json()
    assert [d["mac"] for d in listed] == ["52:54:00:bb:00:01", "52:54:00:bb:00:02"]
    approved = client.post(
        "/discovered/52:54:00:bb:00:01/approve", json={"group": "lab", "notes": "new"}
    )
    assert approved.status_code == 201
    assert approved.json()["hostname"] == "pc-bb0001"
    assert approved.json()["group"] == "lab"
    defaulted = client.post("/discovered/525400bb0002/approve")
    assert defaulted.status_code == 201
    assert client.get("/discovered").json() == []
    assert client.post("/discovered/52:54:00:bb:00:01/approve").status_code == 404

    api.inventory.record_discovered([Sighting(mac=parse_mac("52:54:00:bb:00:03"), at=now)])
    assert client.delete("/discovered/52:54:00:bb:00:03").status_code == 204
    assert client.delete("/discovered/52:54:00:bb:00:03").status_code == 404
    bad = client.post("/discovered/52:54:00:bb:00:09/approve", json={"hostname": "x y"})
    assert bad.status_code == 422
    assert _field(bad) == ["body", "hostname"]


def test_groups(api: RunningApi) -> None:
    client = api.client()

    created = client.post("/groups", json={"name": "Lab", "disk_mode": "reset-on-boot"})
    assert created.status_code == 201
    assert created.json()["name"] == "lab"
    assert client.post("/groups", json={"name": "lab"}).status_code == 409
    client.post("/machines", json={**PC01, "group": "lab"})
    assert client.get("/groups/lab").json()["members"] == 1
    renamed = client.patch("/groups/lab", json={"description": "room 2"})
    assert renamed.json()["description"] == "room 2"
    in_use = client.delete("/groups/lab")
    assert in_use.status_code == 409
    assert "still has 1 machine" in in_use.json()["detail"]

    client.patch("/machines/pc01", json={"group": None})
    assert client.delete("/groups/lab").status_code == 200
    assert client.get("/groups").json() == []
    assert client.get("/groups/lab").status_code == 404


def test_settings(api: RunningApi) -> None:
    client = api.client()

    assert client.get("/settings").json() == {}
    assert client.put("/settings/motd", json={"value": {"text": "hi"}}).json() == {
        "motd": {"text": "hi"}
    }
    bad = client.put("/settings/Bad-Key", json={"value": 1})
    assert bad.status_code == 422
    assert _field(bad) == ["body", "key"]
    assert client.delete("/settings/motd").json() == {}


def test_boot_events_recorded_on_the_timeline_are_stored_per_mac(api: RunningApi) -> None:
    client = api.client()
    client.post("/machines", json=PC01)
    mac = parse_mac(PC01["mac"])
    api.record(BootEvent(mac, BootStage.DHCP_OFFER, time.time(), "192.168.1.50"))
    api.record(BootEvent(mac, BootStage.HTTP_SCRIPT, time.time(), "sanboot"))

    deadline = time.monotonic() + 10
    while len(stages := [e["stage"] for e in client.get("/machines/pc01/boot-events").json()]) < 2:
        assert time.monotonic() < deadline, "the events were never stored"
        time.sleep(0.1)

    assert stages == ["dhcp-offer", "http-script"]
    newest = client.get("/boot-events/52:54:00:aa:00:01", params={"limit": 1}).json()
    assert [event["stage"] for event in newest] == ["http-script"]
    assert client.get("/machines/pc01").json()["last_seen"] is not None
