//! Free page reporting at a finer grain than the kernel picks itself.
//!
//! The balloon's free page reporting hands the host back only free blocks
//! of at least `page_reporting_order` pages. Linux 6.1 resets that order
//! to the pageblock order (4 MiB on the lodge kernel, 2 MiB on Debian's)
//! when the balloon registers, overriding the command line's
//! `page_reporting.page_reporting_order=N`; an idle guest's free memory
//! sits mostly in smaller blocks (the freed initrd and init sections, the
//! gaps between kernel sections, what boot-time allocations left), which
//! the host then keeps resident: ~14 MiB of an idle busybox VM's 48.
//! So once the balloon has registered (built in, or after the modules are
//! loaded), the init writes the command line's order back into the
//! parameter; later kernels honour the command line and the write changes
//! nothing.

use std::io;

/// The kernel parameter, as the command line and sysfs name it.
const PARAM: &str = "page_reporting.page_reporting_order";
const SYSFS: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

/// The last `page_reporting.page_reporting_order=N` on `cmdline`, if any
/// (the last one wins, as for the kernel).
pub fn reporting_order(cmdline: &str) -> Option<u32> {
    cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix(PARAM)?.strip_prefix('='))
        .filter_map(|v| v.parse().ok())
        .next_back()
}

/// Applies the command line's reporting order, if it names one. A kernel
/// without free page reporting (no such parameter) is not an error.
pub fn apply_reporting_order() -> io::Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    let Some(order) = reporting_order(&cmdline) else {
        return Ok(());
    };
    match std::fs::write(SYSFS, order.to_string()) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_valid_order_on_the_command_line_wins() {
        assert_eq!(reporting_order("console=ttyS0 quiet"), None);
        assert_eq!(
            reporting_order("quiet page_reporting.page_reporting_order=0 panic=-1"),
            Some(0)
        );
        assert_eq!(
            reporting_order(
                "page_reporting.page_reporting_order=0 x page_reporting.page_reporting_order=9"
            ),
            Some(9)
        );
        assert_eq!(
            reporting_order("page_reporting.page_reporting_order=x"),
            None
        );
        assert_eq!(
            reporting_order("page_reporting.page_reporting_order_x=3"),
            None
        );
    }
}
