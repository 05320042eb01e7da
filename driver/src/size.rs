//! Human sizes on the command line: `512M`, `10G`, `1.5T`, `4096`.
//!
//! Units are binary (K = 1024), as in LVM and mdadm; a trailing `B` or `iB`
//! is accepted. Volumes are allocated in whole mebibytes, see [`round_up_mib`].

use thiserror::Error;

pub const MIB: u64 = 1 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error(
        "size {0:?}: expected a number with an optional unit K, M, G, T or P (e.g. 512M, 10G)"
    )]
    Syntax(String),
    #[error("size {0:?}: too large")]
    Overflow(String),
    #[error("size {0:?}: must be greater than zero")]
    Zero(String),
}

/// Parse a size such as `512M` into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 {
        return Err(SizeError::Syntax(text.to_string()));
    }
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("iB")
        .or_else(|| unit.strip_suffix("ib"))
        .or_else(|| unit.strip_suffix('B').filter(|u| !u.is_empty()))
        .unwrap_or(unit);
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(SizeError::Syntax(text.to_string())),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse()
            .map_err(|_| SizeError::Overflow(text.to_string()))?
    };
    let mut bytes = int
        .checked_shl(shift)
        .filter(|v| v >> shift == int)
        .ok_or_else(|| SizeError::Overflow(text.to_string()))?;
    if !frac.is_empty() {
        if frac.len() > 9 {
            return Err(SizeError::Syntax(text.to_string()));
        }
        let digits: u64 = frac
            .parse()
            .map_err(|_| SizeError::Syntax(text.to_string()))?;
        let scale = 10u64.pow(frac.len() as u32);
        let part = ((digits as u128) << shift) / scale as u128;
        bytes = bytes
            .checked_add(part as u64)
            .ok_or_else(|| SizeError::Overflow(text.to_string()))?;
    }
    if bytes == 0 {
        return Err(SizeError::Zero(text.to_string()));
    }
    Ok(bytes)
}

/// Round a byte count up to whole mebibytes (the allocation unit).
pub fn round_up_mib(bytes: u64) -> Option<u64> {
    bytes.checked_add(MIB - 1).map(|v| v & !(MIB - 1))
}

/// Format bytes for people: `384.0M`, `10.0G`, `512B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// Parse an interval: `90`, `90s`, `15m`, `1h`, `2d`, `1w` (seconds).
pub fn parse_interval(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("interval {text:?}: unit must be s, m, h, d or w")),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("interval {text:?}: expected a positive number, e.g. 1h"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn intervals() {
        use super::parse_interval as p;
        assert_eq!(p("90"), Ok(90));
        assert_eq!(p("90s"), Ok(90));
        assert_eq!(p("15m"), Ok(900));
        assert_eq!(p("1h"), Ok(3600));
        assert_eq!(p("2d"), Ok(172_800));
        assert_eq!(p("1w"), Ok(604_800));
        for bad in [
            "",
            "0",
            "0h",
            "h",
            "1y",
            "-1h",
            "1.5h",
            "99999999999999999999w",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 * MIB));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1.5G"), Ok(1536 * MIB));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert_eq!(parse_size("64KB"), Ok(64 << 10));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "M", "12X", "1..2G", "-5M", "5 M M", "1.2345678901G"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(parse_size("0"), Err(SizeError::Zero(_))));
        assert!(matches!(
            parse_size("99999999999P"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn rounds_and_formats() {
        assert_eq!(round_up_mib(1), Some(MIB));
        assert_eq!(round_up_mib(MIB), Some(MIB));
        assert_eq!(round_up_mib(u64::MAX), None);
        assert_eq!(format_size(384 * MIB), "384.0M");
        assert_eq!(format_size(100), "100B");
    }
}
