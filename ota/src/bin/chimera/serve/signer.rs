//! The service's online issuer key (`signer:` in serve.yaml): a key file, or a seed that a
//! PKCS#11 token decrypts for each signature ([`super::signer_pkcs11`]). Loaded and checked
//! at start: the key must be a non-revoked issuer of the trust metadata and never a root
//! key, so the service can sign what the trust metadata lets that issuer sign and nothing
//! else — it cannot rotate trust, and a stolen online key is revoked by the offline root.
//!
//! Signing itself is the library's (`aegis_ota::sign_workflow`, as `chimera sign`); this
//! module only decides which key and where its secret lives. Also here: the provisioning
//! commands `chimera serve signer import-seed` and `signer generate`.

use std::path::{Path, PathBuf};

use aegis_ota::sign::{PublicKey, SecretKey};
use aegis_ota::trust::{Issuer, TrustMetadata};

use super::config::{Pkcs11SignerConfig, SignerConfig};
use super::signer_pkcs11::{Token, TokenError, WrappedSeed, WrappingKey};

/// Why a signature could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignerError {
    /// The token failed (it was removed, the session closed, …).
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The decrypted seed is not the configured key's (the file or token changed since the
    /// start).
    #[error("the token decrypted a seed that is not key {expected}'s")]
    WrongKey {
        /// The key id the service started with.
        expected: String,
    },
    /// The library refused to sign the document.
    #[error("{0}")]
    Sign(#[from] aegis_ota::SignWorkflowError),
}

/// Where the secret is.
enum Secret {
    /// In memory while the service runs (`kind: file`).
    File(SecretKey),
    /// Encrypted; the token decrypts it for each signature (`kind: pkcs11`).
    Token {
        token: Token,
        key: WrappingKey,
        key_label: String,
        wrapped: WrappedSeed,
    },
}

/// The online issuer key, checked against the trust metadata.
pub(crate) struct Signer {
    issuer: Issuer,
    public: PublicKey,
    secret: Secret,
    what: String,
}

/// Refuses a key the service must not sign with: a root key of the trust metadata or of
/// `roots` (checked first, so a root key is refused as one whatever else the metadata
/// says), a revoked key, or a key the metadata does not list as an issuer. `what` names
/// the key's source in errors. Returns its issuer entry.
pub(crate) fn check_online_key(
    key: &PublicKey,
    trust: &TrustMetadata,
    roots: &[PublicKey],
    what: &str,
) -> anyhow::Result<Issuer> {
    let listed = aegis_ota::trust::keys_of(&trust.root.keys).unwrap_or_default();
    if listed.iter().chain(roots).any(|r| r.id() == key.id()) {
        anyhow::bail!(
            "{what}: key {} is a root key of the trust metadata (version {}): the offline \
             root never goes on the service; give it an issuer key (`chimera keygen`, \
             `chimera trust add-issuer`)",
            key.id(),
            trust.version
        );
    }
    let (issuer, _) = trust.issuer(key.id()).map_err(|e| {
        anyhow::anyhow!(
            "{what}: key {} is not an issuer the trust metadata (version {}) lets sign: {e} \
             (`chimera trust add-issuer`, then `chimera root sign-trust`)",
            key.id(),
            trust.version
        )
    })?;
    Ok(issuer)
}

/// The key of a decrypted seed, which must be `expected`.
fn seed_key(seed: &[u8], expected: &str) -> Result<SecretKey, SignerError> {
    let key = SecretKey::from_seed_bytes(seed).map_err(|_| SignerError::WrongKey {
        expected: expected.to_string(),
    })?;
    if key.public().id() != expected {
        return Err(SignerError::WrongKey {
            expected: expected.to_string(),
        });
    }
    Ok(key)
}

impl Signer {
    /// Loads the configured key (for a token: logs in, finds the wrapping key, decrypts the
    /// seed once to learn its public key) and checks it against the trust metadata and the
    /// configured `roots`.
    pub(crate) fn load(
        cfg: &SignerConfig,
        trust: &TrustMetadata,
        roots: &[PublicKey],
    ) -> anyhow::Result<Signer> {
        let (public, secret, what) = match cfg {
            SignerConfig::File(f) => {
                let what = format!("signer.key_file {}", f.key_file.display());
                let key = SecretKey::read(&f.key_file)
                    .map_err(|e| anyhow::anyhow!("signer.key_file: {e}"))?;
                (key.public().clone(), Secret::File(key), what)
            }
            SignerConfig::Pkcs11(p) => {
                let what = format!(
                    "signer (pkcs11 token {:?}, key {:?})",
                    p.token_label, p.key_label
                );
                let wrapped = WrappedSeed::read(&p.wrapped_seed_file)?;
                let token = Token::open(p, false)?;
                let key = token.wrapping_key(&p.key_label)?;
                let seed = token.unwrap(key, &p.key_label, &wrapped)?;
                let public = seed_key(&seed, &wrapped.key_id)?.public().clone();
                drop(seed);
                let what = format!(
                    "{what}: {}; the token offers CKM_ML_DSA: {}",
                    key.facts(),
                    if token.ml_dsa {
                        "yes (signing inside the token is not built yet)"
                    } else {
                        "no"
                    }
                );
                let secret = Secret::Token {
                    token,
                    key,
                    key_label: p.key_label.clone(),
                    wrapped,
                };
                (public, secret, what)
            }
        };
        let issuer = check_online_key(&public, trust, roots, &what)?;
        Ok(Signer {
            issuer,
            public,
            secret,
            what,
        })
    }

