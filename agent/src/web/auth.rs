//! The technician web page's security core: local accounts (argon2id hashes and roles in a
//! 0600 file), server-side sessions with a CSRF token each, and login rate limiting with a
//! lockout. The router's one enforcement point ([`super::enforce`]) reads these.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, SaltString, rand_core::OsRng};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};

/// Consecutive failed logins (per user name, and per client address) before a lockout.
pub const MAX_FAILURES: u32 = 5;
/// How long a lockout lasts; failures older than this are forgotten.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// The session cookie's name.
pub const COOKIE: &str = "aegis_session";
/// The shortest password `aegis user add|passwd` accepts.
pub const MIN_PASSWORD: usize = 8;

/// What an account may do; each role may do what the ones below it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads status pages.
    Viewer,
    /// Also changes the device's settings and workflows.
    Technician,
    /// Also manages accounts.
    Admin,
}

impl Role {
    /// The name in the accounts file and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Technician => "technician",
            Role::Admin => "admin",
        }
    }
}

/// One account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The login name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The password's argon2id hash (PHC string, `$argon2id$…`).
    pub hash: String,
}

/// The accounts file's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    /// Every account, in the order added.
    pub users: Vec<Account>,
}

/// Why the accounts file or an account change failed; names the file where there is one.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The file fails the private-file checks or cannot be read.
    #[error("accounts file {}: {reason} (web.accounts_file)", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why, from `aegis_ota`'s key-file checks.
        reason: String,
    },
    /// The file is not an accounts document.
    #[error("accounts file {}: not an accounts document: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The file cannot be written.
    #[error("accounts file {}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The user name is not acceptable.
    #[error("user name {0:?} is not accepted: 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadName(String),
    /// The user name is taken.
    #[error("user {0:?} already exists (aegis user passwd to change the password)")]
    Exists(String),
    /// There is no such user.
    #[error("no user {0:?} (aegis user list shows them)")]
    NoSuchUser(String),
    /// The password is too short.
    #[error("the password is too short: at least {MIN_PASSWORD} characters")]
    ShortPassword,
    /// Hashing failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The argon2id hash of `password` (the crate's default parameters: argon2id v19,
/// 19 MiB, 2 passes), with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, AccountsError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountsError::Hash(e.to_string()))
}

