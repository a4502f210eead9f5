//! argon2id password hashing: [`Passwords`].

use std::fmt;
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};

use super::{AuthError, os_random, refuse};
use crate::error::{Error, Result};

/// The longest password accepted, in bytes.
const MAX_PASSWORD_BYTES: usize = 1024;

/// The shortest password accepted by default, in bytes.
const DEFAULT_MIN_PASSWORD_BYTES: usize = 8;

/// The salt of the dummy hash: it only has to cost what a real verification costs.
const DUMMY_SALT: &[u8] = b"hidra-dummy-salt";

/// Hashes and verifies passwords with argon2id, in PHC string format
/// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
///
/// The defaults follow OWASP's recommendation for argon2id (19 MiB of memory,
/// 2 iterations, 1 lane). A hash keeps its own parameters, so raising them
/// later still verifies old hashes.
///
/// Hashing is deliberately slow (tens of milliseconds): in async code call
/// these methods from `tokio::task::spawn_blocking`, as
/// [`Accounts`](super::Accounts) does.
///
/// ```
/// use hidra::auth::Passwords;
///
/// // Cheap parameters for the example; use `Passwords::new()` in production.
/// let passwords = Passwords::with_params(1024, 1, 1)?;
/// let hash = passwords.hash("correct horse battery staple")?;
/// assert!(hash.starts_with("$argon2id$"));
/// assert!(passwords.verify("correct horse battery staple", &hash));
/// assert!(!passwords.verify("wrong", &hash));
/// # Ok::<(), hidra::Error>(())
/// ```
#[derive(Clone)]
pub struct Passwords {
    argon2: Argon2<'static>,
    params: Params,
    /// A hash of nothing in particular, verified when a user does not exist
    /// so that the answer takes as long as for a wrong password. Made on
    /// first use (which costs the same single argon2 run as a verification).
    dummy: Arc<OnceLock<String>>,
    min_len: usize,
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passwords")
            .field("algorithm", &"argon2id")
            .field("memory_kib", &self.params.m_cost())
            .field("iterations", &self.params.t_cost())
            .field("parallelism", &self.params.p_cost())
            .field("min_len", &self.min_len)
            .finish()
    }
}

impl Default for Passwords {
    fn default() -> Self {
        Self::new()
    }
}

impl Passwords {
    /// argon2id with OWASP's recommended parameters (19 MiB, 2 iterations,
    /// 1 lane), passwords of 8 to 1024 bytes.
    pub fn new() -> Self {
        Self::with_params(
            Params::DEFAULT_M_COST,
            Params::DEFAULT_T_COST,
            Params::DEFAULT_P_COST,
        )
        .expect("argon2's default parameters are valid")
    }

    /// argon2id with `memory_kib` KiB of memory, `iterations` passes and
    /// `parallelism` lanes.
    pub fn with_params(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| Error::InvalidConfig(format!("invalid argon2 parameters: {e}").into()))?;
        Ok(Passwords {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone()),
            params,
            dummy: Arc::new(OnceLock::new()),
            min_len: DEFAULT_MIN_PASSWORD_BYTES,
        })
    }

    /// The shortest password [`check_policy`](Self::check_policy) accepts, in
    /// bytes (default 8, at least 1).
    pub fn with_min_length(mut self, min: usize) -> Self {
        self.min_len = min.clamp(1, MAX_PASSWORD_BYTES);
        self
    }

    /// `Ok` if `password` may be set: between the minimum length and 1024
    /// bytes; else [`AuthError::InvalidPassword`].
    pub fn check_policy(&self, password: &str) -> Result<()> {
        if (self.min_len..=MAX_PASSWORD_BYTES).contains(&password.len()) {
            Ok(())
        } else {
            refuse(AuthError::InvalidPassword {
                min: self.min_len,
                max: MAX_PASSWORD_BYTES,
            })
        }
    }

    /// Hashes `password` with a fresh random salt (after
    /// [`check_policy`](Self::check_policy)).
    ///
    /// # Panics
    ///
    /// If the operating system's random source fails.
    pub fn hash(&self, password: &str) -> Result<String> {
        self.check_policy(password)?;
        let mut salt = [0u8; 16];
        os_random(&mut salt);
        self.argon2
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Hashing(e.to_string().into()))
    }

    /// Whether `password` matches `hash` (a PHC string). A hash that cannot
    /// be parsed matches nothing (and is logged).
    pub fn verify(&self, password: &str, hash: &str) -> bool {
        match PasswordHash::new(hash) {
            Ok(parsed) => self
                .argon2
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(e) => {
                tracing::warn!(error = %e, "a stored password hash is not a valid PHC string");
                // Spend the time anyway.
                self.verify_dummy(password);
                false
            }
        }
    }

    /// Verifies `password` against a dummy hash and returns `false`: called
    /// when there is no user to verify against, so that an unknown account
    /// costs as much time as a wrong password.
    pub fn verify_dummy(&self, password: &str) -> bool {
        match self.dummy.get() {
            Some(dummy) => {
                if let Ok(parsed) = PasswordHash::new(dummy) {
                    let _ = self.argon2.verify_password(password.as_bytes(), &parsed);
                }
            }
            None => {
                // Making the dummy hash is one argon2 run with these
                // parameters, just what verifying against it costs.
                if let Ok(hash) = self
                    .argon2
                    .hash_password_with_salt(b"hidra dummy password", DUMMY_SALT)
                {
                    let _ = self.dummy.set(hash.to_string());
                }
            }
        }
        false
    }

    /// `Some(hash)` verifies against it, `None` against the dummy: one call
    /// for "the user may not exist".
    pub fn verify_or_dummy(&self, password: &str, hash: Option<&str>) -> bool {
        match hash {
            Some(hash) => self.verify(password, hash),
            None => self.verify_dummy(password),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Passwords {
        Passwords::with_params(256, 1, 1).unwrap()
    }

    #[test]
    fn hashes_are_salted_argon2id() {
        let p = cheap();
        let a = p.hash("password one").unwrap();
        let b = p.hash("password one").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{a}");
        assert!(p.verify("password one", &a));
        assert!(p.verify("password one", &b));
        assert!(!p.verify("password two", &a));
    }

    #[test]
    fn hashes_keep_their_parameters() {
        let old = cheap().hash("password one").unwrap();
        let stronger = Passwords::with_params(512, 2, 1).unwrap();
        assert!(stronger.verify("password one", &old));
    }

    #[test]
    fn garbage_and_dummy_never_match() {
        let p = cheap();
        assert!(!p.verify_dummy("hidra dummy password")); // makes the dummy
        assert!(p.dummy.get().is_some());
        assert!(!p.verify("x", "not a phc string"));
        assert!(!p.verify("hidra dummy password", "$bcrypt$whatever"));
        assert!(!p.verify_dummy("hidra dummy password"));
        assert!(!p.verify_or_dummy("hidra dummy password", None));
    }

    #[test]
    fn policy() {
        let p = cheap();
        assert!(p.hash("short").is_err());
        assert!(p.check_policy("12345678").is_ok());
        assert!(p.check_policy(&"x".repeat(1025)).is_err());
        let p = p.with_min_length(3);
        assert!(p.check_policy("abc").is_ok());
        assert!(matches!(
            p.check_policy("ab"),
            Err(Error::Auth(AuthError::InvalidPassword {
                min: 3,
                max: 1024
            }))
        ));
        assert!(Passwords::with_params(1, 1, 1).is_err());
    }
}
