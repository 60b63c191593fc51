//! Snapshots of an engine's state: the bytes a checkpoint stores (issue 9 builds the
//! checkpoint topic on them).
//!
//! A snapshot is `ARMW` + a format version (u32, little endian) + the XXH3-64 of the body
//! (u64) + the body: the state in postcard (a compact serde format: varint integers, `f64`s as
//! their bits, so every count and e-value comes back exact). Only what the events built is
//! stored; the configuration comes from the settings given at restore. A snapshot of another
//! version, or whose body does not match its checksum or does not decode, is refused with a
//! reason, never half-applied: a flipped bit cannot smuggle an inconsistent table into a
//! running engine.

use crate::config::Settings;
use crate::engine::{Engine, EngineState};

const MAGIC: &[u8; 4] = b"ARMW";

/// The format written by this build.
pub const VERSION: u32 = 8;

/// Why a snapshot was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SnapshotError {
    /// Not an armwatch snapshot (or cut before its header).
    #[error("not an armwatch snapshot (no ARMW header)")]
    NotASnapshot,
    /// Written by a build with another format.
    #[error("snapshot format version {found}, this build reads version {VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The header is right but the state does not decode (truncated or corrupt).
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
}

/// The engine's state as snapshot bytes.
pub fn write(engine: &Engine) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    // serializing owned plain data into a Vec cannot fail
    postcard::to_io(&engine.state(), &mut out)
        .map(|_| ())
        .unwrap_or_default();
    let sum = twox_hash::XxHash3_64::oneshot(&out[16..]);
    out[8..16].copy_from_slice(&sum.to_le_bytes());
    out
}

