//! Values that remember where they were written.
//!
//! Rule files are deserialized with serde-saphyr, whose `Spanned<T>` records the line and column
//! of a YAML node. The types here wrap it so that semantic errors found after parsing (a bad cron
//! expression, a template that does not compile, a step id that does not exist) can still point
//! at `file:line:column`. They also implement `JsonSchema` transparently, so `flowd schema`
//! describes the file as the user writes it.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A 1-based line and column in a rule file; `0:0` when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub column: u32,
}

impl Pos {
    /// A position from line and column numbers.
    pub fn new(line: u32, column: u32) -> Self {
        Pos { line, column }
    }

    fn from_location(location: serde_saphyr::Location) -> Self {
        Pos {
            line: u32::try_from(location.line()).unwrap_or(u32::MAX),
            column: u32::try_from(location.column()).unwrap_or(u32::MAX),
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A value with the position of the YAML node it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    /// The value as deserialized.
    pub value: T,
    /// Where the value was written (for aliases: where the alias was used).
    pub at: Pos,
}

impl<T> Located<T> {
    /// Wraps a value with a position.
    pub fn new(value: T, at: Pos) -> Self {
        Located { value, at }
    }
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        Ok(Located {
            at: Pos::from_location(spanned.referenced),
            value: spanned.value,
        })
    }
}

impl<T: JsonSchema> JsonSchema for Located<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// A YAML mapping whose keys keep their positions and whose order is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct LocatedMap<V> {
    /// The entries, in file order.
    pub entries: Vec<(Located<String>, V)>,
}

impl<V> Default for LocatedMap<V> {
    fn default() -> Self {
        LocatedMap {
            entries: Vec::new(),
        }
    }
}

impl<V> LocatedMap<V> {
    /// The value for a key, if present.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries
            .iter()
            .find(|(k, _)| k.value == key)
            .map(|(_, v)| v)
    }

    /// Iterates over keys and values in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&Located<String>, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for LocatedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = LocatedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LocatedMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Located<String>>()? {
                    let value = map.next_value::<V>()?;
                    entries.push((key, value));
                }
                Ok(LocatedMap { entries })
            }
        }
        deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

impl<V: JsonSchema> JsonSchema for LocatedMap<V> {
    fn schema_name() -> Cow<'static, str> {
        format!("Map_of_{}", V::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "additionalProperties": generator.subschema_for::<V>(),
        })
    }
}

/// Any YAML value, with the position of every node, so that a template nested deep inside a
/// `state:` or `body:` can still be reported at its own line.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueModel {
    /// `null` or `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// Any number.
    Number(serde_json::Number),
    /// A string (possibly a template).
    String(String),
    /// A sequence.
    Array(Vec<Located<ValueModel>>),
    /// A mapping.
    Object(LocatedMap<Located<ValueModel>>),
}

impl ValueModel {
    /// The value as plain JSON, positions dropped.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            ValueModel::Null => Value::Null,
            ValueModel::Bool(b) => Value::Bool(*b),
            ValueModel::Number(n) => Value::Number(n.clone()),
            ValueModel::String(s) => Value::String(s.clone()),
            ValueModel::Array(items) => Value::Array(items.iter().map(|v| v.to_json()).collect()),
            ValueModel::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.value.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// A short name of the value's type, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ValueModel::Null => "null",
            ValueModel::Bool(_) => "a boolean",
            ValueModel::Number(_) => "a number",
            ValueModel::String(_) => "a string",
            ValueModel::Array(_) => "a list",
            ValueModel::Object(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for ValueModel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = ValueModel;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ValueModel, E> {
                Ok(ValueModel::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ValueModel, E> {
                Ok(ValueModel::Number(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ValueModel, E> {
                Ok(ValueModel::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ValueModel, E> {
                serde_json::Number::from_f64(v)
                    .map(ValueModel::Number)
                    .ok_or_else(|| E::custom("numbers must be finite (no .nan or .inf)"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ValueModel, E> {
                Ok(ValueModel::String(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<ValueModel, E> {
                Ok(ValueModel::String(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<ValueModel, E> {
                Ok(ValueModel::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<ValueModel, E> {
                Ok(ValueModel::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<ValueModel, D::Error> {
                ValueModel::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ValueModel, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Located<ValueModel>>()? {
                    items.push(item);
                }
                Ok(ValueModel::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ValueModel, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Located<String>>()? {
                    let value = map.next_value::<Located<ValueModel>>()?;
                    entries.push((key, value));
                }
                Ok(ValueModel::Object(LocatedMap { entries }))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

impl JsonSchema for ValueModel {
    fn schema_name() -> Cow<'static, str> {
        "AnyValue".into()
    }
    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "any value; strings may be templates ({{...}})"
        })
    }
}

/// One value or a list of them (`status: finished` or `status: [finished, timeout]`).
#[derive(Debug, Clone, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(de::value::StrDeserializer::<E>::new(v)).map(|t| OneOrMany(vec![t]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany)
            }
        }
        deserializer.deserialize_any(OneOrManyVisitor(std::marker::PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for OneOrMany<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("OneOrMany_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let one = generator.subschema_for::<T>();
        json_schema!({
            "anyOf": [one, { "type": "array", "items": one }]
        })
    }
}

/// A field that accepts either a short string form or a full mapping (`every: 15m` or
/// `every: { interval: 15m, catch_up: all }`). The mapping is deserialized by the YAML
/// deserializer itself, so its errors keep their positions.
#[derive(Debug, Clone, PartialEq)]
pub enum ShortOrFull<F> {
    /// The string form.
    Short(String),
    /// The mapping form.
    Full(F),
}

impl<'de, F: Deserialize<'de>> Deserialize<'de> for ShortOrFull<F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShortOrFullVisitor<F>(std::marker::PhantomData<F>);
        impl<'de, F: Deserialize<'de>> Visitor<'de> for ShortOrFullVisitor<F> {
            type Value = ShortOrFull<F>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a mapping")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ShortOrFull::Short(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                F::deserialize(de::value::MapAccessDeserializer::new(map)).map(ShortOrFull::Full)
            }
        }
        deserializer.deserialize_any(ShortOrFullVisitor(std::marker::PhantomData))
    }
}

impl<F: JsonSchema> JsonSchema for ShortOrFull<F> {
    fn schema_name() -> Cow<'static, str> {
        format!("ShortOr{}", F::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let full = generator.subschema_for::<F>();
        json_schema!({
            "anyOf": [{ "type": "string" }, full]
        })
    }
}
