//! CPU lists as taskset(1) and `/proc/<pid>/status` write them (`0`, `0,2`, `0-3`).
use std::collections::BTreeSet;

/// The CPUs of a list like `0-1,4`; errors name the part that is not a CPU number or range.
pub fn parse_list(list: &str) -> Result<BTreeSet<usize>, String> {
    let mut cpus = BTreeSet::new();
    for part in list.split(',').map(str::trim) {
        let number = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("{part:?} is not a CPU number or range (like 0 or 0-3)"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(format!("range {part:?} runs backwards"));
                }
                cpus.extend(a..=b);
            }
            None => {
                cpus.insert(number(part)?);
            }
        }
    }
    Ok(cpus)
}

/// The CPUs this process may run on (`Cpus_allowed_list` of `/proc/self/status`).
pub fn own() -> anyhow::Result<BTreeSet<usize>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no Cpus_allowed_list"))?;
    parse_list(list.trim()).map_err(|e| anyhow::anyhow!("/proc/self/status: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_parse() {
        assert_eq!(parse_list("0").unwrap(), BTreeSet::from([0]));
        assert_eq!(parse_list("0-2,5").unwrap(), BTreeSet::from([0, 1, 2, 5]));
        assert_eq!(parse_list(" 1 , 3-3").unwrap(), BTreeSet::from([1, 3]));
    }

    #[test]
    fn malformed_lists_are_refused_naming_the_part() {
        assert!(parse_list("").unwrap_err().contains("\"\""));
        assert!(parse_list("0,x").unwrap_err().contains("\"x\""));
        assert!(parse_list("3-1").unwrap_err().contains("backwards"));
        assert!(parse_list("1-").unwrap_err().contains("\"1-\""));
    }

    #[test]
    fn this_process_has_at_least_one_cpu() {
        assert!(!own().unwrap().is_empty());
    }
}
