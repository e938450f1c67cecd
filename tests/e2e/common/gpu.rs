//! What a task sees of the test cluster's fake GPUs. tests/cluster/up.sh makes 4 device nodes
//! (`/dev/nvidia0..3`, NVIDIA's major number, in gres.conf) and a CDI spec over them as a vendor's
//! generator writes one: each GPU's device sets `MDT_FAKE_GPU_N=nvidiaN`, and the spec's common
//! edits add the control device, a "driver library" at `/usr/lib/x86_64-linux-gnu/libcuda.so.1` and
//! `MDT_FAKE_DRIVER`.

/// One line per task: the step's GPUs, the device nodes, the fake driver's variables, the library.
pub const GPU_PROBE: &str = "echo \"gpus=$SLURM_STEP_GPUS|dev=$(ls /dev | grep nvidia | tr '\\n' ' ')\
|vars=$(env | grep ^MDT_FAKE | sort | tr '\\n' ' ')|lib=$(cat /usr/lib/x86_64-linux-gnu/libcuda.so.1 2>/dev/null)\"";

/// The library's text, as up.sh writes it.
pub const FAKE_LIBCUDA: &str = "fake libcuda.so.1 of mpiexec-docker's test cluster";

/// One task's view, parsed from a [`GPU_PROBE`] line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuView {
    /// `SLURM_STEP_GPUS` as indexes (empty outside Slurm or without GPUs).
    pub step_gpus: Vec<u32>,
    pub devices: Vec<String>,
    pub vars: Vec<String>,
    pub lib: String,
}

impl GpuView {
    pub fn parse(line: &str) -> Option<GpuView> {
        let mut f = line.split('|');
        let mut field = |name: &str| f.next()?.strip_prefix(name).map(str::trim).map(str::to_string);
        let gpus = field("gpus=")?;
        let words = |s: String| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        Some(GpuView {
            step_gpus: gpus.split(',').filter_map(|g| g.trim().parse().ok()).collect(),
            devices: words(field("dev=")?),
            vars: words(field("vars=")?),
            lib: field("lib=")?,
        })
    }

    /// What a task with exactly `gpus` through the CDI spec sees (`step_gpus` as given).
    pub fn through_cdi(step_gpus: &[u32], gpus: &[u32]) -> GpuView {
        let mut devices: Vec<String> = gpus.iter().map(|g| format!("nvidia{g}")).collect();
        let mut vars: Vec<String> = gpus.iter().map(|g| format!("MDT_FAKE_GPU_{g}=nvidia{g}")).collect();
        let lib = match gpus.is_empty() {
            true => String::new(),
            false => {
                devices.push("nvidiactl".into());
                vars.insert(0, "MDT_FAKE_DRIVER=550.54.fake".into());
                FAKE_LIBCUDA.into()
            }
        };
        GpuView { step_gpus: step_gpus.to_vec(), devices, vars, lib }
    }
}

/// Every task's view in `out` (lines that are not probe lines are left out).
pub fn gpu_views(out: &str) -> Vec<GpuView> {
    out.lines().filter_map(GpuView::parse).collect()
}