/// An engine for `settings` that continues from the snapshot `bytes`.
pub fn read(settings: &Settings, bytes: &[u8]) -> Result<Engine, SnapshotError> {
    let (magic, rest) = bytes
        .split_at_checked(4)
        .ok_or(SnapshotError::NotASnapshot)?;
    if magic != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let (version, rest) = rest
        .split_at_checked(4)
        .ok_or(SnapshotError::NotASnapshot)?;
    let found = u32::from_le_bytes([version[0], version[1], version[2], version[3]]);
    if found != VERSION {
        return Err(SnapshotError::Version { found });
    }
    let (sum, body) = rest
        .split_at_checked(8)
        .ok_or_else(|| SnapshotError::Corrupt("cut in its header".into()))?;
    let mut want = [0u8; 8];
    want.copy_from_slice(sum);
    if twox_hash::XxHash3_64::oneshot(body) != u64::from_le_bytes(want) {
        return Err(SnapshotError::Corrupt(
            "the body does not match its checksum (truncated or altered)".into(),
        ));
    }
    let (state, tail): (EngineState, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    if !tail.is_empty() {
        return Err(SnapshotError::Corrupt(format!(
            "{} bytes after the state",
            tail.len()
        )));
    }
    Ok(Engine::from_state(settings, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Faults, Simulator};

    fn report(e: &Engine) -> serde_json::Value {
        let mut r = serde_json::to_value(e.report()).unwrap();
        r["memory"] = serde_json::Value::Null;
        r
    }

    /// Stopped at any point, written and read back, an engine goes on to the same report as
    /// one that never stopped: every count, e-value and alert (the report prints floats
    /// exactly, so equal JSON is equal bits).
    #[test]
    fn restored_engine_continues_exactly() {
        let settings = Settings::from_toml(
            "[[experiment]]\nid = \"prompt-variant\"\narms = { control = 0.5, treatment = 0.5 }\ntreatment_inputs = [\"fragment\"]\n[sampling]\ntimezone = \"Europe/Paris\"",
        )
        .unwrap();
        let mut sim = Simulator::fleet(9, 12, 300);
        let mut faulty = Simulator::single(
            4,
            Faults {
                tier_leak: Some(("pro".to_string(), 0.6)),
                ..Default::default()
            },
        );
        let mut events = Vec::new();
        let mut b = Vec::new();
        for i in 0..30_000 {
            if i % 3 == 0 {
                faulty.next_event(&mut b);
            } else {
                sim.next_event(&mut b);
            }
            events.push(b.clone());
        }
        events.push(b"{\"kind\":".to_vec());
        let mut straight = Engine::new(&settings);
        let mut resumed = Engine::new(&settings);
        for (i, e) in events.iter().enumerate() {
            let _ = straight.process(e);
            let _ = resumed.process(e);
            if i % 7_001 == 7_000 {
                let bytes = write(&resumed);
                resumed = read(&settings, &bytes).unwrap();
            }
        }
        assert!(
            !straight.alerts().is_empty(),
            "the faulty experiment alerted"
        );
        assert_eq!(report(&resumed), report(&straight));
        assert_eq!(resumed.alerts(), straight.alerts());
    }

    /// Read back under another configuration (a restart after a ConfigMap change, or a
    /// reload): an experiment declared anew or differently restarts, the others keep every
    /// count.
    #[test]
    fn another_configuration_restarts_only_what_it_redeclares() {
        let before = Settings::from_toml(
            "[[experiment]]\nid = \"exp-b\"\narms = { control = 0.5, treatment = 0.5 }",
        )
        .unwrap();
        let mut engine = Engine::new(&before);
        let event = |e: &str, arm: &str, u: usize| {
            format!(
                r#"{{"kind":"prompt","ts":1,"experiment":"{e}","arm":"{arm}","unit":"u{u}","inputs":{{"tier":"t{}"}}}}"#,
                u % 3
            )
        };
        for u in 0..300 {
            for e in ["exp-a", "exp-b", "exp-d"] {
                let arm = if u % 2 == 0 { "control" } else { "treatment" };
                engine.process(event(e, arm, u).as_bytes()).unwrap();
            }
        }
        let n = |e: &Engine, id: &str| {
            e.experiments()
                .iter()
                .find(|x| &*x.id == id)
                .map(|x| (x.declared, x.srm.n()))
        };
        // an undeclared experiment restarts once when its second arm appears: 299 counted
        assert_eq!(n(&engine, "exp-a"), Some((false, 299)));
        let after = Settings::from_toml(
            "[[experiment]]\nid = \"exp-a\"\narms = { control = 0.5, treatment = 0.5 }\n\
             [[experiment]]\nid = \"exp-b\"\narms = { control = 0.9, treatment = 0.1 }\n\
             [[experiment]]\nid = \"exp-c\"\narms = { a = 0.5, b = 0.5 }",
        )
        .unwrap();
        let same = read(&before, &write(&engine)).unwrap();
        assert_eq!(n(&same, "exp-b"), Some((true, 300)));
        let mut reloaded = read(&after, &write(&engine)).unwrap();
        // a reload in place (the state moved, no snapshot) reconciles the same way
        assert_eq!(
            report(&engine.clone().reconfigured(&after)),
            report(&reloaded)
        );
        assert_eq!(
            n(&reloaded, "exp-a"),
            Some((true, 0)),
            "declared anew: restarts"
        );
        assert_eq!(
            n(&reloaded, "exp-b"),
            Some((true, 0)),
            "declared differently: restarts"
        );
        assert_eq!(n(&reloaded, "exp-c"), Some((true, 0)), "new");
        assert_eq!(n(&reloaded, "exp-d"), Some((false, 299)), "untouched: kept");
        assert_eq!(reloaded.seen(), engine.seen());
        // and it goes on counting under the new declaration
        reloaded
            .process(event("exp-b", "control", 1_000).as_bytes())
            .unwrap();
        assert_eq!(n(&reloaded, "exp-b"), Some((true, 1)));
        let shares = &reloaded
            .experiments()
            .iter()
            .find(|x| &*x.id == "exp-b")
            .unwrap()
            .design;
        assert_eq!(shares.weights(), &[0.9, 0.1]);
    }

    /// A snapshot altered anywhere (one bit flipped) under a checksum that matches it, as a
    /// faulty or hostile writer of the state topic could make: it is refused, or it restores
    /// an engine that goes on processing, reporting and snapshotting without a panic. A guard
    /// over every reader at once; shapes a single flip rarely makes (a table too full, one too
    /// short) are refused in their own tests (`impossible_shapes_are_refused`).
    #[test]
    fn altered_snapshots_with_a_valid_checksum_never_panic() {
        let (settings, mut sim, engine) = small_fleet(3_000);
        let mut b = Vec::new();
        let good = write(&engine);
        let events: Vec<Vec<u8>> = (0..200)
            .map(|_| {
                sim.next_event(&mut b);
                b.clone()
            })
            .collect();
        let (mut restored, mut refused) = (0, 0);
        let mut rng = 1u64;
        for _ in 0..1_500 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = 16 + (rng >> 33) as usize % (good.len() - 16);
            let mut bad = good.clone();
            bad[at] ^= 1 << ((rng >> 20) % 8);
            let sum = twox_hash::XxHash3_64::oneshot(&bad[16..]);
            bad[8..16].copy_from_slice(&sum.to_le_bytes());
            match read(&settings, &bad) {
                Ok(mut e) => {
                    restored += 1;
                    for m in &events {
                        let _ = e.process(m);
                    }
                    let _ = serde_json::to_string(&e.report()).unwrap();
                    let _ = write(&e);
                }
                Err(_) => refused += 1,
            }
        }
        // most flips land in counts and floats (restored), many in lengths and tags (refused)
        assert!(
            restored > 500 && refused > 100,
            "{restored} restored, {refused} refused"
        );
    }

    /// Default settings, a fleet of three experiments and an engine that has seen `events` of
    /// its events.
    fn small_fleet(events: usize) -> (Settings, Simulator, Engine) {
        let settings = Settings::from_toml("").unwrap();
        let mut engine = Engine::new(&settings);
        let mut sim = Simulator::fleet(2, 3, 50);
        let mut b = Vec::new();
        for _ in 0..events {
            sim.next_event(&mut b);
            let _ = engine.process(&b);
        }
        (settings, sim, engine)
    }

    #[test]
    fn refuses_other_versions_and_corrupt_bytes() {
        let (settings, _, engine) = small_fleet(2_000);
        let good = write(&engine);
        assert!(read(&settings, &good).is_ok());
        assert_eq!(
            read(&settings, b"AR").err(),
            Some(SnapshotError::NotASnapshot)
        );
        assert_eq!(
            read(&settings, b"{\"json\": 1}").err(),
            Some(SnapshotError::NotASnapshot)
        );
        let mut other = good.clone();
        other[4..8].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert_eq!(
            read(&settings, &other).err(),
            Some(SnapshotError::Version { found: VERSION + 1 })
        );
        // cut anywhere or with a byte flipped: refused
        for cut in (8..good.len()).step_by(97) {
            assert!(matches!(
                read(&settings, &good[..cut]),
                Err(SnapshotError::Corrupt(_))
            ));
        }
        for at in (8..good.len()).step_by(131) {
            let mut bad = good.clone();
            bad[at] ^= 0x5a;
            assert!(
                matches!(read(&settings, &bad), Err(SnapshotError::Corrupt(_))),
                "flip at {at}"
            );
        }
    }
}
