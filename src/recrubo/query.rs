//! List queries: `filter[...]` with the documented operators, `sort`, `page[size]`,
//! `page[number]` and `include` (recrubo-api.md §4).

use std::fmt;

/// The documented filter operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    /// Equal, case-sensitive.
    Eq,
    /// Equal, case-insensitive.
    Eql,
    /// Starts with.
    Prefix,
    /// Ends with.
    Suffix,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// One of a comma-separated list.
    Match,
}

impl FilterOp {
    /// Every operator as written in a query.
    pub const NAMES: &'static [&'static str] = &[
        "eq", "eql", "prefix", "suffix", "gt", "gte", "lt", "lte", "match",
    ];

    /// Parses an operator name.
    pub fn parse(text: &str) -> Option<FilterOp> {
        Some(match text {
            "eq" => FilterOp::Eq,
            "eql" => FilterOp::Eql,
            "prefix" => FilterOp::Prefix,
            "suffix" => FilterOp::Suffix,
            "gt" => FilterOp::Gt,
            "gte" => FilterOp::Gte,
            "lt" => FilterOp::Lt,
            "lte" => FilterOp::Lte,
            "match" => FilterOp::Match,
            _ => return None,
        })
    }

    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterOp::Eq => "eq",
            FilterOp::Eql => "eql",
            FilterOp::Prefix => "prefix",
            FilterOp::Suffix => "suffix",
            FilterOp::Gt => "gt",
            FilterOp::Gte => "gte",
            FilterOp::Lt => "lt",
            FilterOp::Lte => "lte",
            FilterOp::Match => "match",
        }
    }
}

impl fmt::Display for FilterOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One filter: `filter[field]=value` or `filter[field][op]=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The attribute, as Recrubo names it (`status`, `messageThreadId`, `created_at`).
    pub field: String,
    /// The operator; none means plain equality (or `match` for a comma list, server-side).
    pub op: Option<FilterOp>,
    /// The value (a comma list for `match`).
    pub value: String,
}

/// The largest page Recrubo serves.
pub const MAX_PAGE_SIZE: u32 = 200;
/// Recrubo's default page size.
pub const DEFAULT_PAGE_SIZE: u32 = 25;

/// A list query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Filters, ANDed.
    pub filters: Vec<Filter>,
    /// `sort`, e.g. `-createdAt`.
    pub sort: Option<String>,
    /// `page[size]` (at most 200).
    pub page_size: Option<u32>,
    /// `page[number]`, 1-based.
    pub page_number: Option<u32>,
    /// `include`.
    pub include: Option<String>,
}

impl ListQuery {
    /// An empty query.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `filter[field]=value`.
    pub fn filter(mut self, field: &str, value: impl Into<String>) -> Self {
        self.filters.push(Filter {
            field: field.to_owned(),
            op: None,
            value: value.into(),
        });
        self
    }

    /// Adds `filter[field][op]=value`.
    pub fn filter_op(mut self, field: &str, op: FilterOp, value: impl Into<String>) -> Self {
        self.filters.push(Filter {
            field: field.to_owned(),
            op: Some(op),
            value: value.into(),
        });
        self
    }

    /// Sets `sort`.
    pub fn sort(mut self, sort: &str) -> Self {
        self.sort = Some(sort.to_owned());
        self
    }

    /// Sets `page[size]` (clamped to 1..=200).
    pub fn page_size(mut self, size: u32) -> Self {
        self.page_size = Some(size.clamp(1, MAX_PAGE_SIZE));
        self
    }

    /// Sets `page[number]`.
    pub fn page_number(mut self, number: u32) -> Self {
        self.page_number = Some(number.max(1));
        self
    }

    /// The query parameters, in order, unencoded.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for filter in &self.filters {
            let key = match filter.op {
                Some(op) => format!("filter[{}][{op}]", filter.field),
                None => format!("filter[{}]", filter.field),
            };
            pairs.push((key, filter.value.clone()));
        }
        if let Some(sort) = &self.sort {
            pairs.push(("sort".to_owned(), sort.clone()));
        }
        if let Some(size) = self.page_size {
            pairs.push(("page[size]".to_owned(), size.to_string()));
        }
        if let Some(number) = self.page_number {
            pairs.push(("page[number]".to_owned(), number.to_string()));
        }
        if let Some(include) = &self.include {
            pairs.push(("include".to_owned(), include.clone()));
        }
        pairs
    }

    /// Parses query pairs back (the simulator's side of the same wire).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ListQuery, String> {
        let mut query = ListQuery::new();
        for (key, value) in pairs {
            if let Some(rest) = key.strip_prefix("filter[") {
                let (field, rest) = rest
                    .split_once(']')
                    .ok_or_else(|| format!("malformed filter parameter `{key}`"))?;
                let op = match rest {
                    "" => None,
                    _ => {
                        let name = rest
                            .strip_prefix('[')
                            .and_then(|r| r.strip_suffix(']'))
                            .ok_or_else(|| format!("malformed filter parameter `{key}`"))?;
                        Some(FilterOp::parse(name).ok_or_else(|| {
                            format!(
                                "unknown filter operator `{name}`; operators are {}",
                                FilterOp::NAMES.join(", ")
                            )
                        })?)
                    }
                };
                query.filters.push(Filter {
                    field: field.to_owned(),
                    op,
                    value: value.to_owned(),
                });
            } else {
                match key {
                    "sort" => query.sort = Some(value.to_owned()),
                    "page[size]" => {
                        let size: u32 = value
                            .parse()
                            .map_err(|_| format!("page[size] must be a number, not `{value}`"))?;
                        if size == 0 || size > MAX_PAGE_SIZE {
                            return Err(format!(
                                "page[size] must be between 1 and {MAX_PAGE_SIZE}"
                            ));
                        }
                        query.page_size = Some(size);
                    }
                    "page[number]" => {
                        let number: u32 = value
                            .parse()
                            .map_err(|_| format!("page[number] must be a number, not `{value}`"))?;
                        query.page_number = Some(number.max(1));
                    }
                    "include" => query.include = Some(value.to_owned()),
                    "sync" => {}
                    other => return Err(format!("unknown query parameter `{other}`")),
                }
            }
        }
        Ok(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let query = ListQuery::new()
            .filter("status", "finished")
            .filter_op("createdAt", FilterOp::Gte, "2026-01-01T00:00:00Z")
            .sort("-createdAt")
            .page_size(500)
            .page_number(3);
        let pairs = query.pairs();
        assert_eq!(pairs[1].0, "filter[createdAt][gte]");
        assert_eq!(pairs[3], ("page[size]".to_owned(), "200".to_owned()));
        let back = ListQuery::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .expect("parses");
        assert_eq!(back, query);
        assert!(ListQuery::from_pairs([("filter[x][near]", "1")]).is_err());
    }
}
