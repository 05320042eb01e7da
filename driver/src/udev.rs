//! `tierblk udev-name`: tells udev which volume a `/dev/ublkbN` serves.
//!
//! The daemon sets the ublk target JSON `{"tierblk": {"volume": NAME, "wwn":
//! HEX}}` on every device it creates; libublk writes it, with the device's
//! info, to `/run/ublksrvd/NNNN.json` before the device is started, so the
//! file exists when udev sees the `add` event of `/dev/ublkbN`. A file left by
//! a server that died is not trusted: the queue threads recorded in it must
//! be alive and, when `/dev/ublk-control` can be asked, threads of the
//! process the kernel knows as the device's server.
//!
//! The output is udev's `IMPORT{program}` format, one `KEY=value` a line.

use std::path::Path;

/// Where libublk exports each device's JSON.
pub const RUN_DIR: &str = "/run/ublksrvd";

/// What udev needs to name a tierblk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub dev_id: u32,
    pub volume: String,
    pub wwn: String,
    /// The queue threads recorded in the JSON.
    pub tids: Vec<i32>,
}

impl Names {
    /// The `IMPORT{program}` lines.
    pub fn to_env(&self) -> String {
        format!("TIERBLK_VOLUME={}\nTIERBLK_WWN={}\n", self.volume, self.wwn)
    }
}

/// `ublkb7`, `/dev/ublkb7` or `/sys/block/ublkb7` → 7. Partitions and
/// anything else → None.
pub fn dev_id(devname: &str) -> Option<u32> {
    let base = devname.rsplit('/').next()?;
    let digits = base.strip_prefix("ublkb")?;
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The names in libublk's exported JSON for device `dev_id`, if it is one of
/// ours: the JSON must be for that device and carry a valid volume name and
/// a hexadecimal WWN (they end up in /dev paths).
pub fn parse(dev_id: u32, json: &str) -> Option<Names> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    if v["dev_info"]["dev_id"].as_u64()? != u64::from(dev_id) {
        return None;
    }
    let t = &v["target_data"]["tierblk"];
    let volume = t["volume"].as_str()?;
    let wwn = t["wwn"].as_str()?;
    if !tierblk_meta::types::valid_volume_name(volume)
        || volume.starts_with('.')
        || wwn.is_empty()
        || wwn.len() > 64
        || !wwn.bytes().all(|c| c.is_ascii_hexdigit())
    {
        return None;
    }
    let tids = v["queues"]
        .as_object()?
        .values()
        .map(|q| q["tid"].as_i64().and_then(|t| i32::try_from(t).ok()))
        .collect::<Option<Vec<i32>>>()?;
    if tids.is_empty() || tids.iter().any(|t| *t <= 0) {
        return None;
    }
    Some(Names {
        dev_id,
        volume: volume.to_string(),
        wwn: wwn.to_ascii_lowercase(),
        tids,
    })
}

/// The names for DEVNAME, looking in `run_dir` for libublk's JSON; None if
/// the device is not a live tierblk device.
pub fn lookup(devname: &str, run_dir: &Path) -> Option<Names> {
    let id = dev_id(devname)?;
    let json = std::fs::read_to_string(run_dir.join(format!("{id:04}.json"))).ok()?;
    let names = parse(id, &json)?;
    // The process whose threads must serve the queues: the device's server
    // as the kernel knows it, or (no ublk here) any.
    let proc = if crate::ublk::available() {
        let ctrl = libublk::ctrl::UblkCtrl::new_simple(id as i32).ok()?;
        let pid = ctrl.dev_info().ublksrv_pid;
        if pid <= 0 {
            return None;
        }
        format!("/proc/{pid}/task")
    } else {
        "/proc".to_string()
    };
    names
        .tids
        .iter()
        .all(|t| Path::new(&format!("{proc}/{t}")).exists())
        .then_some(names)
}

/// `tierblk udev-name`: print the lines and return 0, or print nothing and
/// return 1.
pub fn main(devname: &str, run_dir: &Path) -> i32 {
    match lookup(devname, run_dir) {
        Some(n) => {
            print!("{}", n.to_env());
            0
        }
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(id: u32, vol: &str, wwn: &str) -> String {
        serde_json::json!({
            "dev_info": { "dev_id": id, "ublksrv_pid": -1 },
            "queues": { "0": { "qid": 0, "tid": 4242 }, "1": { "qid": 1, "tid": 4243 } },
            "target_data": { "tierblk": { "volume": vol, "wwn": wwn } },
        })
        .to_string()
    }

    #[test]
    fn device_names() {
        assert_eq!(dev_id("ublkb0"), Some(0));
        assert_eq!(dev_id("/dev/ublkb12"), Some(12));
        assert_eq!(dev_id("/sys/block/ublkb3"), Some(3));
        assert_eq!(dev_id("ublkb1p1"), None);
        assert_eq!(dev_id("ublkc1"), None);
        assert_eq!(dev_id("ublkb"), None);
        assert_eq!(dev_id("sda"), None);
    }

    #[test]
    fn parses_ours_only() {
        let n = parse(3, &json(3, "db", "60A0B1")).unwrap();
        assert_eq!(n.to_env(), "TIERBLK_VOLUME=db\nTIERBLK_WWN=60a0b1\n");
        assert_eq!(n.tids, [4242, 4243]);
        // another device's file, a foreign target, unsafe names
        assert!(parse(4, &json(3, "db", "60a0b1")).is_none());
        assert!(parse(
            3,
            r#"{"dev_info":{"dev_id":3,"ublksrv_pid":1},"target_data":{"null":1}}"#
        )
        .is_none());
        assert!(parse(3, &json(3, "../etc", "60a0b1")).is_none());
        assert!(parse(3, &json(3, "..", "60a0b1")).is_none());
        assert!(parse(3, &json(3, "a b", "60a0b1")).is_none());
        assert!(parse(3, &json(3, "db", "60a0 b1")).is_none());
        assert!(parse(3, &json(3, "db", "")).is_none());
        assert!(parse(3, "not json").is_none());
    }
}
