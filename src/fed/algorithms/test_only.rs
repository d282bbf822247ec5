//! A test-only algorithm that shows what adding one takes: this file and one line in
//! the list of `algorithms/mod.rs`. `fedavg-tempered` is
//! FedAvg with a temperature-scaled cross-entropy CE(f / T, y) and no personalization
//! (PM = GM). Its setting `--test-temperature` (key `test_temperature`) and its name
//! reach the CLI, `compare`, config files and a run through the registry alone; the
//! tests below check each.

use anyhow::Result;

use crate::fed::algorithm::{Accum, Algorithm, ClientCx, Entry, FedState, PmRule, Setting, ALL_PEFTS};
use crate::fed::sgd::Sgd;
use crate::objective::ce::cross_entropy;
use crate::objective::LossGrad;
use crate::peft::params::ParamSet;

/// The softmax temperature T.
pub const TEMPERATURE: Setting = Setting {
    key: "test_temperature",
    flag: "test-temperature",
    help: "Softmax temperature T of fedavg-tempered's loss CE(f / T, y)",
    default: &[2.0],
    valid: |t| t > 0.0 && t.is_finite(),
    expected: "a finite number > 0",
};

/// The registry's entry.
pub const ENTRIES: &[Entry] = &[Entry {
    name: "fedavg-tempered",
    aliases: &[],
    summary: "test only: FedAvg with CE(f / T, y), PM = GM",
    pefts: ALL_PEFTS,
    settings: &[&TEMPERATURE],
    build: |s| {
        Box::new(Tempered {
            temperature: s.scalar(&TEMPERATURE),
        })
    },
}];

/// FedAvg with a tempered cross-entropy.
pub struct Tempered {
    temperature: f64,
}

impl Algorithm for Tempered {
    fn name(&self) -> String {
        "fedavg-tempered".into()
    }

    fn train_local(&self, cx: &ClientCx, params: &mut ParamSet, _state: &mut FedState) -> Result<Accum> {
        let fed = cx.fed;
        let mut opt = Sgd::new(fed.settings().stage1);
        let t = self.temperature;
        cx.epoch(1, |b| {
            cx.loss_step(params, &mut opt, b, |f| {
                // ∂CE(f/T)/∂f = (1/T)·∂CE/∂(f/T).
                let l = cross_entropy(&(f / t)?, &b.labels)?;
                let grad = (l.grad / t)?;
                Ok((LossGrad { loss: l.loss, grad }, None))
            })
        })
    }

    fn pm_rule(&self) -> PmRule {
        PmRule::SameAsGm
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::{CommandFactory, FromArgMatches};

    use crate::cli::{Cli, Command};
    use crate::data::source::DatasetName;
    use crate::fed::registry;
    use crate::setup::presets::preset;
    use crate::setup::{execute, Quiet};

    #[test]
    fn one_file_and_one_line_reach_the_cli_compare_config_files_and_a_run() {
        // The CLI: the name in --algorithm's help, the setting as a flag with its default.
        let mut cmd = Cli::command();
        let run = cmd.find_subcommand_mut("run").unwrap();
        let help = run.render_long_help().to_string();
        assert!(help.contains("fedavg-tempered: test only"), "{help}");
        assert!(
            help.contains("--test-temperature") && help.contains("[default: 2;"),
            "{help}"
        );
        let m = Cli::command()
            .try_get_matches_from([
                "fedpurel",
                "run",
                "--model",
                "m",
                "--algorithm",
                "fedavg-tempered",
                "--test-temperature",
                "3",
            ])
            .unwrap();
        let cli = Cli::from_arg_matches(&m).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not a run")
        };
        let cfg = crate::cli::run_args::resolve(&args, m.subcommand_matches("run")).unwrap();
        assert_eq!(cfg.baselines.scalar(&super::TEMPERATURE), 3.0);
        // compare's algorithm lists.
        let list =
            crate::cli::compare::parse_algorithms("promptfl,fedavg-tempered", crate::peft::PeftKind::Lora);
        assert_eq!(
            crate::cli::compare::Variant::labels(&list.unwrap()),
            ["promptfl", "fedavg-tempered"]
        );
        // Config files: the key round-trips, a bad value is refused by name.
        let text = toml::to_string_pretty(&cfg).unwrap();
        assert!(text.contains("test_temperature = 3.0"), "{text}");
        let bad = text.replace("test_temperature = 3.0", "test_temperature = -1.0");
        let e = format!(
            "{:#}",
            crate::setup::config::parse_config(&bad, Path::new("c.toml")).unwrap_err()
        );
        assert!(
            e.contains("--test-temperature (baselines.test_temperature) is -1"),
            "{e}"
        );
        // A run: two rounds through the library, the tempered loss really used.
        let tmp = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf");
        let mut cfg = preset(
            "cifar100-lt-prompt",
            &fixture,
            &tmp.path().join("a"),
            &tmp.path().join("c"),
        )
        .unwrap();
        cfg.data.dataset = DatasetName::Synthetic;
        cfg.data.imb_factor = Some(4.0);
        (cfg.data.clients, cfg.data.synthetic_classes) = (2, 4);
        (
            cfg.data.synthetic_train_per_class,
            cfg.data.synthetic_test_per_class,
        ) = (8, 2);
        (cfg.train.rounds, cfg.train.batch_size) = (2, 8);
        cfg.algorithm = "fedavg-tempered".into();
        let (tempered, _) = execute(cfg.clone(), &Quiet).unwrap();
        assert_eq!(tempered.rounds_completed, 2);
        assert_eq!(tempered.run.algorithm, "fedavg-tempered");
        cfg.baselines.set("test_temperature", vec![1.0]).unwrap();
        cfg.out = tmp.path().join("b");
        execute(cfg, &Quiet).unwrap();
        let loss = |d: &str| std::fs::read_to_string(tmp.path().join(d).join("metrics.jsonl")).unwrap();
        assert_ne!(loss("a"), loss("b"), "the temperature changes training");
        assert!(registry::names().contains(&"fedavg-tempered"));
    }
}
