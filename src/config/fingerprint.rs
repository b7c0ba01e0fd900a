//! The one rule for what a new generation keeps from the previous one (applied by
//! `crate::assemble`; here, in the leaf, because each runtime value stores the fingerprint
//! it was built from).
//!
//! A value built from a section and kept across reloads for its state (a JWT provider with
//! its fetched keys and verified-token cache, a forward-auth or introspection service with
//! its decision cache, the rate-limit store with its windows, the response cache, an
//! upstream's health registry) is carried over only when its [`Fingerprint`] is unchanged.
//! The fingerprint covers the section as parsed *and* the bytes of every file the section
//! names, so a secret, key, JWKS or CA file replaced behind the same path makes the reload
//! build the value anew from the new file: a rotated key stops verifying at the reload that
//! follows the rotation, not at the next restart.
//!
//! What a reload cannot see: environment variables (`secret_env`, `client_secret_env`) are
//! those the process started with; rotating one takes a restart or a binary upgrade
//! (`docs/operating.md`).

use sha2::{Digest, Sha256};
use std::fmt::{self, Debug, Write};

/// A digest of a section and of the files it names.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Fingerprint([u8; 32]);

impl Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", hex::encode(&self.0[..8]))
    }
}

/// Feeds formatted text into the digest without building a string.
struct Digesting(Sha256);

impl Write for Digesting {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

impl Fingerprint {
    /// The fingerprint of `section` (every field, through its derived `Debug`) and of the
    /// contents of `files`. A file that cannot be read counts by its error, so a file that
    /// disappears or comes back also changes the fingerprint.
    pub(crate) fn of<'a>(
        section: &impl Debug,
        files: impl IntoIterator<Item = &'a str>,
    ) -> Fingerprint {
        let mut d = Digesting(Sha256::new());
        let _ = write!(d, "{section:?}");
        for path in files {
            d.0.update(b"\0file\0");
            d.0.update(path.as_bytes());
            match std::fs::read(path) {
                Ok(bytes) => {
                    d.0.update(b"\0ok\0");
                    d.0.update((bytes.len() as u64).to_le_bytes());
                    d.0.update(&bytes);
                }
                Err(e) => {
                    d.0.update(b"\0err\0");
                    let _ = write!(d, "{:?}", e.kind());
                }
            }
        }
        Fingerprint(d.0.finalize().into())
    }
}

/// A runtime value that remembers the fingerprint it was built from.
pub(crate) trait Carried {
    fn fingerprint(&self) -> Fingerprint;
}

impl<T: Carried + ?Sized> Carried for std::sync::Arc<T> {
    fn fingerprint(&self) -> Fingerprint {
        (**self).fingerprint()
    }
}

/// `previous`'s value when it was built from exactly `now`: the one place that decides
/// whether state survives a reload.
pub(crate) fn carry<T: Carried + ?Sized>(previous: Option<&T>, now: Fingerprint) -> Option<&T> {
    previous.filter(|p| p.fingerprint() == now)
}

/// What a builder whose value can outlive a reload is built against: the running
/// generation's value (kept when [`carry`] says so) and what else it needs.
pub(crate) struct Reloaded<'a, T: ?Sized, X> {
    pub previous: Option<&'a T>,
    pub with: X,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug)]
    struct Section {
        secret_file: String,
    }

    #[test]
    fn a_file_rewritten_behind_the_same_path_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "old").unwrap();
        let s = Section {
            secret_file: path.display().to_string(),
        };
        let before = Fingerprint::of(&s, [s.secret_file.as_str()]);
        assert_eq!(before, Fingerprint::of(&s, [s.secret_file.as_str()]));
        std::fs::write(&path, "new").unwrap();
        assert_ne!(before, Fingerprint::of(&s, [s.secret_file.as_str()]));
        std::fs::remove_file(&path).unwrap();
        let gone = Fingerprint::of(&s, [s.secret_file.as_str()]);
        assert_ne!(before, gone);
        assert_ne!(gone, Fingerprint::of(&s, []));
    }

    #[test]
    fn a_changed_field_changes_the_fingerprint() {
        let a = Section {
            secret_file: "a".into(),
        };
        let b = Section {
            secret_file: "b".into(),
        };
        assert_ne!(Fingerprint::of(&a, []), Fingerprint::of(&b, []));
    }
}
