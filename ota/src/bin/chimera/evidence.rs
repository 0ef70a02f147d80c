//! `chimera evidence verify`: checks a clip exported from a device (`aegis evidence export`)
//! off the device — its manifest's ML-DSA signature with the device's enrolled key, then the
//! clip's SHA-256 against the manifest — and prints what the device stated.

use std::path::PathBuf;

use aegis_ota::evidence::verify_clip;
use aegis_ota::sign::PublicKey;
use base64::Engine as _;

/// `chimera evidence …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum EvidenceCommand {
    /// Verifies an exported clip: exits 0 and prints the manifest (JSON) when the signature
    /// and the clip's bytes check out, 1 with the reason otherwise.
    Verify {
        /// The exported MP4.
        clip: PathBuf,
        /// Its manifest (default: CLIP.manifest.json, as `aegis evidence export` writes it).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The device's public key file (`aegis provision` wrote it as device.pub).
        #[arg(long, conflicts_with = "registry")]
        device_key: Option<PathBuf>,
        /// Or the device registry (`chimera enroll`): the key of the device the manifest's
        /// signature names.
        #[arg(long)]
        registry: Option<PathBuf>,
    },
}

pub(crate) fn evidence(what: EvidenceCommand) -> anyhow::Result<()> {
    let EvidenceCommand::Verify {
        clip,
        manifest,
        device_key,
        registry,
    } = what;
    let manifest_path =
        manifest.unwrap_or_else(|| PathBuf::from(format!("{}.manifest.json", clip.display())));
    let manifest = super::read_file(&manifest_path)?;
    let key = match (device_key, registry) {
        (Some(k), _) => PublicKey::read(&k)?,
        (None, Some(r)) => registry_key(&r, &manifest)?,
        (None, None) => anyhow::bail!("give --device-key or --registry"),
    };
    let file = std::fs::File::open(&clip)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", clip.display()))?;
    let m = verify_clip(&manifest, std::io::BufReader::new(file), &key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", clip.display()))?;
    println!("{}", serde_json::to_string_pretty(&m)?);
    eprintln!(
        "{}: verified: signed by {} ({}), {} bytes, sha256 {}",
        clip.display(),
        m.device,
        key.id(),
        m.bytes,
        m.sha256
    );
    Ok(())
}

/// The enrolled key whose id the manifest's signature names (the registry is trusted; the
/// manifest is not, until that key verifies it).
fn registry_key(registry: &std::path::Path, manifest: &[u8]) -> anyhow::Result<PublicKey> {
    #[derive(serde::Deserialize)]
    struct Outer {
        signature: aegis_ota::maml::SignatureBlock,
    }
    let outer: Outer = serde_json::from_slice(manifest)
        .map_err(|e| anyhow::anyhow!("the manifest is not a signed clip manifest: {e}"))?;
    let reg = super::read_registry(registry)?;
    for (device, entry) in &reg {
        if entry["key_id"].as_str() != Some(outer.signature.key.as_str()) {
            continue;
        }
        let b64 = entry["signing_key"].as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| anyhow::anyhow!("{}: device {device}: {e}", registry.display()))?;
        return PublicKey::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: device {device}: {e}", registry.display()));
    }
    anyhow::bail!(
        "no device in {} has the key {} that signed the manifest",
        registry.display(),
        outer.signature.key
    )
}
