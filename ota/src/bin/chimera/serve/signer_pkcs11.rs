//! The online issuer key on a PKCS#11 token (`signer: {kind: pkcs11}`), through `cryptoki`
//! (the module is loaded at run time; nothing links to it).
//!
//! Why an envelope and not a key the token signs with: tokens of PKCS#11 2.40 (Debian's
//! SoftHSM 2.6.1 among them) have no ML-DSA mechanism. So the token holds an AES-256 key —
//! secret, `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`: its bytes never leave the token — and the
//! ML-DSA-65 seed lives outside it encrypted under that key (`CKM_AES_GCM`). For each
//! signature the token decrypts the seed into a zeroizing buffer, the signature is made, and
//! the seed and the expanded key are wiped. The seed is in host memory during a signature;
//! a token with `CKM_ML_DSA` (PKCS#11 3.2) would keep it inside (not built: docs).
//!
//! `CKM_AES_GCM` rather than `CKM_AES_KEY_WRAP_PAD`: key wrapping (`C_UnwrapKey`) would
//! create the seed as a token object, which is useful only if the token can sign with it
//! (it cannot) or lets it be read back (then it must be extractable, and the point is lost);
//! `C_Decrypt` with GCM hands the plaintext to the caller, which is what signing outside
//! the token needs, and GCM authenticates: a tampered file, or one bound to another key id
//! (the associated data is `aegis-issuer-seed-v1|KEY_ID`), fails in the token instead of
//! producing a wrong key. The IV is random (12 bytes) and stored beside the ciphertext;
//! each wrap uses a fresh one.
//!
//! What this must not do: write the seed anywhere in clear, read the PIN from anywhere but
//! its file, or create a token key that can leave the token.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::config::Pkcs11SignerConfig;

/// The wrapped seed file's `type`.
const FILE_TYPE: &str = "aegis-wrapped-issuer-seed";
/// The wrapping the file records (and the only one read).
const WRAP: &str = "CKM_AES_GCM";
/// Associated data of the encryption: binds the ciphertext to the key id it yields.
const AAD_PREFIX: &str = "aegis-issuer-seed-v1|";
/// GCM tag length, bits.
const TAG_BITS: u64 = 128;

