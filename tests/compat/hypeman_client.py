"""hypeman's official Python client (hypeman==0.28.0 from PyPI), unchanged,
driving a running lodge daemon: proof that lodge speaks hypeman's API.

Needs HYPEMAN_BASE_URL, HYPEMAN_API_KEY and LODGE_ROOTFS (a root directory to
boot, since lodge's create takes `rootfs` where hypeman would pull an image).
"""

import os
import sys
import time

import hypeman

ROOTFS = os.environ["LODGE_ROOTFS"]


def wait_state(client, ident, want, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        inst = client.instances.get(ident)
        if inst.state == want:
            return inst
        time.sleep(0.2)
    raise AssertionError(f"{ident} never reached {want} (last: {inst.state})")


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
    wait_state(client, inst.id, "Running")

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

    client.instances.delete(inst.id)
    assert all(i.id != inst.id for i in client.instances.list())
    print("hypeman client compatibility: ok")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # make the failure obvious in CI output
        print(f"hypeman client compatibility: FAILED: {e!r}", file=sys.stderr)
        raise
