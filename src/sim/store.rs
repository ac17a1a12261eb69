//! The simulator's in-memory resources, kept per collection in creation order, and the list
//! semantics of recrubo-api.md §4: filters with operators, sort, pages.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::recrubo::jsonapi::Resource;
use crate::recrubo::query::{DEFAULT_PAGE_SIZE, FilterOp, ListQuery};

/// Collections the simulator serves: URL path → JSON:API type.
pub const COLLECTIONS: &[(&str, &str)] = &[
    ("flow-runs", "flowRuns"),
    ("flow-generations", "flowGenerations"),
    ("vacancy-analyses", "vacancyAnalyses"),
    ("flows", "flows"),
    ("message-threads", "messageThreads"),
    ("messages", "messages"),
    ("candidates", "candidates"),
    ("vacancies", "vacancies"),
    ("conversations", "conversations"),
    ("webhooks", "webhooks"),
    ("organizations", "organizations"),
];

/// The JSON:API type of a collection path.
pub fn type_of(collection: &str) -> Option<&'static str> {
    COLLECTIONS
        .iter()
        .find(|(path, _)| *path == collection)
        .map(|(_, resource_type)| *resource_type)
}

/// One collection.
#[derive(Debug, Default)]
pub struct Collection {
    order: Vec<String>,
    items: HashMap<String, Resource>,
}

impl Collection {
    /// Adds or replaces a resource.
    pub fn put(&mut self, resource: Resource) {
        if !self.items.contains_key(&resource.id) {
            self.order.push(resource.id.clone());
        }
        self.items.insert(resource.id.clone(), resource);
    }

    /// A resource by id.
    pub fn get(&self, id: &str) -> Option<&Resource> {
        self.items.get(id)
    }

    /// A resource by id, to change.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Resource> {
        self.items.get_mut(id)
    }

    /// Removes a resource.
    pub fn remove(&mut self, id: &str) -> Option<Resource> {
        let removed = self.items.remove(id);
        if removed.is_some() {
            self.order.retain(|existing| existing != id);
        }
        removed
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Runs a list query: filter, sort, then one page. Returns the page and the total count.
    pub fn list(&self, query: &ListQuery) -> (Vec<Resource>, usize) {
        let mut matching: Vec<&Resource> = self
            .order
            .iter()
            .filter_map(|id| self.items.get(id))
            .filter(|resource| {
                query
                    .filters
                    .iter()
                    .all(|f| filter_matches(resource, &f.field, f.op, &f.value))
            })
            .collect();
        if let Some(sort) = &query.sort {
            let (descending, field) = match sort.strip_prefix('-') {
                Some(field) => (true, field),
                None => (false, sort.as_str()),
            };
            matching.sort_by(|a, b| {
                let ordering = compare_values(attribute(a, field), attribute(b, field));
                if descending {
                    ordering.reverse()
                } else {
                    ordering
                }
            });
        }
        let total = matching.len();
        let size = query.page_size.unwrap_or(DEFAULT_PAGE_SIZE) as usize;
        let number = query.page_number.unwrap_or(1).max(1) as usize;
        let page = matching
            .into_iter()
            .skip((number - 1).saturating_mul(size))
            .take(size)
            .cloned()
            .collect();
        (page, total)
    }
}

/// `created_at` → `createdAt`: the docs mix both spellings in filters (recrubo-api.md §4).
fn camel_case(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// An attribute (or `id`), looked up under its name and its camelCase spelling.
fn attribute<'a>(resource: &'a Resource, field: &str) -> Option<&'a Value> {
    if field == "id" {
        return None;
    }
    resource
        .attributes
        .get(field)
        .or_else(|| resource.attributes.get(&camel_case(field)))
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(x), Some(y)) => compare_text(&value_text(x), &value_text(y)),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Times compare as times (offsets differ in form: `+00:00` vs `Z`), numbers as numbers,
/// everything else as text.
fn compare_text(a: &str, b: &str) -> Ordering {
    if let (Ok(x), Ok(y)) = (
        chrono::DateTime::parse_from_rfc3339(a),
        chrono::DateTime::parse_from_rfc3339(b),
    ) {
        return x.cmp(&y);
    }
    if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    }
    // A date (`2022-02-05`) against a timestamp: compare the common prefix as text.
    a.cmp(b)
}

fn filter_matches(resource: &Resource, field: &str, op: Option<FilterOp>, expected: &str) -> bool {
    let actual = if field == "id" {
        Some(resource.id.clone())
    } else {
        attribute(resource, field).map(value_text)
    };
    let Some(actual) = actual else {
        return false;
    };
    let op = op.unwrap_or(if expected.contains(',') {
        FilterOp::Match
    } else {
        FilterOp::Eq
    });
    match op {
        FilterOp::Eq => actual == expected,
        FilterOp::Eql => actual.to_lowercase() == expected.to_lowercase(),
        FilterOp::Prefix => actual.starts_with(expected),
        FilterOp::Suffix => actual.ends_with(expected),
        FilterOp::Match => expected.split(',').any(|option| option.trim() == actual),
        FilterOp::Gt => compare_text(&actual, expected) == Ordering::Greater,
        FilterOp::Gte => compare_text(&actual, expected) != Ordering::Less,
        FilterOp::Lt => compare_text(&actual, expected) == Ordering::Less,
        FilterOp::Lte => compare_text(&actual, expected) != Ordering::Greater,
    }
}

/// A new resource with an id and timestamps.
pub fn new_resource(
    resource_type: &str,
    mut attributes: Map<String, Value>,
    now: &str,
) -> Resource {
    attributes.insert("createdAt".into(), Value::String(now.to_owned()));
    attributes.insert("updatedAt".into(), Value::String(now.to_owned()));
    Resource {
        id: uuid::Uuid::new_v4().to_string(),
        resource_type: resource_type.to_owned(),
        attributes,
        relationships: None,
        links: None,
        meta: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(status: &str, created: &str) -> Resource {
        let attributes = json!({"status": status, "createdAt": created})
            .as_object()
            .cloned()
            .unwrap_or_default();
        Resource {
            id: format!("{status}-{created}"),
            resource_type: "flowRuns".into(),
            attributes,
            relationships: None,
            links: None,
            meta: None,
        }
    }

    #[test]
    fn filters_sort_and_pages() {
        let mut collection = Collection::default();
        collection.put(run("finished", "2026-01-01T00:00:00+00:00"));
        collection.put(run("timeout", "2026-01-02T00:00:00+00:00"));
        collection.put(run("finished", "2026-01-03T00:00:00Z"));
        let query = ListQuery::new()
            .filter("status", "finished")
            .sort("-createdAt");
        let (page, total) = collection.list(&query);
        assert_eq!(total, 2);
        assert_eq!(page[0].id, "finished-2026-01-03T00:00:00Z");
        let query = ListQuery::new().filter_op("created_at", FilterOp::Gt, "2026-01-01T12:00:00Z");
        assert_eq!(collection.list(&query).1, 2);
        let query = ListQuery::new()
            .filter("status", "timeout,finished")
            .page_size(2)
            .page_number(2);
        let (page, total) = collection.list(&query);
        assert_eq!((page.len(), total), (1, 3));
        assert_eq!(
            collection
                .list(&ListQuery::new().filter_op("status", FilterOp::Prefix, "fin"))
                .1,
            2
        );
        assert_eq!(
            collection
                .list(&ListQuery::new().filter_op("status", FilterOp::Eql, "TIMEOUT"))
                .1,
            1
        );
    }
}