/// What went wrong with the token, naming the `signer.*` setting or operation concerned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// The module could not be loaded or initialised.
    #[error("signer.module {path}: {reason}")]
    Module {
        /// The module.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No such token, or it cannot be used.
    #[error("signer.token_label {label:?}: {reason}")]
    Token {
        /// The label.
        label: String,
        /// Why.
        reason: String,
    },
    /// The PIN file or the login.
    #[error("signer.pin_file {path}: {reason}")]
    Pin {
        /// The PIN file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The wrapping key.
    #[error("signer.key_label {label:?}: {reason}")]
    Key {
        /// Its label.
        label: String,
        /// Why.
        reason: String,
    },
    /// The wrapped seed file.
    #[error("signer.wrapped_seed_file {path}: {reason}")]
    Wrapped {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A token operation failed.
    #[error("token {label:?}: {op}: {source}")]
    Op {
        /// The token.
        label: String,
        /// What was being done.
        op: &'static str,
        /// What the module said.
        source: P11Error,
    },
}

/// The wrapped seed file (JSON, written 0600 like a key file though it is ciphertext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WrappedSeed {
    /// [`FILE_TYPE`].
    #[serde(rename = "type")]
    kind: String,
    /// [`WRAP`].
    wrap: String,
    /// The issuer key id the seed yields (`mldsa65:…`), bound as associated data.
    pub(crate) key_id: String,
    /// The label of the token key it was encrypted under (for error messages).
    pub(crate) key_label: String,
    /// The GCM IV, base64.
    iv: String,
    /// Ciphertext and tag, base64.
    ciphertext: String,
}

impl WrappedSeed {
    /// Reads the file: the private-file checks (owner, mode 0600, no link, small), then JSON.
    pub(crate) fn read(path: &Path) -> Result<WrappedSeed, TokenError> {
        let bad = |reason: String| TokenError::Wrapped {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = aegis_ota::read_private(path).map_err(|(_, r)| bad(r))?;
        let w: WrappedSeed = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "not a wrapped seed file ({e}): `chimera serve signer import-seed` writes one"
            ))
        })?;
        if w.kind != FILE_TYPE || w.wrap != WRAP {
            return Err(bad(format!(
                "type {:?}, wrap {:?}: this build reads {FILE_TYPE} with {WRAP}",
                w.kind, w.wrap
            )));
        }
        Ok(w)
    }

    /// Writes the file: created new (never overwrites), mode 0600, fsynced.
    pub(crate) fn write(&self, path: &Path) -> Result<(), TokenError> {
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| TokenError::Wrapped {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        text.push(b'\n');
        aegis_ota::write_private(path, &text).map_err(|(_, reason)| TokenError::Wrapped {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn aad(key_id: &str) -> Vec<u8> {
        format!("{AAD_PREFIX}{key_id}").into_bytes()
    }
}

/// A logged-in session on the configured token. One session behind a mutex: decryptions
/// take microseconds, signatures are made outside the lock.
pub(crate) struct Token {
    label: String,
    session: Mutex<Session>,
    /// Whether the module offers `CKM_ML_DSA` on this token (reported, not used yet).
    pub(crate) ml_dsa: bool,
    // Dropped last: the module stays loaded while the session exists.
    _ctx: Pkcs11,
}

/// A token key that is fit to wrap the seed: found by label, checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WrappingKey {
    handle: ObjectHandle,
    /// `CKA_NEVER_EXTRACTABLE`: it was never extractable since it was made.
    pub(crate) never_extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`: it was always sensitive since it was made.
    pub(crate) always_sensitive: bool,
}

impl WrappingKey {
    /// What the token says about it (for `signer check` and the start audit row).
    pub(crate) fn facts(&self) -> String {
        format!(
            "AES-256, sensitive, not extractable, its value unreadable; never extractable: {}, \
             always sensitive: {}",
            yes(self.never_extractable),
            yes(self.always_sensitive)
        )
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Refuses a module file others could replace: it runs inside this process.
fn check_module(path: &Path) -> Result<(), TokenError> {
    use std::os::unix::fs::MetadataExt as _;
    let bad = |reason: String| TokenError::Module {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file (the PKCS#11 module, a .so)".into()));
    }
    // SAFETY: geteuid takes no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    if (meta.uid() != 0 && meta.uid() != me) || meta.mode() & 0o022 != 0 {
        return Err(bad(format!(
            "owned by uid {} with mode {:04o}: a module that another user can replace runs \
             their code in this process (it must belong to root or to uid {me}, and not be \
             writable by group or others)",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The PIN from its file (one trailing newline dropped), in a secret string.
fn read_pin(path: &Path) -> Result<AuthPin, TokenError> {
    let mut pin =
        crate::keys::read_secret_line(path, "the PIN").map_err(|reason| TokenError::Pin {
            path: path.to_path_buf(),
            reason,
        })?;
    // Moved out exactly sized, so turning it into the secret's boxed str does not
    // reallocate and leave a copy behind.
    Ok(AuthPin::from(std::mem::take(&mut *pin)))
}

impl Token {
    /// Loads the module, finds the token by label, opens a session (read-write when
    /// `write`: to create the wrapping key) and logs in as the user with the PIN file.
    pub(crate) fn open(cfg: &Pkcs11SignerConfig, write: bool) -> Result<Token, TokenError> {
        check_module(&cfg.module)?;
        let module = |e: P11Error| TokenError::Module {
            path: cfg.module.clone(),
            reason: e.to_string(),
        };
        let ctx = Pkcs11::new(&cfg.module).map_err(module)?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(module)?;
        let token = |reason: String| TokenError::Token {
            label: cfg.token_label.clone(),
            reason,
        };
        let mut labels = Vec::new();
        let mut found = Vec::new();
        for slot in ctx.get_slots_with_token().map_err(module)? {
            let info = ctx.get_token_info(slot).map_err(module)?;
            if info.label() == cfg.token_label {
                found.push(slot);
            }
            labels.push(info.label().to_string());
        }
        let slot = match found.as_slice() {
            [one] => *one,
            [] => {
                return Err(token(format!(
                    "no token with this label (the module's tokens: {labels:?})"
                )));
            }
            _ => return Err(token("more than one token has this label".into())),
        };
        let mechanisms = ctx.get_mechanism_list(slot).map_err(module)?;
        if !mechanisms.contains(&MechanismType::AES_GCM) {
            return Err(token("the token does not offer CKM_AES_GCM".into()));
        }
        let ml_dsa = mechanisms.contains(&MechanismType::ML_DSA);
        let session = if write {
            ctx.open_rw_session(slot)
        } else {
            ctx.open_ro_session(slot)
        }
        .map_err(|e| token(format!("cannot open a session: {e}")))?;
        let pin = read_pin(&cfg.pin_file)?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(TokenError::Pin {
                    path: cfg.pin_file.clone(),
                    reason: format!("token {:?} refused the PIN (wrong PIN)", cfg.token_label),
                });
            }
            Err(P11Error::Pkcs11(RvError::PinLocked, _)) => {
                return Err(TokenError::Pin {
                    path: cfg.pin_file.clone(),
                    reason: format!(
                        "token {:?}: the user PIN is locked (too many wrong PINs)",
                        cfg.token_label
                    ),
                });
            }
            Err(e) => {
                return Err(TokenError::Pin {
                    path: cfg.pin_file.clone(),
                    reason: format!("login to token {:?} failed: {e}", cfg.token_label),
                });
            }
        }
        Ok(Token {
            label: cfg.token_label.clone(),
            session: Mutex::new(session),
            ml_dsa,
            _ctx: ctx,
        })
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn op(&self, op: &'static str) -> impl Fn(P11Error) -> TokenError + '_ {
        move |source| TokenError::Op {
            label: self.label.clone(),
            op,
            source,
        }
    }

    /// The AES key labelled `label`, when the token has one: it must be a 256-bit AES
    /// secret key that is sensitive, not extractable and may decrypt; anything else is
    /// refused, naming what is wrong.
    pub(crate) fn find_key(&self, label: &str) -> Result<Option<WrappingKey>, TokenError> {
        let key = |reason: String| TokenError::Key {
            label: label.to_string(),
            reason,
        };
        let session = self.session();
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(self.op("find the wrapping key"))?;
        let handle = match found.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => return Err(key("more than one secret key has this label".into())),
        };
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::ValueLen,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Decrypt,
                    AttributeType::NeverExtractable,
                    AttributeType::AlwaysSensitive,
                ],
            )
            .map_err(self.op("read the wrapping key's attributes"))?;
        let (mut aes, mut len, mut sensitive, mut extractable, mut decrypt) =
            (false, 0u64, false, true, false);
        let (mut never_extractable, mut always_sensitive) = (false, false);
        for a in attrs {
            match a {
                Attribute::KeyType(t) => aes = t == KeyType::AES,
                Attribute::ValueLen(n) => len = n.into(),
                Attribute::Sensitive(b) => sensitive = b,
                Attribute::Extractable(b) => extractable = b,
                Attribute::Decrypt(b) => decrypt = b,
                Attribute::NeverExtractable(b) => never_extractable = b,
                Attribute::AlwaysSensitive(b) => always_sensitive = b,
                _ => {}
            }
        }
        // What the attributes promise, tried: the token must not hand out the key's value.
        // (cryptoki leaves out an attribute the token refuses to reveal, or fails.)
        let readable = session
            .get_attributes(handle, &[AttributeType::Value])
            .is_ok_and(|v| v.iter().any(|a| matches!(a, Attribute::Value(_))));
        let problem = if !aes || len != 32 {
            Some("is not a 256-bit AES key")
        } else if !sensitive || extractable || readable {
            Some(
                "can leave the token (it must be CKA_SENSITIVE and not CKA_EXTRACTABLE): make \
                 a new one with `chimera serve signer import-seed` under another label",
            )
        } else if !decrypt {
            Some("may not decrypt (CKA_DECRYPT is false)")
        } else {
            None
        };
        match problem {
            Some(p) => Err(key(p.to_string())),
            None => Ok(Some(WrappingKey {
                handle,
                never_extractable,
                always_sensitive,
            })),
        }
    }

    /// The wrapping key labelled `label`; a missing one is an error that says how to make
    /// it.
    pub(crate) fn wrapping_key(&self, label: &str) -> Result<WrappingKey, TokenError> {
        self.find_key(label)?.ok_or_else(|| TokenError::Key {
            label: label.to_string(),
            reason: format!(
                "token {:?} has no secret key with this label (`chimera serve signer \
                 import-seed` or `signer generate` makes it)",
                self.label
            ),
        })
    }

    /// Generates the wrapping key on the token: AES-256, a token object, private,
    /// sensitive, never extractable, for encrypting and decrypting only.
    pub(crate) fn create_key(&self, label: &str) -> Result<WrappingKey, TokenError> {
        self.session()
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Sign(false),
                    Attribute::Verify(false),
                    Attribute::Derive(false),
                ],
            )
            .map_err(self.op("generate the wrapping key"))?;
        // Read back through the same checks the service applies.
        self.wrapping_key(label)
    }

    /// Encrypts `seed` (the issuer key `key_id`'s) under `key`.
    pub(crate) fn wrap(
        &self,
        key: WrappingKey,
        key_label: &str,
        seed: &[u8],
        key_id: &str,
    ) -> Result<WrappedSeed, TokenError> {
        let mut iv = [0u8; 12];
        getrandom::fill(&mut iv).map_err(|e| TokenError::Token {
            label: self.label.clone(),
            reason: format!("random generator: {e}"),
        })?;
        let aad = WrappedSeed::aad(key_id);
        let ciphertext = {
            let mut iv_param = iv;
            let params = GcmParams::new(&mut iv_param, &aad, TAG_BITS.into())
                .map_err(self.op("set up AES-GCM"))?;
            self.session()
                .encrypt(&Mechanism::AesGcm(params), key.handle, seed)
                .map_err(self.op("encrypt the seed"))?
        };
        Ok(WrappedSeed {
            kind: FILE_TYPE.into(),
            wrap: WRAP.into(),
            key_id: key_id.to_string(),
            key_label: key_label.to_string(),
            iv: B64.encode(iv),
            ciphertext: B64.encode(ciphertext),
        })
    }

    /// Decrypts the seed of `w` with `key`, into a zeroizing buffer. The token checks the
    /// tag: another key, a changed file or a changed key id fails here.
    pub(crate) fn unwrap(
        &self,
        key: WrappingKey,
        key_label: &str,
        w: &WrappedSeed,
    ) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        let malformed = |what: &str| TokenError::Key {
            label: key_label.to_string(),
            reason: format!("the wrapped seed's {what} is not valid base64"),
        };
        let iv = B64.decode(&w.iv).map_err(|_| malformed("iv"))?;
        let ciphertext = B64
            .decode(&w.ciphertext)
            .map_err(|_| malformed("ciphertext"))?;
        let mut iv: [u8; 12] = iv.try_into().map_err(|_| TokenError::Key {
            label: key_label.to_string(),
            reason: "the wrapped seed's IV is not 12 bytes".into(),
        })?;
        let aad = WrappedSeed::aad(&w.key_id);
        let params =
            GcmParams::new(&mut iv, &aad, TAG_BITS.into()).map_err(self.op("set up AES-GCM"))?;
        match self
            .session()
            .decrypt(&Mechanism::AesGcm(params), key.handle, &ciphertext)
        {
            // Into a zeroizing buffer at once (the vector cryptoki returns is the only
            // allocation that held the seed; it is wiped with its spare capacity).
            Ok(seed) => Ok(Zeroizing::new(seed)),
            // A failed GCM tag check: CKR_ENCRYPTED_DATA_INVALID by the standard, and
            // CKR_GENERAL_ERROR from SoftHSM 2.6.
            Err(P11Error::Pkcs11(
                rv @ (RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::FunctionFailed
                | RvError::GeneralError),
                _,
            )) => Err(TokenError::Key {
                label: key_label.to_string(),
                reason: format!(
                    "this key cannot decrypt the wrapped seed of {} (it was wrapped under the \
                     key labelled {:?}, on this token or another; or the file was changed): \
                     the token answered {rv:?}",
                    w.key_id, w.key_label
                ),
            }),
            Err(e) => Err(self.op("decrypt the seed")(e)),
        }
    }
}
