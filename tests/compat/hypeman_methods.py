"""Every method of hypeman's official Python client (hypeman==0.28.0, the
63 methods under hypeman/resources/) called against a running lodge daemon,
with the client's strict response validation on.

The table METHODS is the contract, one line per method: WORKS means the call
must succeed and its answer parse in strict mode; NOT_IMPLEMENTED means lodge
must answer 501 with code `not_implemented`. When a branch builds a route,
flip its line from NOT_IMPLEMENTED to WORKS (and delete the route's line in
crates/lodge/src/api/unimplemented.rs). A line that answers otherwise than it
says fails the run, so the table cannot drift from the server.

Then hypeman's own exec helper (hypeman.lib.exec) on the running VM: the exit
code of a timeout (124), a signal (128+N) and a missing command (127), and a
resize sent right after the request.

Needs HYPEMAN_BASE_URL, HYPEMAN_API_KEY, LODGE_ROOTFS (a root directory
booted through lodge's `rootfs` extension) and LODGE_ARCHIVE (a local OCI
archive the images API imports). Prints `N of 63 methods work`.
"""

import io
import os
import sys
import tarfile
import time

import hypeman
from hypeman.lib.exec import exec as hexec
from hypeman.lib.cp import cp_from_instance, cp_to_instance

WORKS = "works"
NOT_IMPLEMENTED = "501"

ROOTFS = os.environ["LODGE_ROOTFS"]
ARCHIVE = os.environ["LODGE_ARCHIVE"]


class Ctx:
    """What the calls share: the client and the objects made on the way."""

    def __init__(self):
        self.c = hypeman.Hypeman(_strict_response_validation=True, max_retries=0)
        self.inst = None  # the running instance's id
        self.image = None  # the imported image's name
        self.snapshot = None  # the snapshot made on the way
        self.push = None  # the push job made on the way
        self.pci = None  # a PCI address of this host
        self.device = None  # the registered device's id


def wait_state(ctx, ident, want, timeout=90):
    deadline = time.time() + timeout
    inst = None
    while time.time() < deadline:
        inst = ctx.c.instances.get(ident)
        if inst.state == want:
            return inst
        time.sleep(0.2)
    raise AssertionError(f"{ident} never reached {want} (last: {inst and inst.state})")


# --- the calls, in the order the table runs them ---------------------------


def image_create(ctx):
    img = ctx.c.images.create(name=f"oci-archive:{ARCHIVE}", tags={"suite": "compat"})
    deadline = time.time() + 60
    while img.status not in ("ready", "failed") and time.time() < deadline:
        time.sleep(0.2)
        img = ctx.c.images.get(img.name)
    assert img.status == "ready", img
    ctx.image = img.name


def image_get(ctx):
    img = ctx.c.images.get(ctx.image)
    assert img.tags == {"suite": "compat"}, img


def image_list(ctx):
    names = [i.name for i in ctx.c.images.list(tags={"suite": "compat"})]
    assert ctx.image in names, names
    assert ctx.c.images.list(tags={"suite": "other"}) == []


def image_tag(ctx):
    img = ctx.c.images.tag(ctx.image, target="compat:retagged")
    assert img.name.endswith("compat:retagged"), img
    assert any(i.name == img.name for i in ctx.c.images.list())


def instance_create(ctx):
    inst = ctx.c.instances.create(
        image="busybox",
        name="py-methods",
        vcpus=1,
        size="256MB",
        tags={"team": "compat", "tier": "test"},
        cmd=["sh", "-c", "echo methods up; trap 'exit 0' TERM; while :; do sleep 1; done"],
        extra_body={"rootfs": ROOTFS},
    )
    ctx.inst = inst.id
    assert inst.tags == {"team": "compat", "tier": "test"}, inst
    wait_state(ctx, inst.id, "Running")


def instance_get(ctx):
    inst = ctx.c.instances.get(ctx.inst)
    assert inst.id == ctx.inst and inst.state == "Running", inst


