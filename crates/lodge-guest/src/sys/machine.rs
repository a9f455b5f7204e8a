//! Calls on the machine as a whole: mounts, kernel modules, hostname, the
//! root directory, sync and power.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

use super::cvt::{check, cstring};

/// `mount(2)`.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstring(source)?;
    let target = cstring(target)?;
    let fstype = cstring(fstype)?;
    let data = data.map(cstring).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: every pointer is a valid NUL-terminated string (or null for
    // `data`, which mount accepts) that outlives the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_ptr,
        )
    })?;
    Ok(())
}

/// `umount2(2)`.
pub fn umount(target: &str, flags: libc::c_int) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: `target` is a valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })?;
    Ok(())
}

/// Load a kernel module from an open `.ko` file (`finit_module(2)`).
pub fn finit_module(file: &impl AsRawFd) -> io::Result<()> {
    let params = c"";
    // SAFETY: the fd is open for the duration of the call and `params` is a
    // valid empty C string; flags 0 asks for no special behaviour.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// `chroot(2)` into `root`, then `chdir("/")`.
pub fn chroot(root: &str) -> io::Result<()> {
    let root = cstring(root)?;
    // SAFETY: `root` is a valid NUL-terminated string.
    check(unsafe { libc::chroot(root.as_ptr()) })?;
    std::env::set_current_dir("/")
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// Power the machine off. Returns only if the kernel refused.
pub fn power_off() -> io::Error {
    // SAFETY: reboot with a valid command; on success it does not return.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    io::Error::last_os_error()
}

/// Make Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
pub fn disable_ctrl_alt_del() -> io::Result<()> {
    // SAFETY: reboot with a valid command that only flips a kernel flag.
    check(unsafe { libc::reboot(libc::RB_DISABLE_CAD) })?;
    Ok(())
}
