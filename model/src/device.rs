//! Choice of the compute device: `cpu` (burn's ndarray backend with
//! OpenBLAS), `wgpu` (Vulkan/Metal/DX12 on a GPU, or lavapipe on the CPU) or
//! `auto` (a hardware wgpu adapter if there is one, else cpu).

use std::fmt;
use std::str::FromStr;

use burn::tensor::wgpu::wgpu;
use burn::tensor::{Device, DeviceKind};

use crate::error::ModelError;

/// The device a user asks for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// burn's ndarray backend with OpenBLAS.
    Cpu,
    /// burn's wgpu backend: a hardware adapter if present, else a software Vulkan driver.
    Wgpu,
    /// A hardware wgpu adapter if present, else `cpu`.
    #[default]
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "wgpu" => Ok(DeviceChoice::Wgpu),
            "auto" => Ok(DeviceChoice::Auto),
            other => Err(format!("unknown device `{other}`; expected cpu, wgpu or auto")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Wgpu => "wgpu",
            DeviceChoice::Auto => "auto",
        })
    }
}

/// A device ready for tensors, with a line saying what was picked and why.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    /// The burn device.
    pub device: Device,
    /// `cpu` or `wgpu`: what `auto` resolved to.
    pub resolved: DeviceChoice,
    /// Human-readable description, e.g. "wgpu: llvmpipe (Vulkan, CPU adapter)".
    pub description: String,
}

/// A wgpu adapter found on this machine.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Adapter name.
    pub name: String,
    /// Graphics API (Vulkan, Metal, Dx12, Gl).
    pub backend: String,
    /// Whether it is a real GPU (discrete, integrated or virtual) rather than a software rasteriser.
    pub hardware: bool,
    device_kind: DeviceKind,
}

/// Switches off Mesa's implicit Vulkan layer `VK_LAYER_MESA_device_select`
/// on machines without a display (neither `DISPLAY` nor `WAYLAND_DISPLAY`
/// set), through its own `NODEVICE_SELECT` variable, unless the user set that.
/// The layer asks the display server which GPU drives the screen, and where
/// there is none it prints "error: XDG_RUNTIME_DIR is invalid or not set in
/// the environment." at every Vulkan instance (lavapipe, RADV, ...) while
/// having nothing to choose by. Runs once, before the first instance.
fn quiet_headless_vulkan() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let unset = |name: &str| std::env::var_os(name).is_none_or(|v| v.is_empty());
        if unset("DISPLAY") && unset("WAYLAND_DISPLAY") && std::env::var_os("NODEVICE_SELECT").is_none() {
            std::env::set_var("NODEVICE_SELECT", "1");
        }
    });
}

/// Lists the wgpu adapters of this machine, in wgpu's order.
pub fn wgpu_adapters() -> Vec<AdapterSummary> {
    quiet_headless_vulkan();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let (mut discrete, mut integrated, mut virt) = (0usize, 0usize, 0usize);
    adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            let (hardware, device_kind) = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => {
                    discrete += 1;
                    (true, DeviceKind::DiscreteGpu(discrete - 1))
                }
                wgpu::DeviceType::IntegratedGpu => {
                    integrated += 1;
                    (true, DeviceKind::IntegratedGpu(integrated - 1))
                }
                wgpu::DeviceType::VirtualGpu => {
                    virt += 1;
                    (true, DeviceKind::VirtualGpu(virt - 1))
                }
                _ => (false, DeviceKind::Cpu),
            };
            AdapterSummary { name: info.name.clone(), backend: format!("{:?}", info.backend), hardware, device_kind }
        })
        .collect()
}

#[allow(deprecated)]
fn cpu_device() -> SelectedDevice {
    SelectedDevice { device: Device::ndarray(), resolved: DeviceChoice::Cpu, description: "cpu: burn ndarray backend with OpenBLAS".into() }
}

/// Resolves a `--device` choice to a burn device.
pub fn select_device(choice: DeviceChoice) -> Result<SelectedDevice, ModelError> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu_device()),
        DeviceChoice::Wgpu => {
            let adapters = wgpu_adapters();
            let pick = adapters.iter().find(|a| a.hardware).or_else(|| adapters.first()).ok_or_else(|| {
                ModelError::Device(
                    "no wgpu adapter found: install a GPU driver with Vulkan support, or the software driver lavapipe (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1)"
                        .into(),
                )
            })?;
            Ok(SelectedDevice {
                device: Device::wgpu(pick.device_kind.clone()),
                resolved: DeviceChoice::Wgpu,
                description: format!(
                    "wgpu: {} ({}, {})",
                    pick.name,
                    pick.backend,
                    if pick.hardware { "hardware adapter" } else { "software adapter" }
                ),
            })
        }
        DeviceChoice::Auto => {
            let adapters = wgpu_adapters();
            match adapters.iter().find(|a| a.hardware) {
                Some(pick) => Ok(SelectedDevice {
                    device: Device::wgpu(pick.device_kind.clone()),
                    resolved: DeviceChoice::Wgpu,
                    description: format!("auto picked wgpu: {} ({}, hardware adapter)", pick.name, pick.backend),
                }),
                None => {
                    let mut cpu = cpu_device();
                    cpu.description = format!("auto picked {} (no hardware wgpu adapter found)", cpu.description);
                    Ok(cpu)
                }
            }
        }
    }
}

