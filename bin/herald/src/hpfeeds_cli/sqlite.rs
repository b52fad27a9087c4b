//! Reading the `authkeys` table of an hpfeeds broker's sqlite database (seed contract 3.3):
//! `authkeys(id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT, ident TEXT, secret TEXT,
//! pubchans TEXT, subchans TEXT)`, the channel lists being JSON arrays of strings.
//!
//! Every row becomes an [`Identity`], or is skipped with the reason why ([`Skipped`]); no
//! reason ever holds a secret. The reference broker looks an ident up with
//! `SELECT .. WHERE ident = ?` and takes the first row, so when several rows have the same
//! ident, the one with the lowest id is the one imported (or skipped, if it is invalid) and
//! the others are skipped.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use anyhow::Context;
use herald_auth::hpfeeds::Identity;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

/// One value of an `authkeys` row, as far as the import cares.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    /// SQL `NULL`.
    Null,
    /// Text (valid UTF-8).
    Text(String),
    /// Anything else; says what it is ("a BLOB", ...).
    NotText(&'static str),
}

impl Cell {
    fn from_sql(value: ValueRef<'_>) -> Cell {
        match value {
            ValueRef::Null => Cell::Null,
            ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => Cell::Text(text.to_owned()),
                Err(_) => Cell::NotText("text that is not valid UTF-8"),
            },
            ValueRef::Integer(_) => Cell::NotText("an integer"),
            ValueRef::Real(_) => Cell::NotText("a real number"),
            ValueRef::Blob(_) => Cell::NotText("a BLOB"),
        }
    }

    /// The text, or why there is none (`column` names the column in the reason).
    fn text(&self, column: &str) -> Result<&str, String> {
        match self {
            Cell::Text(text) => Ok(text),
            Cell::Null => Err(format!("{column} is NULL")),
            Cell::NotText(what) => Err(format!("{column} is {what}, not text")),
        }
    }
}

/// One row of an `authkeys` table.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AuthkeyRow {
    pub(super) id: i64,
    pub(super) ident: Cell,
    pub(super) owner: Cell,
    pub(super) secret: Cell,
    pub(super) pubchans: Cell,
    pub(super) subchans: Cell,
}

/// A row that is not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Skipped {
    /// The row's id.
    pub(super) id: i64,
    /// The row's ident, when it has a text one.
    pub(super) ident: Option<String>,
    /// Why the row is skipped (never holds the secret).
    pub(super) reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ident {
            Some(ident) => write!(f, "row id={} (ident {ident:?}): {}", self.id, self.reason),
            None => write!(f, "row id={}: {}", self.id, self.reason),
        }
    }
}

/// Every row of the `authkeys` table of the sqlite database `path`, by id. The database is
/// opened read-only and read in one statement (one consistent snapshot).
pub(super) fn read_file(path: &Path) -> anyhow::Result<Vec<AuthkeyRow>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open the sqlite database {}", path.display()))?;
    read(&conn).with_context(|| {
        format!(
            "cannot read the authkeys table of {} (is it an hpfeeds database?)",
            path.display()
        )
    })
}

/// Every row of the `authkeys` table of `conn`, by id.
pub(super) fn read(conn: &Connection) -> rusqlite::Result<Vec<AuthkeyRow>> {
    let mut statement = conn
        .prepare("SELECT id, ident, owner, secret, pubchans, subchans FROM authkeys ORDER BY id")?;
    let rows = statement.query_map([], |row| {
        let cell = |i: usize| row.get_ref(i).map(Cell::from_sql);
        Ok(AuthkeyRow {
            id: row.get(0)?,
            ident: cell(1)?,
            owner: cell(2)?,
            secret: cell(3)?,
            pubchans: cell(4)?,
            subchans: cell(5)?,
        })
    })?;
    rows.collect()
}

