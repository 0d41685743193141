//! Go-style JSON object access: flannel's config and leases are decoded by
//! Go's encoding/json, which matches keys case-insensitively (an exact match
//! wins). weft reads them the same way so any file flannel accepts works.

use serde_json::{Map, Value};

/// Looks up `key` in `obj` as Go's encoding/json would.
pub fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}