def instance_list(ctx):
    assert [i.id for i in ctx.c.instances.list(tags={"team": "compat"})] == [ctx.inst]
    assert ctx.c.instances.list(tags={"team": "compat", "tier": "prod"}) == []
    assert [i.id for i in ctx.c.instances.list(state="Running")] == [ctx.inst]


def instance_update(ctx):
    inst = ctx.c.instances.update(ctx.inst)
    assert inst.id == ctx.inst, inst
    inst = ctx.c.instances.update(
        ctx.inst,
        ttl="1h",
        restart_policy={"policy": "on_failure", "backoff": "2s", "max_attempts": 3},
        health_check={"type": "exec", "exec": {"command": ["true"]}, "interval": "500ms"},
    )
    assert inst.expires_at is not None, inst
    assert inst.restart_policy.policy == "on_failure" and inst.restart_policy.backoff == "2s", inst
    assert inst.health_check.type == "exec" and inst.health_check.exec.command == ["true"], inst
    deadline = time.time() + 30
    while time.time() < deadline:
        inst = ctx.c.instances.get(ctx.inst)
        if inst.health_status and inst.health_status.status == "healthy":
            break
        time.sleep(0.3)
    assert inst.health_status.status == "healthy", inst
    inst = ctx.c.instances.update(ctx.inst, ttl="0s")
    assert inst.expires_at is None, inst


def instance_logs(ctx):
    deadline = time.time() + 30
    lines = []
    while time.time() < deadline:
        lines = list(ctx.c.instances.logs(ctx.inst, tail=10))
        if "methods up" in lines:
            return
        time.sleep(0.3)
    raise AssertionError(lines)


def instance_stat(ctx):
    info = ctx.c.instances.stat(ctx.inst, path="/etc/passwd")
    assert info.exists and info.is_file, info


def instance_stats(ctx):
    s = ctx.c.instances.stats(ctx.inst)
    assert s.instance_id == ctx.inst and s.allocated_vcpus == 1, s
    assert s.allocated_memory_bytes == 256 << 20, s
    assert s.memory_rss_bytes > 0 and s.cpu_seconds > 0, s


def instance_wait(ctx):
    r = ctx.c.instances.wait(ctx.inst, state="Running", api_timeout="5s")
    assert r.state == "Running", r


def schedule_update(ctx):
    s = ctx.c.instances.snapshot_schedule.update(ctx.inst, interval="1h", retention={"max_count": 2})
    assert s.instance_id == ctx.inst and s.interval == "1h", s


def schedule_get(ctx):
    s = ctx.c.instances.snapshot_schedule.get(ctx.inst)
    assert s.retention.max_count == 2, s


def instance_standby(ctx):
    i = ctx.c.instances.standby(ctx.inst)
    assert i.state == "Standby" and i.has_snapshot, i


def instance_restore(ctx):
    i = ctx.c.instances.restore(ctx.inst)
    assert i.state == "Running", i


def snapshot_create(ctx):
    s = ctx.c.instances.snapshots.create(ctx.inst, kind="Standby", name="compat-snap", tags={"suite": "compat"})
    assert s.kind == "Standby" and s.source_instance_id == ctx.inst, s
    ctx.snapshot = s.id


def snapshot_list(ctx):
    assert [s.id for s in ctx.c.snapshots.list(tags={"suite": "compat"})] == [ctx.snapshot]


def instance_fork(ctx):
    f = ctx.c.instances.fork(ctx.inst, name="py-fork", from_running=True)
    assert f.state == "Running" and f.id != ctx.inst, f
    ctx.c.instances.delete(f.id)


def snapshot_fork(ctx):
    f = ctx.c.snapshots.fork(ctx.snapshot, name="py-snap-fork", target_state="Stopped")
    assert f.state == "Stopped", f
    ctx.c.instances.delete(f.id)


def snapshot_restore(ctx):
    ctx.c.instances.stop(ctx.inst)
    i = ctx.c.instances.snapshots.restore(ctx.snapshot, id=ctx.inst)
    assert i.state == "Running", i


