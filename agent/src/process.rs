//! Process resource usage read from `/proc/self` (Linux), for the metrics endpoint and
//! benchmarks.

/// A snapshot of this process's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSample {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// User + system CPU time in milliseconds.
    pub cpu_ms: u64,
}

/// Reads `/proc/self/statm` and `/proc/self/stat`; `None` where they are unavailable.
/// Allocation-free (stack buffers), so benchmarks can sample it while counting allocations.
pub fn sample() -> Option<ProcessSample> {
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    // SAFETY: as above.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut buf = [0u8; 1024];
    let statm = read_small("/proc/self/statm", &mut buf)?;
    let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let mut buf = [0u8; 1024];
    let stat = read_small("/proc/self/stat", &mut buf)?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(ProcessSample {
        rss_bytes: rss_pages * page,
        cpu_ms: (utime + stime) * 1000 / ticks,
    })
}

fn read_small<'a>(path: &str, buf: &'a mut [u8]) -> Option<&'a str> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    std::str::from_utf8(&buf[..n]).ok()
}

/// The file system holding `dir`: `(total, free)` bytes (free: what an unprivileged
/// process may still use).
pub fn disk(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all-zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frag = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frag, st.f_bavail as u64 * frag))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_usage() {
        let s = super::sample().expect("/proc is available on Linux");
        assert!(s.rss_bytes > 1024 * 1024, "{s:?}");
        // Under qemu-user (tools/cross-*.sh set AEGIS_CROSS_RUNNER) /proc/self/statm is the
        // emulator's and does not follow the guest's allocations.
        if std::env::var_os("AEGIS_CROSS_RUNNER").is_some() {
            return;
        }
        let big: Vec<u8> = vec![1; 64 << 20];
        let s2 = super::sample().unwrap();
        assert!(s2.rss_bytes >= s.rss_bytes + (32 << 20), "{s:?} -> {s2:?}");
        drop(big);
    }
}
