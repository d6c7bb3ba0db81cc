//! `Debug` for the wire types that carry a secret (daemon tokens, API keys, preview and SSH tokens, env values).
//! Deriving `Debug` would print the secret; a hand-written field list forgets the fields added later. So these
//! types print their own wire form, with the secret fields replaced.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Writes `name { wireName: json, ... }` from `value`'s serialized form, each field named in `secrets` shown as
/// `<redacted>` (a secret map shows its keys only; an absent secret shows `null`).
pub(crate) fn debug<T: Serialize>(f: &mut fmt::Formatter<'_>, name: &str, value: &T, secrets: &[&str]) -> fmt::Result {
    let Ok(Value::Object(fields)) = serde_json::to_value(value) else {
        return f.write_str(name);
    };
    let mut out = f.debug_struct(name);
    for (key, v) in &fields {
        let shown = match v {
            Value::Object(map) if secrets.contains(&key.as_str()) => {
                Value::Array(map.keys().map(|k| Value::String(k.clone())).collect())
            }
            Value::Null => Value::Null,
            _ if secrets.contains(&key.as_str()) => Value::String("<redacted>".into()),
            _ => v.clone(),
        };
        out.field(key, &Json(shown));
    }
    out.finish()
}

/// A JSON value that `Debug`-prints as JSON text.
struct Json(Value);

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
