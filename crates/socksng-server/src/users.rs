//! The users file: `name:argon2-PHC-hash` lines, password verification, and the update used
//! by `socksngd passwd`.
//!
//! Argon2 is slow on purpose (tens of milliseconds), which would cap logins per second and
//! stall a runtime thread. Verification therefore runs on the blocking pool, and a success is
//! remembered as a keyed 64-bit digest of the password so a returning client costs a hash
//! lookup. The key is random per process and the digest never leaves memory.

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why the users file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not `name:hash` with a valid PHC hash.
    #[error("{path}:{line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A user name that cannot be stored.
    #[error(
        "invalid user name {0:?}: use 1-255 bytes without ':', whitespace or control characters"
    )]
    BadName(String),
    /// Hashing failed.
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// Loaded users with their password hashes.
pub struct UserDb {
    hashes: HashMap<String, String>,
    verified: Mutex<HashMap<String, u64>>,
    digest_key: std::collections::hash_map::RandomState,
}

/// Where password logins are checked: the argon2 users file, or PAM.
#[derive(Clone)]
pub enum Accounts {
    /// A users file.
    File(Arc<UserDb>),
    /// PAM, under a service name.
    #[cfg(feature = "pam")]
    Pam(Arc<crate::pam::PamAccounts>),
}

impl Accounts {
    /// The accounts `cfg` names; `None` when password logins are not accepted.
    pub fn load(cfg: &crate::config::Config) -> Result<Option<Accounts>, UsersError> {
        if !cfg.accepts_password() {
            return Ok(None);
        }
        #[cfg(feature = "pam")]
        if let Some(service) = &cfg.auth.pam_service {
            return Ok(Some(Accounts::Pam(Arc::new(crate::pam::PamAccounts::new(
                service,
            )))));
        }
        match cfg.users_file() {
            Some(path) => Ok(Some(Accounts::File(Arc::new(UserDb::load(&path)?)))),
            None => Ok(None),
        }
    }

    /// A recent success with this very password, without a full check; `None`: check.
    pub fn verify_cached(&self, name: &str, password: &[u8]) -> Option<bool> {
        match self {
            Accounts::File(db) => db.verify_cached(name, password),
            // PAM decides each time: an account locked meanwhile must not get in from a cache.
            #[cfg(feature = "pam")]
            Accounts::Pam(_) => None,
        }
    }

    /// The full check (slow or blocking: call from a blocking context), with argon2's working
    /// memory taken from `memory`.
    pub fn verify_with_memory(
        &self,
        name: &str,
        password: &[u8],
        memory: &mut Vec<argon2::Block>,
    ) -> bool {
        match self {
            Accounts::File(db) => db.verify_with_memory(name, password, memory),
            #[cfg(feature = "pam")]
            Accounts::Pam(pam) => pam.verify(name, password),
        }
    }

    /// Whether `name` still has an account (a reload that removes one ends its sessions when
    /// running sessions are re-checked).
    pub fn knows(&self, name: &str) -> bool {
        match self {
            Accounts::File(db) => db.contains(name),
            #[cfg(feature = "pam")]
            Accounts::Pam(_) => system_user_exists(name),
        }
    }
}

/// Whether the system's user database (NSS) has `name`.
#[cfg(feature = "pam")]
fn system_user_exists(name: &str) -> bool {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value of this plain C struct; getpwnam_r fills it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to memory we own, with its true length.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    // An error (a directory server down) is not proof the user is gone.
    rc != 0 || !found.is_null()
}

/// Verifying against this when the user does not exist keeps the answer time the same, so
/// user names cannot be probed by timing.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29ja3NuZ2R1bW15c2FsdA$2Gm3XzJ8FV0p4eHPHEm9tY6I0K3RMnV5o0rXo8m1gQI";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
}