def resources_get(ctx):
    r = ctx.c.resources.get()
    assert r.cpu.allocated >= 1, r
    assert any(a.instance_id == ctx.inst for a in r.allocations), r


def reclaim_memory(ctx):
    # 1 MiB from the running VM, given back at once (reclaim_bytes 0).
    r = ctx.c.resources.reclaim_memory(reclaim_bytes=1 << 20, hold_for="1m", reason="compat")
    assert r.requested_reclaim_bytes == 1 << 20, r
    assert any(a.instance_id == ctx.inst for a in r.actions), r
    ctx.c.resources.reclaim_memory(reclaim_bytes=0)


def instance_stop(ctx):
    assert ctx.c.instances.stop(ctx.inst).state == "Stopped"


def instance_start(ctx):
    assert ctx.c.instances.start(ctx.inst).state in ("Initializing", "Running")
    wait_state(ctx, ctx.inst, "Running")


def instance_delete(ctx):
    ctx.c.instances.delete(ctx.inst)
    assert all(i.id != ctx.inst for i in ctx.c.instances.list())


def image_delete(ctx):
    ctx.c.images.delete("compat:retagged")
    ctx.c.images.delete(ctx.image)


def volume_create(ctx):
    vol = ctx.c.volumes.create(name="vol", size_gb=1, tags={"suite": "compat"})
    assert (vol.name, vol.size_gb, vol.attachments) == ("vol", 1, []), vol


def volume_create_from_archive(ctx):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"hello\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    vol = ctx.c.volumes.create_from_archive(buf.getvalue(), name="vol2", size_gb=1)
    assert vol.name == "vol2", vol
    ctx.c.volumes.delete(vol.id)


def volume_list(ctx):
    assert [v.name for v in ctx.c.volumes.list(tags={"suite": "compat"})] == ["vol"]


def volume_get(ctx):
    assert ctx.c.volumes.get("vol").tags == {"suite": "compat"}


def volume_attach(ctx):
    inst = ctx.c.instances.volumes.attach("vol", id=ctx.inst, mount_path="/data")
    assert [m.mount_path for m in inst.volumes] == ["/data"], inst
    assert [a.instance_id for a in ctx.c.volumes.get("vol").attachments] == [ctx.inst]


def volume_detach(ctx):
    inst = ctx.c.instances.volumes.detach("vol", id=ctx.inst)
    assert not inst.volumes, inst


def volume_delete(ctx):
    ctx.c.volumes.delete("vol")


def push_create(ctx):
    # No registry listens on port 9: the job is accepted, then fails
    # (tests/pushes_e2e.rs pushes to real registries).
    push = ctx.c.pushes.create(image=ctx.image, target="127.0.0.1:9/compat/pushed:1")
    assert push.status in ("queued", "pushing", "failed"), push
    ctx.push = push.id


def push_list(ctx):
    assert ctx.push in [p.id for p in ctx.c.pushes.list()]


def push_get(ctx):
    deadline = time.time() + 30
    push = ctx.c.pushes.get(ctx.push)
    while push.status not in ("pushed", "failed") and time.time() < deadline:
        time.sleep(0.2)
        push = ctx.c.pushes.get(ctx.push)
    assert push.status == "failed" and push.error, push


def stream(s):
    return list(s)


def auto_standby_status(ctx):
    inst = ctx.c.instances.update(
        ctx.inst,
        auto_standby={"enabled": True, "idle_timeout": "10m", "ignore_destination_ports": [22]},
    )
    assert inst.auto_standby.enabled and inst.auto_standby.idle_timeout == "10m", inst
    assert inst.auto_standby.ignore_destination_ports == [22], inst
    s = ctx.c.instances.auto_standby.status(ctx.inst)
    assert s.configured and s.enabled and s.idle_timeout == "10m", s
    assert s.status in ("idle_countdown", "active", "ineligible"), s
    return s


