//! Leases from several processes at once never collide: the test re-runs
//! itself as worker processes (selected by `LODGE_NET_LEASE_WORKER`), each
//! allocating in a shared lease directory, then checks the union. No root
//! or network needed.

use std::collections::HashSet;
use std::process::Command;

use lodge_net::{Allocator, Subnet};

const WORKER: &str = "LODGE_NET_LEASE_WORKER";
const PROCS: usize = 4;
const PER_PROC: usize = 50;

fn subnet() -> Subnet {
    "10.100.0.0/16".parse().expect("subnet")
}

#[test]
fn processes_never_share_an_address() {
    if let Ok(spec) = std::env::var(WORKER) {
        let (dir, who) = spec.split_once('|').expect("worker spec");
        let alloc = Allocator::open(dir, subnet()).expect("open");
        let threads: Vec<_> = (0..PER_PROC)
            .map(|i| {
                let alloc = alloc.clone();
                let id = format!("p{who}-i{i}");
                std::thread::spawn(move || alloc.allocate(&id))
            })
            .collect();
        for t in threads {
            t.join().expect("thread").expect("allocate");
        }
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_str = dir.path().to_str().expect("utf-8 path");
    let exe = std::env::current_exe().expect("exe");
    // All workers run at once, each with PER_PROC threads.
    let running: Vec<_> = (0..PROCS)
        .map(|p| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "processes_never_share_an_address",
                    "--test-threads=1",
                ])
                .env(WORKER, format!("{dir_str}|{p}"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    for child in running {
        let out = child.wait_with_output().expect("worker");
        assert!(out.status.success(), "worker failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    }
    let alloc = Allocator::open(dir.path(), subnet()).expect("open");
    let leases = alloc.leases().expect("leases");
    let ips: HashSet<_> = leases.iter().map(|l| l.ip).collect();
    let ids: HashSet<_> = leases.iter().map(|l| l.instance_id.clone()).collect();
    assert_eq!(leases.len(), PROCS * PER_PROC);
    assert_eq!(ips.len(), PROCS * PER_PROC, "duplicate address");
    assert_eq!(ids.len(), PROCS * PER_PROC, "lost instance");
    // They are the lowest addresses: no gaps were skipped.
    assert_eq!(
        leases.last().map(|l| l.ip),
        subnet().guest_addresses().nth(PROCS * PER_PROC - 1)
    );
}
