//! Real-kernel tests of lodge-net, each inside a network namespace of its
//! own so the host's network is never touched.
//!
//! How: each test, run normally, creates `lodge-test-<pid>-<n>` with
//! `ip netns add` and re-executes this very test binary inside it
//! (`ip netns exec NS /proc/self/exe --exact <test>`) with
//! `LODGE_NET_TEST_INNER=1` set; the inner run sees that variable and does
//! the actual work. The outer run checks the inner one passed and deletes
//! the namespace, which destroys every link, TAP and nft table made inside
//! it even when the inner run panicked half-way. Re-executing (rather than
//! `unshare` in-process) keeps the namespace switch away from libtest's
//! threads and the tokio runtime. Without root the tests are skipped with a
//! message (CI runs as root).
//!
//! Reading state back for assertions uses `ip`, `bridge`, `tc` and `nft`
//! output: acceptable in tests, never in the library.

use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use lodge_net::{
    attach_to_bridge, create_tap, delete_tap, reap_orphans, setup_default, tap_name,
    teardown_default, Allocator, Bandwidth, IfName, Limits, MacAddr, NetConfig, NetError,
};

const INNER: &str = "LODGE_NET_TEST_INNER";
const AS_NOBODY: &str = "LODGE_NET_TEST_AS_NOBODY";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip").args(["netns", "del", &self.0]).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("warning: deleting netns {}: {other:?}", self.0),
        }
    }
}