def auto_standby_hold(ctx):
    s = ctx.c.instances.auto_standby.hold(ctx.inst)
    if s.eligible:
        assert s.hold_until is not None, s
    # Off again: later calls put the instance in standby themselves.
    inst = ctx.c.instances.update(ctx.inst, auto_standby={"enabled": False})
    assert inst.auto_standby.enabled is False, inst
    return s
def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ingress_create(ctx):
    # A high port: this daemon runs on the host, so port 80 may be taken.
    ctx.ingress_port = free_port()
    ing = ctx.c.ingresses.create(
        name="web",
        rules=[
            {
                "match": {"hostname": "web.test", "port": ctx.ingress_port},
                "target": {"instance": ctx.inst, "port": 80},
                "request_header_auth": {"header": "X-Key", "value": "k"},
            }
        ],
        tags={"suite": "compat"},
    )
    assert ing.name == "web" and ing.rules[0].match.port == ctx.ingress_port, ing
    try:
        ctx.c.ingresses.create(
            name="web",
            rules=[{"match": {"hostname": "other.test"}, "target": {"instance": ctx.inst, "port": 80}}],
        )
        raise AssertionError("a taken name was accepted")
    except hypeman.ConflictError:
        pass
    return ing


def ingress_list(ctx):
    names = [i.name for i in ctx.c.ingresses.list(tags={"suite": "compat"})]
    assert names == ["web"], names
    return names


def ingress_get(ctx):
    ing = ctx.c.ingresses.get("web")
    assert ing.rules[0].request_header_auth.header == "X-Key", ing
    return ing


def ingress_delete(ctx):
    ctx.c.ingresses.delete("web")
    assert ctx.c.ingresses.list() == []


def device_list_available(ctx):
    found = ctx.c.devices.list_available()
    # This host's PCI devices, as sysfs lists them.
    assert found, "no PCI device on this host"
    for d in found:
        assert len(d.pci_address) == 12 and len(d.vendor_id) == 4, d
    ctx.pci = found[0].pci_address


def device_create(ctx):
    dev = ctx.c.devices.create(pci_address=ctx.pci, name="compat-dev", tags={"suite": "compat"})
    assert (dev.name, dev.pci_address, dev.attached_to) == ("compat-dev", ctx.pci, None), dev
    assert dev.type in ("gpu", "pci"), dev
    ctx.device = dev.id


def device_retrieve(ctx):
    dev = ctx.c.devices.retrieve("compat-dev")
    assert dev.id == ctx.device, dev


def device_list(ctx):
    assert [d.id for d in ctx.c.devices.list(tags={"suite": "compat"})] == [ctx.device]
    assert ctx.c.devices.list(tags={"suite": "other"}) == []


def device_delete(ctx):
    ctx.c.devices.delete(ctx.device)
    assert ctx.c.devices.list() == []