/// The largest buffer a cubecl device (wgpu) allocates, in bytes (its
/// driver's storage-buffer limit: 128 MiB on lavapipe, usually more on
/// hardware drivers); `None` on host-memory devices.
pub fn max_buffer_bytes(device: &Device) -> Option<u64> {
    Some(cube_tensor(device)?.client.properties().memory.max_page_size)
}

/// A one-value cubecl tensor on `device`, which carries the compute client
/// and cubecl device that kernels launch on; `None` where `device` is not a
/// cubecl device (burn's ndarray backend).
pub(crate) fn cube_tensor(device: &Device) -> Option<burn_cubecl::tensor::CubeTensor> {
    burn::tensor::Tensor::<1>::zeros([1], device).try_into_primitive::<burn::backend::Cube>().ok()
}

/// Whether tensors on `device` live in host memory (burn's ndarray
/// backend), so that their values convert to and from vectors without copies.
pub fn is_host_memory(device: &Device) -> bool {
    #[allow(deprecated)]
    let ndarray = Device::ndarray();
    *device == ndarray
}

mod openblas {
    use std::os::raw::c_int;

    extern "C" {
        pub fn openblas_get_num_threads() -> c_int;
        pub fn openblas_set_num_threads(threads: c_int);
    }
}

/// Caps the threads OpenBLAS gives one matmul on the cpu device while the
/// guard lives.
///
/// For callers that run independent matmuls on several threads of their own
/// (e.g. calibration samples in parallel): OpenBLAS's threads would otherwise
/// compete with them for the cores and spin while they wait. Guards may
/// overlap (from several threads): the cap is the lowest asked for by a live
/// guard, and the number OpenBLAS had before the first one comes back when
/// the last one drops.
#[derive(Debug)]
pub struct BlasThreads {
    threads: usize,
}

/// The caps of the live [`BlasThreads`] guards, and the thread count
/// OpenBLAS had before the first of them.
static BLAS_CAPS: std::sync::Mutex<(Vec<usize>, usize)> = std::sync::Mutex::new((Vec::new(), 0));

fn set_blas_threads(threads: usize) {
    // SAFETY: a plain call into OpenBLAS's thread-count setting; the library
    // is linked by burn's ndarray backend.
    unsafe { openblas::openblas_set_num_threads(threads.clamp(1, i32::MAX as usize) as i32) };
}

impl BlasThreads {
    /// Lets each matmul use at most `threads` threads (at least one).
    pub fn limit(threads: usize) -> Self {
        let threads = threads.max(1);
        let mut caps = BLAS_CAPS.lock().unwrap_or_else(|e| e.into_inner());
        if caps.0.is_empty() {
            caps.1 = Self::current();
        }
        caps.0.push(threads);
        set_blas_threads(*caps.0.iter().min().expect("a cap was just pushed"));
        BlasThreads { threads }
    }

    /// The threads OpenBLAS gives one matmul now.
    pub fn current() -> usize {
        // SAFETY: reads OpenBLAS's thread-count setting.
        unsafe { openblas::openblas_get_num_threads() }.max(1) as usize
    }
}

impl Drop for BlasThreads {
    fn drop(&mut self) {
        let mut caps = BLAS_CAPS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = caps.0.iter().position(|&t| t == self.threads) {
            caps.0.swap_remove(at);
        }
        let restore = caps.0.iter().min().copied().unwrap_or(caps.1);
        set_blas_threads(restore);
    }
}

/// Makes the C allocator keep freed memory for reuse instead of handing
/// blocks of up to 32 MiB back to the system at every free.
///
/// Forward passes allocate and free activations of a few MiB many times;
/// glibc serves such blocks with fresh `mmap`s by default, and every page
/// of a fresh mapping is faulted in and zeroed by the kernel (a third of
/// calibration's time on SmolLM2 went there). Call once, at the start of a
/// binary; a no-op where the C library is not glibc.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; glibc documents
    // these two parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blas_thread_limit_holds_while_a_guard_lives_and_overlapping_guards_restore_the_first_count() {
        let before = BlasThreads::current();
        let outer = BlasThreads::limit(2);
        let inner = BlasThreads::limit(1);
        assert_eq!(BlasThreads::current(), 1);
        // Dropped out of order: the remaining guard's cap holds.
        drop(outer);
        assert_eq!(BlasThreads::current(), 1);
        drop(inner);
        assert_eq!(BlasThreads::current(), before);
    }
}

/// This process's peak resident set size (VmHWM) in MiB, where /proc tells it:
/// what every benchmark prints beside its times.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
