//! CPU time of a process or thread, read from `/proc`: the CPU figures the
//! benchmark tools report, measured the same way by each.

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on Linux).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system clock ticks from a `/proc/…/stat` file (for example
/// `/proc/thread-self/stat` or `/proc/1234/stat`).
pub fn cpu_ticks(stat_path: &str) -> u64 {
    try_cpu_ticks(stat_path).unwrap_or_else(|| panic!("no CPU times in {stat_path}"))
}

/// [`cpu_ticks`], or `None` when the file cannot be read (a process that
/// has ended) or does not have the stat format.
pub fn try_cpu_ticks(stat_path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name (which ends with the last ')').
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