/// Runs `body` inside a fresh network namespace (see the module docs).
/// `as_nobody` runs the inner process without privileges (uid 65534).
fn in_netns<F, Fut>(test: &str, as_nobody: bool, body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    if std::env::var_os(INNER).is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(body());
        return;
    }
    if !is_root() {
        eprintln!("skipping {test}: needs root to create network namespaces (CI runs as root)");
        return;
    }
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "lodge-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let status = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .expect("run ip netns add");
    assert!(status.success(), "ip netns add {name}");
    let _ns = Netns(name.clone());

    let exe = std::env::current_exe().expect("current exe");
    let exe = exe.to_str().expect("utf-8 exe path");
    let mut args = vec!["netns", "exec", &name];
    if as_nobody {
        args.extend([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ]);
    }
    args.extend([exe, "--exact", test, "--nocapture", "--test-threads=1"]);
    let out = Command::new("ip")
        .args(&args)
        .env(INNER, "1")
        .env(AS_NOBODY, if as_nobody { "1" } else { "" })
        .output()
        .expect("re-run the test inside the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- inner stdout ---\n{stdout}\n--- inner stderr ---\n{stderr}");
    assert!(out.status.success(), "inner run of {test} failed");
    assert!(
        stdout.contains("1 passed"),
        "inner run of {test} did not run exactly the test"
    );
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_ok(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A stand-in uplink in the namespace: a veth (the CI kernel has no
/// `dummy` driver) carrying the default route (192.0.2.0/24 is TEST-NET-1; nothing is ever sent).
fn fake_uplink() {
    sh("ip link set lo up && ip link add up0 type veth peer name up0p && ip addr add 192.0.2.2/24 dev up0 \
        && ip link set up0 up && ip route add default via 192.0.2.1 dev up0");
}

fn cfg() -> NetConfig {
    NetConfig {
        dns: Some(vec![Ipv4Addr::new(192, 0, 2, 53)]),
        ..NetConfig::default()
    }
}

fn link_exists(name: &str) -> bool {
    sh_ok(&format!("ip link show dev {name}"))
}

#[test]
fn setup_is_idempotent_and_teardown_leaves_nothing() {
    in_netns(
        "setup_is_idempotent_and_teardown_leaves_nothing",
        false,
        || async {
            fake_uplink();
            let net = setup_default(&cfg()).await.expect("setup");
            assert_eq!(net.uplink.as_str(), "up0");
            assert_eq!(net.gateway(), Ipv4Addr::new(10, 100, 0, 1));
            assert_eq!(net.dns, vec![Ipv4Addr::new(192, 0, 2, 53)]);

            let check = || {
                let addrs = sh("ip -4 -o addr show dev lodge0");
                assert_eq!(addrs.lines().count(), 1, "{addrs}");
                assert!(addrs.contains("inet 10.100.0.1/16"), "{addrs}");
                assert!(sh("ip -d link show dev lodge0").contains("bridge"));
                let link = sh("ip link show dev lodge0");
                assert!(link.contains(",UP"), "{link}");
                assert!(link.contains("link/ether 02:4c:0a:64:00:01"), "{link}");
                assert_eq!(
                    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                        .expect("read ip_forward")
                        .trim(),
                    "1"
                );
                let tables = sh("nft list tables");
                assert_eq!(tables.trim(), "table inet lodge", "{tables}");
                let table = sh("nft list table inet lodge");
                for want in [
                    "hook forward",
                    "iifname \"lodge0\" oifname \"lodge0\" drop",
                    "iifname \"lodge0\" oifname \"up0\" ip saddr 10.100.0.0/16 ct state { established, related, new } accept",
                    "iifname \"up0\" oifname \"lodge0\" ip daddr 10.100.0.0/16 ct state { established, related } accept",
                    "iifname \"lodge0\" drop",
                    "oifname \"lodge0\" drop",
                    "hook postrouting",
                    "oifname \"up0\" ip saddr 10.100.0.0/16 masquerade",
                ] {
                    assert!(table.contains(want), "missing {want:?} in\n{table}");
                }
                assert_eq!(table.matches("masquerade").count(), 1, "{table}");
                table
            };
            let first = check();

            // A stale address (e.g. from an earlier LODGE_SUBNET) goes away;
            // a second setup changes nothing else.
            sh("ip addr add 10.99.0.1/24 dev lodge0");
            let again = setup_default(&cfg()).await.expect("setup again");
            assert_eq!(again, net);
            assert_eq!(check(), first);
            setup_default(&cfg()).await.expect("setup a third time");
            assert_eq!(check(), first);

            // Other tables are not touched by setup or teardown.
            sh("nft add table ip other && nft add chain ip other c");
            teardown_default(&net.bridge).await.expect("teardown");
            assert!(!link_exists("lodge0"));
            assert_eq!(sh("nft list tables").trim(), "table ip other");
            teardown_default(&net.bridge)
                .await
                .expect("teardown is idempotent");
            assert!(link_exists("up0"));
        },
    );
}

#[test]
fn setup_refuses_bad_host_state() {
    in_netns("setup_refuses_bad_host_state", false, || async {
        sh("ip link set lo up");
        // No default route and no LODGE_UPLINK.
        let err = setup_default(&cfg()).await.expect_err("no uplink");
        assert!(matches!(err, NetError::NoUplink), "{err}");

        fake_uplink();
        let mut c = cfg();
        c.uplink = Some(IfName::new("nope0").expect("name"));
        let err = setup_default(&c).await.expect_err("missing uplink");
        assert!(matches!(err, NetError::UplinkNotFound(_)), "{err}");

        // A host route inside the subnet.
        sh("ip link add other0 type veth peer name other0p && ip addr add 10.100.5.1/24 dev other0 && ip link set other0 up");
        let err = setup_default(&cfg()).await.expect_err("overlap");
        assert!(matches!(err, NetError::SubnetOverlap { .. }), "{err}");
        assert!(err.to_string().contains("10.100.5.0/24"), "{err}");
        assert!(err.to_string().contains("other0"), "{err}");
        // Nothing half-created.
        assert!(!link_exists("lodge0"));
        assert_eq!(sh("nft list tables").trim(), "");
        // Another subnet is fine, and lodge's own route is not an overlap.
        let mut c = cfg();
        c.subnet = "10.101.0.0/16".parse().expect("subnet");
        setup_default(&c).await.expect("other subnet");
        setup_default(&c).await.expect("own route is no overlap");

        // A non-bridge already called like the bridge is not taken over.
        sh("ip link add notbr type veth peer name notbrp");
        c.bridge = IfName::new("notbr").expect("name");
        let err = setup_default(&c).await.expect_err("not a bridge");
        assert!(matches!(err, NetError::NotABridge { .. }), "{err}");
        let err = teardown_default(&c.bridge).await.expect_err("not a bridge");
        assert!(matches!(err, NetError::NotABridge { .. }), "{err}");
        assert!(link_exists("notbr"));
    });
}

#[test]
fn without_privilege_says_root_is_needed() {
    if std::env::var_os(INNER).is_none() && is_root() {
        let exe = std::env::current_exe().expect("current exe");
        // Where the checkout is private (e.g. under /root), uid 65534 cannot
        // run this binary at all: nothing to test then.
        let runnable = sh_ok(&format!(
            "setpriv --reuid=65534 --regid=65534 --clear-groups test -x '{}'",
            exe.display()
        ));
        if !runnable {
            eprintln!(
                "skipping: setpriv missing or uid 65534 cannot run {}",
                exe.display()
            );
            return;
        }
    }
    in_netns("without_privilege_says_root_is_needed", true, || async {
        assert!(!is_root(), "the inner run should be unprivileged");
        let mut c = cfg();
        c.uplink = Some(IfName::new("lo").expect("name"));
        let err = setup_default(&c).await.expect_err("EPERM");
        assert!(matches!(err, NetError::PermissionDenied), "{err}");
        assert_eq!(
            err.to_string(),
            "creating network links needs root (CAP_NET_ADMIN)"
        );
    });
}

#[test]
fn tap_is_isolated_with_static_fdb_and_deleted() {
    in_netns(
        "tap_is_isolated_with_static_fdb_and_deleted",
        false,
        || async {
            fake_uplink();
            let net = setup_default(&cfg()).await.expect("setup");
            let dir = tempfile::tempdir().expect("tempdir");
            let leases = Allocator::open(dir.path(), net.subnet).expect("leases");
            let id = "k3xq9z0abcdefghijklmnopq";
            let lease = leases.allocate(id).expect("lease");
            let tap = create_tap(&net, id, lease.mac, Limits::default())
                .await
                .expect("create tap");
            assert_eq!(tap, tap_name(id).expect("name"));
            assert_eq!(tap.as_str(), "lt-k3xq9z0abc");

            let port = sh(&format!("bridge -d link show dev {tap}"));
            for want in [
                "master lodge0",
                "learning off",
                "flood off",
                "mcast_flood off",
                "bcast_flood on",
                "isolated on",
            ] {
                assert!(port.contains(want), "missing {want:?} in {port}");
            }
            assert!(sh(&format!("ip -d link show dev {tap}")).contains("tun type tap"));
            assert!(lodge_net::tap_exists(id).await.expect("exists"));
            // The gateway MAC does not follow the ports'.
            assert!(sh("ip link show dev lodge0").contains("link/ether 02:4c:0a:64:00:01"));
            let fdb = sh(&format!("bridge fdb show dev {tap}"));
            let line = fdb
                .lines()
                .find(|l| l.starts_with(&lease.mac.to_string()))
                .unwrap_or_else(|| panic!("no FDB entry for {} in {fdb}", lease.mac));
            assert!(
                line.contains("master lodge0") && line.contains("static"),
                "{line}"
            );
            assert!(!line.contains("permanent"), "{line}");
            // No qdisc of lodge's without limits.
            assert!(sh(&format!("tc class show dev {tap}")).trim().is_empty());

            // Re-creating (a leftover of a failed create) works.
            create_tap(&net, id, lease.mac, Limits::default())
                .await
                .expect("recreate");
            assert!(delete_tap(id).await.expect("delete"));
            assert!(!link_exists(tap.as_str()));
            assert!(!delete_tap(id).await.expect("delete again"));
            assert!(!lodge_net::tap_exists(id).await.expect("exists"));
            assert!(sh("bridge fdb show br lodge0")
                .lines()
                .all(|l| !l.contains(&lease.mac.to_string())));

            // Without the bridge, nothing is created.
            teardown_default(&net.bridge).await.expect("teardown");
            let err = create_tap(&net, id, lease.mac, Limits::default())
                .await
                .expect_err("no bridge");
            assert!(matches!(err, NetError::BridgeMissing(_)), "{err}");
            assert!(!link_exists(tap.as_str()));
        },
    );
}

#[test]
fn bandwidth_limits_live_and_die_with_the_tap() {
    in_netns(
        "bandwidth_limits_live_and_die_with_the_tap",
        false,
        || async {
            fake_uplink();
            let net = setup_default(&cfg()).await.expect("setup");
            let id = "bw0instance";
            let limits = Limits {
                download: Some("10Mbps".parse::<Bandwidth>().expect("bw")),
                upload: Some("1MB/s".parse::<Bandwidth>().expect("bw")),
            };
            let mac = MacAddr::for_ip(Ipv4Addr::new(10, 100, 0, 9));
            let tap = create_tap(&net, id, mac, limits).await.expect("tap");
            let down = sh(&format!("tc class show dev {tap}"));
            assert!(
                down.contains("htb 1:1") && down.contains("rate 10Mbit"),
                "{down}"
            );
            let ifb = lodge_net::ifb_name(id).expect("ifb");
            assert!(sh(&format!("ip -d link show dev {ifb}")).contains("ifb"));
            let up = sh(&format!("tc class show dev {ifb}"));
            // 1 MiB/s = 8388608 bit/s; tc prints it rounded.
            assert!(
                up.contains("htb 1:1") && up.contains("rate 8388Kbit"),
                "{up}"
            );
            let filt = sh(&format!("tc filter show dev {tap} ingress"));
            assert!(
                filt.contains("mirred") && filt.contains(ifb.as_str()),
                "{filt}"
            );

            // Only-download leaves no IFB.
            let only_down = Limits {
                upload: None,
                ..limits
            };
            create_tap(&net, "bw1instance", mac, only_down)
                .await
                .expect("tap 2");
            assert!(!link_exists("li-bw1instanc"));

            assert!(delete_tap(id).await.expect("delete"));
            assert!(delete_tap("bw1instance").await.expect("delete"));
            assert!(!link_exists(tap.as_str()) && !link_exists(ifb.as_str()));
            // No traffic-control class is left anywhere in the namespace.
            for dev in sh("ls /sys/class/net").split_whitespace() {
                let classes = sh(&format!("tc class show dev {dev}"));
                assert!(classes.trim().is_empty(), "{dev}: {classes}");
            }
        },
    );
}

#[test]
fn reap_orphans_keeps_only_live_instances() {
    in_netns("reap_orphans_keeps_only_live_instances", false, || async {
        fake_uplink();
        let net = setup_default(&cfg()).await.expect("setup");
        let bw = Limits {
            download: None,
            upload: Some("100Mbps".parse().expect("bw")),
        };
        let mac = |n: u8| MacAddr::for_ip(Ipv4Addr::new(10, 100, 0, n));
        create_tap(&net, "alive00000aaaa", mac(2), bw)
            .await
            .expect("a");
        create_tap(&net, "gone100000bbbb", mac(3), bw)
            .await
            .expect("b");
        create_tap(&net, "gone200000cccc", mac(4), Limits::default())
            .await
            .expect("c");
        // A leftover not even on the bridge, and a device that is not ours.
        sh("ip tuntap add dev lt-crashed000 mode tap && ip link add keepme0 type veth peer name keepme0p");

        let mut reaped = reap_orphans(["alive00000aaaa", "not an id"])
            .await
            .expect("reap");
        reaped.sort();
        assert_eq!(
            reaped,
            vec![
                "li-gone100000",
                "lt-crashed000",
                "lt-gone100000",
                "lt-gone200000"
            ]
        );
        assert!(link_exists("lt-alive00000") && link_exists("li-alive00000"));
        assert!(link_exists("keepme0") && link_exists("lodge0") && link_exists("up0"));

        // With no VM at all (and even with the bridge gone) it still works.
        teardown_default(&net.bridge).await.expect("teardown");
        let mut reaped = reap_orphans(Vec::<String>::new()).await.expect("reap all");
        reaped.sort();
        assert_eq!(reaped, vec!["li-alive00000", "lt-alive00000"]);
        assert!(reap_orphans(["x"]).await.expect("nothing left").is_empty());
        assert!(link_exists("keepme0"));
    });
}

fn ping(ns: Option<&str>, ip: &str) -> bool {
    let prefix = ns
        .map(|n| format!("ip netns exec {n} "))
        .unwrap_or_default();
    sh_ok(&format!("{prefix}busybox ping -c 1 -W 2 {ip}"))
}

fn rx_packets(ns: &str, dev: &str) -> u64 {
    sh(&format!(
        "ip netns exec {ns} cat /sys/class/net/{dev}/statistics/rx_packets"
    ))
    .trim()
    .parse()
    .expect("rx_packets")
}

/// Guests stood in for by namespaces on veth pairs, attached to the bridge
/// exactly as TAPs are: they reach the gateway and (through NAT) the outside,
/// the outside cannot open connections to them, and they cannot reach each
/// other by ARP, by a known MAC, by routing through the gateway, or by
/// unknown-unicast flooding.
#[test]
fn guests_reach_out_and_host_but_not_each_other() {
    in_netns(
        "guests_reach_out_and_host_but_not_each_other",
        false,
        || async {
            if !sh_ok("command -v busybox") {
                panic!("busybox (busybox-static) is needed for ping");
            }
            let pid = std::process::id();
            let outside = Netns(format!("lodge-test-{pid}-out"));
            let ga = Netns(format!("lodge-test-{pid}-ga"));
            let gb = Netns(format!("lodge-test-{pid}-gb"));
            for ns in [&outside, &ga, &gb] {
                sh(&format!(
                    "ip netns add {0} && ip netns exec {0} sh -c \
                 'sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
                  && ip link set lo up'",
                    ns.0
                ));
            }
            sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
            fake_uplink();
            sh(&format!(
                "ip link set up0p netns {0} && ip -n {0} addr add 192.0.2.1/24 dev up0p \
             && ip -n {0} link set up0p up",
                outside.0
            ));
            let net = setup_default(&cfg()).await.expect("setup");
            let dir = tempfile::tempdir().expect("tempdir");
            let leases = Allocator::open(dir.path(), net.subnet).expect("leases");
            let a = leases.allocate("guesta").expect("lease a");
            let b = leases.allocate("guestb").expect("lease b");
            for (ns, host_end, lease) in [(&ga, "vg-a", &a), (&gb, "vg-b", &b)] {
                sh(&format!(
                    "ip link add {host_end} type veth peer name eth0 netns {ns} \
                 && ip -n {ns} link set eth0 address {mac} \
                 && ip -n {ns} addr add {ip}/16 dev eth0 && ip -n {ns} link set eth0 up \
                 && ip -n {ns} route add default via 10.100.0.1",
                    ns = ns.0,
                    mac = lease.mac,
                    ip = lease.ip
                ));
                attach_to_bridge(&net, &IfName::new(host_end).expect("name"), lease.mac)
                    .await
                    .expect("attach");
            }
            let (a_ip, b_ip) = (a.ip.to_string(), b.ip.to_string());

            assert!(ping(None, &a_ip), "host -> guest a");
            assert!(ping(None, &b_ip), "host -> guest b");
            assert!(ping(Some(&ga.0), "10.100.0.1"), "guest a -> gateway");
            // The outside has no route to the subnet: a reply means NAT worked.
            assert!(ping(Some(&ga.0), "192.0.2.1"), "guest a -> outside via NAT");
            sh(&format!(
                "ip -n {} route add 10.100.0.0/16 via 192.0.2.2",
                outside.0
            ));
            assert!(
                !ping(Some(&outside.0), &a_ip),
                "outside -> guest must be refused"
            );

            // Layer 2 first, with the bridge's netfilter hook off so only the
            // port setup is tested (where br_netfilter is on, as on this
            // project's kernel, the firewall's bridge->bridge drop is a second
            // barrier, checked below).
            // (Per network namespace since Linux 5.3, so the host is unaffected.)
            sh("sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-arptables=0");
            // On-link: ARP broadcasts do not cross isolated ports.
            assert!(!ping(Some(&ga.0), &b_ip), "a -> b by ARP");
            // Known MAC on both sides: isolation alone must stop it.
            sh(&format!(
                "ip -n {} neigh replace {b_ip} lladdr {} dev eth0 nud permanent \
             && ip -n {} neigh replace {a_ip} lladdr {} dev eth0 nud permanent",
                ga.0, b.mac, gb.0, a.mac
            ));
            assert!(!ping(Some(&ga.0), &b_ip), "a -> b by static neighbour");
            // Unknown unicast is not flooded to b (hypeman #476).
            sh(&format!(
            "ip -n {} neigh replace 10.100.0.99 lladdr 02:4c:0a:64:00:63 dev eth0 nud permanent",
            ga.0
        ));
            let before = rx_packets(&gb.0, "eth0");
            assert!(!ping(Some(&ga.0), "10.100.0.99"));
            assert_eq!(rx_packets(&gb.0, "eth0"), before, "b saw unknown unicast");

            sh("sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-arptables=1");
            assert!(
                !ping(Some(&ga.0), &b_ip),
                "a -> b by static neighbour, brnf on"
            );
            // Through the gateway: the firewall drops bridge -> bridge.
            sh(&format!(
            "ip -n {} route add {b_ip}/32 via 10.100.0.1 && ip -n {} route add {a_ip}/32 via 10.100.0.1",
            ga.0, gb.0
        ));
            assert!(!ping(Some(&ga.0), &b_ip), "a -> b routed via the gateway");
            // And the same routed hop works for the outside, so the drops above
            // are the isolation, not a broken path.
            assert!(ping(Some(&gb.0), "192.0.2.1"), "guest b -> outside via NAT");
        },
    );
}

fn carrier(dev: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/carrier"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

/// QEMU, given `qemu_args`, attaches to the TAP lodge made (carrier comes up),
/// and the TAP outlives QEMU until lodge deletes it.
#[test]
fn qemu_attaches_to_the_persistent_tap() {
    if std::env::var_os(INNER).is_none() && !sh_ok("command -v qemu-system-x86_64") {
        eprintln!("skipping: qemu-system-x86_64 not installed");
        return;
    }
    in_netns("qemu_attaches_to_the_persistent_tap", false, || async {
        fake_uplink();
        let net = setup_default(&cfg()).await.expect("setup");
        let id = "qemuinstance";
        let mac = MacAddr::for_ip(Ipv4Addr::new(10, 100, 0, 2));
        let tap = create_tap(&net, id, mac, Limits::default())
            .await
            .expect("tap");
        assert!(!carrier(tap.as_str()), "no carrier before QEMU attaches");
        let mut qemu = Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-m",
                "64",
                "-S",
                "-nodefaults",
                "-display",
                "none",
                "-monitor",
                "none",
                "-serial",
                "none",
            ])
            .args(lodge_net::qemu_args(&tap, mac))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start qemu");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !carrier(tap.as_str()) && std::time::Instant::now() < deadline {
            if let Some(status) = qemu.try_wait().expect("poll qemu") {
                let out = qemu.wait_with_output().expect("qemu output");
                panic!(
                    "qemu exited early ({status}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let attached = carrier(tap.as_str());
        qemu.kill().expect("stop qemu");
        qemu.wait().expect("reap qemu");
        assert!(attached, "QEMU did not attach to {tap}");
        assert!(link_exists(tap.as_str()), "the TAP outlives QEMU");
        assert!(!carrier(tap.as_str()));
        assert!(sh(&format!("bridge -d link show dev {tap}")).contains("isolated on"));
        assert!(delete_tap(id).await.expect("delete"));
    });
}