# (method, expected, call). The order is the order of the run: objects are
# made before the calls that use them and deleted at the end.
METHODS = [
    ("health.check", WORKS, lambda x: x.c.health.check()),
    ("capabilities.get", WORKS, lambda x: x.c.capabilities.get()),
    ("images.create", WORKS, image_create),
    ("images.get", WORKS, image_get),
    ("images.list", WORKS, image_list),
    ("images.tag", WORKS, image_tag),
    ("instances.create", WORKS, instance_create),
    ("instances.get", WORKS, instance_get),
    ("instances.list", WORKS, instance_list),
    ("instances.update", WORKS, instance_update),
    ("instances.logs", WORKS, instance_logs),
    ("instances.stat", WORKS, instance_stat),
    ("instances.stats", WORKS, instance_stats),
    ("instances.wait", WORKS, instance_wait),
    ("resources.get", WORKS, resources_get),
    ("resources.reclaim_memory", WORKS, reclaim_memory),
    ("instances.auto_standby.status", WORKS, auto_standby_status),
    ("instances.auto_standby.hold", WORKS, auto_standby_hold),
    ("instances.snapshot_schedule.update", WORKS, schedule_update),
    ("instances.snapshot_schedule.get", WORKS, schedule_get),
    ("instances.snapshot_schedule.delete", WORKS, lambda x: x.c.instances.snapshot_schedule.delete(x.inst)),
    ("instances.standby", WORKS, instance_standby),
    ("instances.restore", WORKS, instance_restore),
    ("instances.snapshots.create", WORKS, snapshot_create),
    ("snapshots.list", WORKS, snapshot_list),
    ("snapshots.get", WORKS, lambda x: x.c.snapshots.get(x.snapshot)),
    ("instances.fork", WORKS, instance_fork),
    ("snapshots.fork", WORKS, snapshot_fork),
    ("instances.snapshots.restore", WORKS, snapshot_restore),
    ("snapshots.delete", WORKS, lambda x: x.c.snapshots.delete(x.snapshot)),
    ("volumes.create", WORKS, volume_create),
    ("volumes.create_from_archive", WORKS, volume_create_from_archive),
    ("volumes.list", WORKS, volume_list),
    ("volumes.get", WORKS, volume_get),
    ("instances.volumes.attach", WORKS, volume_attach),
    ("instances.volumes.detach", WORKS, volume_detach),
    ("volumes.delete", WORKS, volume_delete),
    ("ingresses.create", WORKS, ingress_create),
    ("ingresses.list", WORKS, ingress_list),
    ("ingresses.get", WORKS, ingress_get),
    ("ingresses.delete", WORKS, ingress_delete),
    ("builds.create", NOT_IMPLEMENTED, lambda x: x.c.builds.create(source=b"not a tarball")),
    ("builds.list", NOT_IMPLEMENTED, lambda x: x.c.builds.list()),
    ("builds.get", NOT_IMPLEMENTED, lambda x: x.c.builds.get("b1")),
    ("builds.events", NOT_IMPLEMENTED, lambda x: stream(x.c.builds.events("b1"))),
    ("builds.cancel", NOT_IMPLEMENTED, lambda x: x.c.builds.cancel("b1")),
    ("builders.create", NOT_IMPLEMENTED, lambda x: x.c.builders.create()),
    ("builders.list", NOT_IMPLEMENTED, lambda x: x.c.builders.list()),
    ("builders.get", NOT_IMPLEMENTED, lambda x: x.c.builders.get("bd1")),
    ("builders.prune", NOT_IMPLEMENTED, lambda x: x.c.builders.prune("bd1")),
    ("builders.delete", NOT_IMPLEMENTED, lambda x: x.c.builders.delete("bd1")),
    ("pushes.create", WORKS, push_create),
    ("pushes.list", WORKS, push_list),
    ("pushes.get", WORKS, push_get),
    ("devices.list_available", WORKS, device_list_available),
    ("devices.create", WORKS, device_create),
    ("devices.retrieve", WORKS, device_retrieve),
    ("devices.list", WORKS, device_list),
    ("devices.delete", WORKS, device_delete),
    ("instances.stop", WORKS, instance_stop),
    ("instances.start", WORKS, instance_start),
    ("instances.delete", WORKS, instance_delete),
    ("images.delete", WORKS, image_delete),
]


def sdk_methods():
    """The client's methods as its resources/ directory defines them."""
    import functools
    import inspect

    import hypeman.resources as res

    found = set()

    def walk(obj, prefix, seen):
        for name, member in inspect.getmembers(type(obj)):
            if name.startswith("_") or name.startswith("with_"):
                continue
            if isinstance(member, (property, functools.cached_property)):
                sub = getattr(obj, name)
                if type(sub).__module__.startswith(res.__name__) and id(sub) not in seen:
                    walk(sub, f"{prefix}{name}.", seen | {id(sub)})
            elif inspect.isfunction(member):
                found.add(f"{prefix}{name}")

    c = hypeman.Hypeman(api_key="x", base_url="http://127.0.0.1:1")
    for name in dir(c):
        if name.startswith("_") or name.startswith("with_"):
            continue
        sub = getattr(c, name, None)
        if sub is not None and type(sub).__module__.startswith(res.__name__):
            walk(sub, f"{name}.", {id(sub)})
    return found


