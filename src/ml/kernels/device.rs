//! Which device the ops compute on: `--device auto|cpu|cuda|cuda:N` (or `RKD_DEVICE`), resolved once
//! per run. `auto` takes the first GPU when this binary was built with the `cuda` feature and a GPU is
//! there, else the CPU; asking for CUDA from a binary or a machine without it is an error, never a
//! silent fallback and never a panic.

use candle_core::Device;
use std::str::FromStr;

/// A device as the user asks for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A GPU when there is one (and this binary can use it), else the CPU.
    #[default]
    Auto,
    /// The CPU (the fused CPU kernels).
    Cpu,
    /// The GPU with this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

/// The device words, for help texts and errors.
pub const DEVICE_WORDS: &str = "auto, cpu, cuda or cuda:N";

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("unknown device `{s}`: use {DEVICE_WORDS}")),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Why the device asked for cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The binary has no CUDA support.
    #[error(
        "`--device {0}`: this rkd was built without CUDA; build it with `cargo build --release --features cuda` \
         (README: \"GPUs\"), or run with `--device cpu`"
    )]
    NotBuilt(DeviceChoice),
    /// CUDA is built in, but the GPU cannot be opened (no driver, no such ordinal).
    #[error("`--device {choice}`: cannot open the GPU ({reason}); check `nvidia-smi`, or run with `--device cpu`")]
    Unavailable {
        /// What was asked for.
        choice: DeviceChoice,
        /// What CUDA said.
        reason: String,
    },
}

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Opens GPU `n`; a missing driver is an error, not a panic (the CUDA bindings load the driver
/// library at run time and may panic without one).
fn open_cuda(n: usize) -> Result<Device, String> {
    match std::panic::catch_unwind(|| Device::new_cuda(n)) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the CUDA driver could not be loaded".into())),
    }
}

/// The device for `choice`.
pub fn resolve(choice: DeviceChoice) -> Result<Device, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto if CUDA_BUILT => Ok(open_cuda(0).unwrap_or(Device::Cpu)),
        DeviceChoice::Auto => Ok(Device::Cpu),
        DeviceChoice::Cuda(_) if !CUDA_BUILT => Err(DeviceError::NotBuilt(choice)),
        DeviceChoice::Cuda(n) => open_cuda(n).map_err(|reason| DeviceError::Unavailable { choice, reason }),
    }
}

/// The GPUs this process can open, by ordinal: none in a binary without CUDA or without a driver.
pub fn visible_gpus() -> Vec<usize> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda::cudarc::driver::CudaContext;
        let count = std::panic::catch_unwind(CudaContext::device_count)
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        (0..count.max(0) as usize).collect()
    }
    #[cfg(not(feature = "cuda"))]
    Vec::new()
}

/// The GPU's name (`NVIDIA H200`), for records; `None` on the CPU.
pub fn gpu_name(device: &Device) -> Option<String> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return d.cuda_stream().context().name().ok();
    }
    let _ = device;
    None
}

/// Bytes of GPU memory in use on `device`'s GPU (the whole GPU's, other processes included);
/// `None` on the CPU or when the driver does not say.
pub fn gpu_memory_in_use(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some(total.saturating_sub(free) as u64);
    }
    let _ = device;
    None
}

/// The most GPU memory in use while a stage runs: sampled when it starts, every
/// [`GpuMemoryPeak::EVERY`] while it runs, and when it ends, by a thread of its own. Nothing
/// runs on the CPU.
pub struct GpuMemoryPeak {
    sampler: Option<(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<Option<u64>>,
    )>,
}

impl GpuMemoryPeak {
    /// How often the sampler looks.
    pub const EVERY: std::time::Duration = std::time::Duration::from_millis(100);

