//! What can be wrong with a configuration ([`Problem`], [`ConfigError`]) and the one shape
//! of every builder that reports it ([`FromConfig`]).

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a configuration, located by its key path (`routes[2].upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path (`routes[2].upstream`); empty for the whole file.
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }

    /// `given` is not one of `valid`: the message names the closest one.
    pub fn unknown(path: impl Into<String>, what: &str, given: &str, valid: &[&str]) -> Self {
        let hint = closest(given, valid.iter().copied())
            .map(|v| format!("; did you mean `{v}`?"))
            .unwrap_or_default();
        Problem::new(path, format!("unknown {what} `{given}`{hint}"))
    }
}

/// The one shape of every builder from configuration: the part of the file at key path
/// `at` (`routes[2]`, `upstreams.api`), built against `cx` (what else of the generation it
/// needs; `()` when nothing), every problem collected in `problems` under `at`. `None` when
/// there was a problem, or when the section asks for nothing (an optional policy absent).
pub trait FromConfig<Cx: ?Sized = ()>: Sized {
    /// The part of the file it is built from.
    type Section: ?Sized;

    /// Build from `section` at `at`, or note each problem and give `None`.
    fn from_config(
        at: &str,
        section: &Self::Section,
        cx: &Cx,
        problems: &mut Vec<Problem>,
    ) -> Option<Self>;
}

/// The valid choice most like `given`, when one is close enough to be a typo.
pub(crate) fn closest<'v>(given: &str, valid: impl Iterator<Item = &'v str>) -> Option<&'v str> {
    valid
        .map(|v| (strsim::jaro_winkler(given, v), v))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}

/// Why a configuration file was refused. Displays one line per problem.
#[derive(Debug)]
pub struct ConfigError {
    /// The file refused.
    pub file: PathBuf,
    /// Every problem found in it.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.path.is_empty() {
                write!(f, "{file}: {}", p.message)?;
            } else {
                write!(f, "{file}: {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
