//! `aegis models list|rollback`: the model bundles installed over the air on this device,
//! read from the model store without changing it (safe while the agent runs); a signed
//! rollback order handed to the running agent.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Subcommand;

/// `aegis models …`
#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Each model installed over the air: its active, previous and on-trial versions (with
    /// the manifest digest and size) and the highest version ever installed. Reads only.
    List {
        /// The agent's config (`workflows.models.dir`, else `models` under
        /// `workflows.state_dir`, is the store).
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hand a signed rollback order (`chimera model rollback`) to the running agent, which
    /// checks it like a fleet delivery, goes back to the previous version and answers with
    /// its signed receipt. Exit status 0 only when the order was applied.
    Rollback {
        /// The signed order.
        order: PathBuf,
        /// The agent's config (its `web.listen` is where the agent is reached).
        #[arg(long, short)]
        config: PathBuf,
        /// Reach the agent here instead.
        #[arg(long)]
        agent: Option<SocketAddr>,
        /// The local API token file (default: the config's).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

/// Runs a `models` subcommand.
pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::Rollback {
            order,
            config,
            agent,
            token_file,
        } => {
            let text = std::fs::read_to_string(&order)
                .map_err(|e| anyhow::anyhow!("{}: {e}", order.display()))?;
            let body = aegis_ota::model_wire::rollback_envelope(&text);
            let v = crate::cli::workflow::post_to_agent(
                &config,
                agent,
                token_file,
                "application/json",
                &body,
            )?;
            let verdict = v["verdict"].as_str().unwrap_or("?");
            println!(
                "{}: {verdict}{}",
                order.display(),
                match v["reason"].as_str() {
                    Some(r) if !r.is_empty() => format!(" — {r}"),
                    _ => String::new(),
                }
            );
            anyhow::ensure!(verdict == "applied", "the rollback order was not applied");
            Ok(())
        }
        ModelsCommand::List { config, json } => {
            let cfg = aegis_config::load(&config)?;
            let dir = &cfg.workflows.models_dir();
            let entries = aegis_ota::model_store::ModelStore::inspect(dir)?;
            let version = |v: &Option<aegis_ota::model_store::VersionRecord>| {
                v.as_ref().map(|v| {
                    serde_json::json!({ "version": v.version, "digest": v.digest, "bytes": v.bytes })
                })
            };
            if json {
                let list: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "name": e.name,
                            "active": version(&e.record.active),
                            "previous": version(&e.record.previous),
                            "trial": version(&e.record.trial),
                            "highest": e.record.highest,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if entries.is_empty() {
                println!("no model installed over the air (store {})", dir.display());
                return Ok(());
            }
            let short = |v: &Option<aegis_ota::model_store::VersionRecord>| match v {
                Some(v) => format!("v{} {}…", v.version, &v.digest[..12.min(v.digest.len())]),
                None => "-".into(),
            };
            println!(
                "{:<20} {:<22} {:<22} {:<22} {:>7}",
                "MODEL", "ACTIVE", "PREVIOUS", "ON TRIAL", "HIGHEST"
            );
            for e in &entries {
                println!(
                    "{:<20} {:<22} {:<22} {:<22} {:>7}",
                    e.name,
                    short(&e.record.active),
                    short(&e.record.previous),
                    short(&e.record.trial),
                    e.record.highest
                );
            }
            Ok(())
        }
    }
}