/// The identities of `rows` (taken in order, so by id), and the rows skipped.
pub(super) fn convert(rows: Vec<AuthkeyRow>) -> (Vec<Identity>, Vec<Skipped>) {
    let mut identities = Vec::with_capacity(rows.len());
    let mut skipped = Vec::new();
    let mut first_row: HashMap<String, i64> = HashMap::new();
    for row in rows {
        let ident = match &row.ident {
            Cell::Text(ident) => Some(ident.clone()),
            _ => None,
        };
        if let Some(ident) = &ident {
            if let Some(first) = first_row.get(ident) {
                skipped.push(Skipped {
                    id: row.id,
                    ident: Some(ident.clone()),
                    reason: format!(
                        "row id={first} has the same ident, and hpfeeds uses the first row"
                    ),
                });
                continue;
            }
            first_row.insert(ident.clone(), row.id);
        }
        match to_identity(&row) {
            Ok(identity) => identities.push(identity),
            Err(reason) => skipped.push(Skipped {
                id: row.id,
                ident,
                reason,
            }),
        }
    }
    (identities, skipped)
}

/// The identity of one row, or why it has none. A NULL owner is the ident, as in the `env`
/// backend.
pub(super) fn to_identity(row: &AuthkeyRow) -> Result<Identity, String> {
    let ident = row.ident.text("ident")?;
    let secret = row.secret.text("secret")?;
    let owner = match &row.owner {
        Cell::Null => ident,
        owner => owner.text("owner")?,
    };
    let pubchans = channels(&row.pubchans, "pubchans")?;
    let subchans = channels(&row.subchans, "subchans")?;
    Identity::new(ident, secret, owner, pubchans, subchans).map_err(|e| e.to_string())
}

