//! The ACPI power button, so the host can stop a guest gracefully.
//!
//! QEMU's `system_powerdown` presses the virtual power button; the kernel's
//! `button` driver turns that into a `KEY_POWER` event on an evdev device
//! named "Power Button". With no acpid in the guest, the init watches those
//! devices itself and asks the workload to terminate (SIGTERM), which then
//! ends the VM the normal way. Without the `button`/`evdev` modules the list
//! is empty and only a forced stop works.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit Linux: a 16-byte timeval, then type,
/// code (u16 each) and value (i32).
const EVENT_SIZE: usize = 24;

/// Open every input device named "Power Button".
pub fn open_all() -> Vec<File> {
    let Ok(inputs) = std::fs::read_dir("/sys/class/input") else {
        return Vec::new();
    };
    let mut buttons = Vec::new();
    for input in inputs.flatten() {
        let Ok(name) = std::fs::read_to_string(input.path().join("name")) else {
            continue;
        };
        if name.trim() != "Power Button" {
            continue;
        }
        let Ok(children) = std::fs::read_dir(input.path()) else {
            continue;
        };
        for child in children.flatten() {
            let child = child.file_name();
            let Some(event) = child.to_str().filter(|n| n.starts_with("event")) else {
                continue;
            };
            let opened = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(format!("/dev/input/{event}"));
            if let Ok(file) = opened {
                buttons.push(file);
            }
        }
    }
    buttons
}

/// Drain pending events; true if the button was pressed among them.
pub fn pressed(mut device: &File) -> bool {
    let mut buf = [0u8; EVENT_SIZE * 16];
    let mut pressed = false;
    while let Ok(n) = device.read(&mut buf) {
        if n == 0 {
            break;
        }
        pressed |= buf[..n].chunks_exact(EVENT_SIZE).any(is_power_press);
    }
    pressed
}

fn is_power_press(event: &[u8]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut e = [0u8; EVENT_SIZE];
        e[16..18].copy_from_slice(&kind.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)));
        assert!(!is_power_press(&event(0, 0, 0)));
        assert!(!is_power_press(&event(EV_KEY, 28, 1)));
    }
}
