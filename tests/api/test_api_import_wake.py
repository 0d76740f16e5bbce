"""``POST /machines/import`` (CSV or specs, all or nothing) and ``POST /machines/{key}/wake``'s
refusals. Sending a packet is tested in namespaces only (tests/wol): nothing here reaches a
socket, because every request below is refused before one is made."""

from __future__ import annotations

from api_support import RunningApi

CSV = "mac,hostname,group\n52:54:00:18:00:10,seat-01,lab\n52:54:00:18:00:11,seat-02,lab\n"


def test_csv_import_adds_all_and_creates_groups(api: RunningApi) -> None:
    client = api.client()

    response = client.post("/machines/import", json={"csv": CSV})

    assert response.status_code == 200
    assert response.json() == {
        "created": ["52:54:00:18:00:10", "52:54:00:18:00:11"],
        "updated": [],
        "skipped": [],
        "groups_created": ["lab"],
    }
    again = client.post("/machines/import", json={"csv": CSV, "on_conflict": "skip"})
    assert len(again.json()["skipped"]) == 2
    clash = client.post("/machines/import", json={"csv": CSV})
    assert clash.status_code == 409


def test_spec_import(api: RunningApi) -> None:
    body = {"machines": [{"mac": "52:54:00:18:00:12", "hostname": "seat-03"}]}

    response = api.client().post("/machines/import", json=body)

    assert response.json()["created"] == ["52:54:00:18:00:12"]


def test_a_bad_csv_line_is_422_naming_line_and_column_and_adds_nothing(api: RunningApi) -> None:
    bad = CSV + "52:54:00:18:00:12,Not A Host,lab\n"

    response = api.client().post("/machines/import", json={"csv": bad})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "csv: line 4", "hostname"]
    assert api.client().get("/machines").json() == []


def test_import_body_needs_exactly_one_source(api: RunningApi) -> None:
    client = api.client()

    neither = client.post("/machines/import", json={})
    both = client.post("/machines/import", json={"csv": CSV, "machines": []})

    assert neither.status_code == both.status_code == 422
    assert "either csv" in neither.json()["detail"][0]["msg"]


def test_wake_without_a_configured_interface_is_409(api: RunningApi) -> None:
    client = api.client()
    client.post("/machines", json={"mac": "52:54:00:18:00:10", "hostname": "seat-01"})

    response = client.post("/machines/seat-01/wake")

    assert response.status_code == 409
    assert "no interface to send the magic packet from" in response.json()["detail"]
    assert client.get("/audit", params={"target": "52:54:00:18:00:10"}).json()[0]["action"] == (
        "machine.create"
    )


def test_wake_refusals(api: RunningApi) -> None:
    client = api.client()
    client.post("/machines", json={"mac": "52:54:00:18:00:10", "hostname": "seat-01"})

    unknown = client.post("/machines/seat-99/wake")
    bad_name = client.post("/machines/seat-01/wake", json={"interface": "../etc"})
    bad_password = client.post("/machines/seat-01/wake", json={"password": "secret"})
    read_only = api.inventory.create_token("viewer", read_only=True, actor="test").token
    forbidden = api.client(token=read_only).post("/machines/seat-01/wake")

    assert unknown.status_code == 404
    assert bad_name.status_code == 422
    assert bad_name.json()["detail"][0]["loc"] == ["body", "interface"]
    assert bad_password.status_code == 422
    assert bad_password.json()["detail"][0]["loc"] == ["body", "password"]
    assert forbidden.status_code == 403
