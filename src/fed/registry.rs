//! The registry of federated algorithms. Each algorithm's file declares its entries next
//! to its code — name, a one-line summary, the PEFT kinds it is defined for, the tunable
//! settings it reads, and how to build it — and [`algorithms::ALGORITHMS`] lists those
//! files, one line each. Everything else learns about an algorithm from here: `--algorithm` and
//! its help, the settings' command-line flags and `config.toml` keys (`[baselines]`) with
//! their defaults and ranges, `compare`'s algorithm lists, the Python client.
//!
//! Adding an algorithm: write `algorithms/<name>.rs` (its [`Algorithm`] implementation
//! and `pub const ENTRIES: &[Entry]`) and add `<name>` to the list in
//! `algorithms/mod.rs`, which declares the module and registers its entries.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use super::algorithm::{Algorithm, AlgorithmSettings, Entry, Setting, ALL_PEFTS};
use super::algorithms;
use crate::peft::PeftKind;

/// Every entry, in registry order ([`algorithms::ALGORITHMS`]).
pub fn entries() -> impl Iterator<Item = &'static Entry> {
    algorithms::ALGORITHMS.iter().flat_map(|e| e.iter())
}

/// The accepted names (aliases aside), in registry order.
pub fn names() -> Vec<&'static str> {
    entries().map(|e| e.name).collect()
}

/// The entry called `name` (or aliased so); the error lists the names.
pub fn find(name: &str) -> Result<&'static Entry> {
    entries()
        .find(|e| e.name == name || e.aliases.contains(&name))
        .ok_or_else(|| anyhow!("unknown algorithm `{name}`; available: {}", names().join(", ")))
}

/// The entry called `name`, checked to be defined for `peft`; the error names the
/// algorithms that are.
pub fn find_for(name: &str, peft: PeftKind) -> Result<&'static Entry> {
    let e = find(name)?;
    if !e.pefts.contains(&peft) {
        let kinds: Vec<String> = e.pefts.iter().map(|k| kind_name(*k)).collect();
        let what = if e.pefts == [PeftKind::Prompt] {
            "prompt learning only".to_string()
        } else {
            format!("{} only", kinds.join(" and "))
        };
        let others: Vec<&str> = entries()
            .filter(|o| o.pefts.contains(&peft))
            .map(|o| o.name)
            .collect();
        bail!(
            "{name} is defined for {what} (--peft {}); with --peft {} use one of: {}",
            kinds.join(" or --peft "),
            kind_name(peft),
            others.join(", ")
        );
    }
    Ok(e)
}

/// Builds the algorithm called `name` for `peft` with `settings`.
pub fn build(name: &str, settings: &AlgorithmSettings, peft: PeftKind) -> Result<Box<dyn Algorithm>> {
    settings.validate()?;
    Ok((find_for(name, peft)?.build)(settings))
}

fn kind_name(k: PeftKind) -> String {
    format!("{k:?}").to_lowercase()
}

/// Every setting of every entry, each once, in registry order.
pub fn settings() -> Vec<&'static Setting> {
    let mut out: Vec<&'static Setting> = Vec::new();
    for s in entries().flat_map(|e| e.settings.iter().copied()) {
        if !out.iter().any(|o| o.key == s.key) {
            out.push(s);
        }
    }
    out
}

fn setting(key: &str) -> Option<&'static Setting> {
    settings().into_iter().find(|s| s.key == key)
}

/// The algorithms that read `s`, for help texts.
pub fn readers(s: &Setting) -> Vec<&'static str> {
    entries()
        .filter(|e| e.settings.iter().any(|o| o.key == s.key))
        .map(|e| e.name)
        .collect()
}

