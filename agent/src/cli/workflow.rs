//! `aegis workflow apply|status`: hand a signed workflow to the running agent (the same path
//! as the fleet topics), and show what the device runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Subcommand;

/// `aegis workflow …`
#[derive(Subcommand, Debug)]
pub enum WorkflowCommand {
    /// Send a signed (optionally sealed) workflow to the running agent, which verifies,
    /// applies, health-checks and answers with its receipt. Exit status 0 only when the
    /// workflow runs (applied, or already active).
    Apply {
        /// The signed `.maml.md` file.
        file: PathBuf,
        /// The agent's config (its `web.listen` is where the agent is reached).
        #[arg(long, short)]
        config: PathBuf,
        /// Reach the agent here instead.
        #[arg(long)]
        agent: Option<SocketAddr>,
        /// Also write the receipt (`.mu`) here.
        #[arg(long)]
        receipt: Option<PathBuf>,
        /// The local API token file (default: the config's `web.token_file`, else
        /// `api.token` next to `store.path`).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// What runs: the active and previous workflows, the anti-replay state, and whether the
    /// active workflow still passes its checks. Reads only.
    Status {
        /// The agent's config.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Hands `body` to the running agent's applier (`POST /workflow`, the same path as the fleet
/// topics) with the local API token, over TLS pinned to the device certificate when the
/// agent serves HTTPS; returns its JSON answer (an `error` field is turned into the error).
pub(crate) fn post_to_agent(
    config: &Path,
    agent: Option<SocketAddr>,
    token_file: Option<PathBuf>,
    content_type: &str,
    body: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let cfg = aegis_config::load(config)?;
    let addr = match agent {
        Some(a) => a,
        None => {
            let mut a: SocketAddr = cfg
                .web
                .listen
                .parse()
                .map_err(|e| anyhow::anyhow!("web.listen: {e}"))?;
            // An agent listening on every address is reached on loopback.
            if a.ip().is_unspecified() {
                a.set_ip(match a {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            a
        }
    };
    let token = crate::web::LocalToken::read(&token_file.unwrap_or_else(|| cfg.token_path()))?;
    let auth = token.header();
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", content_type),
    ];
    let limits = crate::http::Limits::DEFAULT;
    // An agent serving HTTPS (web.tls) is reached over TLS pinned to its own device
    // certificate, read from disk: no password and no CA, and nothing else is accepted.
    // (Whether it does follows from where it listens, whichever address reaches it.)
    let tls = cfg
        .web
        .listen
        .parse()
        .is_ok_and(|a| crate::web::tls::wants_tls(cfg.web.tls, a));
    let sent = if tls {
        let (path, pin) = crate::web::tls::DeviceCert::fingerprint_in(&crate::web::tls::cert_dir(
            &cfg,
        ))
        .map_err(|e| {
            anyhow::anyhow!(
                "the agent serves HTTPS (web.tls) but its certificate cannot be read: {e}"
            )
        })?;
        tracing::debug!(cert = %path.display(), %pin, "pinned TLS to the agent");
        crate::http::post_pinned(addr, &pin, "/workflow", &headers, body, &limits)
    } else {
        crate::http::post(addr, "/workflow", &headers, body, &limits)
    };
    // Whatever the status, the agent answers JSON (an `error` field when it refuses).
    let text = sent
        .map_err(|e| anyhow::anyhow!("cannot reach the agent at {addr} (is it running?): {e}"))?
        .text();
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!("the agent answered something else than JSON ({e}): {text}")
    })?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("{err}");
    }
    Ok(v)
}

/// Runs a `workflow` subcommand.
pub fn run(cmd: WorkflowCommand) -> anyhow::Result<()> {
    match cmd {
        WorkflowCommand::Apply {
            file,
            config,
            agent,
            receipt,
            token_file,
        } => apply(&file, &config, agent, receipt.as_deref(), token_file),
        WorkflowCommand::Status { config } => {
            let cfg = aegis_config::load(&config)?;
            anyhow::ensure!(
                cfg.workflows.enabled,
                "{}: workflows.enabled is off",
                config.display()
            );
            let w = aegis_ota::state::Workflows::inspect(&cfg)?;
            println!("{}", serde_json::to_string_pretty(&w)?);
            Ok(())
        }
    }
}

fn apply(
    file: &Path,
    config: &Path,
    agent: Option<SocketAddr>,
    receipt_out: Option<&Path>,
    token_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let doc = std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let v = post_to_agent(config, agent, token_file, "text/markdown", &doc)?;
    let verdict = v["verdict"].as_str().unwrap_or("?");
    println!(
        "{}: {verdict}{} ({:.1} ms)",
        file.display(),
        match v["reason"].as_str() {
            Some(r) if !r.is_empty() => format!(" — {r}"),
            _ => String::new(),
        },
        v["apply_ms"].as_f64().unwrap_or(0.0)
    );
    if let (Some(out), Some(r)) = (receipt_out, v["receipt"].as_str()) {
        std::fs::write(out, r)?;
    }
    anyhow::ensure!(
        matches!(verdict, "applied" | "already_active"),
        "the workflow does not run"
    );
    Ok(())
}
