//! containerd's filter syntax, used by every List/Subscribe call that takes `filters`.
//!
//! ```text
//! filters   := one string per alternative; the object matches if ANY string matches
//! selectors := selector ("," selector)*          all selectors of one string must match
//! selector  := fieldpath (operator value)?       no operator: the field must be present
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_-]+
//! operator  := "==" | "!=" | "~="                 "~=" is a regular expression match
//! value     := quoted | [^\s,]+
//! quoted    := "..." (Go string escapes) | /.../ or |...| (backslash escapes the delimiter only)
//! ```
//!
//! Examples: `id==web`, `labels."io.kubernetes.pod.name"==nginx`, `image~=^docker\.io/`,
//! `runtime.name==io.containerd.runc.v2,labels.app`. Whitespace between tokens is ignored.
//! An empty list of strings, or an empty string, matches everything.

use crate::errdefs::{ErrorKind, Kind};

/// A syntax error: always InvalidArgument, with the position and the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter {filter:?}: {reason} at position {position}")]
pub struct FilterError {
    pub filter: String,
    pub position: usize,
    pub reason: String,
}

impl ErrorKind for FilterError {
    fn kind(&self) -> Kind {
        Kind::InvalidArgument
    }
}

/// Gives a filter the value of a field path of the object being matched; `None` when the
/// object has no such field.
pub trait Adaptor {
    fn field(&self, path: &[&str]) -> Option<String>;
}

/// A parsed filter: OR over the given strings, AND within one string.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Option<Op>,
}

#[derive(Debug, Clone)]
enum Op {
    Equal(String),
    NotEqual(String),
    Matches(regex::Regex),
}

/// Parses several filter strings (OR). An empty list matches everything.
pub fn parse(filters: &[String]) -> Result<Filter, FilterError> {
    let mut any = Vec::with_capacity(filters.len());
    for f in filters {
        if f.trim().is_empty() {
            // An empty alternative matches everything.
            return Ok(Filter::default());
        }
        any.push(Parser::new(f).selectors()?);
    }
    Ok(Filter { any })
}

impl Filter {
    /// A filter that matches everything.
    pub fn always() -> Filter {
        Filter::default()
    }

    pub fn matches(&self, a: &impl Adaptor) -> bool {
        self.any.is_empty() || self.any.iter().any(|all| all.iter().all(|s| s.matches(a)))
    }
}

impl Selector {
    fn matches(&self, a: &impl Adaptor) -> bool {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        let value = a.field(&path);
        match (&self.op, value) {
            (None, v) => v.is_some(),
            (Some(_), None) => false,
            (Some(Op::Equal(want)), Some(v)) => &v == want,
            (Some(Op::NotEqual(want)), Some(v)) => &v != want,
            (Some(Op::Matches(re)), Some(v)) => re.is_match(&v),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Eof,
    Field(String),
    Value(String),
    Quoted(String),
    Separator(char),
    Operator(String),
    Illegal(char),
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
    /// The next bare word is a value (we just read an operator).
    value_mode: bool,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            input,
            pos: 0,
            value_mode: false,
        }
    }

    fn err(&self, position: usize, reason: impl Into<String>) -> FilterError {
        FilterError {
            filter: self.input.to_owned(),
            position,
            reason: reason.into(),
        }
    }