/// Whether `password` matches `hash` (false for a hash that does not parse).
fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl Accounts {
    /// Reads `path` with the secret-file checks (0600, owned by this user, no link); a
    /// missing file is no accounts.
    pub fn load(path: &Path) -> Result<Accounts, AccountsError> {
        if !path.exists() {
            return Ok(Accounts::default());
        }
        let bytes = aegis_ota::read_private(path).map_err(|(_, reason)| AccountsError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| AccountsError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes `path` atomically, 0600.
    pub fn save(&self, path: &Path) -> Result<(), AccountsError> {
        let err = |source| AccountsError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let body = serde_json::to_vec_pretty(self).unwrap_or_default();
        aegis_ota::fsutil::write_atomic(path, &body).map_err(err)
    }

    fn find(&self, name: &str) -> Option<&Account> {
        self.users.iter().find(|a| a.name == name)
    }

    /// Adds `name` with `role` and `password`.
    pub fn add(&mut self, name: &str, role: Role, password: &str) -> Result<(), AccountsError> {
        if !valid_name(name) {
            return Err(AccountsError::BadName(name.to_string()));
        }
        if self.find(name).is_some() {
            return Err(AccountsError::Exists(name.to_string()));
        }
        if password.chars().count() < MIN_PASSWORD {
            return Err(AccountsError::ShortPassword);
        }
        self.users.push(Account {
            name: name.to_string(),
            role,
            hash: hash_password(password)?,
        });
        Ok(())
    }

    /// Replaces `name`'s password.
    pub fn set_password(&mut self, name: &str, password: &str) -> Result<(), AccountsError> {
        if password.chars().count() < MIN_PASSWORD {
            return Err(AccountsError::ShortPassword);
        }
        let hash = hash_password(password)?;
        let a = self
            .users
            .iter_mut()
            .find(|a| a.name == name)
            .ok_or_else(|| AccountsError::NoSuchUser(name.to_string()))?;
        a.hash = hash;
        Ok(())
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) -> Result<(), AccountsError> {
        let before = self.users.len();
        self.users.retain(|a| a.name != name);
        if self.users.len() == before {
            return Err(AccountsError::NoSuchUser(name.to_string()));
        }
        Ok(())
    }

    /// `name`'s role when `password` is right. An unknown name costs one hash check too, so
    /// that the time taken does not tell which names exist.
    pub fn verify(&self, name: &str, password: &str) -> Option<Role> {
        static DUMMY: OnceLock<String> = OnceLock::new();
        match self.find(name) {
            Some(a) => verify_password(password, &a.hash).then_some(a.role),
            None => {
                let dummy =
                    DUMMY.get_or_init(|| hash_password("not a password").unwrap_or_default());
                let _ = verify_password(password, dummy);
                None
            }
        }
    }
}

/// The time source of sessions and lockouts (a test moves it forward).
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Instant;
}

/// The monotonic clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A logged-in user, as handlers see it (the enforcement layer puts it in the request's
/// extensions; handlers take it as an argument).
#[derive(Debug, Clone, PartialEq)]
pub struct Viewer {
    /// The login name.
    pub user: String,
    /// What it may do.
    pub role: Role,
    /// The session's CSRF token: forms send it as the `csrf` field, scripts as the
    /// `X-CSRF-Token` header.
    pub csrf: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Viewer {
    type Rejection = axum::http::StatusCode;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Viewer>()
            .cloned()
            .ok_or(axum::http::StatusCode::UNAUTHORIZED)
    }
}

struct Session {
    viewer: Viewer,
    /// The account's hash at login: a changed password or a deleted account ends it.
    hash: String,
    expires: Instant,
}

#[derive(Default)]
struct Failures {
    count: u32,
    last: Option<Instant>,
    locked_until: Option<Instant>,
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown user or wrong password: one answer for both.
    #[error("wrong user name or password")]
    BadCredentials,
    /// Too many failures for this user name or client address.
    #[error("too many failed logins: try again in 15 minutes")]
    Locked,
    /// The accounts file cannot be read.
    #[error(transparent)]
    Accounts(#[from] AccountsError),
    /// The OS gave no random bytes.
    #[error("no random bytes for a session: {0}")]
    Random(getrandom::Error),
}

/// A new session: the cookie's value and the viewer.
#[derive(Debug)]
pub struct NewSession {
    /// The session id (the cookie's value).
    pub id: String,
    /// Who logged in.
    pub viewer: Viewer,
}

/// Accounts, sessions and login failures.
pub struct Auth {
    accounts: PathBuf,
    clock: Arc<dyn Clock>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Failures>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({})", self.accounts.display())
    }
}

fn random_hex() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

impl Auth {
    /// Accounts read from `accounts` (at each login, so `aegis user …` takes effect
    /// without a restart), time from `clock`.
    pub fn new(accounts: PathBuf, clock: Arc<dyn Clock>) -> Auth {
        Auth {
            accounts,
            clock,
            sessions: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// The accounts file.
    pub fn accounts_path(&self) -> &Path {
        &self.accounts
    }

    /// Whether any account exists (none: the login page says how to create one).
    pub fn has_accounts(&self) -> bool {
        Accounts::load(&self.accounts).is_ok_and(|a| !a.users.is_empty())
    }

    fn keys(user: &str, ip: Option<IpAddr>) -> Vec<String> {
        let mut k = vec![format!("user:{user}")];
        k.extend(ip.map(|ip| format!("ip:{ip}")));
        k
    }

    /// Checks `user`'s `password` and opens a session. Failures count per user name and
    /// per client address; [`MAX_FAILURES`] of them lock both out for [`LOCKOUT`], even
    /// for the right password.
    pub fn login(
        &self,
        user: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<NewSession, LoginError> {
        let now = self.clock.now();
        let keys = Self::keys(user, ip);
        {
            let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if keys.iter().any(|k| {
                f.get(k)
                    .and_then(|x| x.locked_until)
                    .is_some_and(|t| now < t)
            }) {
                return Err(LoginError::Locked);
            }
        }
        let accounts = Accounts::load(&self.accounts)?;
        let Some(role) = accounts.verify(user, password) else {
            self.failed(&keys, now);
            return Err(LoginError::BadCredentials);
        };
        let hash = accounts
            .find(user)
            .map(|a| a.hash.clone())
            .unwrap_or_default();
        {
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            for k in &keys {
                f.remove(k);
            }
        }
        let id = random_hex().map_err(LoginError::Random)?;
        let viewer = Viewer {
            user: user.to_string(),
            role,
            csrf: random_hex().map_err(LoginError::Random)?,
        };
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, x| now < x.expires);
        s.insert(
            id.clone(),
            Session {
                viewer: viewer.clone(),
                hash,
                expires: now + SESSION_TTL,
            },
        );
        Ok(NewSession { id, viewer })
    }

    fn failed(&self, keys: &[String], now: Instant) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() > 4096 {
            f.retain(|_, x| {
                x.locked_until.is_some_and(|t| now < t)
                    || x.last.is_some_and(|l| now.duration_since(l) < LOCKOUT)
            });
        }
        for k in keys {
            let x = f.entry(k.clone()).or_default();
            if x.last.is_some_and(|l| now.duration_since(l) >= LOCKOUT) {
                x.count = 0;
            }
            x.count += 1;
            x.last = Some(now);
            if x.count >= MAX_FAILURES {
                x.locked_until = Some(now + LOCKOUT);
                x.count = 0;
            }
        }
    }

    /// The session `id`'s viewer, while it lasts and its account is as it was at login
    /// (`aegis user del|passwd` end it; the role is the file's, now).
    pub fn session(&self, id: &str) -> Option<Viewer> {
        let now = self.clock.now();
        let (mut viewer, hash) = {
            let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            s.iter()
                .find(|(k, x)| aegis_config::same_secret(k, id) && now < x.expires)
                .map(|(_, x)| (x.viewer.clone(), x.hash.clone()))?
        };
        let accounts = Accounts::load(&self.accounts).ok()?;
        match accounts.find(&viewer.user) {
            Some(a) if a.hash == hash => {
                viewer.role = a.role;
                Some(viewer)
            }
            _ => {
                self.logout(id);
                None
            }
        }
    }

    /// Ends the session `id`.
    pub fn logout(&self, id: &str) {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|k, _| !aegis_config::same_secret(k, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accounts_file_is_private_and_holds_argon2id_hashes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/accounts.json");
        let mut a = Accounts::load(&p).unwrap();
        assert!(a.users.is_empty());
        a.add("ana", Role::Admin, "correct horse").unwrap();
        assert!(matches!(
            a.add("ana", Role::Viewer, "correct horse"),
            Err(AccountsError::Exists(_))
        ));
        assert!(matches!(
            a.add("bo b", Role::Viewer, "correct horse"),
            Err(AccountsError::BadName(_))
        ));
        assert!(matches!(
            a.add("bob", Role::Viewer, "short"),
            Err(AccountsError::ShortPassword)
        ));
        a.save(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("$argon2id$"), "{text}");
        assert!(!text.contains("correct horse"));
        let mut back = Accounts::load(&p).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.verify("ana", "correct horse"), Some(Role::Admin));
        assert_eq!(back.verify("ana", "wrong horse!"), None);
        assert_eq!(back.verify("nobody", "correct horse"), None);
        back.set_password("ana", "battery staple").unwrap();
        assert_eq!(back.verify("ana", "correct horse"), None);
        assert_eq!(back.verify("ana", "battery staple"), Some(Role::Admin));
        back.remove("ana").unwrap();
        assert!(matches!(
            back.remove("ana"),
            Err(AccountsError::NoSuchUser(_))
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Accounts::load(&p),
            Err(AccountsError::Read { .. })
        ));
    }

    #[test]
    fn deleting_or_repasswording_an_account_ends_its_sessions() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("accounts.json");
        let mut a = Accounts::default();
        a.add("ana", Role::Admin, "correct horse").unwrap();
        a.add("bo", Role::Technician, "correct horse").unwrap();
        a.save(&p).unwrap();
        let auth = Auth::new(p.clone(), Arc::new(SystemClock));
        let ana = auth.login("ana", "correct horse", None).unwrap();
        let bo = auth.login("bo", "correct horse", None).unwrap();
        assert_eq!(auth.session(&ana.id).unwrap().role, Role::Admin);
        a.set_password("ana", "battery staple").unwrap();
        a.remove("bo").unwrap();
        a.save(&p).unwrap();
        assert_eq!(auth.session(&ana.id), None);
        assert_eq!(auth.session(&bo.id), None);
        let again = auth.login("ana", "battery staple", None).unwrap();
        assert_eq!(auth.session(&again.id).unwrap().user, "ana");
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Technician && Role::Technician < Role::Admin);
    }
}
