//! `chimera root …` and `chimera trust …`: the offline root and the trust metadata it signs.

// The command modules share the binary's imports, helpers and argument types.
use super::*;

/// `chimera root …`: the offline root's key and its signatures on trust metadata.
pub(crate) fn root(what: RootCommand) -> anyhow::Result<()> {
    match what {
        RootCommand::Init { dir } => {
            create_dir(&dir)?;
            let key = SecretKey::generate()?;
            key.write(&dir.join("root.key"))?;
            key.public().write(&dir.join("root.pub"))?;
            let draft = TrustMetadata {
                kind: "aegis-trust".into(),
                version: 0,
                expires_at: now_rfc3339(365),
                root: Roots {
                    threshold: 1,
                    keys: vec![b64_pub(&dir.join("root.pub"))?],
                },
                issuers: vec![],
                revoked: vec![],
            };
            write_draft(&dir.join("trust.json"), draft)?;
            println!(
                "root key {} in {} (keep root.key offline)",
                key.public().id(),
                dir.display()
            );
        }
        RootCommand::SignTrust { trust, keys, out } => {
            let draft = read_draft(&trust)?;
            let keys = keys
                .iter()
                .map(|k| SecretKey::read(k))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&SecretKey> = keys.iter().collect();
            write_file(&out, draft.sign(&refs)?)?;
            println!(
                "{} (version {}, {} signatures)",
                out.display(),
                draft.version,
                refs.len()
            );
        }
    }
    Ok(())
}

/// `chimera trust …`: edit a trust metadata draft.
pub(crate) fn trust(what: TrustCommand) -> anyhow::Result<()> {
    match what {
        TrustCommand::AddIssuer {
            trust,
            name,
            key,
            devices,
            groups,
            models,
            firmware,
        } => {
            let mut t = read_draft(&trust)?;
            let k = b64_pub(&key)?;
            t.issuers.retain(|i| i.name != name);
            t.issuers.push(Issuer {
                name,
                key: k,
                devices,
                groups,
                models,
                firmware: firmware.unwrap_or_default(),
            });
            write_draft(&trust, t)?;
        }
        TrustCommand::Revoke { trust, key_id } => {
            let mut t = read_draft(&trust)?;
            anyhow::ensure!(
                key_id.starts_with("mldsa65:"),
                "{key_id:?} is not a key id (mldsa65:…)"
            );
            if !t.revoked.contains(&key_id) {
                t.revoked.push(key_id);
            }
            write_draft(&trust, t)?;
        }
        TrustCommand::Rotate {
            trust,
            new_roots,
            threshold,
        } => {
            let mut t = read_draft(&trust)?;
            anyhow::ensure!(
                threshold >= 1 && threshold as usize <= new_roots.len(),
                "threshold must be 1..={}",
                new_roots.len()
            );
            t.root = Roots {
                threshold,
                keys: new_roots
                    .iter()
                    .map(|p| b64_pub(p))
                    .collect::<Result<_, _>>()?,
            };
            write_draft(&trust, t)?;
        }
    }
    Ok(())
}