    fn peek_char(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek_char() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    /// Returns the next token and its start position.
    fn scan(&mut self) -> Result<(usize, Token), FilterError> {
        self.skip_space();
        let start = self.pos;
        let Some(c) = self.peek_char() else {
            return Ok((start, Token::Eof));
        };
        if c == '\0' {
            return Err(self.err(start, "unexpected NUL"));
        }
        let take_while = |p: &mut Self, f: &dyn Fn(char) -> bool| {
            while let Some(c) = p.peek_char() {
                if !f(c) {
                    break;
                }
                p.pos += c.len_utf8();
            }
            p.input[start..p.pos].to_owned()
        };
        let token = if matches!(c, '"' | '/' | '|') {
            Token::Quoted(self.quoted(c)?)
        } else if matches!(c, ',' | '.') {
            self.pos += 1;
            self.value_mode = false;
            Token::Separator(c)
        } else if matches!(c, '=' | '!' | '~') {
            self.value_mode = true;
            Token::Operator(take_while(self, &|c| matches!(c, '=' | '!' | '~')))
        } else if self.value_mode {
            self.value_mode = false;
            Token::Value(take_while(self, &|c| {
                c != ',' && !c.is_whitespace() && !c.is_control()
            }))
        } else if is_field_char(c) {
            Token::Field(take_while(self, &is_field_char))
        } else {
            self.pos += c.len_utf8();
            Token::Illegal(c)
        };
        Ok((start, token))
    }

    fn peek(&mut self) -> Result<Token, FilterError> {
        let (pos, mode) = (self.pos, self.value_mode);
        let (_, t) = self.scan()?;
        self.pos = pos;
        self.value_mode = mode;
        Ok(t)
    }

    /// Reads a quoted string starting at the current position with delimiter `q`.
    fn quoted(&mut self, q: char) -> Result<String, FilterError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek_char() else {
                return Err(self.err(start, "quoted literal not terminated"));
            };
            self.pos += c.len_utf8();
            if c == q {
                self.value_mode = false;
                return Ok(out);
            }
            if c == '\n' {
                return Err(self.err(start, "quoted literal not terminated"));
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.peek_char() else {
                return Err(self.err(start, "quoted literal not terminated"));
            };
            self.pos += e.len_utf8();
            if e == q {
                out.push(q);
                continue;
            }
            if q != '"' {
                // Regex-style quoting keeps every other escape for the regex engine.
                out.push('\\');
                out.push(e);
                continue;
            }
            match e {
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\x0b'),
                '\\' => out.push('\\'),
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let end = self.pos + n;
                    let digits = self.input.get(self.pos..end).unwrap_or("");
                    let ch = u32::from_str_radix(digits, 16).ok().and_then(char::from_u32);
                    match ch {
                        Some(ch) if digits.len() == n => out.push(ch),
                        _ => return Err(self.err(self.pos, "illegal escape sequence")),
                    }
                    self.pos = end;
                }
                _ => return Err(self.err(self.pos - 1, format!("illegal escape sequence \\{e}"))),
            }
        }
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, FilterError> {
        let mut all = vec![self.selector()?];
        loop {
            let (pos, t) = self.scan()?;
            match t {
                Token::Eof => return Ok(all),
                Token::Separator(',') => all.push(self.selector()?),
                other => return Err(self.err(pos, format!("unexpected input {other:?}"))),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let path = self.fieldpath()?;
        match self.peek()? {
            Token::Eof | Token::Separator(',') => return Ok(Selector { path, op: None }),
            _ => {}
        }
        let (pos, t) = self.scan()?;
        let Token::Operator(op) = t else {
            return Err(self.err(pos, r#"expected an operator ("==", "!=" or "~=")"#));
        };
        let (vpos, v) = self.scan()?;
        let value = match v {
            Token::Value(v) | Token::Field(v) | Token::Quoted(v) => v,
            Token::Eof => return Err(self.err(vpos, "expected a value, found end of input")),
            _ => return Err(self.err(vpos, "expected a value or a quoted string")),
        };
        let op = match op.as_str() {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            "~=" => Op::Matches(
                regex::Regex::new(&value)
                    .map_err(|e| self.err(vpos, format!("bad regular expression: {e}")))?,
            ),
            other => return Err(self.err(pos, format!("unsupported operator {other:?}"))),
        };
        Ok(Selector { path, op: Some(op) })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, FilterError> {
        let mut path = vec![self.field()?];
        while self.peek()? == Token::Separator('.') {
            self.scan()?;
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String, FilterError> {
        let (pos, t) = self.scan()?;
        match t {
            Token::Field(f) | Token::Quoted(f) => Ok(f),
            _ => Err(self.err(pos, "expected a field name or a quoted string")),
        }
    }
}

fn is_field_char(c: char) -> bool {
    c == '-' || c == '_' || c.is_ascii_alphanumeric()
}

/// An adaptor over a flat map of field paths joined by `.` plus a `labels` map, the common
/// shape of containerd objects: `field(["labels", k])` looks up the label.
pub fn label_field<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    path: &[&str],
) -> Option<String> {
    match path {
        ["labels", key] => labels
            .into_iter()
            .find(|(k, _)| k.as_str() == *key)
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Obj {
        id: &'static str,
        image: &'static str,
        runtime: &'static str,
        labels: BTreeMap<String, String>,
    }

    impl Adaptor for Obj {
        fn field(&self, path: &[&str]) -> Option<String> {
            match path {
                ["id"] => Some(self.id.into()),
                ["image"] if !self.image.is_empty() => Some(self.image.into()),
                ["runtime", "name"] => Some(self.runtime.into()),
                _ => label_field(&self.labels, path),
            }
        }
    }

    fn obj(id: &'static str, image: &'static str, labels: &[(&str, &str)]) -> Obj {
        Obj {
            id,
            image,
            runtime: "io.containerd.runc.v2",
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn m(filters: &[&str], o: &Obj) -> bool {
        let f: Vec<String> = filters.iter().map(std::string::ToString::to_string).collect();
        parse(&f).unwrap().matches(o)
    }

    #[test]
    fn selectors_and_operators() {
        let web = obj(
            "web",
            "docker.io/library/nginx:1.25",
            &[("app", "web"), ("io.k8s.pod", "p1")],
        );
        let db = obj("db", "", &[("app", "db")]);
        assert!(m(&[], &web));
        assert!(m(&[""], &web));
        assert!(m(&["id==web"], &web));
        assert!(!m(&["id==web"], &db));
        assert!(m(&["id!=web"], &db));
        assert!(m(&["image"], &web));
        assert!(!m(&["image"], &db));
        assert!(m(&["image~=^docker\\.io/"], &web));
        assert!(m(&["image~=/nginx:[0-9.]+$/"], &web));
        assert!(m(&["image==docker.io/library/nginx:1.25"], &web));
        assert!(m(&[r#"labels."io.k8s.pod"==p1"#], &web));
        assert!(m(&["labels.app==web,runtime.name==io.containerd.runc.v2"], &web));
        assert!(!m(&["labels.app==web,id==db"], &web));
        assert!(m(&["id==nope", "labels.app==db"], &db), "several strings are OR");
        assert!(
            m(&["  id == web ,  labels.app  "], &web),
            "whitespace between tokens"
        );
        assert!(
            m(&[r#"labels.app=="w\x65b""#], &web),
            "go escapes in double quotes"
        );
        assert!(
            !m(&["labels.missing!=x"], &web),
            "an absent field never matches an operator"
        );
    }

    #[test]
    fn syntax_errors_are_invalid_argument_with_position() {
        for (bad, pos) in [
            ("id==", 4),
            ("==x", 0),
            ("id=x=", 2),
            ("labels.", 7),
            ("a,", 2),
            ("\"unterminated", 0),
            ("id~=(", 4),
        ] {
            let err = parse(&[bad.to_string()]).unwrap_err();
            assert_eq!(err.kind(), Kind::InvalidArgument);
            assert_eq!(err.position, pos, "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