/// `--algorithm`'s long help: every name with its summary and PEFT kinds.
pub fn help() -> String {
    let mut out = String::from("Federated algorithm:");
    for e in entries() {
        let alias = if e.aliases.is_empty() {
            String::new()
        } else {
            format!(" (also {})", e.aliases.join(", "))
        };
        let kinds = if e.pefts == ALL_PEFTS {
            String::new()
        } else {
            format!(
                " [--peft {}]",
                e.pefts
                    .iter()
                    .map(|k| kind_name(*k))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        out.push_str(&format!("\n  {}{alias}: {}{kinds}", e.name, e.summary));
    }
    out
}

/// Every registered setting at its default.
impl Default for AlgorithmSettings {
    fn default() -> Self {
        AlgorithmSettings {
            values: settings()
                .into_iter()
                .map(|s| (s.key, s.default.to_vec()))
                .collect(),
        }
    }
}

/// Setting values change only through the registry, which knows every key and range.
impl AlgorithmSettings {
    /// Sets `key`; errors for an unknown key or a value of the wrong length.
    pub fn set(&mut self, key: &str, value: Vec<f64>) -> Result<()> {
        let s = setting(key).ok_or_else(|| {
            let known: Vec<&str> = settings().iter().map(|s| s.key).collect();
            anyhow!("unknown algorithm setting `{key}`; known: {}", known.join(", "))
        })?;
        if value.len() != s.default.len() {
            bail!(
                "--{} (baselines.{key}) takes {} number(s), got {}",
                s.flag,
                s.default.len(),
                value.len()
            );
        }
        self.values.insert(s.key, value);
        Ok(())
    }

    /// Refuses values out of range, naming flag, key and the range expected.
    pub fn validate(&self) -> Result<()> {
        for s in settings() {
            let v = self.values.get(s.key).map_or(s.default, |v| v.as_slice());
            if let Some(bad) = v.iter().find(|x| !(s.valid)(**x)) {
                bail!(
                    "--{} (baselines.{}) is {bad}; expected {}",
                    s.flag,
                    s.key,
                    s.expected
                );
            }
        }
        Ok(())
    }
}

/// One value in `config.toml`: a number or a list of numbers.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Value {
    One(f64),
    Many(Vec<f64>),
}

impl Serialize for AlgorithmSettings {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> std::result::Result<S::Ok, S::Error> {
        let as_values: BTreeMap<&str, Value> = self
            .values
            .iter()
            .map(|(k, v)| {
                let one = setting(k).is_some_and(|s| s.default.len() == 1);
                (
                    *k,
                    if one {
                        Value::One(v[0])
                    } else {
                        Value::Many(v.clone())
                    },
                )
            })
            .collect();
        as_values.serialize(ser)
    }
}

impl<'de> Deserialize<'de> for AlgorithmSettings {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        let given = BTreeMap::<String, Value>::deserialize(de)?;
        let mut out = AlgorithmSettings::default();
        for (k, v) in given {
            let v = match v {
                Value::One(x) => vec![x],
                Value::Many(xs) => xs,
            };
            out.set(&k, v).map_err(serde::de::Error::custom)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_setting_has_a_valid_default() {
        let mut seen = Vec::new();
        for e in entries() {
            for n in std::iter::once(&e.name).chain(e.aliases) {
                assert!(!seen.contains(n), "{n} registered twice");
                seen.push(*n);
            }
            assert!(!e.pefts.is_empty(), "{} supports no PEFT kind", e.name);
        }
        for s in settings() {
            assert!(s.default.iter().all(|x| (s.valid)(*x)), "{}", s.key);
            assert_eq!(s.flag, s.key.replace('_', "-"));
        }
        AlgorithmSettings::default().validate().unwrap();
    }

    #[test]
    fn settings_files_fill_defaults_and_refuse_unknown_keys_and_bad_values() {
        #[derive(Deserialize)]
        struct File {
            baselines: AlgorithmSettings,
        }
        let f: File = toml::from_str("[baselines]\nla_tau = 2.0\n").unwrap();
        assert_eq!(f.baselines.scalar(&algorithms::promptfl::LA_TAU), 2.0);
        assert_eq!(f.baselines.scalar(&algorithms::promptfolio::THETA), 0.4);
        assert_eq!(
            f.baselines.vector::<3>(&algorithms::fedgrab::PID_GAINS),
            [10.0, 0.01, 0.1]
        );
        let e = toml::from_str::<File>("[baselines]\nla_taw = 2.0\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("la_taw") && e.contains("la_tau"), "{e}");
        let e = toml::from_str::<File>("[baselines]\npid = [1.0]\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("takes 3 number(s)"), "{e}");
        let mut s = AlgorithmSettings::default();
        s.set("folio_theta", vec![1.5]).unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "--folio-theta (baselines.folio_theta) is 1.5; expected in [0, 1]"
        );
    }

    #[test]
    fn peft_kinds_are_checked_with_the_alternatives_named() {
        let e = find_for("promptfolio", PeftKind::Lora).err().unwrap().to_string();
        assert!(
            e.contains("promptfolio is defined for prompt learning only (--peft prompt)"),
            "{e}"
        );
        assert!(e.contains("promptfl") && !e.contains("promptfolio+"), "{e}");
        assert_eq!(find("fedgrab").unwrap().name, "promptfl+fedgrab");
        let e = find("fedprox").err().unwrap().to_string();
        assert!(
            e.starts_with("unknown algorithm `fedprox`; available: zeroshot, fedpurel"),
            "{e}"
        );
    }
}