impl UserDb {
    /// Reads and checks a users file.
    pub fn load(path: &Path) -> Result<UserDb, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses users file text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<UserDb, UsersError> {
        let mut hashes = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |reason: String| UsersError::Syntax {
                path: path.into(),
                line: i + 1,
                reason,
            };
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| syntax("expected name:hash".into()))?;
            if !valid_name(name) {
                return Err(syntax(format!("invalid user name {name:?}")));
            }
            PasswordHash::new(hash).map_err(|e| syntax(format!("bad password hash: {e}")))?;
            if hashes.insert(name.to_owned(), hash.to_owned()).is_some() {
                return Err(syntax(format!("user {name:?} listed twice")));
            }
        }
        Ok(UserDb {
            hashes,
            verified: Mutex::new(HashMap::new()),
            digest_key: Default::default(),
        })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the file lists `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.hashes.contains_key(name)
    }

    /// True when the file lists nobody.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    fn digest(&self, name: &str, password: &[u8]) -> u64 {
        let mut h = self.digest_key.build_hasher();
        h.write(name.as_bytes());
        h.write_u8(0xff);
        h.write(password);
        h.finish()
    }

    /// Answers from the cache of recent successes; `None` means "run [`UserDb::verify`]".
    pub fn verify_cached(&self, name: &str, password: &[u8]) -> Option<bool> {
        let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(name) {
            Some(&d) if d == self.digest(name, password) => Some(true),
            _ => None,
        }
    }

    /// Full argon2 verification (slow: call from a blocking context).
    pub fn verify(&self, name: &str, password: &[u8]) -> bool {
        self.verify_with_memory(name, password, &mut Vec::new())
    }

    /// [`UserDb::verify`] with argon2's working memory (~19 MiB with the default parameters)
    /// taken from `memory`, which grows to the size the hash needs and can be reused by the
    /// next check instead of being allocated again.
    pub fn verify_with_memory(
        &self,
        name: &str,
        password: &[u8],
        memory: &mut Vec<argon2::Block>,
    ) -> bool {
        let (hash, known) = match self.hashes.get(name) {
            Some(h) => (h.as_str(), true),
            None => (DUMMY_HASH, false),
        };
        let ok = PasswordHash::new(hash)
            .map(|parsed| argon2_matches(&parsed, password, memory))
            .unwrap_or(false)
            && known;
        if ok {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded: at most one entry per configured user.
            cache.insert(name.to_owned(), self.digest(name, password));
        }
        ok
    }
}

/// Recomputes a PHC argon2 hash with the caller's memory and compares in constant time.
fn argon2_matches(
    hash: &PasswordHash<'_>,
    password: &[u8],
    memory: &mut Vec<argon2::Block>,
) -> bool {
    use argon2::password_hash::Output;
    let computed = (|| {
        let algorithm = argon2::Algorithm::try_from(hash.algorithm).ok()?;
        let version = match hash.version {
            Some(v) => argon2::Version::try_from(v).ok()?,
            None => argon2::Version::default(),
        };
        let params = argon2::Params::try_from(hash).ok()?;
        let expected = hash.hash?;
        let mut salt = [0u8; 64];
        let salt = hash.salt?.decode_b64(&mut salt).ok()?;
        if memory.len() < params.block_count() {
            memory.resize(params.block_count(), argon2::Block::default());
        }
        let hasher = Argon2::new(algorithm, version, params);
        let out = Output::init_with(expected.len(), |out| {
            hasher
                .hash_password_into_with_memory(password, salt, out, &mut memory[..])
                .map_err(|_| argon2::password_hash::Error::Crypto)
        })
        .ok()?;
        // Output's equality is constant-time.
        Some(out == expected)
    })();
    computed.unwrap_or(false)
}

/// Hashes a password with argon2id and a random salt, as stored in the users file.
pub fn hash_password(password: &[u8]) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut rand_core::OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// Adds a user or changes their password, keeping every other line (comments included).
/// The file is replaced atomically and created with mode 0600 when new.
pub fn set_password(path: &Path, name: &str, password: &[u8]) -> Result<(), UsersError> {
    if !valid_name(name) {
        return Err(UsersError::BadName(name.to_owned()));
    }
    let io = |source| UsersError::Io {
        path: path.into(),
        source,
    };
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let entry = format!("{name}:{}", hash_password(password)?);
    let mut replaced = false;
    let mut lines: Vec<String> = old
        .lines()
        .map(|l| {
            if l.trim().split_once(':').is_some_and(|(n, _)| n == name) {
                replaced = true;
                entry.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !replaced {
        lines.push(entry);
    }
    // The replacement keeps the old file's mode and owner (a root:socksng 0640 file must stay
    // readable by the daemon); a new file is private to its creator.
    let existing = std::fs::metadata(path).ok();
    let tmp = path.with_extension("tmp");
    {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        if let Some(meta) = &existing {
            f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io)?;
            // Only root can give a file away; anyone else keeps ownership as it falls.
            let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
        }
        f.write_all((lines.join("\n") + "\n").as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_verify_change() {
        let dir = std::env::temp_dir().join(format!("socksng-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users");
        std::fs::write(&path, "# comment\n").unwrap();
        set_password(&path, "alice", b"s3cret").unwrap();
        set_password(&path, "bob", b"hunter2").unwrap();
        let db = UserDb::load(&path).unwrap();
        assert_eq!(db.len(), 2);
        assert_eq!(db.verify_cached("alice", b"s3cret"), None);
        assert!(db.verify("alice", b"s3cret"));
        assert_eq!(db.verify_cached("alice", b"s3cret"), Some(true));
        assert_eq!(db.verify_cached("alice", b"wrong"), None);
        assert!(!db.verify("alice", b"wrong"));
        assert!(!db.verify("carol", b"s3cret"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        set_password(&path, "alice", b"new").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "mode of an existing users file is kept");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# comment\n"));
        assert_eq!(text.matches("alice:").count(), 1);
        let db = UserDb::load(&path).unwrap();
        assert!(db.verify("alice", b"new") && !db.verify("alice", b"s3cret"));
        assert!(db.verify("bob", b"hunter2"));
        // Reused working memory gives the same answers.
        let mut memory = Vec::new();
        assert!(db.verify_with_memory("bob", b"hunter2", &mut memory));
        assert!(!db.verify_with_memory("bob", b"hunter3", &mut memory));
        assert!(db.verify_with_memory("alice", b"new", &mut memory));
        assert!(set_password(&path, "a:b", b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let text = format!("ok:{DUMMY_HASH}\n\nbroken\n");
        let e = UserDb::parse(&text, Path::new("u")).err().unwrap();
        assert_eq!(e.to_string(), "u:3: expected name:hash");
        let e = UserDb::parse("a:notahash\n", Path::new("u")).err().unwrap();
        assert!(e.to_string().starts_with("u:1: bad password hash"), "{e}");
    }
}
