//! CPU time of a process or thread, read from `/proc`: the CPU figures the
//! benchmark tools report, measured the same way by each.

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on Linux).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system clock ticks from a `/proc/…/stat` file (for example
/// `/proc/thread-self/stat` or `/proc/1234/stat`).
pub fn cpu_ticks(stat_path: &str) -> u64 {
    let stat = std::fs::read_to_string(stat_path).expect("a /proc stat file");
    // Fields after the command name (which ends with the last ')').
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
