//! pg_dump's name patterns (`-t`, `-n`, `-T`): `*` any characters, `?` one,
//! unquoted letters folded to lower case, double quotes keeping case and making
//! `*`, `?` and `.` literal (`""` is a quote), and an unquoted `.` between the schema
//! and the name. A pattern without a schema names tables of `public`, the schema an
//! unqualified name finds in a default search path.

use crate::error::{Error, Result};

/// One part of a pattern, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Char(char),
    AnyOne,
    AnyMany,
}

/// A schema-qualified name pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablePattern {
    text: String,
    schema: Vec<Token>,
    name: Vec<Token>,
}

/// A schema name pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaPattern {
    text: String,
    name: Vec<Token>,
}

impl TablePattern {
    /// Parses `[schema.]name`, as `pg_dump -t` does; `flag` names the option in
    /// errors.
    pub fn parse(flag: &str, text: &str) -> Result<Self> {
        let parts = split(flag, text)?;
        let (schema, name) = match parts.as_slice() {
            [name] => (literal("public"), name.clone()),
            [schema, name] => (schema.clone(), name.clone()),
            _ => {
                return Err(Error::config(format!(
                    "{flag} {text}: a table pattern is [schema.]table; a database name is not part of it"
                )));
            }
        };
        Ok(Self {
            text: text.to_owned(),
            schema,
            name,
        })
    }

    /// Whether the table `schema`.`name` (as stored, unquoted) matches.
    pub fn matches(&self, schema: &str, name: &str) -> bool {
        glob(&self.schema, schema) && glob(&self.name, name)
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl SchemaPattern {
    /// Parses a schema pattern, as `pg_dump -n` does.
    pub fn parse(flag: &str, text: &str) -> Result<Self> {
        let parts = split(flag, text)?;
        match parts.as_slice() {
            [name] => Ok(Self {
                text: text.to_owned(),
                name: name.clone(),
            }),
            _ => Err(Error::config(format!(
                "{flag} {text}: a schema pattern names one schema (quote a name that holds a dot)"
            ))),
        }
    }

    /// Whether the schema `name` (as stored) matches.
    pub fn matches(&self, name: &str) -> bool {
        glob(&self.name, name)
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn literal(text: &str) -> Vec<Token> {
    text.chars().map(Token::Char).collect()
}

/// Splits at unquoted dots, compiling each part.
fn split(flag: &str, text: &str) -> Result<Vec<Vec<Token>>> {
    if text.is_empty() {
        return Err(Error::config(format!("{flag}: the pattern is empty")));
    }
    let mut parts = vec![Vec::new()];
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let part = parts.last_mut().expect("parts starts with one part");
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                part.push(Token::Char('"'));
            }
            ('"', _) => quoted = !quoted,
            (c, true) => part.push(Token::Char(c)),
            ('.', false) => parts.push(Vec::new()),
            ('*', false) => part.push(Token::AnyMany),
            ('?', false) => part.push(Token::AnyOne),
            (c, false) if "[]()|+^$\\{}".contains(c) => {
                return Err(Error::config(format!(
                    "{flag} {text}: pgproof's patterns know * and ? but not regular expressions ({c}); quote a name that holds {c}"
                )));
            }
            (c, false) => part.extend(c.to_lowercase().map(Token::Char)),
        }
    }
    if quoted {
        return Err(Error::config(format!(
            "{flag} {text}: a double quote is not closed"
        )));
    }
    if parts.iter().any(Vec::is_empty) {
        return Err(Error::config(format!(
            "{flag} {text}: a part of the pattern is empty"
        )));
    }
    Ok(parts)
}

fn glob(pattern: &[Token], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    // Positions in the text the pattern so far can end at.
    let mut at = vec![false; text.len() + 1];
    at[0] = true;
    for token in pattern {
        let mut next = vec![false; text.len() + 1];
        for i in 0..=text.len() {
            if !at[i] {
                continue;
            }
            match token {
                Token::AnyMany => next[i..].iter_mut().for_each(|n| *n = true),
                Token::AnyOne if i < text.len() => next[i + 1] = true,
                Token::Char(c) if i < text.len() && text[i] == *c => next[i + 1] = true,
                _ => {}
            }
        }
        at = next;
    }
    at[text.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str) -> TablePattern {
        TablePattern::parse("--table", p).unwrap()
    }

    #[test]
    fn patterns_match_as_pg_dump_s_do() {
        assert!(t("items").matches("public", "items"));
        assert!(!t("items").matches("app", "items"));
        assert!(t("app.items").matches("app", "items"));
        assert!(t("APP.Items").matches("app", "items"));
        assert!(!t("\"Items\"").matches("public", "items"));
        assert!(t("\"Items\"").matches("public", "Items"));
        assert!(t("app.item?").matches("app", "items"));
        assert!(!t("app.item?").matches("app", "item"));
        assert!(t("*.it*s").matches("x", "items"));
        assert!(t("app.*").matches("app", ""));
        assert!(t("\"a.b\".\"c*\"").matches("a.b", "c*"));
        assert!(!t("\"a.b\".\"c*\"").matches("a.b", "cd"));
        assert!(t("\"say \"\"hi\"\"\"").matches("public", "say \"hi\""));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_flag_named() {
        for bad in ["", "a.b.c", "\"open", "a..b", "tab[0-9]", "x$"] {
            let err = TablePattern::parse("--table", bad).unwrap_err();
            assert!(err.to_string().contains("--table"), "{bad}: {err}");
        }
        assert!(SchemaPattern::parse("--schema", "a.b").is_err());
        assert!(
            SchemaPattern::parse("--schema", "Sales")
                .unwrap()
                .matches("sales")
        );
    }
}
