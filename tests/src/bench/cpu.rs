//! CPU accounting around each measured window, from `/proc` and
//! `getrusage`.
//!
//! Two numbers come out of it. Envoy's CPU time per request says what a
//! filter costs independently of how fast the client could push, which on a
//! shared 2-core machine is steadier than requests/s. And the CPU time that
//! neither Envoy, nor wrk, nor this process used (all busy time in
//! `/proc/stat` minus those three) tells whether something else ran during
//! the window, i.e. whether that run was noisy.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

/// A point-in-time reading.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    at: Instant,
    /// All CPUs' time running tasks (user, nice, system).
    busy: Duration,
    /// Time the hypervisor gave our vCPUs to someone else.
    steal: Duration,
    envoy: Duration,
    /// Waited-for children (wrk) and this process.
    children: Duration,
    own: Duration,
}

/// What happened between two samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub wall: Duration,
    pub envoy: Duration,
    pub wrk: Duration,
    /// Busy CPU not accounted to Envoy, wrk or us, in cores (1.0 = one
    /// core fully busy for the whole window).
    pub other_cores: f64,
    pub steal_cores: f64,
}

pub fn sample(envoy_pid: u32) -> Result<Sample> {
    let (busy, steal) = system_busy()?;
    Ok(Sample {
        at: Instant::now(),
        busy,
        steal,
        envoy: process_cpu(envoy_pid)?,
        children: rusage(libc::RUSAGE_CHILDREN),
        own: rusage(libc::RUSAGE_SELF),
    })
}

impl Window {
    /// Average cores a CPU time amounts to over this window.
    pub fn cores(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

impl Sample {
    pub fn until(&self, later: &Sample) -> Window {
        let wall = later.at.duration_since(self.at);
        let envoy = later.envoy.saturating_sub(self.envoy);
        let wrk = later.children.saturating_sub(self.children);
        let own = later.own.saturating_sub(self.own);
        let busy = later.busy.saturating_sub(self.busy);
        let other = busy.saturating_sub(envoy + wrk + own);
        let cores = |d: Duration| d.as_secs_f64() / wall.as_secs_f64().max(1e-9);
        Window {
            wall,
            envoy,
            wrk,
            other_cores: cores(other),
            steal_cores: cores(later.steal.saturating_sub(self.steal)),
        }
    }
}

fn ticks(n: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100);
    Duration::from_micros(n.saturating_mul(1_000_000) / hz)
}

/// Task and steal time of all CPUs together, from the `cpu` line of
/// `/proc/stat`: user nice system idle iowait irq softirq steal ...
///
/// Interrupt and softirq time is left out: it is charged to no process,
/// and on this benchmark it is mostly the loopback traffic between wrk and
/// Envoy, not someone else's work.
fn system_busy() -> Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat has no `cpu` line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2);
    Ok((ticks(busy), ticks(field(7))))
}

/// utime + stime of a process, all threads, from `/proc/<pid>/stat`.
fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after it are
    // plain. utime and stime are fields 14 and 15.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    // after_name starts at field 3 (state), so field n is at index n - 3.
    Ok(ticks(field(11) + field(12)))
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass; all-zero is a
    // valid rusage.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_its_own_cpu_time() {
        let pid = std::process::id();
        let before = sample(pid).unwrap();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let window = before.until(&sample(pid).unwrap());
        // Our own process is passed as "Envoy" here: it burned ~200 ms.
        assert!(window.envoy >= Duration::from_millis(100), "{window:?}");
    }
}
