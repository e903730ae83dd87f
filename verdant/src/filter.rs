//! Which loadables a reload applies to: an exact name, a glob or a regex.

use std::fmt;

use crate::error::Error;

/// A reload filter over loadable names.
///
/// A plain string is an exact name unless it contains glob metacharacters
/// (`*`, `?`, `[`), like greenium's filter strings; regexes are explicit:
/// [`Filter::regex`], or text that starts with `re:` (what the admin API's
/// `POST /reload?filter=` takes).
///
/// ```
/// use verdant::Filter;
/// assert!(Filter::parse("shop").unwrap().matches("shop"));
/// assert!(!Filter::parse("shop").unwrap().matches("shopping"));
/// assert!(Filter::parse("shop-*").unwrap().matches("shop-cart"));
/// assert!(Filter::regex("^(shop|cart)$").unwrap().matches("cart"));
/// assert!(Filter::parse("re:^(shop|cart)$").unwrap().matches("cart"));
/// ```
#[derive(Clone)]
pub enum Filter {
    /// Exactly this name.
    Exact(String),
    /// A shell-style glob (`shop-*`).
    Glob(glob::Pattern),
    /// A regular expression, matched anywhere in the name unless anchored.
    Regex(regex::Regex),
}

impl Filter {
    /// A regex when `text` starts with `re:` (the rest is the regex), a glob
    /// when it contains `*`, `?` or `[`, otherwise an exact name. (A
    /// manifest entry's name cannot contain `:`.)
    ///
    /// ```
    /// assert!(verdant::Filter::parse("[").is_err());
    /// assert!(matches!(verdant::Filter::parse("re:^shop"), Ok(verdant::Filter::Regex(_))));
    /// assert!(verdant::Filter::parse("re:(").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Filter, Error> {
        if let Some(pattern) = text.strip_prefix("re:") {
            return Filter::regex(pattern);
        }
        if text.contains(['*', '?', '[']) {
            glob::Pattern::new(text)
                .map(Filter::Glob)
                .map_err(|e| Error::InvalidFilter { filter: text.to_owned(), reason: e.to_string() })
        } else {
            Ok(Filter::Exact(text.to_owned()))
        }
    }

    /// A regular-expression filter.
    ///
    /// ```
    /// let f = verdant::Filter::regex("^shop").unwrap();
    /// assert!(f.matches("shop-cart"));
    /// ```
    pub fn regex(pattern: &str) -> Result<Filter, Error> {
        regex::Regex::new(pattern)
            .map(Filter::Regex)
            .map_err(|e| Error::InvalidFilter { filter: pattern.to_owned(), reason: e.to_string() })
    }

    /// Whether `name` is selected.
    ///
    /// ```
    /// assert!(verdant::Filter::Exact("shop".into()).matches("shop"));
    /// ```
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Filter::Exact(exact) => exact == name,
            Filter::Glob(glob) => glob.matches(name),
            Filter::Regex(regex) => regex.is_match(name),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Exact(exact) => f.write_str(exact),
            Filter::Glob(glob) => f.write_str(glob.as_str()),
            Filter::Regex(regex) => write!(f, "/{}/", regex.as_str()),
        }
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Filter({self})")
    }
}

/// What `reload` accepts: `None` for every loadable, `Some("name")`, a
/// string, or a [`Filter`].
///
/// ```
/// use verdant::{Filter, Select};
/// let _: Select = None.into();
/// let _: Select = Some("shop").into();
/// let _: Select = "shop-*".into();
/// let _: Select = Filter::regex("^shop").unwrap().into();
/// ```
#[derive(Debug, Clone)]
pub enum Select {
    /// Every registered loadable.
    All,
    /// A text filter, parsed with [`Filter::parse`] when the reload runs.
    Text(String),
    /// A ready filter.
    Filter(Filter),
}

impl Select {
    pub(crate) fn resolve(&self) -> Result<Option<Filter>, Error> {
        match self {
            Select::All => Ok(None),
            Select::Text(text) => Filter::parse(text).map(Some),
            Select::Filter(filter) => Ok(Some(filter.clone())),
        }
    }
}

impl From<Option<&str>> for Select {
    fn from(filter: Option<&str>) -> Self {
        filter.map_or(Select::All, |text| Select::Text(text.to_owned()))
    }
}

impl From<&str> for Select {
    fn from(text: &str) -> Self {
        Select::Text(text.to_owned())
    }
}

impl From<Filter> for Select {
    fn from(filter: Filter) -> Self {
        Select::Filter(filter)
    }
}
