//! Configuration from the environment (and `.env`, loaded by `main`), validated once at start.
//! Every problem is reported as one line naming the variable, never echoing a secret value.

use std::{fmt, net::IpAddr};

use crate::{
    auth::{ClaimRules, CookieAuth, JwksSettings, JwksTiming, KeySources},
    connections::ConnectionLimits,
    rate_limit::RateLimitSettings,
    store::Retention,
};

/// A value that must never reach a log: its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// May carry a password, so it is a secret too.
    pub database_url: Secret<String>,
    /// The HS256 key shared with Better Auth, if tokens are signed with it: the current one
    /// (the first of `BETTER_AUTH_SECRETS`, else `BETTER_AUTH_SECRET`).
    pub auth_secret: Option<Secret<Vec<u8>>>,
    /// Older keys still accepted, so that a rotation logs nobody out: the rest of
    /// `BETTER_AUTH_SECRETS`, and `BETTER_AUTH_SECRET` when both are set (as Better Auth keeps it
    /// as its legacy secret).
    pub previous_auth_secrets: Vec<Secret<Vec<u8>>>,
    /// Better Auth's JWKS, if its JWT plugin signs tokens with a key pair.
    pub jwks_url: Option<String>,
    /// `JWT_ISSUER` / `JWT_AUDIENCE`: enforced on every token when set.
    pub claim_overrides: ClaimRules,
    /// `BETTER_AUTH_URL`, Better Auth's base URL: its JWT plugin's `iss` and `aud`.
    pub better_auth_url: Option<String>,
    /// Origins allowed by CORS: `BETTER_AUTH_URL` and `CORS_ORIGINS`.
    pub cors_origins: Vec<String>,
    pub host: IpAddr,
    pub port: u16,
    pub log_format: LogFormat,
    /// Prepared statements cached per PostgreSQL connection (`DATABASE_STATEMENT_CACHE`).
    pub statement_cache_capacity: usize,
    /// Where `/metrics` is served (`METRICS`, `METRICS_ADDR`).
    pub metrics: MetricsListener,
    /// `RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST`, `TRUSTED_CLIENT_IP_HEADER`.
    pub rate_limits: RateLimitSettings,
    /// `MAX_CONNECTIONS`, `REQUEST_READ_TIMEOUT_SECS`, `IDLE_TIMEOUT_SECS`.
    pub connections: ConnectionLimits,
    /// `TOMBSTONE_RETENTION_SECS`, `IDEMPOTENCY_TTL_SECS`.
    pub retention: Retention,
    /// `MAX_TASKS_PER_USER`.
    pub max_tasks_per_user: i64,
    /// `DATABASE_MAX_CONNECTIONS`: the pool's size, per instance.
    pub database_max_connections: u32,
    /// `AUTH_COOKIES=on`: Better Auth's `session_data` cookie is read too (same-origin
    /// deployments).
    pub auth_cookies: bool,
    /// `SHUTDOWN_DRAIN_SECS`: how long requests are still served, not ready, after a shutdown
    /// signal.
    pub shutdown_drain: std::time::Duration,
    /// `DATABASE_LISTEN_URL`: a direct PostgreSQL connection for `LISTEN` when `DATABASE_URL`
    /// is a transaction-mode pooler (may carry a password).
    pub database_listen_url: Option<Secret<String>>,
    /// `EVENT_STREAMS_PER_USER`: live event streams one user may hold open on one instance.
    pub event_streams_per_user: usize,
}

/// Where `GET /metrics` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListener {
    /// `METRICS=off`.
    Off,
    /// Beside the API (the default).
    Api,
    /// On a listener of its own (`METRICS_ADDR`), e.g. one only the scraper can reach.
    Own(std::net::SocketAddr),
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://tasks.db";
/// Shorter HS256 keys are accepted, with a warning at start.
pub const RECOMMENDED_SECRET_BYTES: usize = 32;

