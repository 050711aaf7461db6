//! Every test server logs at `debug` into a capture that looks at each line as it is written
//! for things that must never be logged: the JWT secret, the database password, and any JWT at
//! all. Every response of a test server is looked at the same way. A test server that is
//! dropped after any such sighting fails its test. Warnings and errors are kept, so that a test
//! can assert what the service logged about a request.

use std::{
    io::Write,
    sync::{Mutex, Once},
};

use tracing_subscriber::{
    EnvFilter,
    fmt::{MakeWriter, format::JsonFields},
};

/// The password in every PostgreSQL URL the harness builds (trust auth ignores it, so it is
/// there only to prove that it is never logged).
pub const DB_PASSWORD: &str = "pg-password-must-never-be-logged";

static LEAKS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LINES: Mutex<u64> = Mutex::new(0);
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Enough for every warning of a test binary; past it, warnings are no longer kept.
const MAX_KEPT_WARNINGS: usize = 100_000;

/// Installs the capturing subscriber once per test binary.
pub fn capture() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let filter = EnvFilter::new("debug,hyper=info,h2=info,reqwest=info,hyper_util=info");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(Scanner)
            .fmt_fields(JsonFields::new())
            .event_format(server::telemetry::json_lines())
            .try_init();
    });
}

/// The leaking lines seen so far (empty is good), and how many lines were looked at.
pub fn leaks() -> (Vec<String>, u64) {
    (LEAKS.lock().unwrap().clone(), *LINES.lock().unwrap())
}

/// The warnings and errors logged so far (by every test server of this binary) that contain
/// `text`.
pub fn warnings_containing(text: &str) -> Vec<String> {
    WARNINGS.lock().unwrap().iter().filter(|line| line.contains(text)).cloned().collect()
}

/// What must never appear in a log line or a response.
pub fn is_secret_bearing(text: &str) -> bool {
    text.contains(crate::SECRET) || text.contains(DB_PASSWORD) || contains_jwt(text)
}

/// A JWT's first two parts are base64url JSON objects, so each starts with `eyJ` (`{"`):
/// looks for `eyJ…` `.` `eyJ`.
fn contains_jwt(text: &str) -> bool {
    text.match_indices("eyJ").any(|(start, _)| {
        let rest = &text[start..];
        let header_len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        header_len.is_some_and(|len| rest[len..].starts_with(".eyJ"))
    })
}

/// Records something secret-bearing seen outside the log (in a response).
pub fn record_leak(what: String) {
    LEAKS.lock().unwrap().push(what);
}

#[derive(Clone, Copy)]
struct Scanner;

impl<'a> MakeWriter<'a> for Scanner {
    type Writer = Scanner;

    fn make_writer(&'a self) -> Self::Writer {
        Scanner
    }
}

impl Write for Scanner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        *LINES.lock().unwrap() += 1;
        if is_secret_bearing(&line) {
            record_leak(line.to_string());
        }
        if line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#) {
            let mut warnings = WARNINGS.lock().unwrap();
            if warnings.len() < MAX_KEPT_WARNINGS {
                warnings.push(line.into_owned());
            }
        }
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spots_tokens_secrets_and_passwords_only() {
        let token = crate::token("someone");
        assert!(is_secret_bearing(&format!("auth {token} end")));
        assert!(is_secret_bearing(&format!("password={DB_PASSWORD}")));
        assert!(is_secret_bearing(crate::SECRET));
        assert!(!is_secret_bearing("a title with eyJ in it. eyJ"));
        assert!(!is_secret_bearing("{\"status\":\"healthy\"}"));
    }
}