def check_exec(ctx):
    """hypeman's exec helper on a running VM: exact exit frames, early resize."""
    inst = ctx.c.instances.create(
        image="busybox",
        name="py-exec",
        vcpus=1,
        size="256MB",
        cmd=["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
        extra_body={"rootfs": ROOTFS},
    )
    wait_state(ctx, inst.id, "Running")
    try:
        r = hexec(ctx.c, inst.id, ["sh", "-c", "echo hi; exit 3"])
        assert (r.exit_code, r.output) == (3, b"hi\n"), r
        r = hexec(ctx.c, inst.id, ["sleep", "30"], timeout=1)
        assert r.exit_code == 124, r
        r = hexec(ctx.c, inst.id, ["sh", "-c", "kill -TERM $$"])
        assert r.exit_code == 128 + 15, r
        r = hexec(ctx.c, inst.id, ["no-such-command"])
        assert r.exit_code == 127, r
        assert b"no-such-command" in r.output, r
        # A resize sent right after the request is applied, not dropped.
        r = hexec(ctx.c, inst.id, ["sh", "-c", "sleep 1; stty size"], tty=True, rows=10, cols=20, resize=[(33, 101)])
        assert (r.exit_code, r.output.strip()) == (0, b"33 101"), r
        # hypeman's cp helper, both ways: a tree with a binary file.
        import tempfile
        from pathlib import Path
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp, "tree")
            (src / "sub").mkdir(parents=True)
            payload = bytes(range(256)) * 1024
            (src / "sub" / "blob.bin").write_bytes(payload)
            (src / "hello.txt").write_text("hello from the sdk\n")
            cp_to_instance(ctx.c, inst.id, src, "/tmp/tree")
            r = hexec(ctx.c, inst.id, ["sh", "-c", "cat /tmp/tree/hello.txt; wc -c < /tmp/tree/sub/blob.bin"])
            assert (r.exit_code, r.output.split()) == (0, [b"hello", b"from", b"the", b"sdk", b"262144"]), r
            back = Path(tmp, "back")
            back.mkdir()
            cp_from_instance(ctx.c, inst.id, "/tmp/tree", back)
            assert (back / "tree" / "sub" / "blob.bin").read_bytes() == payload
            assert (back / "tree" / "hello.txt").read_text() == "hello from the sdk\n"
    finally:
        ctx.c.instances.delete(inst.id)
    print("exec and cp helpers: exit codes, resize, a tree both ways ok")


def main():
    ctx = Ctx()
    listed = {name for name, _, _ in METHODS}
    assert len(listed) == len(METHODS), "a method is listed twice"
    sdk = sdk_methods()
    assert listed == sdk, f"not in the table: {sorted(sdk - listed)}; not in the SDK: {sorted(listed - sdk)}"

    works, failures = 0, []
    for name, expected, call in METHODS:
        try:
            call(ctx)
            outcome = WORKS
            detail = ""
        except hypeman.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            if e.status_code == 501 and body.get("code") == "not_implemented":
                outcome = NOT_IMPLEMENTED
            else:
                outcome = f"HTTP {e.status_code}"
            detail = f"{e.status_code} {body}"
        except Exception as e:  # strict validation errors, assertion failures
            outcome = "failed"
            detail = repr(e)
        print(f"{name:40} {outcome:8} {detail}"[:300])
        if outcome == WORKS:
            works += 1
        if outcome != expected:
            failures.append(f"{name}: expected {expected}, got {outcome} {detail}")
    print(f"{works} of {len(METHODS)} methods work")
    check_exec(ctx)
    if failures:
        raise AssertionError("\n".join(failures))
    print("hypeman methods: ok")


if __name__ == "__main__":
    main()
