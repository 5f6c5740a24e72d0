//! Typed access to fields of the normalised JSON, with errors naming the field's pointer.
use serde_json::{Map, Value};

use super::error::{ManifestError, Ptr};

/// A JSON object being read, with its pointer.
pub(super) struct Obj<'v> {
    pub(super) map: &'v Map<String, Value>,
    pub(super) ptr: Ptr,
}

impl<'v> Obj<'v> {
    /// Read `value` as an object (`null` is an empty object, as Go).
    pub(super) fn new(value: &'v Value, ptr: Ptr) -> Result<Obj<'v>, ManifestError> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match value {
            Value::Object(map) => Ok(Obj { map, ptr }),
            Value::Null => Ok(Obj {
                map: EMPTY.get_or_init(Map::new),
                ptr,
            }),
            _ => Err(ptr.err("must be an object")),
        }
    }

    /// The pointer of a field.
    pub(super) fn at(&self, key: &str) -> Ptr {
        self.ptr.join(key)
    }

    /// A field's value; `null` counts as absent.
    pub(super) fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A nested object field (absent = empty).
    pub(super) fn obj(&self, key: &str) -> Result<Obj<'v>, ManifestError> {
        Obj::new(self.get(key).unwrap_or(&Value::Null), self.at(key))
    }

    /// The entries of a map-valued field (absent = empty), with their pointers.
    pub(super) fn entries(
        &self,
        key: &str,
    ) -> Result<Vec<(&'v String, &'v Value, Ptr)>, ManifestError> {
        let inner = self.obj(key)?;
        Ok(inner
            .map
            .iter()
            .map(|(k, v)| (k, v, inner.ptr.join(k)))
            .collect())
    }

    /// An optional string field.
    pub(super) fn str(&self, key: &str) -> Result<Option<&'v str>, ManifestError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.at(key).err("must be a string")),
        }
    }

    /// An optional string field; the empty string counts as absent (Go zero value).
    pub(super) fn nonempty_str(&self, key: &str) -> Result<Option<&'v str>, ManifestError> {
        Ok(self.str(key)?.filter(|s| !s.is_empty()))
    }

    /// A boolean field (absent = false).
    pub(super) fn bool(&self, key: &str) -> Result<bool, ManifestError> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.at(key).err("must be true or false")),
        }
    }

    /// An optional non-negative integer field.
    pub(super) fn u64(&self, key: &str) -> Result<Option<u64>, ManifestError> {
        self.number(key, Value::as_u64, "must be a non-negative integer")
    }

    /// An optional non-negative integer field no larger than `max`.
    pub(super) fn uint_max(&self, key: &str, max: u64) -> Result<Option<u64>, ManifestError> {
        match self.u64(key)? {
            Some(n) if n > max => Err(self.at(key).err(format!("must be at most {max}"))),
            other => Ok(other),
        }
    }

    /// An optional signed integer field.
    pub(super) fn i64(&self, key: &str) -> Result<Option<i64>, ManifestError> {
        self.number(key, Value::as_i64, "must be an integer")
    }

    /// An optional number field read with `read`, refused with `refusal` when it does not fit.
    fn number<N>(
        &self,
        key: &str,
        read: fn(&Value) -> Option<N>,
        refusal: &'static str,
    ) -> Result<Option<N>, ManifestError> {
        self.get(key)
            .map(|v| read(v).ok_or_else(|| self.at(key).err(refusal)))
            .transpose()
    }

    /// A list of strings (absent = empty).
    pub(super) fn strings(&self, key: &str) -> Result<Vec<String>, ManifestError> {
        let ptr = self.at(key);
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(ptr.join(i).err("must be a string")),
                })
                .collect(),
            Some(_) => Err(ptr.err("must be an array of strings")),
        }
    }

    /// A Go `[]byte` field: a base64 string or an array of numbers 0..255.
    pub(super) fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, ManifestError> {
        let ptr = self.at(key);
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => crate::bytes::unb64(s)
                .map(Some)
                .map_err(|_| ptr.err("must be standard base64 or an array of bytes")),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64()
                        .and_then(|n| u8::try_from(n).ok())
                        .ok_or_else(|| ptr.join(i).err("must be a number from 0 to 255"))
                })
                .collect::<Result<Vec<u8>, _>>()
                .map(Some),
            Some(_) => Err(ptr.err("must be standard base64 or an array of bytes")),
        }
    }

    /// An optional hex field of exactly `len` bytes; `""` counts as absent.
    pub(super) fn hex(&self, key: &str, len: usize) -> Result<Option<Vec<u8>>, ManifestError> {
        let Some(text) = self.nonempty_str(key)? else {
            return Ok(None);
        };
        let bad = || {
            self.at(key)
                .err(format!("must be {} hex digits ({len} bytes)", len * 2))
        };
        let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
        if bytes.len() != len {
            return Err(bad());
        }
        Ok(Some(bytes))
    }

    /// The keys present (non-null).
    pub(super) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

/// True when a JSON value is a Go zero value (null, false, 0, "", [], {}).
pub(super) fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}
