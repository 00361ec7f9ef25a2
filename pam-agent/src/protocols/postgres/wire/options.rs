//! Startup parameters and the `options` string, read exactly as the server reads them,
//! checked against a short list of settings a worker may choose.
//!
//! The server applies every startup parameter other than `user`, `database`,
//! `replication` and `options` as a setting (names compared without regard to case).
//! `options` is split into words at white space, a backslash taking the next character
//! literally (`ro\le` is `role`), and the words are read as the server's command-line
//! switches; `-c NAME=VALUE`, `-cNAME=VALUE` and `--NAME=VALUE` set a setting, with `-`
//! in NAME read as `_` (`search-path` is `search_path`). Other switches change other
//! things. A setting such as `role` or `search_path` chosen before the first statement
//! would change what every statement means without the policy seeing it, so only the
//! settings below pass, in either place; everything else is refused before the server
//! sees it.

/// Settings a worker may choose at startup: formatting, time zones, time limits, its
/// name. Names as the server spells them, lower case.
const ALLOWED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "extra_float_digits",
    "standard_conforming_strings",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "client_min_messages",
    "bytea_output",
    "jit",
];

/// Why a startup parameter is refused (the parameter as the worker named it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("startup parameter `{0}` is not allowed through pam-agent")]
    Parameter(String),
    #[error("`options`: setting `{0}` is not allowed through pam-agent")]
    Setting(String),
    #[error(
        "`options`: `{0}` is not allowed through pam-agent (only -c NAME=VALUE and --NAME=VALUE)"
    )]
    Switch(String),
    #[error("`options`: `{0}` needs a value (NAME=VALUE)")]
    NoValue(String),
    #[error("`options`: `{name}` = `{value}` is not allowed through pam-agent")]
    Value { name: String, value: String },
}

/// A setting a worker may choose whose value cannot change how SQL text reads (the list
/// above without `client_encoding` and `standard_conforming_strings`), as `set_config`
/// names it (any case).
pub fn harmless_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ALLOWED.contains(&name.as_str())
        && !matches!(
            name.as_str(),
            "client_encoding" | "standard_conforming_strings"
        )
}

/// Checks one startup parameter (not `user`, `database`, `replication`, `options`).
pub fn check_parameter(key: &str, value: &str) -> Result<(), OptionError> {
    let name = key.to_ascii_lowercase();
    if !ALLOWED.contains(&name.as_str()) {
        return Err(OptionError::Parameter(key.to_owned()));
    }
    check_value(&name, value).map_err(|_| OptionError::Parameter(key.to_owned()))
}

/// Checks an `options` string: every word a `-c`/`--` setting on the list.
pub fn check_options(options: &str) -> Result<(), OptionError> {
    let words = split(options);
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let setting = if w == "-c" {
            i += 1;
            words
                .get(i)
                .cloned()
                .ok_or_else(|| OptionError::NoValue("-c".into()))?
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_owned()
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_owned()
        } else {
            return Err(OptionError::Switch(w.clone()));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(OptionError::NoValue(setting));
        };
        let name = name.replace('-', "_").to_ascii_lowercase();
        if !ALLOWED.contains(&name.as_str()) {
            return Err(OptionError::Setting(name));
        }
        check_value(&name, value).map_err(|()| OptionError::Value {
            name: name.clone(),
            value: value.to_owned(),
        })?;
        i += 1;
    }
    Ok(())
}

/// Client-only encodings whose multibyte characters can contain ASCII quote or
/// backslash bytes: the proxy's parser (UTF-8) and the server would read such text
/// differently, so they are refused.
pub fn dangerous_encoding(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(
        n.as_str(),
        "sjis"
            | "shiftjis"
            | "mskanji"
            | "big5"
            | "gbk"
            | "cp936"
            | "windows936"
            | "uhc"
            | "cp949"
            | "windows949"
            | "gb18030"
            | "johab"
            | "shiftjis2004"
    )
}

