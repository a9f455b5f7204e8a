//! What only QEMU has a choice about: the chipset model and how guest CPUs
//! run (KVM or QEMU's own software emulation, TCG).
//!
//! These are host-wide settings of the QEMU backend (lodge decides the
//! accelerator once per daemon, see `crate::accel`), so they live in
//! [`QemuOptions`] held by `QemuBackend`, not in the generic `VmConfig`.
//! Names are the ones QEMU's command line and `LODGE_ACCEL` use.
//!
//! The TCG translation cache is sized here too: QEMU 7.2 reserves 1 GiB for
//! it and keeps every page it has written code into, so an idle guest that
//! booted a distribution kernel holds ~60 MiB of translated code it will
//! never run again. A bounded cache is flushed when full and retranslated,
//! reusing the same pages (see [`DEFAULT_TCG_TB_SIZE_MIB`]).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// QEMU-only settings applied to every VM the backend starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuOptions {
    /// Chipset model.
    pub machine: MachineType,
    /// CPU virtualisation method.
    pub accel: Accel,
    /// Size of TCG's translation cache in MiB (`-accel tcg,tb-size=N`);
    /// `None` leaves QEMU's own default (1 GiB in 7.2). Unused under KVM.
    #[serde(default = "default_tb_size")]
    pub tcg_tb_size_mib: Option<u32>,
}

/// The translation cache lodge gives a TCG guest, in MiB. Measured on an
/// idle busybox VM (Debian's kernel, 1 vCPU): QEMU's default left 62 MiB of
/// code resident per VM, 16 MiB holds it at 16 (scripts/bench-density.sh,
/// 10 VMs: 303 → 249 MiB RSS per VM). QEMU's CPU time until the guest
/// agent answered, same runs side by side: 3.6–3.8 s with the default,
/// 32 or 24 MiB; 3.9–4.3 s with 16 (a few flushes while the kernel boots);
/// 5.3–5.6 s with 8.
pub const DEFAULT_TCG_TB_SIZE_MIB: u32 = 16;

fn default_tb_size() -> Option<u32> {
    Some(DEFAULT_TCG_TB_SIZE_MIB)
}

impl QemuOptions {
    /// The default machine (q35) with `accel` and lodge's translation
    /// cache size.
    pub fn new(accel: Accel) -> Self {
        Self {
            machine: MachineType::default(),
            accel,
            tcg_tb_size_mib: default_tb_size(),
        }
    }

    /// The `-accel` argument: the accelerator, and under TCG the
    /// translation cache size when one is set.
    pub fn accel_arg(&self) -> String {
        match (self.accel, self.tcg_tb_size_mib) {
            (Accel::Tcg, Some(mib)) => format!("tcg,tb-size={mib}"),
            (accel, _) => accel.as_str().to_string(),
        }
    }
}

impl Default for QemuOptions {
    /// q35 under TCG, which runs everywhere; the daemon sets the probed
    /// accelerator.
    fn default() -> Self {
        Self::new(Accel::Tcg)
    }
}

/// Chipset model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    /// Q35 + ICH9, PCIe (the default).
    #[default]
    Q35,
    /// i440FX + PIIX, legacy PCI.
    Pc,
}

/// How guest CPUs are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation (Tiny Code Generator).
    Tcg,
}

impl MachineType {
    /// The name QEMU and lodge's API use.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineType::Q35 => "q35",
            MachineType::Pc => "pc",
        }
    }

    /// The `-machine` value: the type with the board devices a lodge VM
    /// never uses left out ([`LEAN_MACHINE_PROPERTIES`]).
    pub fn arg(self) -> &'static str {
        match self {
            MachineType::Q35 => "q35,sata=off,smbus=off,vmport=off,i8042=off,smm=off",
            MachineType::Pc => "pc,sata=off,smbus=off,vmport=off,i8042=off,smm=off",
        }
    }
}

/// Board devices every VM would otherwise get and none uses, measured with
/// scripts/bench-kernel.sh's bare-QEMU comparison: the SATA controller
/// (the firmware probes its ports; lodge's disks are virtio), the SMBus
/// and its EEPROMs, the VMware port and the PS/2 controller (no keyboard
/// or mouse; the guest's input device is the ACPI power button), and SMM
/// (firmware-only; the firmware sets it up on every boot under TCG).
/// Part of the snapshot identity: a state saved with other board devices
/// does not load.
pub const LEAN_MACHINE_PROPERTIES: &str = "sata=off,smbus=off,vmport=off,i8042=off,smm=off";

impl Accel {
    /// The name QEMU and `LODGE_ACCEL` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for MachineType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An accelerator name that is neither `kvm` nor `tcg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown accelerator {0:?}, expected kvm or tcg")]
pub struct ParseAccelError(pub String);

impl FromStr for Accel {
    type Err = ParseAccelError;

    /// Accepts `kvm` or `tcg`, ignoring ASCII case and surrounding blanks.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(ParseAccelError(s.to_owned())),
        }
    }
}

/// A machine type name that is neither `q35` nor `pc`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown machine type {0:?}, expected q35 or pc")]
pub struct ParseMachineTypeError(pub String);

impl FromStr for MachineType {
    type Err = ParseMachineTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "q35" => Ok(MachineType::Q35),
            "pc" => Ok(MachineType::Pc),
            _ => Err(ParseMachineTypeError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accel_and_machine() {
        assert_eq!("kvm".parse::<Accel>(), Ok(Accel::Kvm));
        assert_eq!(" TCG ".parse::<Accel>(), Ok(Accel::Tcg));
        assert_eq!("hvf".parse::<Accel>(), Err(ParseAccelError("hvf".into())));
        assert_eq!("pc".parse::<MachineType>(), Ok(MachineType::Pc));
        assert!("microvm".parse::<MachineType>().is_err());
    }

    #[test]
    fn machine_arg_is_the_type_with_the_lean_properties() {
        for m in [MachineType::Q35, MachineType::Pc] {
            assert_eq!(m.arg(), format!("{},{LEAN_MACHINE_PROPERTIES}", m.as_str()));
        }
    }

    #[test]
    fn serde_names_and_defaults() {
        let opts = QemuOptions::new(Accel::Tcg);
        assert_eq!(opts, QemuOptions::default());
        let json = serde_json::to_string(&opts).expect("serialize");
        assert!(json.contains(r#""accel":"tcg""#), "{json}");
        assert!(json.contains(r#""machine":"q35""#), "{json}");
        let back: QemuOptions = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, opts);
        // Options written before the cache size existed get lodge's.
        let old: QemuOptions =
            serde_json::from_str(r#"{"machine":"q35","accel":"tcg"}"#).expect("deserialize");
        assert_eq!(old.tcg_tb_size_mib, Some(DEFAULT_TCG_TB_SIZE_MIB));
    }

    #[test]
    fn accel_arg_sizes_the_tcg_cache_only() {
        let mut opts = QemuOptions::new(Accel::Tcg);
        assert_eq!(
            opts.accel_arg(),
            format!("tcg,tb-size={DEFAULT_TCG_TB_SIZE_MIB}")
        );
        opts.tcg_tb_size_mib = None;
        assert_eq!(opts.accel_arg(), "tcg");
        opts.tcg_tb_size_mib = Some(64);
        assert_eq!(opts.accel_arg(), "tcg,tb-size=64");
        opts.accel = Accel::Kvm;
        assert_eq!(opts.accel_arg(), "kvm");
    }
}