/// All the problems found, one line each.
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`; empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let mut problems = Vec::new();

        let database_url = get("DATABASE_URL")
            .or_else(|| get("NEON_DATABASE_URL"))
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if !["postgres://", "postgresql://", "sqlite:"]
            .iter()
            .any(|scheme| database_url.starts_with(scheme))
        {
            problems.push(
                "DATABASE_URL must start with postgres://, postgresql:// or sqlite:".to_owned(),
            );
        }

        let legacy_secret = get("BETTER_AUTH_SECRET");
        let mut secrets = match get("BETTER_AUTH_SECRETS").as_deref().map(parse_secrets) {
            Some(Ok(secrets)) => secrets,
            Some(Err(problem)) => {
                problems.push(problem);
                Vec::new()
            }
            None => Vec::new(),
        };
        if let Some(legacy) = legacy_secret
            && !secrets.contains(&legacy)
        {
            secrets.push(legacy);
        }
        let mut secrets = secrets.into_iter();
        let auth_secret = secrets.next();
        let previous_auth_secrets: Vec<String> = secrets.collect();
        let jwks_url = get("BETTER_AUTH_JWKS_URL");
        if auth_secret.is_none() && jwks_url.is_none() {
            problems.push(
                "set BETTER_AUTH_SECRET (the HS256 key shared with Better Auth) or \
                 BETTER_AUTH_JWKS_URL (its JWT plugin's key set)"
                    .to_owned(),
            );
        }
        if jwks_url
            .as_deref()
            .is_some_and(|url| !url.starts_with("https://") && !url.starts_with("http://"))
        {
            problems.push("BETTER_AUTH_JWKS_URL must be an http(s) URL".to_owned());
        }

        let claim_overrides =
            ClaimRules { issuer: get("JWT_ISSUER"), audience: get("JWT_AUDIENCE") };
        let better_auth_url =
            get("BETTER_AUTH_URL").map(|url| url.trim_end_matches('/').to_owned());
        let jwks_rules = jwks_rules(&claim_overrides, better_auth_url.as_deref());
        if jwks_url.is_some() && (jwks_rules.issuer.is_none() || jwks_rules.audience.is_none()) {
            problems.push(
                "BETTER_AUTH_JWKS_URL needs BETTER_AUTH_URL (Better Auth's base URL, which its \
                 tokens carry as iss and aud), or both JWT_ISSUER and JWT_AUDIENCE"
                    .to_owned(),
            );
        }

        let mut cors_origins = Vec::new();
        for (name, value) in
            [("BETTER_AUTH_URL", get("BETTER_AUTH_URL")), ("CORS_ORIGINS", get("CORS_ORIGINS"))]
        {
            for origin in value.iter().flat_map(|v| v.split(',')).map(str::trim) {
                if origin.is_empty() {
                    continue;
                }
                match normalize_origin(origin) {
                    Some(origin) if cors_origins.contains(&origin) => {}
                    Some(origin) => cors_origins.push(origin),
                    None => {
                        problems.push(format!("{name} must hold http(s)://host[:port] origins"))
                    }
                }
            }
        }

        let host = get("HOST").unwrap_or_else(|| "127.0.0.1".to_owned());
        let host = host.parse().unwrap_or_else(|_| {
            problems.push("HOST must be an IP address, e.g. 127.0.0.1 or 0.0.0.0".to_owned());
            IpAddr::from([127, 0, 0, 1])
        });
        let port = get("PORT").map_or(Ok(8000), |p| p.parse()).unwrap_or_else(|_| {
            problems.push("PORT must be a number from 0 to 65535".to_owned());
            8000
        });
        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(_) => {
                problems.push("LOG_FORMAT must be json or pretty".to_owned());
                LogFormat::Pretty
            }
        };
        let statement_cache_capacity =
            get("DATABASE_STATEMENT_CACHE").map_or(Ok(100), |v| v.parse()).unwrap_or_else(|_| {
                problems
                    .push("DATABASE_STATEMENT_CACHE must be a number (0 turns it off)".to_owned());
                100
            });

        let metrics = match (get("METRICS").as_deref(), get("METRICS_ADDR")) {
            (Some("off"), _) => MetricsListener::Off,
            (None | Some("on"), None) => MetricsListener::Api,
            (None | Some("on"), Some(address)) => {
                address.parse().map(MetricsListener::Own).unwrap_or_else(|_| {
                    problems.push("METRICS_ADDR must be IP:PORT, e.g. 127.0.0.1:9100".to_owned());
                    MetricsListener::Api
                })
            }
            (Some(_), _) => {
                problems.push("METRICS must be on or off".to_owned());
                MetricsListener::Api
            }
        };

        let defaults = RateLimitSettings::default();
        let mut number = |name: &str, default: u32| {
            get(name).map_or(Ok(default), |v| v.parse()).unwrap_or_else(|_| {
                problems.push(format!("{name} must be a whole number (0 turns the limit off)"));
                default
            })
        };
        let per_second = number("RATE_LIMIT_PER_SECOND", defaults.per_second);
        let shutdown_drain =
            std::time::Duration::from_secs(number("SHUTDOWN_DRAIN_SECS", 5).into());
        let burst = number("RATE_LIMIT_BURST", per_second.saturating_mul(2));
        let limits = ConnectionLimits::default();
        let per_address =
            number("MAX_CONNECTIONS_PER_ADDRESS", limits.max_connections_per_address as u32);
        let rate_limits = RateLimitSettings {
            per_second,
            burst,
            client_ip_header: get("TRUSTED_CLIENT_IP_HEADER"),
        };
        let mut positive = |name: &str, default: u64| {
            get(name).map_or(Ok(default), |v| v.parse()).ok().filter(|v| *v > 0).unwrap_or_else(
                || {
                    problems.push(format!("{name} must be a whole number above 0"));
                    default
                },
            )
        };
        let connections = ConnectionLimits {
            max_connections: positive("MAX_CONNECTIONS", limits.max_connections as u64) as usize,
            max_connections_per_address: per_address as usize,
            request_read_timeout: std::time::Duration::from_secs(positive(
                "REQUEST_READ_TIMEOUT_SECS",
                limits.request_read_timeout.as_secs(),
            )),
            idle_timeout: std::time::Duration::from_secs(positive(
                "IDLE_TIMEOUT_SECS",
                limits.idle_timeout.as_secs(),
            )),
            write_timeout: std::time::Duration::from_secs(positive(
                "WRITE_TIMEOUT_SECS",
                limits.write_timeout.as_secs(),
            )),
        };
        let max_tasks_per_user = positive("MAX_TASKS_PER_USER", 10_000) as i64;
        let default_pool = crate::store::ConnectOptions::default().max_connections;
        let database_max_connections =
            u32::try_from(positive("DATABASE_MAX_CONNECTIONS", default_pool.into()))
                .unwrap_or(default_pool);
        let event_streams_per_user = positive("EVENT_STREAMS_PER_USER", 8) as usize;
        let retention = Retention::default();
        let retention = Retention {
            tombstones: std::time::Duration::from_secs(positive(
                "TOMBSTONE_RETENTION_SECS",
                retention.tombstones.as_secs(),
            )),
            idempotency_keys: std::time::Duration::from_secs(positive(
                "IDEMPOTENCY_TTL_SECS",
                retention.idempotency_keys.as_secs(),
            )),
        };
        let database_listen_url = get("DATABASE_LISTEN_URL");
        if database_listen_url
            .as_deref()
            .is_some_and(|url| !["postgres://", "postgresql://"].iter().any(|s| url.starts_with(s)))
        {
            problems.push("DATABASE_LISTEN_URL must be a postgres:// URL".to_owned());
        }
        let auth_cookies = match get("AUTH_COOKIES").as_deref() {
            None | Some("off") => false,
            Some("on") => true,
            Some(_) => {
                problems.push("AUTH_COOKIES must be on or off".to_owned());
                false
            }
        };
        if auth_cookies && auth_secret.is_none() {
            problems.push(
                "AUTH_COOKIES=on needs BETTER_AUTH_SECRET (or BETTER_AUTH_SECRETS): Better Auth \
                 signs its session_data cookie with it"
                    .to_owned(),
            );
        }
        if auth_cookies && cors_origins.is_empty() {
            problems.push(
                "AUTH_COOKIES=on needs BETTER_AUTH_URL or CORS_ORIGINS: the origins that \
                 cookie-authenticated writes may come from"
                    .to_owned(),
            );
        }
        if rate_limits
            .client_ip_header
            .as_deref()
            .is_some_and(|name| poem::http::HeaderName::try_from(name).is_err())
        {
            problems.push("TRUSTED_CLIENT_IP_HEADER must be a header name".to_owned());
        }

        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Config {
            database_url: Secret::new(database_url),
            auth_secret: auth_secret.map(|secret| Secret::new(secret.into_bytes())),
            previous_auth_secrets: previous_auth_secrets
                .into_iter()
                .map(|secret| Secret::new(secret.into_bytes()))
                .collect(),
            jwks_url,
            claim_overrides,
            better_auth_url,
            cors_origins,
            host,
            port,
            log_format,
            statement_cache_capacity,
            metrics,
            rate_limits,
            connections,
            retention,
            max_tasks_per_user,
            auth_cookies,
            shutdown_drain,
            database_max_connections,
            database_listen_url: database_listen_url.map(Secret::new),
            event_streams_per_user,
        })
    }

    /// How live event streams learn of other instances' writes (see [`Source::for_database`]).
    pub fn event_source(&self) -> crate::events::Source {
        crate::events::Source::for_database(
            self.database_url.expose(),
            self.database_listen_url.as_ref().map(|url| url.expose().as_str()),
            self.statement_cache_capacity,
        )
    }

    /// The key sources to verify tokens with. HS256 tokens are held to `JWT_ISSUER` /
    /// `JWT_AUDIENCE` only when those are set (the seeds' frontends mint them without);
    /// JWKS tokens, which only Better Auth's JWT plugin mints, to its base URL by default.
    pub fn key_sources(&self) -> KeySources {
        KeySources {
            shared_secret: self
                .auth_secret
                .as_ref()
                .map(|secret| (secret.expose().clone(), self.claim_overrides.clone())),
            previous_secrets: self
                .previous_auth_secrets
                .iter()
                .map(|secret| secret.expose().clone())
                .collect(),
            jwks: self.jwks_url.as_ref().map(|url| JwksSettings {
                url: url.clone(),
                rules: jwks_rules(&self.claim_overrides, self.better_auth_url.as_deref()),
                timing: JwksTiming::default(),
            }),
        }
    }

    /// With `AUTH_COOKIES=on`, what cookie authentication needs besides the secret.
    pub fn cookie_auth(&self) -> Option<CookieAuth> {
        self.auth_cookies.then(|| CookieAuth { allowed_origins: self.cors_origins.clone() })
    }

    /// Warnings that should not stop the server.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.auth_secret.as_ref().is_some_and(|s| s.expose().len() < RECOMMENDED_SECRET_BYTES) {
            warnings.push(format!(
                "BETTER_AUTH_SECRET is shorter than {RECOMMENDED_SECRET_BYTES} bytes: use a longer random secret"
            ));
        }
        if self.cors_origins.is_empty() {
            warnings.push(
                "neither BETTER_AUTH_URL nor CORS_ORIGINS is set: browsers on other origins are refused".to_owned(),
            );
        }
        warnings
    }
}

/// The issuer and audience of JWKS tokens: the overrides, else Better Auth's base URL, which
/// its JWT plugin puts in both.
fn jwks_rules(overrides: &ClaimRules, better_auth_url: Option<&str>) -> ClaimRules {
    ClaimRules {
        issuer: overrides.issuer.clone().or_else(|| better_auth_url.map(str::to_owned)),
        audience: overrides.audience.clone().or_else(|| better_auth_url.map(str::to_owned)),
    }
}

/// `https://app.example.com/` → `https://app.example.com`; `None` if it is not an origin.
fn normalize_origin(origin: &str) -> Option<String> {
    let origin = origin.trim_end_matches('/');
    let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"))?;
    let valid = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    valid.then(|| origin.to_owned())
}