/// Values that would make the agent's parser read SQL text differently from the server.
fn check_value(name: &str, value: &str) -> Result<(), ()> {
    let bad = match name {
        "client_encoding" => dangerous_encoding(value),
        "standard_conforming_strings" => !value.eq_ignore_ascii_case("on"),
        _ => false,
    };
    if bad { Err(()) } else { Ok(()) }
}

/// The server's split of `options` into words: white space separates, a backslash
/// takes the next character literally.
fn split(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return words;
        }
        let mut w = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_whitespace() {
                break;
            }
            chars.next();
            if c == '\\' {
                if let Some(n) = chars.next() {
                    w.push(n);
                }
            } else {
                w.push(c);
            }
        }
        words.push(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_as_the_server_splits_them() {
        assert_eq!(split("  -c a=b   --x=y "), ["-c", "a=b", "--x=y"]);
        assert_eq!(split(r"-c ro\le=x"), ["-c", "role=x"]);
        assert_eq!(
            split(r"-c application_name=a\ b"),
            ["-c", "application_name=a b"]
        );
        assert_eq!(split(r"\\"), [r"\"]);
        assert!(split("").is_empty());
    }

    #[test]
    fn harmless_settings_pass_in_every_form() {
        for o in [
            "-c statement_timeout=5s",
            "-cstatement_timeout=5s",
            "--statement-timeout=5s",
            "-c application_name=crew -c TimeZone=UTC",
            "-c DateStyle=ISO,MDY",
            "-c client_encoding=UTF8",
            "",
        ] {
            assert_eq!(check_options(o), Ok(()), "{o}");
        }
        assert_eq!(check_parameter("application_name", "crew"), Ok(()));
        assert_eq!(check_parameter("DateStyle", "ISO"), Ok(()));
        assert_eq!(check_parameter("TimeZone", "UTC"), Ok(()));
        assert_eq!(check_parameter("extra_float_digits", "3"), Ok(()));
    }

    #[test]
    fn every_spelling_of_a_forbidden_setting_is_refused() {
        // Each of these changed the role or the search path on the server (or would).
        for o in [
            "-c role=postgres",
            r"-c ro\le=postgres",
            "-c ROLE=postgres",
            "-crole=postgres",
            "--role=postgres",
            "-c search_path=evil,public",
            "-c search-path=evil,public",
            r"-c search\_path=evil,public",
            "--search-path=evil",
            r"-c\ search_path=evil",
            "-c session_authorization=postgres",
            "-c session-authorization=postgres",
            "-c statement_timeout=5s -c role=postgres",
            "-c myext.setting=1",
        ] {
            let e = check_options(o).unwrap_err();
            assert!(
                matches!(e, OptionError::Setting(_) | OptionError::Switch(_)),
                "{o}: {e}"
            );
        }
        // Values that change how SQL text is read.
        for o in [
            "-c client_encoding=SJIS",
            "-c standard_conforming_strings=off",
        ] {
            assert!(
                matches!(check_options(o), Err(OptionError::Value { .. })),
                "{o}"
            );
        }
        // Other switches, stray words, settings without values.
        for o in ["-O", "-e", "-f s", "-P", "stray", "-c", "-c role", "--role"] {
            assert!(check_options(o).is_err(), "{o}");
        }
        for (k, v) in [
            ("role", "postgres"),
            ("Role", "postgres"),
            ("search_path", "evil"),
            ("SEARCH_PATH", "evil"),
            ("session_authorization", "postgres"),
            ("default_transaction_read_only", "off"),
            ("_pq_.anything", "x"),
            ("client_encoding", "BIG5"),
            ("standard_conforming_strings", "off"),
        ] {
            assert_eq!(
                check_parameter(k, v),
                Err(OptionError::Parameter(k.to_owned())),
                "{k}"
            );
        }
    }
}
