//! Loading the kernel modules the guest needs, before any disk is touched.
//!
//! Only with Debian's prebuilt kernel (the fallback): it builds virtio,
//! ext4, overlayfs, erofs and vsock as modules, so its initrd carries them.
//! The lodge kernel (guest/kernel/lodge.config) has them built in and its
//! initrd has no order file: nothing is loaded. `scripts/build-guest.sh` resolves
//! their dependencies on the host (where `modprobe` and `modules.dep` are),
//! decompresses them, and writes [`ORDER_FILE`]: one absolute path per line
//! in load order. The init therefore needs no module tooling: it feeds each
//! file to `finit_module` in turn.
//!
//! A module that is already loaded (`EEXIST`) or whose hardware is absent
//! (`ENODEV`, e.g. `crc32c-intel` on a CPU without SSE4.2) is not an error.
//! Other failures are collected and reported only if a later step fails,
//! where they likely explain it; they do not stop the boot by themselves.

use std::fs::File;
use std::io;

use crate::sys;

/// The load-order file inside the initrd.
pub const ORDER_FILE: &str = "/lib/modules/lodge.order";

/// Load every module listed in [`ORDER_FILE`]; returns the failures worth
/// mentioning. A missing order file means a kernel with everything built in.
pub fn load_all() -> Vec<String> {
    let Ok(order) = std::fs::read_to_string(ORDER_FILE) else {
        return Vec::new();
    };
    order
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|path| load(path).err().map(|e| format!("{path}: {e}")))
        .collect()
}

fn load(path: &str) -> io::Result<()> {
    let file = File::open(path)?;
    match sys::finit_module(&file) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENODEV)) => Ok(()),
        Err(e) => Err(e),
    }
}
