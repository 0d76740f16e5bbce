"""Images and a machine's disk through the API: create, reset, commit, rollback, busy → 409."""

from __future__ import annotations

from api_support import MiB, RunningApi, add_golden

PC01 = {"mac": "52:54:00:aa:00:01", "hostname": "pc01"}


def _write(api: RunningApi, disk: str, data: bytes) -> None:
    with api.library.disks.open(disk) as handle:
        handle.write(0, data)
        handle.flush()


def _read(api: RunningApi, disk: str, length: int) -> bytes:
    with api.library.disks.open(disk, read_only=True) as handle:
        return handle.read(0, length)


def test_images_and_versions_come_from_the_catalog(api: RunningApi) -> None:
    add_golden(api.library, "debian", b"v1")
    add_golden(api.library, "debian", b"v2")
    client = api.client()

    images = client.get("/images").json()

    assert [(i["name"], i["latest"], len(i["versions"])) for i in images] == [("debian", 2, 2)]
    assert images[0]["versions"][0]["size"] == 4 * MiB
    assert client.get("/images/debian").json()["versions"][1]["version"] == 2
    assert client.get("/images/nope").status_code == 404


def test_disk_create_reset_commit_rollback(api: RunningApi) -> None:
    add_golden(api.library, "debian", b"golden")
    client = api.client()
    client.post("/machines", json=PC01)
    client.put("/machines/pc01/image", json={"image": "debian"})  # used at once, below

    assert client.get("/machines/pc01/disk").status_code == 404
    created = client.post("/machines/pc01/disk")
    assert created.status_code == 201
    assert (created.json()["name"], created.json()["image"], created.json()["version"]) == (
        "pc01",
        "debian",
        1,
    )
    assert client.post("/machines/pc01/disk").status_code == 409

    _write(api, "pc01", b"written")
    assert client.get("/machines/pc01/disk").json()["allocated_bytes"] > 0
    reset = client.post("/machines/pc01/disk/reset")
    assert reset.status_code == 200
    assert _read(api, "pc01", 6) == b"golden"

    _write(api, "pc01", b"updated")
    committed = client.post("/machines/pc01/disk/commit", json={"note": "patched"})
    assert committed.status_code == 200
    assert committed.json()["version"]["version"] == 2
    assert committed.json()["version"]["note"] == "patched"
    assert committed.json()["disk"]["version"] == 2
    assert [v["version"] for v in client.get("/images/debian").json()["versions"]] == [1, 2]
    nothing = client.post("/machines/pc01/disk/commit", json={})
    assert nothing.status_code == 409
    assert "nothing to commit" in nothing.json()["detail"]

    rolled = client.post("/machines/pc01/disk/rollback", json={"version": 1})
    assert rolled.json()["version"] == 1
    assert _read(api, "pc01", 7) == b"golden\0"
    bad = client.post("/machines/pc01/disk/rollback", json={"version": 0})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "version"]
    assert client.post("/machines/pc01/disk/rollback", json={"version": 9}).status_code == 404


def test_a_disk_without_an_image_is_422(api: RunningApi) -> None:
    client = api.client()
    client.post("/machines", json=PC01)

    response = client.post("/machines/pc01/disk", json={})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "image"]


def test_a_served_disk_is_busy_409_not_a_crash(api: RunningApi) -> None:
    add_golden(api.library, "debian", b"golden")
    client = api.client()
    client.post("/machines", json=PC01)
    client.post("/machines/pc01/disk", json={"image": "debian"})

    # Another process holds the disk open (and locked): a `diskless export`, a second server.
    with api.library.disks.open("pc01", boot=True):
        for action, body in [("reset", None), ("commit", {}), ("rollback", {"version": 1})]:
            response = client.post(f"/machines/pc01/disk/{action}", json=body)
            assert response.status_code == 409, action
            assert "is busy" in response.json()["detail"]
            assert "shut the machine down" in response.json()["detail"]

    assert client.post("/machines/pc01/disk/reset").status_code == 200
