//! containerd's filter syntax (placeholder: the parser lands in the next commit).

use crate::errdefs::{ErrorKind, Kind};

/// Parse errors: always InvalidArgument.
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

/// Gives a filter the value of a field path of the object being matched.
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
    op: Option<(Op, String)>,
}

#[derive(Debug, Clone)]
enum Op {
    Equal,
    NotEqual,
    Matches(regex::Regex),
}

/// Parses several filter strings (OR). An empty list matches everything.
pub fn parse(filters: &[String]) -> Result<Filter, FilterError> {
    let _ = filters;
    Ok(Filter::default())
}

impl Filter {
    pub fn matches(&self, a: &impl Adaptor) -> bool {
        if self.any.is_empty() {
            return true;
        }
        self.any.iter().any(|all| all.iter().all(|s| s.matches(a)))
    }
}

impl Selector {
    fn matches(&self, a: &impl Adaptor) -> bool {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        let value = a.field(&path);
        match (&self.op, value) {
            (None, v) => v.is_some(),
            (Some(_), None) => false,
            (Some((Op::Equal, want)), Some(v)) => &v == want,
            (Some((Op::NotEqual, want)), Some(v)) => &v != want,
            (Some((Op::Matches(re), _)), Some(v)) => re.is_match(&v),
        }
    }
}
