//! `aegis evidence`: the event clips this device kept — list them, export one (decrypted and
//! checked against its signed manifest) for an authorised technician, put one under legal
//! hold or release it. Reads the config for the clips' directory, the keys and the store;
//! the agent may be running (holds are marker files it honours).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::evidence::{find_clip, load_seal_key, set_hold};

/// `aegis evidence …`.
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Lists the clips (and metadata-only evidence records) in the store, newest first, as
    /// JSON lines.
    List {
        /// The agent's config.
        #[arg(long, short, default_value = "/etc/aegis/aegis.yaml")]
        config: PathBuf,
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Writes a clip's plain MP4 to OUT (decrypted with the device's evidence key when it is
    /// sealed) after checking it against its signed manifest, and the manifest beside it
    /// (OUT.manifest.json), for `chimera evidence verify` off the device. Audited.
    Export {
        /// The agent's config.
        #[arg(long, short, default_value = "/etc/aegis/aegis.yaml")]
        config: PathBuf,
        /// The clip's id.
        id: String,
        /// Where the MP4 goes.
        #[arg(long)]
        out: PathBuf,
        /// Who asks (recorded in the audit trail).
        #[arg(long, default_value = "technician")]
        actor: String,
    },
    /// Puts a clip under legal hold: neither retention nor the disk budget deletes it.
    Hold {
        /// The agent's config.
        #[arg(long, short, default_value = "/etc/aegis/aegis.yaml")]
        config: PathBuf,
        /// The clip's id.
        id: String,
    },
    /// Releases a legal hold.
    Release {
        /// The agent's config.
        #[arg(long, short, default_value = "/etc/aegis/aegis.yaml")]
        config: PathBuf,
        /// The clip's id.
        id: String,
    },
}

/// Runs `aegis evidence …`.
pub fn evidence(what: EvidenceCommand) -> ExitCode {
    let config = match &what {
        EvidenceCommand::List { config, .. }
        | EvidenceCommand::Export { config, .. }
        | EvidenceCommand::Hold { config, .. }
        | EvidenceCommand::Release { config, .. } => config.clone(),
    };
    let cfg = match super::run::load_config(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(ev) = &cfg.pipeline.evidence else {
        eprintln!(
            "error: {}: pipeline.evidence is not configured",
            config.display()
        );
        return ExitCode::from(2);
    };
    let result = match what {
        EvidenceCommand::List { stream, limit, .. } => list(&cfg.store.path, stream, limit),
        EvidenceCommand::Export { id, out, actor, .. } => export(&cfg, &ev.dir, &id, &out, &actor),
        EvidenceCommand::Hold { id, .. } => hold(&cfg.store.path, &ev.dir, &id, true),
        EvidenceCommand::Release { id, .. } => hold(&cfg.store.path, &ev.dir, &id, false),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list(db: &Path, stream: Option<String>, limit: u32) -> Result<(), String> {
    for r in crate::evidence::clip_rows(db, stream.as_deref(), limit)? {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    }
    Ok(())
}

/// One line in the audit trail, written straight to the store (the agent may be running:
/// SQLite's WAL takes both writers).
fn audit(db: &Path, actor: &str, action: &str, detail: String) {
    let r = rusqlite::Connection::open(db).and_then(|c| {
        c.busy_timeout(std::time::Duration::from_secs(5))?;
        c.execute(
            "INSERT INTO audit (ts_us, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![crate::store::now_us(), actor, action, detail],
        )
    });
    if let Err(e) = r {
        eprintln!("warning: not audited ({}): {e}", db.display());
    }
}

fn export(
    cfg: &aegis_config::AgentConfig,
    dir: &Path,
    id: &str,
    out: &Path,
    actor: &str,
) -> Result<(), String> {
    let clip = find_clip(dir, id)?;
    let keys = &cfg.workflows.keys_dir;
    let key = if clip.to_string_lossy().ends_with(".sealed") {
        Some(load_seal_key(keys, false).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let device = aegis_ota::sign::SecretKey::read(&keys.join("device.key"))
        .map_err(|e| format!("the device key: {e}"))?;
    // Into a temporary file beside OUT, renamed once it verified: no half or unverified
    // clip under OUT's name.
    let part = PathBuf::from(format!("{}.part", out.display()));
    let mut file = std::fs::File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
    let manifest = match crate::evidence::export(&clip, key.as_ref(), device.public(), &mut file) {
        Ok(m) => m,
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(&part);
            audit(
                &cfg.store.path,
                actor,
                "evidence.export_failed",
                format!("{id}: {e}"),
            );
            return Err(format!("clip {id}: {e}"));
        }
    };
    file.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&part, out).map_err(|e| format!("{}: {e}", out.display()))?;
    let manifest_out = PathBuf::from(format!("{}.manifest.json", out.display()));
    std::fs::copy(crate::evidence::manifest_path(&clip), &manifest_out)
        .map_err(|e| format!("{}: {e}", manifest_out.display()))?;
    audit(
        &cfg.store.path,
        actor,
        "evidence.export",
        format!(
            "{id} ({} bytes, sha256 {}) to {}",
            manifest.bytes,
            manifest.sha256,
            out.display()
        ),
    );
    println!(
        "{}: clip {id} of stream {} ({} frames, sha256 {}); manifest {}; device key {}",
        out.display(),
        manifest.stream,
        manifest.frames,
        manifest.sha256,
        manifest_out.display(),
        device.public().id()
    );
    Ok(())
}

fn hold(db: &Path, dir: &Path, id: &str, on: bool) -> Result<(), String> {
    let clip = set_hold(dir, id, on)?;
    let r = rusqlite::Connection::open(db).and_then(|c| {
        c.busy_timeout(std::time::Duration::from_secs(5))?;
        c.execute(
            "UPDATE clips SET legal_hold = ?2 WHERE id = ?1",
            rusqlite::params![id, on],
        )
    });
    if let Err(e) = r {
        eprintln!("warning: the store was not updated ({}): {e}", db.display());
    }
    audit(
        db,
        "technician",
        if on {
            "evidence.hold"
        } else {
            "evidence.release"
        },
        id.to_string(),
    );
    println!(
        "{}: {}",
        clip.display(),
        if on { "under legal hold" } else { "released" }
    );
    Ok(())
}
