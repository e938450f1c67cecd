//! A safe view of the `spank_t` handle Slurm passes to every callback.

use std::ffi::{c_char, c_int, CStr};

use crate::ffi;

/// Where the plugin is running (see spank(8), "SPANK plugin contexts").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// srun
    Local,
    /// slurmstepd: the tasks of a step
    Remote,
    /// sbatch, salloc
    Allocator,
    /// slurmd
    Slurmd,
    /// prolog/epilog scripts
    JobScript,
    /// Slurm could not tell
    Unknown,
}

pub fn context() -> Context {
    // SAFETY: spank_context() takes no arguments and only reads Slurm's global state.
    match unsafe { ffi::spank_context() } {
        ffi::spank_context::S_CTX_LOCAL => Context::Local,
        ffi::spank_context::S_CTX_REMOTE => Context::Remote,
        ffi::spank_context::S_CTX_ALLOCATOR => Context::Allocator,
        ffi::spank_context::S_CTX_SLURMD => Context::Slurmd,
        ffi::spank_context::S_CTX_JOB_SCRIPT => Context::JobScript,
        _ => Context::Unknown,
    }
}

/// The handle of one callback invocation.
pub struct Spank {
    raw: ffi::spank_t,
}

/// A SPANK call that returned an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpankError(pub i64);

impl std::fmt::Display for SpankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SPANK error {}", self.0)
    }
}

impl std::error::Error for SpankError {}

fn check(rc: i64) -> Result<(), SpankError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(SpankError(rc))
    }
}

impl Spank {
    /// # Safety
    /// `raw` must be the handle Slurm passed to the running callback.
    pub unsafe fn from_raw(raw: ffi::spank_t) -> Self {
        Spank { raw }
    }

    /// Registers a command-line option. `opt` must live for the rest of the process.
    pub fn register_option(&self, opt: &'static mut ffi::spank_option) -> Result<(), SpankError> {
        // SAFETY: `opt` is a valid, 'static option whose strings are 'static C strings.
        check(unsafe { ffi::spank_option_register(self.raw, opt) } as i64)
    }

    /// Reads one u32 item (job id, step id, node id, counts).
    pub fn get_u32(&self, item: ffi::spank_item::Type) -> Result<u32, SpankError> {
        let mut value: u32 = 0;
        // SAFETY: these items take exactly one `uint32_t *`.
        check(unsafe { ffi::spank_get_item(self.raw, item, &mut value as *mut u32) } as i64)?;
        Ok(value)
    }

    pub fn uid(&self) -> Result<u32, SpankError> {
        let mut value: libc::uid_t = 0;
        // SAFETY: S_JOB_UID takes one `uid_t *`.
        check(unsafe { ffi::spank_get_item(self.raw, ffi::spank_item::S_JOB_UID, &mut value as *mut _) } as i64)?;
        Ok(value)
    }

    /// The running Slurm's version string, e.g. "22.05.8".
    pub fn slurm_version(&self) -> Result<String, SpankError> {
        let mut value: *const c_char = std::ptr::null();
        // SAFETY: S_SLURM_VERSION takes one `char **`; Slurm owns the returned string.
        check(unsafe { ffi::spank_get_item(self.raw, ffi::spank_item::S_SLURM_VERSION, &mut value as *mut _) } as i64)?;
        if value.is_null() {
            return Err(SpankError(ffi::ESPANK_ERROR as i64));
        }
        // SAFETY: non-null, NUL-terminated, owned by Slurm for the callback's duration.
        Ok(unsafe { CStr::from_ptr(value) }.to_string_lossy().into_owned())
    }
}

/// The plugin's `plugstack.conf` arguments as Rust strings.
///
/// # Safety
/// `argv` must point to `argc` valid C strings (as Slurm passes them to every callback).
pub unsafe fn plugin_args(argc: c_int, argv: *mut *mut c_char) -> Vec<String> {
    if argv.is_null() || argc <= 0 {
        return Vec::new();
    }
    (0..argc as usize)
        .filter_map(|i| {
            let p = *argv.add(i);
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        })
        .collect()
}

impl Spank {
    pub fn gid(&self) -> Result<u32, SpankError> {
        let mut value: libc::gid_t = 0;
        // SAFETY: S_JOB_GID takes one `gid_t *`.
        check(unsafe { ffi::spank_get_item(self.raw, ffi::spank_item::S_JOB_GID, &mut value as *mut _) } as i64)?;
        Ok(value)
    }

    /// A variable of the job's environment (remote context), whatever its length: a value that does
    /// not fit the buffer (a long `PATH`, a module system's variables) is read again into a larger one.
    pub fn getenv(&self, name: &str) -> Option<String> {
        let name = std::ffi::CString::new(name).ok()?;
        let mut len = 4096;
        // the kernel's limit on one variable (MAX_ARG_STRLEN) bounds the retries
        while len <= 256 * 1024 {
            let mut buf = vec![0u8; len];
            // SAFETY: buf is writable for its length; Slurm NUL-terminates what it writes.
            let rc = unsafe {
                ffi::spank_getenv(self.raw, name.as_ptr(), buf.as_mut_ptr() as *mut c_char, buf.len() as c_int)
            };
            match rc as i32 {
                0 => {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    return Some(String::from_utf8_lossy(&buf[..end]).into_owned());
                }
                ffi::ESPANK_NOSPACE => len *= 4,
                _ => return None,
            }
        }
        None
    }

    /// Sets a variable of the task's or job's environment (remote context), replacing it.
    pub fn setenv(&self, name: &str, value: &str) -> Result<(), SpankError> {
        let n = std::ffi::CString::new(name).map_err(|_| SpankError(ffi::ESPANK_ERROR as i64))?;
        let v = std::ffi::CString::new(value).map_err(|_| SpankError(ffi::ESPANK_ERROR as i64))?;
        // SAFETY: valid C strings for the duration of the call; Slurm copies them.
        check(unsafe { ffi::spank_setenv(self.raw, n.as_ptr(), v.as_ptr(), 1) } as i64)
    }

    /// Prepends `argv` to the task's command line through `spank_prepend_task_argv` (Slurm 23.11 and
    /// later, `task_init` only). `None` when the running Slurm has no such function: it is looked up at
    /// run time, never linked (a Rust cdylib binds its imports at load time, so a direct reference
    /// would keep the plugin from loading on 22.05).
    pub fn prepend_task_argv(&self, argv: &[String]) -> Option<Result<(), SpankError>> {
        let f = prepend_fn()?;
        let owned: Vec<std::ffi::CString> = match argv.iter().map(|a| std::ffi::CString::new(a.as_str())).collect() {
            Ok(v) => v,
            Err(_) => return Some(Err(SpankError(ffi::ESPANK_ERROR as i64))),
        };
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        // SAFETY: the signature of Slurm's function; the strings outlive the call, which copies them.
        Some(check(unsafe { f(self.raw, owned.len() as c_int, ptrs.as_ptr()) } as i64))
    }
}

type PrependFn = unsafe extern "C" fn(ffi::spank_t, c_int, *const *const c_char) -> c_int;

/// `spank_prepend_task_argv` of the running Slurm, if it has one.
pub fn prepend_fn() -> Option<PrependFn> {
    static FN: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let addr = *FN.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name; RTLD_DEFAULT searches the process's global scope.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"spank_prepend_task_argv".as_ptr()) };
        (!p.is_null()).then_some(p as usize)
    });
    // SAFETY: a non-null address of Slurm's exported function of this signature (spank.h, 23.11+).
    addr.map(|a| unsafe { std::mem::transmute::<usize, PrependFn>(a) })
}
