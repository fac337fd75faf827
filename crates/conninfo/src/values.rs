//! Typed values of the enumerated and numeric connection settings, validated with libpq's rules and
//! messages (`invalid sslmode value: "x"`, `invalid integer value "x" for connection option "port"`).

use std::fmt;
use std::str::FromStr;

use crate::connstring::is_c_space;
use crate::error::ConnInfoError;

type Result<T> = std::result::Result<T, ConnInfoError>;

/// An enum whose values are exact (case-sensitive) strings, as libpq compares them with `strcmp()`.
macro_rules! keyword_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($keyword:literal, $expected:literal) {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The value as written in a connection string.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = ConnInfoError;

            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ConnInfoError::InvalidValue {
                        keyword: $keyword,
                        value: s.to_string(),
                        expected: $expected,
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum! {
    /// `sslmode`: whether TLS is used and what is verified.
    pub enum SslMode ("sslmode", "disable, allow, prefer, require, verify-ca or verify-full") {
        /// Plaintext only.
        Disable => "disable",
        /// Plaintext first; TLS if the server insists.
        Allow => "allow",
        /// TLS first; plaintext if the server has no TLS. libpq's default.
        Prefer => "prefer",
        /// TLS or fail; the certificate is checked against a root CA only if a root file exists.
        Require => "require",
        /// TLS with the server certificate chain verified.
        VerifyCa => "verify-ca",
        /// TLS with the chain verified and the host name matched against the certificate.
        VerifyFull => "verify-full",
    }
}

impl SslMode {
    /// Whether a connection without TLS is acceptable (`disable`, `allow`, `prefer`).
    pub fn allows_plaintext(self) -> bool {
        matches!(self, SslMode::Disable | SslMode::Allow | SslMode::Prefer)
    }

    /// Whether the first attempt should ask for TLS (`prefer` and stronger).
    pub fn tries_tls_first(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Allow)
    }

    /// Whether the server certificate chain must verify against the root certificates.
    pub fn verifies_chain(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// Whether the host name must match the server certificate.
    pub fn verifies_host_name(self) -> bool {
        self == SslMode::VerifyFull
    }
}

keyword_enum! {
    /// `sslnegotiation` (libpq 17): the PostgreSQL `SSLRequest` handshake, or TLS from the first byte.
    pub enum SslNegotiation ("sslnegotiation", "postgres or direct") {
        Postgres => "postgres",
        /// TLS immediately, with ALPN `postgresql` (servers 17 and newer).
        Direct => "direct",
    }
}

keyword_enum! {
    /// `channel_binding`: SCRAM-SHA-256-PLUS use.
    pub enum ChannelBinding ("channel_binding", "disable, prefer or require") {
        Disable => "disable",
        Prefer => "prefer",
        Require => "require",
    }
}

keyword_enum! {
    /// `target_session_attrs`: which kind of server is acceptable when trying hosts in turn.
    pub enum TargetSessionAttrs (
        "target_session_attrs",
        "any, read-write, read-only, primary, standby or prefer-standby"
    ) {
        Any => "any",
        ReadWrite => "read-write",
        ReadOnly => "read-only",
        Primary => "primary",
        Standby => "standby",
        PreferStandby => "prefer-standby",
    }
}

keyword_enum! {
    /// `load_balance_hosts`: try hosts (and their addresses) in order or shuffled.
    pub enum LoadBalanceHosts ("load_balance_hosts", "disable or random") {
        Disable => "disable",
        /// The connecting code shuffles the targets (and each target's resolved addresses).
        Random => "random",
    }
}

keyword_enum! {
    /// `sslcertmode`: whether a client certificate is sent.
    pub enum SslCertMode ("sslcertmode", "disable, allow or require") {
        Disable => "disable",
        Allow => "allow",
        Require => "require",
    }
}

keyword_enum! {
    /// `gssencmode`. walrelay has no GSSAPI, so only `disable` and `prefer` (which then means disable)
    /// are accepted by resolution; `require` is rejected as libpq without GSSAPI rejects it.
    pub enum GssEncMode ("gssencmode", "disable, prefer or require") {
        Disable => "disable",
        Prefer => "prefer",
        Require => "require",
    }
}

/// `replication`: a normal session, a physical walsender, or a logical (database) walsender.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReplicationMode {
    #[default]
    Off,
    /// `replication=true` (or `on`, `yes`, `1`, …): physical replication commands.
    Physical,
    /// `replication=database`: replication commands plus SQL in one database.
    Database,
}

impl ReplicationMode {
    /// The server's interpretation of the `replication` startup parameter: `database`, or a boolean as
    /// accepted by `parse_bool()` (`true`/`false`/`yes`/`no`/`on`/`off`/`1`/`0` and unique prefixes, any
    /// case). An empty value means no replication (libpq does not send it).
    pub fn parse(value: &str) -> Result<Self> {
        if value.is_empty() {
            return Ok(ReplicationMode::Off);
        }
        if value == "database" {
            return Ok(ReplicationMode::Database);
        }
        match parse_bool(value) {
            Some(true) => Ok(ReplicationMode::Physical),
            Some(false) => Ok(ReplicationMode::Off),
            None => Err(ConnInfoError::InvalidReplication(value.to_string())),
        }
    }
}

/// The backend's `parse_bool()`.
pub fn parse_bool(value: &str) -> Option<bool> {
    let lower = value.to_ascii_lowercase();
    let is_prefix_of = |word: &str, min_len: usize| {
        lower.len() >= min_len && lower.len() <= word.len() && word.starts_with(lower.as_str())
    };
    match lower.as_bytes().first()? {
        b't' if is_prefix_of("true", 1) => Some(true),
        b'f' if is_prefix_of("false", 1) => Some(false),
        b'y' if is_prefix_of("yes", 1) => Some(true),
        b'n' if is_prefix_of("no", 1) => Some(false),
        // "o" alone is ambiguous.
        b'o' if is_prefix_of("on", 2) => Some(true),
        b'o' if is_prefix_of("off", 2) => Some(false),
        b'1' if lower.len() == 1 => Some(true),
        b'0' if lower.len() == 1 => Some(false),
        _ => None,
    }
}

/// `ssl_min_protocol_version` / `ssl_max_protocol_version` (compared case-insensitively, as libpq does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    Tls1_0,
    Tls1_1,
    Tls1_2,
    Tls1_3,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls1_0 => "TLSv1",
            TlsVersion::Tls1_1 => "TLSv1.1",
            TlsVersion::Tls1_2 => "TLSv1.2",
            TlsVersion::Tls1_3 => "TLSv1.3",
        }
    }

    /// Parses one bound; an empty value means "no bound" (`None`).
    pub fn parse_bound(keyword: &'static str, value: &str) -> Result<Option<TlsVersion>> {
        if value.is_empty() {
            return Ok(None);
        }
        [
            TlsVersion::Tls1_0,
            TlsVersion::Tls1_1,
            TlsVersion::Tls1_2,
            TlsVersion::Tls1_3,
        ]
        .into_iter()
        .find(|v| v.as_str().eq_ignore_ascii_case(value))
        .map(Some)
        .ok_or_else(|| ConnInfoError::InvalidValue {
            keyword,
            value: value.to_string(),
            expected: "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3",
        })
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authentication method the server may ask for, as named by `require_auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    Password,
    Md5,
    Gss,
    Sspi,
    ScramSha256,
}

// libpq tracks allowed methods as a bitmask of authentication request codes; gss and sspi share the
// continuation code, which matters for its duplicate detection, so the same bits are used here.
const AUTH_PASSWORD: u16 = 1 << 0;
const AUTH_MD5: u16 = 1 << 1;
const AUTH_GSS: u16 = 1 << 2;
const AUTH_GSS_CONT: u16 = 1 << 3;
const AUTH_SSPI: u16 = 1 << 4;
const AUTH_SASL: u16 = 1 << 5;
const AUTH_SASL_CONT: u16 = 1 << 6;
const AUTH_SASL_FIN: u16 = 1 << 7;
const AUTH_ALL: u16 = u16::MAX;

/// `require_auth` (libpq 16): which authentication requests the client accepts.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequireAuth {
    allowed: u16,
    /// False when `none` is allowed (the server may skip authentication, as with `trust`).
    auth_required: bool,
}

impl RequireAuth {
    /// Parses a comma-separated list like `scram-sha-256,md5` or `!password,!md5` with libpq's rules:
    /// all entries negated or none, no duplicates, `none` allows connections without authentication.
    pub fn parse(value: &str) -> Result<RequireAuth> {
        let mut allowed = 0u16;
        let mut auth_required = true;
        let mut negated = false;
        for (index, part) in value.split(',').enumerate() {
            let method = if let Some(method) = part.strip_prefix('!') {
                if index == 0 {
                    // Start from everything and subtract.
                    auth_required = false;
                    allowed = AUTH_ALL;
                } else if !negated {
                    return Err(ConnInfoError::RequireAuthNegativeMixed(part.to_string()));
                }
                negated = true;
                method
            } else {
                if negated {
                    return Err(ConnInfoError::RequireAuthPositiveMixed(part.to_string()));
                }
                part
            };
            let duplicate = || ConnInfoError::RequireAuthDuplicate(part.to_string());
            let bits = match method {
                "password" => AUTH_PASSWORD,
                "md5" => AUTH_MD5,
                "gss" => AUTH_GSS | AUTH_GSS_CONT,
                "sspi" => AUTH_SSPI | AUTH_GSS_CONT,
                "scram-sha-256" => AUTH_SASL | AUTH_SASL_CONT | AUTH_SASL_FIN,
                "none" => {
                    // "!none" requires authentication; "none" allows its absence.
                    if negated == auth_required {
                        return Err(duplicate());
                    }
                    auth_required = negated;
                    continue;
                }
                _ => {
                    return Err(ConnInfoError::InvalidValue {
                        keyword: "require_auth",
                        value: method.to_string(),
                        expected: "password, md5, gss, sspi, scram-sha-256 or none, all or none of them prefixed with !",
                    })
                }
            };
            if negated {
                if allowed & bits == 0 {
                    return Err(duplicate());
                }
                allowed &= !bits;
            } else {
                if allowed & bits == bits {
                    return Err(duplicate());
                }
                allowed |= bits;
            }
        }
        Ok(RequireAuth {
            allowed,
            auth_required,
        })
    }

    /// Whether the server may use `method`.
    pub fn allows(&self, method: AuthMethod) -> bool {
        let bit = match method {
            AuthMethod::Password => AUTH_PASSWORD,
            AuthMethod::Md5 => AUTH_MD5,
            AuthMethod::Gss => AUTH_GSS,
            AuthMethod::Sspi => AUTH_SSPI,
            AuthMethod::ScramSha256 => AUTH_SASL,
        };
        self.allowed & bit != 0
    }

    /// Whether the server may let us in without asking for any authentication (`trust`, `cert`).
    pub fn allows_no_authentication(&self) -> bool {
        !self.auth_required
    }
}

impl fmt::Debug for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let methods: Vec<AuthMethod> = [
            AuthMethod::Password,
            AuthMethod::Md5,
            AuthMethod::Gss,
            AuthMethod::Sspi,
            AuthMethod::ScramSha256,
        ]
        .into_iter()
        .filter(|m| self.allows(*m))
        .collect();
        f.debug_struct("RequireAuth")
            .field("allowed", &methods)
            .field("none_allowed", &self.allows_no_authentication())
            .finish()
    }
}

/// libpq's `pqParseIntParam()`: a base-10 `int` with optional sign, surrounding whitespace allowed,
/// anything else (or overflow) an error naming the keyword.
pub fn parse_int_param(keyword: &'static str, value: &str) -> Result<i32> {
    let error = || ConnInfoError::InvalidInteger {
        keyword,
        value: value.to_string(),
    };
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() && is_c_space(b[i]) {
        i += 1;
    }
    let (number, end) = strtol_digits(b, i).ok_or_else(error)?;
    let mut j = end;
    while j < b.len() && is_c_space(b[j]) {
        j += 1;
    }
    if j != b.len() {
        return Err(error());
    }
    i32::try_from(number).map_err(|_| error())
}

/// The sign and digits part of `strtol()` starting at `i`: the value (saturated far beyond `i32`) and
/// where the digits end, or `None` if there are no digits.
fn strtol_digits(b: &[u8], mut i: usize) -> Option<(i64, usize)> {
    let negative = match b.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits_start = i;
    let mut n: i64 = 0;
    while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
        n = n.saturating_mul(10).saturating_add(i64::from(d - b'0'));
        i += 1;
    }
    if i == digits_start {
        return None;
    }
    Some((if negative { -n } else { n }, i))
}

/// libpq's `useKeepalives()`: `strtol()` must consume the whole value (no surrounding whitespace);
/// an empty value parses as 0. Non-zero turns keepalives on.
pub fn parse_keepalives(value: &str) -> Result<bool> {
    let b = value.as_bytes();
    if b.is_empty() {
        return Ok(false);
    }
    let mut i = 0;
    while i < b.len() && is_c_space(b[i]) {
        i += 1;
    }
    match strtol_digits(b, i) {
        Some((n, end)) if end == b.len() => Ok(n != 0),
        _ => Err(ConnInfoError::KeepalivesNotInteger),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_exactly_and_report_libpq_messages() {
        for mode in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(mode.parse::<SslMode>().unwrap().as_str(), mode);
        }
        let err = "Require".parse::<SslMode>().unwrap_err().to_string();
        assert!(
            err.starts_with("invalid sslmode value: \"Require\""),
            "{err}"
        );
        assert!(err.contains("verify-full"), "{err}");
        assert!("".parse::<SslMode>().is_err());
        assert_eq!(
            "x".parse::<ChannelBinding>().unwrap_err().to_string(),
            "invalid channel_binding value: \"x\" (expected disable, prefer or require)"
        );
        assert!("random".parse::<LoadBalanceHosts>().is_ok());
        assert!("prefer-standby".parse::<TargetSessionAttrs>().is_ok());
        assert!("direct".parse::<SslNegotiation>().is_ok());
        assert!("Direct".parse::<SslNegotiation>().is_err());
    }

    #[test]
    fn ssl_mode_predicates() {
        assert!(SslMode::Prefer.allows_plaintext() && SslMode::Prefer.tries_tls_first());
        assert!(!SslMode::Allow.tries_tls_first());
        assert!(!SslMode::Require.allows_plaintext() && !SslMode::Require.verifies_chain());
        assert!(SslMode::VerifyCa.verifies_chain() && !SslMode::VerifyCa.verifies_host_name());
        assert!(SslMode::VerifyFull.verifies_host_name());
    }

    #[test]
    fn replication_values_follow_the_server() {
        let cases = [
            ("", Some(ReplicationMode::Off)),
            ("database", Some(ReplicationMode::Database)),
            ("true", Some(ReplicationMode::Physical)),
            ("TRUE", Some(ReplicationMode::Physical)),
            ("t", Some(ReplicationMode::Physical)),
            ("tr", Some(ReplicationMode::Physical)),
            ("on", Some(ReplicationMode::Physical)),
            ("yes", Some(ReplicationMode::Physical)),
            ("1", Some(ReplicationMode::Physical)),
            ("false", Some(ReplicationMode::Off)),
            ("f", Some(ReplicationMode::Off)),
            ("off", Some(ReplicationMode::Off)),
            ("of", Some(ReplicationMode::Off)),
            ("no", Some(ReplicationMode::Off)),
            ("0", Some(ReplicationMode::Off)),
            ("o", None),
            ("truee", None),
            ("10", None),
            ("Database", None),
            ("2", None),
            ("ye s", None),
        ];
        for (value, want) in cases {
            assert_eq!(ReplicationMode::parse(value).ok(), want, "{value:?}");
        }
        assert_eq!(
            ReplicationMode::parse("maybe").unwrap_err().to_string(),
            "invalid value for parameter \"replication\": \"maybe\" (valid values are: \"false\", 0, \"true\", 1, \"database\")"
        );
    }

    #[test]
    fn tls_versions_are_case_insensitive() {
        assert_eq!(
            TlsVersion::parse_bound("ssl_min_protocol_version", "tlsv1.3").unwrap(),
            Some(TlsVersion::Tls1_3)
        );
        assert_eq!(TlsVersion::parse_bound("x", "").unwrap(), None);
        assert!(
            TlsVersion::parse_bound("ssl_max_protocol_version", "TLSv1.4")
                .unwrap_err()
                .to_string()
                .starts_with("invalid ssl_max_protocol_version value: \"TLSv1.4\"")
        );
        assert!(TlsVersion::Tls1_0 < TlsVersion::Tls1_3);
    }

    #[test]
    fn require_auth_rules() {
        let ra = RequireAuth::parse("scram-sha-256").unwrap();
        assert!(ra.allows(AuthMethod::ScramSha256));
        assert!(!ra.allows(AuthMethod::Md5) && !ra.allows_no_authentication());

        let ra = RequireAuth::parse("md5,none").unwrap();
        assert!(ra.allows(AuthMethod::Md5) && ra.allows_no_authentication());
        assert!(!ra.allows(AuthMethod::Password));

        let ra = RequireAuth::parse("!password,!md5").unwrap();
        assert!(!ra.allows(AuthMethod::Password) && !ra.allows(AuthMethod::Md5));
        assert!(ra.allows(AuthMethod::ScramSha256) && ra.allows_no_authentication());

        let ra = RequireAuth::parse("!none").unwrap();
        assert!(ra.allows(AuthMethod::Password) && !ra.allows_no_authentication());

        assert!(RequireAuth::parse("gss,sspi").is_ok());
        assert!(RequireAuth::parse("!gss,!sspi").is_ok());

        let err = |v: &str| RequireAuth::parse(v).unwrap_err().to_string();
        assert_eq!(
            err("md5,!password"),
            "negative require_auth method \"!password\" cannot be mixed with non-negative methods"
        );
        assert_eq!(
            err("!md5,password"),
            "require_auth method \"password\" cannot be mixed with negative methods"
        );
        assert_eq!(
            err("md5,md5"),
            "require_auth method \"md5\" is specified more than once"
        );
        assert_eq!(
            err("!md5,!md5"),
            "require_auth method \"!md5\" is specified more than once"
        );
        assert_eq!(
            err("none,none"),
            "require_auth method \"none\" is specified more than once"
        );
        assert_eq!(
            err("!none,!none"),
            "require_auth method \"!none\" is specified more than once"
        );
        assert!(err("md5,").starts_with("invalid require_auth value: \"\""));
        assert!(err("ldap").starts_with("invalid require_auth value: \"ldap\""));
    }

    #[test]
    fn int_params_follow_pqparseintparam() {
        let ok = [
            ("5432", 5432),
            (" 5432 ", 5432),
            ("+7", 7),
            ("-1", -1),
            ("007", 7),
            ("2147483647", i32::MAX),
            ("-2147483648", i32::MIN),
        ];
        for (v, want) in ok {
            assert_eq!(parse_int_param("port", v).unwrap(), want, "{v:?}");
        }
        for v in [
            "",
            " ",
            "+",
            "5432x",
            "0x10",
            "1 2",
            "2147483648",
            "99999999999999999999999",
        ] {
            assert_eq!(
                parse_int_param("port", v).unwrap_err().to_string(),
                format!("invalid integer value \"{v}\" for connection option \"port\""),
            );
        }
    }

    #[test]
    fn keepalives_follow_usekeepalives() {
        assert!(parse_keepalives("1").unwrap());
        assert!(parse_keepalives("-3").unwrap());
        assert!(parse_keepalives(" 1").unwrap());
        assert!(!parse_keepalives("0").unwrap());
        assert!(!parse_keepalives("").unwrap());
        for v in ["1 ", "yes", "on", " ", "+"] {
            assert_eq!(
                parse_keepalives(v).unwrap_err().to_string(),
                "keepalives parameter must be an integer",
                "{v:?}"
            );
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn numeric_parsers_never_panic(s in any::<String>()) {
                let _ = parse_int_param("port", &s);
                let _ = parse_keepalives(&s);
                let _ = RequireAuth::parse(&s);
                let _ = ReplicationMode::parse(&s);
            }

            #[test]
            fn int_round_trip(n in any::<i32>()) {
                prop_assert_eq!(parse_int_param("x", &n.to_string()).unwrap(), n);
            }
        }
    }
}
