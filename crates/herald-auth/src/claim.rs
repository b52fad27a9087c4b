//! The `icepeak` claim: its schema, and its translation to and from Herald grants.
//!
//! ```json
//! {"icepeak": {"version": 1,
//!              "whitelist": [{"prefix": ["foo"], "modes": ["read"]},
//!                            {"prefix": ["bar", "1"], "modes": ["read", "write"]}]}}
//! ```
//!
//! Each whitelist entry becomes one [`Grant`] with a [`PathPattern::prefix`] pattern, so it
//! covers the prefix itself and everything below it, compared by whole segments (`["foo"]`
//! never covers `/foobar`). Prefix segments are literal keys: `"#"` and `"+"` are plain
//! characters, never wildcards.
//!
//! Parsing follows Icepeak's Aeson parser (both `version` and `whitelist` are required, unknown
//! keys are ignored) and its error messages use the same `Error in $.json.path: ...` style.
//! One deliberate difference: a prefix segment that is empty, `.` or `..` makes the whole claim
//! invalid. Herald paths cannot hold such segments, and silently dropping or normalising one
//! could widen a grant.

use herald_core::{Access, Grant, Modes, Path, PathLimits, PathPattern};
use serde_json::{Map, Value, json};

use crate::error::MintError;

/// The name of the claim holding Icepeak permissions.
pub const CLAIM_NAME: &str = "icepeak";

/// The only claim version Icepeak defines.
pub const CLAIM_VERSION: u64 = 1;

/// The message for a claim set without an `icepeak` claim (Icepeak's exact text).
pub const MISSING_MESSAGE: &str = "Icepeak claim missing.";

const MODE_READ: &str = "read";
const MODE_WRITE: &str = "write";

/// Reads the `icepeak` claim out of a JWT claim set (the decoded payload object).
///
/// # Errors
/// A message suitable for the `{"error": ...}` 401 body: [`MISSING_MESSAGE`] when the claim is
/// absent, otherwise an Aeson-style description of what does not fit the schema.
pub fn parse_access(claims: &Map<String, Value>) -> Result<Access, String> {
    let claim = claims
        .get(CLAIM_NAME)
        .ok_or_else(|| MISSING_MESSAGE.to_owned())?;
    let claim = expect_object(claim, "$", "icepeak claim")?;

    let version = required(claim, "$", "version")?;
    match version {
        Value::Number(n) => match integral(n) {
            Some(v) if v == i128::from(CLAIM_VERSION) => {}
            Some(_) => return Err(at("$", "unsupported version")),
            None => {
                return Err(at(
                    "$.version",
                    &format!("parsing Int failed, unexpected floating number {n}"),
                ));
            }
        },
        other => return Err(type_error("$.version", "Int", "Number", other)),
    }

    let whitelist = required(claim, "$", "whitelist")?;
    let entries = expect_array(whitelist, "$.whitelist")?;
    let mut grants = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let here = format!("$.whitelist[{i}]");
        let entry = expect_object(entry, &here, "path and modes")?;
        let prefix = parse_prefix(required(entry, &here, "prefix")?, &format!("{here}.prefix"))?;
        let modes = parse_modes(required(entry, &here, "modes")?, &format!("{here}.modes"))?;
        grants.push(Grant {
            pattern: PathPattern::prefix(&prefix),
            modes,
        });
    }
    Ok(Access::Grants(grants))
}

/// Builds the `icepeak` claim value for a whitelist of `(prefix, modes)` entries, as
/// `icepeak-token-gen` writes it.
///
/// # Errors
/// [`MintError::UnsupportedModes`] when an entry's modes include anything but read and write.
pub fn to_json(whitelist: &[(Path, Modes)]) -> Result<Value, MintError> {
    let entries = whitelist
        .iter()
        .map(|(prefix, modes)| {
            Ok(json!({
                "prefix": prefix.segments(),
                "modes": mode_names(*modes)?,
            }))
        })
        .collect::<Result<Vec<_>, MintError>>()?;
    Ok(json!({"version": CLAIM_VERSION, "whitelist": entries}))
}

/// The value of an integral JSON number (`1` and `1.0` alike, as Aeson's `Int` parser reads
/// them); `None` for a number with a fractional part.
fn integral(n: &serde_json::Number) -> Option<i128> {
    n.as_u64()
        .map(i128::from)
        .or_else(|| n.as_i64().map(i128::from))
        // Saturating cast: any huge integral float is just "not version 1".
        .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i128))
}

fn mode_names(modes: Modes) -> Result<Vec<&'static str>, MintError> {
    if !Modes::READ_WRITE.contains(modes) {
        return Err(MintError::UnsupportedModes(modes));
    }
    let mut names = Vec::with_capacity(2);
    if modes.contains(Modes::READ) {
        names.push(MODE_READ);
    }
    if modes.contains(Modes::WRITE) {
        names.push(MODE_WRITE);
    }
    Ok(names)
}

