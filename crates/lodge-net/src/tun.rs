//! Creating a persistent TAP device: the two ioctls no netlink call replaces.
//!
//! `TUNSETIFF` on a fresh `/dev/net/tun` descriptor creates the device and
//! `TUNSETPERSIST` keeps it after the descriptor closes, so it can be put on
//! the bridge before QEMU starts and outlives QEMU (and the daemon): QEMU's
//! `-netdev tap,ifname=NAME,script=no,downscript=no` opens `/dev/net/tun`
//! again and attaches to the existing device by name. The kernel then takes
//! QEMU's per-open flags (it asks for `IFF_VNET_HDR` itself when supported),
//! and insists only that the device type (TAP) and `IFF_MULTI_QUEUE` match.
//! So the device is created as `IFF_TAP | IFF_NO_PI`, single-queue, the way
//! QEMU opens it without `queues=`.
//!
//! This is the crate's only unsafe code: two `ioctl(2)` calls with a
//! correctly laid out `struct ifreq`.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use crate::config::IfName;

// From <linux/if_tun.h>: _IOW('T', 202, int) and _IOW('T', 203, int).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags at the
/// start of the 24-byte union (40 bytes in all on Linux).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 24 - std::mem::size_of::<libc::c_short>()],
}

/// Creates the persistent TAP device `name` (it must not exist yet).
pub(crate) fn create_persistent_tap(name: &IfName) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    let bytes = name.as_str().as_bytes();
    // IfName guarantees at most 15 bytes, leaving the NUL terminator.
    req.name[..bytes.len()].copy_from_slice(bytes);

    // SAFETY: `file` is an open /dev/net/tun descriptor for the duration of
    // the call; TUNSETIFF reads and writes a `struct ifreq`, which `IfReq`
    // matches in layout and size (repr(C), 16-byte name + 24-byte union), and
    // `req` is a live, exclusively borrowed local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: same open descriptor, now attached to the device; TUNSETPERSIST
    // takes its argument by value (non-zero = persist), no memory is passed.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // Closing `file` detaches us; the device stays because it is persistent.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
