//! A small RFC 6902 JSON patch builder (add / remove only).
use serde_json::{json, Value};

/// An ordered list of JSON patch operations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch {
    ops: Vec<Value>,
}

impl Patch {
    /// `add` at `path` (replaces an existing member, inserts into an array at an index).
    pub fn add(&mut self, path: &str, value: Value) {
        self.ops
            .push(json!({"op": "add", "path": path, "value": value}));
    }

    /// `remove` at `path` (which must exist).
    pub fn remove(&mut self, path: &str) {
        self.ops.push(json!({"op": "remove", "path": path}));
    }

    /// Append `items` to the array at `path`, creating it when it does not `exist`.
    pub fn append(&mut self, path: &str, exists: bool, items: Vec<Value>) {
        if items.is_empty() {
            return;
        }
        if exists {
            for item in items {
                self.add(&format!("{path}/-"), item);
            }
        } else {
            self.add(path, Value::Array(items));
        }
    }

    /// Insert `items`, in order, at the front of the array at `path`, creating it when it
    /// does not `exist`.
    pub fn prepend(&mut self, path: &str, exists: bool, items: Vec<Value>) {
        if items.is_empty() {
            return;
        }
        if exists {
            for (i, item) in items.into_iter().enumerate() {
                self.add(&format!("{path}/{i}"), item);
            }
        } else {
            self.add(path, Value::Array(items));
        }
    }

    /// True when there is no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The patch document.
    pub fn to_json(&self) -> Value {
        Value::Array(self.ops.clone())
    }
}

/// Escape one JSON pointer reference token (RFC 6901: `~` → `~0`, `/` → `~1`).
pub fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}