    /// The issuer entry of the trust metadata this key is.
    pub(crate) fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// The key's id.
    pub(crate) fn key_id(&self) -> &str {
        self.public.id()
    }

    /// Where the key is, for logs and audit rows (no secret).
    pub(crate) fn describe(&self) -> &str {
        &self.what
    }

    /// Signs an unsigned document with the library's `sign_workflow` (blocking: ML-DSA, and
    /// a token round trip for `kind: pkcs11`, whose decrypted seed and key are wiped when
    /// the signature is made).
    pub(crate) fn sign(&self, doc: &[u8]) -> Result<Vec<u8>, SignerError> {
        match &self.secret {
            Secret::File(key) => Ok(aegis_ota::sign_workflow(doc, key)?),
            Secret::Token {
                token,
                key,
                key_label,
                wrapped,
            } => {
                let key = {
                    let seed = token.unwrap(*key, key_label, wrapped)?;
                    seed_key(&seed, self.public.id())?
                };
                Ok(aegis_ota::sign_workflow(doc, &key)?)
            }
        }
    }
}

/// The PKCS#11 section of a config, for the provisioning commands.
fn pkcs11_config(signer: Option<&SignerConfig>) -> anyhow::Result<&Pkcs11SignerConfig> {
    match signer {
        Some(SignerConfig::Pkcs11(p)) => Ok(p),
        _ => anyhow::bail!(
            "the configuration has no `signer: {{kind: pkcs11, …}}` section: import-seed and \
             generate put a key on the token it names"
        ),
    }
}

/// Opens the token read-write and finds the wrapping key, making it when the token has
/// none with that label. Returns it and whether it was made.
fn provisioning_key(p: &Pkcs11SignerConfig) -> anyhow::Result<(Token, WrappingKey, bool)> {
    let token = Token::open(p, true)?;
    Ok(match token.find_key(&p.key_label)? {
        Some(k) => (token, k, false),
        None => {
            let k = token.create_key(&p.key_label)?;
            (token, k, true)
        }
    })
}

/// What a provisioning command did.
pub(crate) struct Provisioned {
    /// The issuer key id now wrapped.
    pub(crate) key_id: String,
    /// The wrapped seed file written.
    pub(crate) wrapped_seed_file: PathBuf,
    /// Whether the token's wrapping key was made now.
    pub(crate) created_key: bool,
}

/// Encrypts `key`'s seed under the token's wrapping key into the configured
/// `wrapped_seed_file` (never overwritten). The seed is checked to decrypt back to the same
/// key before the file is written. Refuses a root key of `trust` (when given).
fn wrap_into_file(
    p: &Pkcs11SignerConfig,
    key: &SecretKey,
    trust: Option<&TrustMetadata>,
    roots: &[PublicKey],
) -> anyhow::Result<Provisioned> {
    if let Some(t) = trust {
        let listed = aegis_ota::trust::keys_of(&t.root.keys).unwrap_or_default();
        anyhow::ensure!(
            !listed
                .iter()
                .chain(roots)
                .any(|r| r.id() == key.public().id()),
            "key {} is a root key of the trust metadata: the offline root never goes on \
             the service",
            key.public().id()
        );
    }
    anyhow::ensure!(
        !p.wrapped_seed_file.exists(),
        "signer.wrapped_seed_file {} exists already: it is never overwritten (move it away \
         first if you mean to replace it)",
        p.wrapped_seed_file.display()
    );
    let (token, wk, created_key) = provisioning_key(p)?;
    let id = key.public().id().to_string();
    let wrapped = token.wrap(wk, &p.key_label, key.seed_bytes(), &id)?;
    let back = token.unwrap(wk, &p.key_label, &wrapped)?;
    seed_key(&back, &id)?;
    drop(back);
    wrapped.write(&p.wrapped_seed_file)?;
    Ok(Provisioned {
        key_id: id,
        wrapped_seed_file: p.wrapped_seed_file.clone(),
        created_key,
    })
}

/// `chimera serve signer import-seed --key FILE`: wraps an existing issuer key's seed.
pub(crate) fn import_seed(
    signer: Option<&SignerConfig>,
    key_file: &Path,
    trust: Option<&TrustMetadata>,
    roots: &[PublicKey],
) -> anyhow::Result<Provisioned> {
    let p = pkcs11_config(signer)?;
    let key = SecretKey::read(key_file).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    wrap_into_file(p, &key, trust, roots)
}

/// `chimera serve signer generate --out PREFIX`: a new issuer key whose seed exists only in
/// memory and, encrypted, in the wrapped seed file; its public key goes to `PREFIX.pub` for
/// `chimera trust add-issuer`.
pub(crate) fn generate(
    signer: Option<&SignerConfig>,
    out: &Path,
) -> anyhow::Result<(Provisioned, PathBuf)> {
    let p = pkcs11_config(signer)?;
    let key = SecretKey::generate()?;
    let public = out.with_extension("pub");
    anyhow::ensure!(
        !public.exists(),
        "{} exists already: choose another --out",
        public.display()
    );
    let done = wrap_into_file(p, &key, None, &[])?;
    key.public().write(&public)?;
    Ok((done, public))
}