fn parse_prefix(value: &Value, here: &str) -> Result<Path, String> {
    let items = expect_array(value, here)?;
    let mut segments = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        match item {
            Value::String(s) => segments.push(s.as_str()),
            other => return Err(type_error(&format!("{here}[{j}]"), "Text", "String", other)),
        }
    }
    // Literal segments only: `Path::from_segments` never interprets `#`, `+` or `%`, and it
    // refuses empty, `.` and `..` segments, which must not turn into a grant.
    Path::from_segments(segments, &PathLimits::default()).map_err(|e| at(here, &e.to_string()))
}

fn parse_modes(value: &Value, here: &str) -> Result<Modes, String> {
    let items = expect_array(value, here)?;
    let mut modes = Modes::NONE;
    for (j, item) in items.iter().enumerate() {
        modes = modes
            | match item {
                Value::String(s) if s == MODE_READ => Modes::READ,
                Value::String(s) if s == MODE_WRITE => Modes::WRITE,
                Value::String(_) => return Err(at(&format!("{here}[{j}]"), "Invalid mode value.")),
                other => {
                    return Err(type_error(
                        &format!("{here}[{j}]"),
                        "mode string",
                        "String",
                        other,
                    ));
                }
            };
    }
    Ok(modes)
}

fn required<'v>(
    object: &'v Map<String, Value>,
    here: &str,
    key: &str,
) -> Result<&'v Value, String> {
    object
        .get(key)
        .ok_or_else(|| at(here, &format!("key {key:?} not found")))
}

fn expect_object<'v>(
    value: &'v Value,
    here: &str,
    what: &str,
) -> Result<&'v Map<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(type_error(here, what, "Object", other)),
    }
}

fn expect_array<'v>(value: &'v Value, here: &str) -> Result<&'v Vec<Value>, String> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(type_error(here, "[]", "Array", other)),
    }
}

fn at(here: &str, message: &str) -> String {
    format!("Error in {here}: {message}")
}

