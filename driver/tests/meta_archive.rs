//! `tierblk meta history|dump|restore` end to end on the host, over image-file ALUs
//! (the Env helper is tests/common).
//!
//! The host has no ublk driver, so volumes cannot go online here: these tests
//! prove the control path, the on-disk metadata and the refusals; the VM
//! scenarios in tests/vm prove the data path through /dev/ublkbN.

mod common;

use common::*;
use serde_json::Value;

/// The first 8 MiB of every ALU: the metadata regions (and no data).
fn metadata(env: &Env) -> Vec<Vec<u8>> {
    env.alus
        .iter()
        .map(|p| std::fs::read(p).unwrap()[..8 * MIB as usize].to_vec())
        .collect()
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect()
}

fn extents(v: &Value) -> Vec<(String, u64, u64)> {
    v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["alu"].as_str().unwrap().to_string(),
                s["start"].as_u64().unwrap(),
                s["len"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn history_dump_and_restore_of_a_removed_volume() {
    let mut env = Env::new("restore", &[128 * MIB, 128 * MIB]);
    env.start();
    env.ok(&["alu", "claim", &env.alu(0)]);
    env.ok(&["alu", "claim", &env.alu(1)]);
    env.ok(&[
        "vol",
        "create",
        "keep",
        "--size",
        "10M",
        "--alu",
        &env.alu(1),
    ]);
    let v1 = env.json(&["vol", "create", "v1", "--size", "20M", "--alu", &env.alu(0)]);
    env.ok(&["vol", "remove", "v1"]);
    assert_eq!(names(&env.json(&["vol", "list"])), vec!["keep"]);

    // History: newest first, the configuration before the removal lists v1.
    let h = env.json(&["meta", "history"]);
    let entries = h["entries"].as_array().unwrap();
    assert!(!entries.is_empty(), "{h}");
    assert!(entries
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() > w[1]["seq"].as_u64()));
    let with_v1 = entries
        .iter()
        .find(|e| e["volumes"].as_array().unwrap().iter().any(|v| v == "v1"))
        .unwrap_or_else(|| panic!("no entry lists v1: {h}"));
    let seq = with_v1["seq"].as_u64().unwrap();
    assert!(seq < h["current"].as_u64().unwrap());
    assert_eq!(with_v1["copies"], 2, "{h}");
    assert!(h["problems"].as_array().unwrap().is_empty(), "{h}");
    let table = env.ok(&["meta", "history"]);
    assert!(
        table.starts_with("SEQ") && table.contains("TIME"),
        "{table}"
    );
    assert!(table.contains("keep,v1"), "{table}");

    // Dump: the archived configuration has v1's full definition.
    let s = seq.to_string();
    let d = env.json(&["meta", "dump", "--seq", &s]);
    assert_eq!(d["seq"], seq);
    assert!(d["archived"].is_u64(), "{d}");
    assert_eq!(d["alus"].as_array().unwrap().len(), 2);
    let dv1 = d["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v1")
        .unwrap();
    assert_eq!(dv1["state"], "archived");
    assert_eq!(extents(dv1), extents(&v1));
    assert_eq!(dv1["members"][0]["health"], "ok");
    let live = env.json(&["meta", "dump"]);
    assert!(live["archived"].is_null());
    assert_eq!(names(&live["volumes"]), vec!["keep"]);
    // Without --json the dump is pretty JSON too.
    let pretty: Value = serde_json::from_str(&env.ok(&["meta", "dump"])).unwrap();
    assert_eq!(pretty, live);
    let e = env.refused(&["meta", "dump", "--seq", "99999"]);
    assert!(e.contains("not in the archive"), "{e}");

    // A volume created since would be dropped: refused, nothing changes.
    env.ok(&[
        "vol",
        "create",
        "later",
        "--size",
        "4M",
        "--alu",
        &env.alu(1),
    ]);
    let before = metadata(&env);
    let e = env.refused(&["meta", "restore", &s]);
    assert!(e.contains("would drop volume(s) later"), "{e}");
    assert!(metadata(&env) == before, "a refused restore wrote");
    assert_eq!(names(&env.json(&["vol", "list"])), vec!["keep", "later"]);
    env.ok(&["vol", "remove", "later"]);

    // The restore brings v1 back with its extents.
    let out = env.ok(&["meta", "restore", &s]);
    assert!(out.contains("volumes back: v1"), "{out}");
    let list = env.json(&["vol", "list"]);
    assert_eq!(names(&list), vec!["keep", "v1"]);
    let back = env.json(&["vol", "show", "v1"]);
    assert_eq!(extents(&back), extents(&v1));
    assert_eq!(back["id"], v1["id"]);
    // ... and it survives a restart.
    env.stop();
    env.start();
    assert_eq!(names(&env.json(&["vol", "list"])), vec!["keep", "v1"]);

    // Space handed to another volume since: refused, even with --force.
    env.ok(&["vol", "remove", "v1"]);
    env.ok(&[
        "vol",
        "create",
        "thief",
        "--size",
        "20M",
        "--alu",
        &env.alu(0),
    ]);
    let before = metadata(&env);
    let e = env.refused(&["meta", "restore", &s, "--force"]);
    assert!(e.contains("now allocated to volume thief"), "{e}");
    assert!(metadata(&env) == before, "a refused restore wrote");
    let e = env.refused(&["meta", "restore", "99999"]);
    assert!(e.contains("not older"), "{e}");
    assert_eq!(names(&env.json(&["vol", "list"])), vec!["keep", "thief"]);
    env.stop();
}