/// `BETTER_AUTH_SECRETS` as Better Auth reads it (`better-auth/dist/context/secret-utils.mjs`,
/// `parseSecretsEnv`): comma-separated `<version>:<secret>` entries, each trimmed, the version a
/// non-negative integer, the secret not empty; the first entry is the current secret. The
/// secrets in order, or the problem (never the value).
fn parse_secrets(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .enumerate()
        .map(|(index, entry)| {
            let position = index + 1;
            let (version, secret) = entry.trim().split_once(':').ok_or_else(|| {
                format!("BETTER_AUTH_SECRETS entry {position} is not <version>:<secret>")
            })?;
            if version.trim().parse::<u32>().is_err() {
                return Err(format!(
                    "BETTER_AUTH_SECRETS entry {position} has no non-negative integer version"
                ));
            }
            let secret = secret.trim();
            if secret.is_empty() {
                return Err(format!("BETTER_AUTH_SECRETS entry {position} has an empty secret"));
            }
            Ok(secret.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_to_sqlite_and_localhost() {
        let config = config(&[("BETTER_AUTH_SECRET", "s")]).unwrap();
        assert_eq!(config.database_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(config.port, 8000);
        assert_eq!(config.host.to_string(), "127.0.0.1");
        assert_eq!(config.warnings().len(), 2);
    }

    #[test]
    fn neon_alias_and_origins() {
        let config = config(&[
            ("BETTER_AUTH_SECRET", "0123456789abcdef0123456789abcdef"),
            ("NEON_DATABASE_URL", "postgres://u:p@h/db?sslmode=require"),
            ("BETTER_AUTH_URL", "http://localhost:3000/"),
            ("CORS_ORIGINS", "https://a.example, http://localhost:3000, https://b.example"),
        ])
        .unwrap();
        assert!(config.database_url.expose().starts_with("postgres://"));
        assert_eq!(
            config.cors_origins,
            ["http://localhost:3000", "https://a.example", "https://b.example"]
        );
        assert!(config.warnings().is_empty());
    }

    #[test]
    fn cookies_need_the_secret_and_the_origins_writes_may_come_from() {
        let secret = ("BETTER_AUTH_SECRET", "0123456789abcdef0123456789abcdef");
        let origin = ("BETTER_AUTH_URL", "https://app.example/");
        assert!(config(&[secret, origin]).unwrap().cookie_auth().is_none(), "off by default");
        let on = config(&[secret, origin, ("AUTH_COOKIES", "on")]).unwrap();
        assert_eq!(on.cookie_auth().unwrap().allowed_origins, ["https://app.example"]);
        let jwks_only = [
            ("BETTER_AUTH_JWKS_URL", "https://app.example/api/auth/jwks"),
            origin,
            ("AUTH_COOKIES", "on"),
        ];
        assert!(
            config(&jwks_only)
                .unwrap_err()
                .to_string()
                .contains("AUTH_COOKIES=on needs BETTER_AUTH_SECRET")
        );
        let no_origin = config(&[secret, ("AUTH_COOKIES", "on")]).unwrap_err();
        assert!(no_origin.to_string().contains("CORS_ORIGINS"), "{no_origin}");
        assert!(config(&[secret, ("AUTH_COOKIES", "yes")]).is_err());
    }

    #[test]
    fn the_pool_size_and_the_drain_are_settings() {
        let secret = ("BETTER_AUTH_SECRET", "0123456789abcdef0123456789abcdef");
        let defaults = config(&[secret]).unwrap();
        assert_eq!(defaults.database_max_connections, 10);
        assert_eq!(defaults.shutdown_drain, std::time::Duration::from_secs(5));
        let set =
            config(&[secret, ("DATABASE_MAX_CONNECTIONS", "25"), ("SHUTDOWN_DRAIN_SECS", "0")])
                .unwrap();
        assert_eq!((set.database_max_connections, set.shutdown_drain.as_secs()), (25, 0));
        for bad in [("DATABASE_MAX_CONNECTIONS", "0"), ("SHUTDOWN_DRAIN_SECS", "soon")] {
            assert!(config(&[secret, bad]).unwrap_err().to_string().contains(bad.0), "{bad:?}");
        }
    }

    #[test]
    fn reports_every_problem_without_values() {
        let err = config(&[
            ("DATABASE_URL", "mysql://root:hunter2@h/db"),
            ("PORT", "http"),
            ("LOG_FORMAT", "xml"),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
        assert!(err.to_string().contains("BETTER_AUTH_SECRET"));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn either_key_source_will_do() {
        let jwks = config(&[
            ("BETTER_AUTH_JWKS_URL", "http://localhost:3000/api/auth/jwks"),
            ("BETTER_AUTH_URL", "http://localhost:3000"),
        ])
        .unwrap();
        assert!(jwks.auth_secret.is_none());
        assert_eq!(jwks.jwks_url.as_deref(), Some("http://localhost:3000/api/auth/jwks"));
        let err = config(&[("BETTER_AUTH_JWKS_URL", "localhost/jwks")]).unwrap_err();
        assert!(err.to_string().contains("BETTER_AUTH_JWKS_URL"));
    }

    #[test]
    fn jwks_tokens_are_held_to_better_auths_base_url_unless_overridden() {
        const JWKS: (&str, &str) = ("BETTER_AUTH_JWKS_URL", "https://auth.example/api/auth/jwks");
        let sources = config(&[
            JWKS,
            ("BETTER_AUTH_URL", "https://app.example/"),
            ("BETTER_AUTH_SECRET", "s"),
        ])
        .unwrap()
        .key_sources();
        let app = Some("https://app.example".to_owned());
        let jwks = sources.jwks.unwrap();
        assert_eq!(jwks.rules, ClaimRules { issuer: app.clone(), audience: app.clone() });
        assert_eq!(jwks.timing, JwksTiming::default());
        // The shared secret's tokens keep the old rule: enforced only when configured.
        assert_eq!(sources.shared_secret.unwrap().1, ClaimRules::default());

        let overridden = config(&[
            JWKS,
            ("BETTER_AUTH_URL", "https://app.example"),
            ("JWT_ISSUER", "https://issuer.example"),
        ])
        .unwrap()
        .key_sources();
        let rules = overridden.jwks.unwrap().rules;
        assert_eq!(rules.issuer.as_deref(), Some("https://issuer.example"));
        assert_eq!(rules.audience, app);

        let both = config(&[JWKS, ("JWT_ISSUER", "i"), ("JWT_AUDIENCE", "a")]).unwrap();
        assert_eq!(both.key_sources().jwks.unwrap().rules.audience.as_deref(), Some("a"));

        // A JWKS verifier that would check no issuer is a misconfiguration.
        for vars in [&[JWKS][..], &[JWKS, ("JWT_ISSUER", "i")][..]] {
            let err = config(vars).unwrap_err();
            assert_eq!(err.0.len(), 1, "{err}");
            assert!(err.0[0].contains("BETTER_AUTH_URL") && err.0[0].contains("JWT_ISSUER"));
        }
    }

    #[test]
    fn metrics_are_on_beside_the_api_unless_moved_or_off() {
        let secret = ("BETTER_AUTH_SECRET", "s");
        assert_eq!(config(&[secret]).unwrap().metrics, MetricsListener::Api);
        assert_eq!(config(&[secret, ("METRICS", "off")]).unwrap().metrics, MetricsListener::Off);
        let own = config(&[secret, ("METRICS_ADDR", "127.0.0.1:9100")]).unwrap().metrics;
        assert_eq!(own, MetricsListener::Own("127.0.0.1:9100".parse().unwrap()));
        let err = config(&[secret, ("METRICS", "maybe"), ("METRICS_ADDR", "x")]).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
    }

    #[test]
    fn secrets_rotate_as_better_auth_lists_them() {
        let secrets = [
            ("BETTER_AUTH_SECRETS", " 2:new-secret , 1:old:with:colons"),
            ("BETTER_AUTH_SECRET", "legacy"),
        ];
        let rotating = config(&secrets).unwrap();
        assert_eq!(rotating.auth_secret.unwrap().expose(), b"new-secret");
        let previous: Vec<&[u8]> =
            rotating.previous_auth_secrets.iter().map(|s| s.expose().as_slice()).collect();
        assert_eq!(previous, [&b"old:with:colons"[..], b"legacy"]);
        let only = config(&[("BETTER_AUTH_SECRETS", "0:only")]).unwrap();
        assert_eq!(only.auth_secret.unwrap().expose(), b"only");
        for bad in ["nocolon", "x:secret", "-1:secret", "1:", "1:a,,2:b"] {
            let err = config(&[("BETTER_AUTH_SECRETS", bad)]).unwrap_err().to_string();
            assert!(
                err.contains("BETTER_AUTH_SECRETS") && !err.contains("secret,"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config = config(&[
            ("BETTER_AUTH_SECRET", "topsecretvalue"),
            ("DATABASE_URL", "postgres://u:hunter2@h/db"),
        ])
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("topsecretvalue") && !debug.contains("hunter2"));
    }
}
