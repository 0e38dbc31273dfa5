//! `--device`: which backend computes. This build has the CPU reference backend;
//! `auto` picks the best available and says which.

use crate::{Error, Result};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Auto,
    Cpu,
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            other => Err(Error::invalid(format!(
                "--device: unknown device '{other}' (this build has: auto, cpu)"
            ))),
        }
    }
}

impl Device {
    /// The device `auto` resolves to.
    pub fn resolve(self) -> Device {
        match self {
            Device::Auto | Device::Cpu => Device::Cpu,
        }
    }
}