    /// Starts sampling `device`'s GPU (nothing on the CPU).
    pub fn start(device: &Device) -> Self {
        if device.is_cpu() {
            return Self { sampler: None };
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, device) = (stop.clone(), device.clone());
        let handle = std::thread::Builder::new()
            .name("rkd-gpu-memory".into())
            .spawn(move || {
                let mut peak = gpu_memory_in_use(&device);
                while !flag.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::park_timeout(Self::EVERY);
                    peak = peak.max(gpu_memory_in_use(&device));
                }
                peak
            });
        Self {
            sampler: handle.ok().map(|h| (stop, h)),
        }
    }

    /// Stops sampling: the peak in bytes, `None` on the CPU.
    pub fn finish(self) -> Option<u64> {
        let (stop, handle) = self.sampler?;
        stop.store(true, std::sync::atomic::Ordering::Release);
        handle.thread().unpark();
        handle.join().ok().flatten()
    }
}

/// The device of GPU slot `ordinal` when the run computes on a GPU; `run_device` otherwise.
pub fn for_slot(run_device: &Device, ordinal: Option<usize>) -> Result<Device, DeviceError> {
    match (run_device.location(), ordinal) {
        (candle_core::DeviceLocation::Cuda { gpu_id }, Some(n)) if gpu_id != n => {
            open_cuda(n).map_err(|reason| DeviceError::Unavailable {
                choice: DeviceChoice::Cuda(n),
                reason,
            })
        }
        _ => Ok(run_device.clone()),
    }
}

/// `CUDA_VISIBLE_DEVICES` for a command given these GPU ordinals: the ordinals mapped through
/// this process's own `CUDA_VISIBLE_DEVICES` (`parent`), which renumbers the GPUs it lists.
pub fn cuda_visible_devices(ordinals: &[usize], parent: Option<&str>) -> String {
    let listed: Vec<&str> = parent
        .map(|p| p.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    ordinals
        .iter()
        .map(|&n| listed.get(n).map_or_else(|| n.to_string(), |s| s.to_string()))
        .collect::<Vec<_>>()
        .join(",")
}

/// How records and logs name a device: `cpu`, `cuda:0 (NVIDIA H200)`.
pub fn label(device: &Device) -> String {
    let at = match device.location() {
        candle_core::DeviceLocation::Cpu => return "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    };
    match gpu_name(device) {
        Some(name) => format!("{at} ({name})"),
        None => at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_words_parse_and_print_back() {
        for (word, choice) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("CUDA", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(word.parse::<DeviceChoice>(), Ok(choice));
        }
        assert_eq!(DeviceChoice::Cuda(3).to_string(), "cuda:3");
        let err = "tpu".parse::<DeviceChoice>().unwrap_err();
        assert!(err.contains("unknown device `tpu`") && err.contains("cuda:N"), "{err}");
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn gpu_ordinals_map_through_the_parents_visible_devices() {
        assert_eq!(cuda_visible_devices(&[0, 1], None), "0,1");
        assert_eq!(cuda_visible_devices(&[1], Some("4,6")), "6");
        assert_eq!(cuda_visible_devices(&[0, 2], Some("GPU-a, GPU-b")), "GPU-a,2");
        assert!(
            for_slot(&Device::Cpu, Some(1)).unwrap().is_cpu(),
            "a CPU run stays on the CPU"
        );
        if !CUDA_BUILT {
            assert!(visible_gpus().is_empty());
        }
    }

    #[test]
    fn gpu_memory_is_not_sampled_on_the_cpu() {
        assert_eq!(gpu_memory_in_use(&Device::Cpu), None);
        assert_eq!(GpuMemoryPeak::start(&Device::Cpu).finish(), None);
    }

    #[test]
    fn cpu_and_auto_always_resolve_and_cuda_needs_the_feature() {
        assert!(resolve(DeviceChoice::Cpu).unwrap().is_cpu());
        assert!(resolve(DeviceChoice::Auto).is_ok());
        assert_eq!(label(&Device::Cpu), "cpu");
        if !CUDA_BUILT {
            let err = resolve(DeviceChoice::Cuda(0)).unwrap_err();
            assert_eq!(err, DeviceError::NotBuilt(DeviceChoice::Cuda(0)));
            assert!(err.to_string().contains("--features cuda"), "{err}");
        }
    }
}
