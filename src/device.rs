//! `--device`: which backend computes. `auto` takes the GPU when one is usable and
//! otherwise the CPU; `emu` runs the CUDA backend on the host emulator (slow; for
//! checking the kernels without a GPU).

use crate::{Error, Result};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    /// A GPU by index.
    Cuda(usize),
    /// The CUDA backend on the host emulator.
    Emu,
    /// The CUDA backend on the counting device (`backend::cuda::meta`): no memory,
    /// no kernels, everything counted; its capacity in bytes.
    Meta(usize),
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "--device: unknown device '{s}' (auto, cpu, cuda, cuda:N, emu, meta, meta:SIZE)"
            ))
        };
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            "emu" => Ok(Device::Emu),
            "meta" => Ok(Device::Meta(crate::backend::cuda::meta::H100_80GB_BYTES)),
            _ => {
                if let Some(size) = s.strip_prefix("meta:") {
                    return crate::backend::cuda::meta::parse_capacity(size)
                        .map(Device::Meta)
                        .map_err(|e| Error::invalid(format!("--device {s}: {e}")));
                }
                match s.strip_prefix("cuda:") {
                    Some(n) => n.parse().map(Device::Cuda).map_err(|_| bad()),
                    None => Err(bad()),
                }
            }
        }
    }
}

impl Device {
    /// The device `auto` resolves to: GPU 0 when the driver and a GPU are usable,
    /// else the CPU. Other choices stay as they are.
    pub fn resolve(self) -> Device {
        match self {
            Device::Auto if crate::backend::cuda::gpu::probe().is_some() => Device::Cuda(0),
            Device::Auto => Device::Cpu,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("auto".parse::<Device>().unwrap(), Device::Auto);
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert_eq!("emu".parse::<Device>().unwrap(), Device::Emu);
        assert_eq!(
            "meta".parse::<Device>().unwrap(),
            Device::Meta(81_559 << 20)
        );
        assert_eq!(
            "meta:141GiB".parse::<Device>().unwrap(),
            Device::Meta(141 << 30)
        );
        for bad in ["tpu", "cuda:", "cuda:x", "", "meta:x"] {
            let e = bad.parse::<Device>().unwrap_err().to_string();
            assert!(e.contains("--device"), "{e}");
        }
    }
}
