//! `lodge device available|add|ls|rm`: the device API from the command
//! line, read and written with the API's own types.

use std::io::Write;

use anyhow::{Context, Result};
use reqwest::Method;

use crate::api::devices::{AvailableDevice, CreateDevice, Device};
use crate::cli::DeviceCommand;
use crate::client::{encode, Client};

pub fn run(cmd: DeviceCommand) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let mut out = std::io::stdout().lock();
        match cmd {
            DeviceCommand::Available => {
                let list: Vec<AvailableDevice> =
                    client.call(Method::GET, "/devices/available").await?;
                writeln!(
                    out,
                    "{:<14}  {:<9}  {:<12}  {:>5}",
                    "ADDRESS", "ID", "DRIVER", "GROUP"
                )?;
                for d in list {
                    writeln!(
                        out,
                        "{:<14}  {}:{}  {:<12}  {:>5}",
                        d.pci_address,
                        d.vendor_id,
                        d.device_id,
                        d.current_driver.as_deref().unwrap_or("-"),
                        group(d.iommu_group)
                    )?;
                }
            }
            DeviceCommand::Add(a) => {
                let mut tags = std::collections::BTreeMap::new();
                for kv in &a.tags {
                    let (k, v) = kv
                        .split_once('=')
                        .with_context(|| format!("--tag {kv:?}: expected KEY=VALUE"))?;
                    tags.insert(k.to_string(), v.to_string());
                }
                let body = CreateDevice {
                    pci_address: a.pci_address,
                    name: a.name,
                    tags: (!tags.is_empty()).then_some(tags),
                };
                let d: Device = client.call_with(Method::POST, "/devices", &body).await?;
                writeln!(out, "{}", d.id)?;
            }
            DeviceCommand::Ls(a) => {
                let list: Vec<Device> = client.call(Method::GET, "/devices").await?;
                if !a.quiet {
                    writeln!(
                        out,
                        "{:<24}  {:<20}  {:<14}  {:<4}  {:>5}  {:<5}  ATTACHED",
                        "ID", "NAME", "ADDRESS", "TYPE", "GROUP", "VFIO"
                    )?;
                }
                for d in list {
                    if a.quiet {
                        writeln!(out, "{}", d.name)?;
                        continue;
                    }
                    writeln!(
                        out,
                        "{:<24}  {:<20}  {:<14}  {:<4}  {:>5}  {:<5}  {}",
                        d.id,
                        d.name,
                        d.pci_address,
                        d.kind,
                        group(d.iommu_group),
                        if d.bound_to_vfio { "yes" } else { "no" },
                        d.attached_to.as_deref().unwrap_or("-")
                    )?;
                }
            }
            DeviceCommand::Rm(a) => {
                let mut failed = false;
                for d in &a.devices {
                    match client
                        .call_empty(Method::DELETE, &format!("/devices/{}", encode(d)))
                        .await
                    {
                        Ok(()) => writeln!(out, "{d}")?,
                        Err(e) => {
                            eprintln!("lodge: {d}: {e:#}");
                            failed = true;
                        }
                    }
                }
                return Ok(u8::from(failed));
            }
        }
        Ok(0)
    })
}

/// An IOMMU group for people: `-` for none.
fn group(g: i64) -> String {
    if g < 0 {
        "-".to_string()
    } else {
        g.to_string()
    }
}
