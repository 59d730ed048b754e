//! Property-based fuzzing (test-only) of everything the bridge reads from outside: Meta's
//! webhooks, SDP offers, the AI's server events and the AI's tool calls.
//!
//! Each target runs proptest's default 256 cases in the normal tests. A long run sets
//! `PROPTEST_CASES` (README, "Fuzzing"). No regression files are written: a failure prints its
//! minimal input, which then becomes a unit test next to the code it broke.

mod realtime_events;
mod sdp;
mod tools;
mod webhook;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Proptest's defaults (256 cases unless `PROPTEST_CASES` says otherwise), without failure
/// persistence files in the tree.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings a hostile or broken sender might put anywhere: plain ids, any unicode, control
/// characters, padded digits, and now and then a very long run of one character.
fn odd_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[A-Za-z0-9._=+/-]{0,24}",
        3 => any::<String>(),
        2 => "[\\x00-\\x1f\\x7f\\u{2028}\\u{feff}\"\\\\]{0,8}",
        2 => " ?-?[0-9]{1,22} ?",
        1 => (any::<char>(), 0..70_000usize).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

/// Numbers at and past the edges of every integer type the parsers read into.
fn odd_number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(u32::MAX as u64 + 1),
            json!(1e300),
            json!(-0.0),
            json!(0.5),
        ]),
    ]
    .boxed()
}

/// Any JSON value, a few levels deep.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        odd_number(),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(odd_string(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A field of a generated object: mostly the right shape, sometimes missing, `null`, or any
/// JSON at all (the wrong type).
fn field(valid: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        6 => valid.prop_map(Some),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => any_json().prop_map(Some),
    ]
    .boxed()
}

/// An object with the named fields (each by [`field`]) and a few unknown ones.
fn object(fields: Vec<(&'static str, BoxedStrategy<Option<Value>>)>) -> BoxedStrategy<Value> {
    let (names, values): (Vec<&'static str>, Vec<_>) = fields.into_iter().unzip();
    let extra = vec(("[a-z_]{1,12}", any_json()), 0..2);
    (values, extra)
        .prop_map(move |(values, extra)| {
            let mut map = Map::new();
            for (name, value) in extra {
                map.insert(name, value);
            }
            for (name, value) in names.iter().zip(values) {
                if let Some(value) = value {
                    map.insert((*name).to_owned(), value);
                }
            }
            Value::Object(map)
        })
        .boxed()
}

/// One of `choices`, in any case, or an odd string instead.
fn word(choices: &[&'static str]) -> BoxedStrategy<Value> {
    let choices: Vec<&'static str> = choices.to_vec();
    prop_oneof![
        4 => prop::sample::select(choices.clone()).prop_map(Value::from),
        1 => prop::sample::select(choices).prop_map(|c| Value::from(c.to_ascii_uppercase())),
        1 => odd_string().prop_map(Value::from),
    ]
    .boxed()
}

/// A string field that is usually a string.
fn text() -> BoxedStrategy<Value> {
    odd_string().prop_map(Value::from).boxed()
}

/// A JSON array of 0 to `max` generated items.
fn array(item: BoxedStrategy<Value>, max: usize) -> BoxedStrategy<Value> {
    vec(item, 0..=max).prop_map(Value::Array).boxed()
}

/// Text shaped like JSON without being generated as JSON: brackets, quotes, escapes, digits.
fn json_like_text() -> BoxedStrategy<String> {
    "[\\[\\]{}\":,.0-9a-z_ \\\\/eE+-]{0,200}".boxed()
}

/// Arrays nested deeper than serde_json's recursion limit, and then some.
fn deeply_nested() -> BoxedStrategy<String> {
    (1..3000usize, prop::bool::ANY)
        .prop_map(|(depth, objects)| {
            if objects {
                "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth)
            } else {
                "[".repeat(depth) + &"]".repeat(depth)
            }
        })
        .boxed()
}