fn type_error(here: &str, what: &str, expected: &str, found: &Value) -> String {
    let found = match found {
        Value::Null => "Null",
        Value::Bool(_) => "Boolean",
        Value::Number(_) => "Number",
        Value::String(_) => "String",
        Value::Array(_) => "Array",
        Value::Object(_) => "Object",
    };
    at(
        here,
        &format!("parsing {what} failed, expected {expected}, but encountered {found}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(claims: Value) -> Result<Access, String> {
        match claims {
            Value::Object(map) => parse_access(&map),
            _ => panic!("test claims must be an object"),
        }
    }

    fn path(s: &str) -> Path {
        Path::parse_slashed(s, &PathLimits::default()).unwrap()
    }

    #[test]
    fn parses_the_readme_example() {
        let access = parse(json!({"icepeak": {"version": 1, "whitelist": [
            {"prefix": ["foo"], "modes": ["read"]},
            {"prefix": ["bar", "1"], "modes": ["read", "write"]},
        ]}}))
        .unwrap();
        assert!(access.allows(&path("foo"), Modes::READ));
        assert!(access.allows(&path("foo/x/y"), Modes::READ));
        assert!(!access.allows(&path("foo"), Modes::WRITE));
        assert!(access.allows(&path("bar/1/z"), Modes::WRITE));
        assert!(!access.allows(&path("bar/2"), Modes::READ));
        assert!(!access.allows(&path("foobar"), Modes::READ));
        assert!(!access.allows(&Path::root(), Modes::READ));
    }

    #[test]
    fn missing_claim_has_icepeaks_exact_message() {
        assert_eq!(parse(json!({})), Err("Icepeak claim missing.".to_owned()));
        assert_eq!(
            parse(json!({"Icepeak": {"version": 1, "whitelist": []}})),
            Err("Icepeak claim missing.".to_owned())
        );
    }

    #[test]
    fn schema_violations_name_the_offending_place() {
        let cases = [
            (
                json!(null),
                "Error in $: parsing icepeak claim failed, expected Object, but encountered Null",
            ),
            (
                json!([1]),
                "Error in $: parsing icepeak claim failed, expected Object, but encountered Array",
            ),
            (
                json!({"whitelist": []}),
                "Error in $: key \"version\" not found",
            ),
            (
                json!({"version": 2, "whitelist": []}),
                "Error in $: unsupported version",
            ),
            (
                json!({"version": -1, "whitelist": []}),
                "Error in $: unsupported version",
            ),
            (
                json!({"version": 1.5, "whitelist": []}),
                "Error in $.version: parsing Int failed, unexpected floating number 1.5",
            ),
            (
                json!({"version": "1", "whitelist": []}),
                "Error in $.version: parsing Int failed, expected Number, but encountered String",
            ),
            (
                json!({"version": 1}),
                "Error in $: key \"whitelist\" not found",
            ),
            (
                json!({"version": 1, "whitelist": {}}),
                "Error in $.whitelist: parsing [] failed, expected Array, but encountered Object",
            ),
            (
                json!({"version": 1, "whitelist": ["foo"]}),
                "Error in $.whitelist[0]: parsing path and modes failed, expected Object, \
                 but encountered String",
            ),
            (
                json!({"version": 1, "whitelist": [{"modes": ["read"]}]}),
                "Error in $.whitelist[0]: key \"prefix\" not found",
            ),
            (
                json!({"version": 1, "whitelist": [{"prefix": []}]}),
                "Error in $.whitelist[0]: key \"modes\" not found",
            ),
            (
                json!({"version": 1, "whitelist": [{"prefix": "foo", "modes": []}]}),
                "Error in $.whitelist[0].prefix: parsing [] failed, expected Array, \
                 but encountered String",
            ),
            (
                json!({"version": 1, "whitelist": [{"prefix": ["a", 7], "modes": []}]}),
                "Error in $.whitelist[0].prefix[1]: parsing Text failed, expected String, \
                 but encountered Number",
            ),
            (
                json!({"version": 1, "whitelist": [
                    {"prefix": [], "modes": ["read"]},
                    {"prefix": [], "modes": ["read", "admin"]},
                ]}),
                "Error in $.whitelist[1].modes[1]: Invalid mode value.",
            ),
            (
                json!({"version": 1, "whitelist": [{"prefix": [], "modes": [true]}]}),
                "Error in $.whitelist[0].modes[0]: parsing mode string failed, expected String, \
                 but encountered Boolean",
            ),
            (
                json!({"version": 1, "whitelist": [{"prefix": [], "modes": "rw"}]}),
                "Error in $.whitelist[0].modes: parsing [] failed, expected Array, \
                 but encountered String",
            ),
        ];
        for (claim, message) in cases {
            assert_eq!(
                parse(json!({ "icepeak": claim })),
                Err(message.to_owned()),
                "{claim}"
            );
        }
    }

    #[test]
    fn version_may_be_written_as_an_integral_float_and_extra_keys_are_ignored() {
        let access = parse(json!({"icepeak": {
            "version": 1.0, "whitelist": [{"prefix": ["a"], "modes": ["write"], "x": 1}], "y": 2
        }}))
        .unwrap();
        assert!(access.allows(&path("a/b"), Modes::WRITE));
    }

    #[test]
    fn dot_and_empty_prefix_segments_invalidate_the_claim() {
        for prefix in [
            json!([".."]),
            json!(["a", "."]),
            json!(["a", ""]),
            json!([""]),
        ] {
            let err = parse(json!({"icepeak": {"version": 1, "whitelist": [
                {"prefix": prefix, "modes": ["read"]}
            ]}}))
            .unwrap_err();
            assert!(err.starts_with("Error in $.whitelist[0].prefix: "), "{err}");
        }
        // Not a dot segment: just a key with three dots.
        assert!(
            parse(json!({"icepeak": {"version": 1, "whitelist": [
                {"prefix": ["..."], "modes": ["read"]}
            ]}}))
            .is_ok()
        );
    }

    #[test]
    fn wildcard_characters_in_a_prefix_are_literal_keys() {
        let access = parse(json!({"icepeak": {"version": 1, "whitelist": [
            {"prefix": ["#"], "modes": ["read"]},
            {"prefix": ["a", "+"], "modes": ["write"]},
        ]}}))
        .unwrap();
        assert!(access.allows(&path("#"), Modes::READ));
        assert!(access.allows(&path("#/x"), Modes::READ));
        assert!(!access.allows(&path("x"), Modes::READ));
        assert!(access.allows(&path("a/+/b"), Modes::WRITE));
        assert!(!access.allows(&path("a/b"), Modes::WRITE));
    }

    #[test]
    fn over_long_prefixes_are_refused() {
        let prefix: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        let err = parse(json!({"icepeak": {"version": 1, "whitelist": [
            {"prefix": prefix, "modes": ["read"]}
        ]}}))
        .unwrap_err();
        assert!(err.contains("more than the limit"), "{err}");
    }

    #[test]
    fn empty_whitelist_and_empty_modes_allow_nothing() {
        let access = parse(json!({"icepeak": {"version": 1, "whitelist": [
            {"prefix": [], "modes": []}
        ]}}))
        .unwrap();
        assert!(!access.allows(&path("a"), Modes::READ));
        let access = parse(json!({"icepeak": {"version": 1, "whitelist": []}})).unwrap();
        assert_eq!(access, Access::Grants(vec![]));
    }

    #[test]
    fn to_json_writes_the_schema() {
        let value = to_json(&[
            (path("foo"), Modes::READ),
            (path("bar/1"), Modes::READ_WRITE),
            (Path::root(), Modes::WRITE),
        ])
        .unwrap();
        assert_eq!(
            value,
            json!({"version": 1, "whitelist": [
                {"prefix": ["foo"], "modes": ["read"]},
                {"prefix": ["bar", "1"], "modes": ["read", "write"]},
                {"prefix": [], "modes": ["write"]},
            ]})
        );
        assert!(matches!(
            to_json(&[(path("a"), Modes::ADMIN | Modes::READ)]),
            Err(MintError::UnsupportedModes(_))
        ));
    }
}
