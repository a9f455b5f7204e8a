"""hypeman's official Python client (hypeman==0.28.0 from PyPI), unchanged,
driving a running lodge daemon: proof that lodge speaks hypeman's API.

Needs HYPEMAN_BASE_URL, HYPEMAN_API_KEY, LODGE_ROOTFS (a root directory to
boot through lodge's `rootfs` extension) and LODGE_ARCHIVE (a local OCI archive,
imported through hypeman's own images API, then booted).
"""

import io
import os
import sys
import tarfile
import time

import hypeman

ROOTFS = os.environ["LODGE_ROOTFS"]
ARCHIVE = os.environ["LODGE_ARCHIVE"]


def wait_state(client, ident, want, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        inst = client.instances.get(ident)
        if inst.state == want:
            return inst
        time.sleep(0.2)
    raise AssertionError(f"{ident} never reached {want} (last: {inst.state})")


def volumes(client, running_id):
    """volumes.* and instances.volumes.attach/detach on a running VM."""
    vol = client.volumes.create(name="py-vol", size_gb=1, tags={"team": "py"})
    assert vol.name == "py-vol" and vol.size_gb == 1 and not vol.attachments, vol
    assert [v.id for v in client.volumes.list(tags={"team": "py"})] == [vol.id]
    assert client.volumes.list(tags={"team": "other"}) == []
    assert client.volumes.get("py-vol").id == vol.id
    try:
        client.volumes.create(name="py-vol", size_gb=1)
        raise AssertionError("expected ConflictError")
    except hypeman.ConflictError as e:
        assert e.body["code"] == "conflict", e.body
    try:
        client.volumes.create(name="py-bad", size_gb=0)
        raise AssertionError("expected BadRequestError")
    except hypeman.BadRequestError:
        pass

    inst = client.instances.volumes.attach(vol.id, id=running_id, mount_path="/pydata")
    assert [(m.volume_id, m.mount_path) for m in inst.volumes] == [(vol.id, "/pydata")], inst
    got = client.volumes.get(vol.id)
    assert [(a.instance_id, a.mount_path, a.readonly) for a in got.attachments] == [
        (running_id, "/pydata", False)
    ], got
    try:
        client.volumes.delete(vol.id)
        raise AssertionError("expected ConflictError while attached")
    except hypeman.ConflictError:
        pass
    inst = client.instances.volumes.detach(vol.id, id=running_id)
    assert not inst.volumes, inst
    assert not client.volumes.get(vol.id).attachments

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"from python\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        info.mode = 0o640
        tar.addfile(info, io.BytesIO(data))
    arch = client.volumes.create_from_archive(buf.getvalue(), name="py-arch", size_gb=1)
    assert arch.name == "py-arch" and arch.size_gb == 1, arch
    client.volumes.delete(arch.id)
    client.volumes.delete(vol.id)
    try:
        client.volumes.get(vol.id)
        raise AssertionError("expected NotFoundError after delete")
    except hypeman.NotFoundError:
        pass


def main():
    client = hypeman.Hypeman()
    assert client.health.check().status == "ok"

    inst = client.instances.create(
        image="busybox",
        name="py-compat",
        vcpus=1,
        size="256MB",
        overlay_size="64MB",
        env={"WHO": "python"},
        cmd=["sh", "-c", "echo hello $WHO; trap 'exit 0' TERM; while :; do sleep 1; done"],
        extra_body={"rootfs": ROOTFS},
    )
    assert inst.name == "py-compat" and inst.state in ("Initializing", "Running"), inst
    wait_state(client, inst.id, "Running")
    assert any(i.id == inst.id for i in client.instances.list())
    assert [i.id for i in client.instances.list(state="Running")] == [inst.id]

    deadline = time.time() + 60
    lines = []
    while time.time() < deadline:
        lines = list(client.instances.logs(inst.id, tail=10))
        if "hello python" in lines:
            break
        time.sleep(0.3)
    assert lines == ["hello python"], lines
    ops = list(client.instances.logs(inst.id, source="hypeman"))
    assert any("created" in l for l in ops), ops

    stopped = client.instances.stop(inst.id)
    assert stopped.state == "Stopped", stopped
    started = client.instances.start(inst.id)
    assert started.state in ("Initializing", "Running"), started
    waited = client.instances.wait(inst.id, state="Running", api_timeout="2m")
    assert waited.state == "Running" and not waited.timed_out, waited

    # Standby and restore, with hypeman's wait in between.
    asleep = client.instances.standby(inst.id)
    assert asleep.state == "Standby" and asleep.has_snapshot, asleep
    waited = client.instances.wait(inst.id, state="Standby", api_timeout="5s")
    assert waited.state == "Standby" and not waited.timed_out, waited
    waited = client.instances.wait(inst.id, state="Running", api_timeout="200ms")
    assert waited.state == "Standby" and waited.timed_out, waited
    try:
        client.instances.standby(inst.id)
        raise AssertionError("expected ConflictError")
    except hypeman.ConflictError as e:
        assert e.body["code"] == "invalid_state", e.body
    awake = client.instances.restore(inst.id)
    assert awake.state == "Running" and not awake.has_snapshot, awake
    try:
        client.instances.restore(inst.id)
        raise AssertionError("expected ConflictError")
    except hypeman.ConflictError as e:
        assert e.body["code"] == "invalid_state", e.body

    # Snapshots and forks.
    snap = client.instances.snapshots.create(inst.id, kind="Standby", name="py-snap", tags={"by": "python"})
    assert snap.kind == "Standby" and snap.name == "py-snap" and snap.tags == {"by": "python"}, snap
    assert snap.source_instance_id == inst.id and snap.source_hypervisor == "qemu", snap
    assert client.snapshots.get(snap.id).id == snap.id
    assert [s.id for s in client.snapshots.list(tags={"by": "python"})] == [snap.id]
    assert client.snapshots.list(kind="Stopped") == []
    forked = client.instances.fork(inst.id, name="py-fork", from_running=True)
    assert forked.name == "py-fork" and forked.id != inst.id and forked.state == "Running", forked
    from_snap = client.snapshots.fork(snap.id, name="py-snap-fork", target_state="Stopped")
    assert from_snap.state == "Stopped" and not from_snap.has_snapshot, from_snap
    client.instances.stop(inst.id)
    back = client.instances.snapshots.restore(snap.id, id=inst.id, target_state="Standby")
    assert back.state == "Standby" and back.has_snapshot, back
    back = client.instances.restore(inst.id)
    assert back.state == "Running", back
    for extra in (forked.id, from_snap.id):
        client.instances.delete(extra)
    client.snapshots.delete(snap.id)
    sched = client.instances.snapshot_schedule.update(
        inst.id, interval="1h", retention={"max_count": 2}, name_prefix="py", metadata={"by": "python"}
    )
    assert sched.instance_id == inst.id and sched.interval == "1h" and sched.retention.max_count == 2, sched
    assert sched.last_snapshot_id is None and sched.next_run_at > sched.created_at, sched
    assert client.instances.snapshot_schedule.get(inst.id).name_prefix == "py"
    try:
        client.instances.snapshot_schedule.update(inst.id, interval="10s", retention={"max_count": 1})
        raise AssertionError("expected BadRequestError")
    except hypeman.BadRequestError:
        pass
    client.instances.snapshot_schedule.delete(inst.id)
    try:
        client.instances.snapshot_schedule.get(inst.id)
        raise AssertionError("expected NotFoundError")
    except hypeman.NotFoundError:
        pass
    try:
        client.snapshots.get(snap.id)
        raise AssertionError("expected NotFoundError")
    except hypeman.NotFoundError:
        pass

    try:
        client.instances.get("no-such-instance")
        raise AssertionError("expected NotFoundError")
    except hypeman.NotFoundError as e:
        assert e.body["code"] == "not_found", e.body
    try:
        client.instances.create(image="busybox", name="Bad Name", extra_body={"rootfs": ROOTFS})
        raise AssertionError("expected BadRequestError")
    except hypeman.BadRequestError as e:
        assert e.body["code"] == "bad_request", e.body
    bad = hypeman.Hypeman(api_key="wrong")
    try:
        bad.instances.list()
        raise AssertionError("expected AuthenticationError")
    except hypeman.AuthenticationError:
        pass

    volumes(client, inst.id)

    client.instances.delete(inst.id)
    assert all(i.id != inst.id for i in client.instances.list())

    # Images: hypeman's async pull, then boot an instance from the image.
    ref = f"oci-archive:{ARCHIVE}"
    img = client.images.create(name=ref)
    assert img.status in ("pending", "pulling", "converting", "ready"), img
    deadline = time.time() + 120
    while img.status not in ("ready", "failed") and time.time() < deadline:
        time.sleep(0.2)
        img = client.images.get(img.name)
    assert img.status == "ready", img
    assert img.digest.startswith("sha256:"), img
    assert any(i.name == img.name for i in client.images.list())
    boot = client.instances.create(image=img.name, name="py-image", vcpus=1, size="256MB")
    done = wait_state(client, boot.id, "Stopped")
    assert done.exit_code == 0, done
    assert list(client.instances.logs(boot.id)) == ["hello from the compat image"]
    client.instances.delete(boot.id)
    client.images.delete(img.name)
    try:
        client.images.get(img.name)
        raise AssertionError("expected NotFoundError after delete")
    except hypeman.NotFoundError:
        pass
    print("hypeman client compatibility: ok")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # make the failure obvious in CI output
        print(f"hypeman client compatibility: FAILED: {e!r}", file=sys.stderr)
        raise
