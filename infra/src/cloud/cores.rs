//! Which cores the local cloud's processes run on.
//!
//! On Lambda an instance has its vCPUs to itself. Here every function shares
//! the machine's few cores with the emulator, one busy Python process. Left
//! to the scheduler, an instance that waits on the emulator wakes on
//! whichever core is free, often not its last, and starts over on cold
//! caches: on a 2-core machine an accepted `POST /events` cost 266 µs of CPU
//! where it cost 111 back to back, its process moving to the other core
//! about once per invocation (docs/perf.md). So with two cores or more the
//! emulator keeps the first and every function instance the others; with
//! one, nothing is pinned.

/// The cores the emulator and the function instances run on.
#[derive(Clone, Copy)]
pub struct Split {
    pub emulator: libc::cpu_set_t,
    pub functions: libc::cpu_set_t,
}

impl Split {
    /// The cores this thread may use, the first for the emulator and the
    /// rest for the functions; `None` with fewer than two.
    pub fn of_this_machine() -> Option<Self> {
        // SAFETY: a zeroed cpu_set_t is the empty set; the kernel fills it.
        let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `allowed` is a valid cpu_set_t of `size` bytes.
        if unsafe { libc::sched_getaffinity(0, size, &mut allowed) } != 0 {
            return None;
        }
        let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `core` is below CPU_SETSIZE.
            .filter(|&core| unsafe { libc::CPU_ISSET(core, &allowed) })
            .collect();
        let (&first, rest) = cores.split_first()?;
        if rest.is_empty() {
            return None;
        }
        Some(Self {
            emulator: set_of(&[first]),
            functions: set_of(rest),
        })
    }
}

fn set_of(cores: &[usize]) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &core in cores {
        // SAFETY: `core` came from a set of at most CPU_SETSIZE cores.
        unsafe { libc::CPU_SET(core, &mut set) };
    }
    set
}

/// Moves the calling process onto `cores`. Async-signal-safe (one system
/// call), so a child can call it between fork and exec.
pub fn pin(cores: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: `cores` is a valid cpu_set_t of the size given.
    let pinned =
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), cores) };
    if pinned == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emulator_gets_one_core_and_the_functions_the_others() {
        let Some(split) = Split::of_this_machine() else {
            return; // one core: nothing to split
        };
        let count = |set: &libc::cpu_set_t| unsafe { libc::CPU_COUNT(set) };
        assert_eq!(count(&split.emulator), 1);
        assert!(count(&split.functions) >= 1);
        for core in 0..libc::CPU_SETSIZE as usize {
            let both = unsafe {
                libc::CPU_ISSET(core, &split.emulator) && libc::CPU_ISSET(core, &split.functions)
            };
            assert!(!both, "core {core} is in both sets");
        }
    }

    #[test]
    fn a_child_pinned_runs_only_on_its_cores() {
        let Some(split) = Split::of_this_machine() else {
            return;
        };
        let mut command = std::process::Command::new("cat");
        command.arg("/proc/self/status");
        let functions = split.functions;
        // SAFETY: `pin` is one system call.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || pin(&functions));
        }
        let status = String::from_utf8(command.output().unwrap().stdout).unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim();
        // The kernel lists the cores as ranges: `1`, `1-3`, `0,2-3`.
        let listed: Vec<usize> = allowed
            .split(',')
            .flat_map(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                from.parse::<usize>().unwrap()..=to.parse::<usize>().unwrap()
            })
            .collect();
        let expected: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&core| unsafe { libc::CPU_ISSET(core, &split.functions) })
            .collect();
        assert_eq!(listed, expected);
    }
}
