//! A container's devices (resolved on the host by the caller) and its device cgroup rules.

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::{SpecError, invalid};

/// A device resolved on the host (`stat` of `host_path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub container_path: String,
    pub char_device: bool,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `rwm` subset.
    pub permissions: String,
}

/// The container's `linux.devices` and its device cgroup rules: deny all (allow all when
/// privileged), then allow each device with its permissions (a subset of `rwm`).
pub fn container_devices(
    host: &[HostDevice],
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut dev_rules = Vec::new();
    let mut deny_all = LinuxDeviceCgroup::default();
    deny_all.set_allow(privileged).set_access(Some("rwm".into()));
    dev_rules.push(deny_all);
    let mut devices = Vec::new();
    for d in host {
        if d.permissions.is_empty() || !d.permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid(
                "devices.permissions",
                format!("{:?} must be a subset of \"rwm\"", d.permissions),
            ));
        }
        let typ = if d.char_device {
            LinuxDeviceType::C
        } else {
            LinuxDeviceType::B
        };
        let mut dev = LinuxDevice::default();
        dev.set_path(d.container_path.clone().into())
            .set_typ(typ)
            .set_major(d.major)
            .set_minor(d.minor)
            .set_file_mode(Some(d.mode))
            .set_uid(Some(d.uid))
            .set_gid(Some(d.gid));
        devices.push(dev);
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true)
            .set_typ(Some(typ))
            .set_major(Some(d.major))
            .set_minor(Some(d.minor))
            .set_access(Some(d.permissions.clone()));
        dev_rules.push(rule);
    }
    Ok((devices, dev_rules))
}