/// A channel list column: a JSON array of strings.
fn channels(cell: &Cell, column: &str) -> Result<Vec<String>, String> {
    let text = cell.text(column)?;
    // The parser's messages may quote the input: only its kind and position are reported.
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected structure",
            serde_json::error::Category::Eof => "unexpected end of input",
        };
        format!(
            "{column} is not valid JSON ({kind} at line {} column {})",
            e.line(),
            e.column()
        )
    })?;
    let not_list = || format!("{column} is not a JSON array of strings");
    let Value::Array(items) = value else {
        return Err(not_list());
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(channel) => Ok(channel),
            _ => Err(not_list()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }

    fn row(id: i64, ident: &str) -> AuthkeyRow {
        AuthkeyRow {
            id,
            ident: text(ident),
            owner: text("acme"),
            secret: text("s3cret"),
            pubchans: text(r#"["a", "b"]"#),
            subchans: text("[]"),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_valid_row_is_an_identity() {
        assert_eq!(
            to_identity(&row(1, "bob")),
            Ok(Identity::new("bob", "s3cret", "acme", strings(&["a", "b"]), vec![]).unwrap())
        );
        // A NULL owner is the ident; channels are taken as they are (JSON escapes decoded).
        let r = AuthkeyRow {
            owner: Cell::Null,
            subchans: text(r#"["x/y", "caf\u00e9", " sp "]"#),
            ..row(1, "bob")
        };
        assert_eq!(
            to_identity(&r),
            Ok(Identity::new(
                "bob",
                "s3cret",
                "bob",
                strings(&["a", "b"]),
                strings(&["x/y", "café", " sp "])
            )
            .unwrap())
        );
    }

    #[test]
    fn invalid_rows_say_why_without_the_secret() {
        let cases = [
            (
                AuthkeyRow {
                    ident: Cell::Null,
                    ..row(1, "")
                },
                "ident is NULL",
            ),
            (
                AuthkeyRow {
                    ident: Cell::NotText("a BLOB"),
                    ..row(1, "")
                },
                "ident is a BLOB, not text",
            ),
            (row(1, ""), "invalid hpfeeds ident"),
            (row(1, &"x".repeat(256)), "invalid hpfeeds ident"),
            (
                AuthkeyRow {
                    secret: Cell::Null,
                    ..row(1, "bob")
                },
                "secret is NULL",
            ),
            (
                AuthkeyRow {
                    secret: text(""),
                    ..row(1, "bob")
                },
                "is empty",
            ),
            (
                AuthkeyRow {
                    owner: Cell::NotText("an integer"),
                    ..row(1, "bob")
                },
                "owner is an integer, not text",
            ),
            (
                AuthkeyRow {
                    pubchans: Cell::Null,
                    ..row(1, "bob")
                },
                "pubchans is NULL",
            ),
            (
                AuthkeyRow {
                    subchans: text("a,b"),
                    ..row(1, "bob")
                },
                "subchans is not valid JSON (syntax error at line 1 column 1)",
            ),
            (
                AuthkeyRow {
                    subchans: text(r#"["a""#),
                    ..row(1, "bob")
                },
                "subchans is not valid JSON (unexpected end of input",
            ),
            (
                AuthkeyRow {
                    pubchans: text(r#""a""#),
                    ..row(1, "bob")
                },
                "pubchans is not a JSON array of strings",
            ),
            (
                AuthkeyRow {
                    pubchans: text(r#"["a", 1]"#),
                    ..row(1, "bob")
                },
                "pubchans is not a JSON array of strings",
            ),
            (
                AuthkeyRow {
                    pubchans: text(r#"["a", ""]"#),
                    ..row(1, "bob")
                },
                "invalid channel \"\"",
            ),
            (
                AuthkeyRow {
                    subchans: text(r#"[".."]"#),
                    ..row(1, "bob")
                },
                "invalid channel \"..\"",
            ),
        ];
        for (r, expected) in cases {
            let reason = to_identity(&r).expect_err(expected);
            assert!(reason.contains(expected), "{reason:?} lacks {expected:?}");
            assert!(!reason.contains("s3cret"), "{reason:?}");
        }
    }

    #[test]
    fn the_first_row_of_an_ident_wins() {
        let rows = vec![
            AuthkeyRow {
                secret: Cell::Null,
                ..row(1, "bob")
            },
            row(2, "bob"),
            row(3, "carol"),
            AuthkeyRow {
                ident: Cell::Null,
                ..row(4, "")
            },
            AuthkeyRow {
                owner: text("other"),
                ..row(5, "carol")
            },
        ];
        let (identities, skipped) = convert(rows);
        assert_eq!(
            identities,
            [Identity::new("carol", "s3cret", "acme", strings(&["a", "b"]), vec![]).unwrap()]
        );
        let shown: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "row id=1 (ident \"bob\"): secret is NULL",
                "row id=2 (ident \"bob\"): row id=1 has the same ident, and hpfeeds uses the \
                 first row",
                "row id=4: ident is NULL",
                "row id=5 (ident \"carol\"): row id=3 has the same ident, and hpfeeds uses the \
                 first row",
            ]
        );
    }

    #[test]
    fn reads_the_hpfeeds_schema() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE authkeys (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT, \
             ident TEXT, secret TEXT, pubchans TEXT, subchans TEXT);
             INSERT INTO authkeys (id, owner, ident, secret, pubchans, subchans) VALUES
               (7, 'acme', 'bob', 's3cret', '[\"a\"]', '[]'),
               (3, NULL, 'carol', X'FF', NULL, '[]'),
               (9, 'x', 42, 'k', '[]', '[]');",
        )
        .unwrap();
        let rows = read(&conn).unwrap();
        assert_eq!(
            rows,
            [
                AuthkeyRow {
                    id: 3,
                    ident: text("carol"),
                    owner: Cell::Null,
                    secret: Cell::NotText("a BLOB"),
                    pubchans: Cell::Null,
                    subchans: text("[]"),
                },
                AuthkeyRow {
                    id: 7,
                    ident: text("bob"),
                    owner: text("acme"),
                    secret: text("s3cret"),
                    pubchans: text(r#"["a"]"#),
                    subchans: text("[]"),
                },
                // TEXT affinity stores the number as text, as hpfeeds would read it.
                AuthkeyRow {
                    id: 9,
                    ident: text("42"),
                    owner: text("x"),
                    secret: text("k"),
                    pubchans: text("[]"),
                    subchans: text("[]"),
                },
            ]
        );
        // No authkeys table: an error, not an empty import.
        let empty = Connection::open_in_memory().unwrap();
        assert!(read(&empty).is_err());
    }
}
