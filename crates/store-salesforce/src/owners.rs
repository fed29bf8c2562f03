//! The relationship managers: the bank's RM code (`ownerId`, `RM001`) ↔ the org's `User` id, through the
//! user field that holds the code (`FederationIdentifier` by default). Cached both ways with an expiry, so
//! a create usually needs no lookup and an RM moved to another user is picked up within the expiry. An
//! unknown or inactive code is remembered for a shorter time, so a newly provisioned RM is usable soon.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The SOQL that finds the users holding `code`.
pub(crate) fn lookup_query(field: &str, code: &str) -> String {
    format!("SELECT Id, IsActive, {field} FROM User WHERE {field} = {}", crate::soql::literal(code))
}

/// Of a lookup's users, the active one's id.
pub(crate) fn active_user(records: &[Value]) -> Option<String> {
    let active: Vec<&str> = records
        .iter()
        .filter(|r| r.get("IsActive").and_then(Value::as_bool) == Some(true))
        .filter_map(|r| r.get("Id").and_then(Value::as_str))
        .collect();
    if active.len() > 1 {
        tracing::warn!(users = active.len(), "salesforce: several active users hold one RM code; using the first");
    }
    active.first().map(|s| (*s).to_owned())
}

const NEGATIVE: Duration = Duration::from_secs(30);

pub(crate) struct Owners {
    ttl: Duration,
    by_code: Mutex<HashMap<String, (Option<String>, Instant)>>,
    by_user: Mutex<HashMap<String, (String, Instant)>>,
}

/// Bounds the cache: the bank's RMs number in the thousands, not more.
const MAX_ENTRIES: usize = 50_000;

impl Owners {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, by_code: Mutex::new(HashMap::new()), by_user: Mutex::new(HashMap::new()) }
    }

    /// `Some(Some(user))`: known and active; `Some(None)`: known to be unknown or inactive; `None`: ask the org.
    pub fn user_for(&self, code: &str) -> Option<Option<String>> {
        let map = self.by_code.lock().unwrap_or_else(|p| p.into_inner());
        map.get(code).filter(|(_, until)| *until > Instant::now()).map(|(user, _)| user.clone())
    }

    pub fn code_for(&self, user: &str) -> Option<String> {
        let map = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        map.get(user).filter(|(_, until)| *until > Instant::now()).map(|(code, _)| code.clone())
    }

    pub fn remember(&self, code: &str, user: Option<String>) {
        let now = Instant::now();
        let until = now + if user.is_some() { self.ttl } else { self.ttl.min(NEGATIVE) };
        if let Some(u) = &user {
            self.remember_user(u, code);
        }
        let mut map = self.by_code.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (_, t)| *t > now);
        }
        map.insert(code.to_owned(), (user, until));
    }

    pub fn remember_user(&self, user: &str, code: &str) {
        let now = Instant::now();
        let mut map = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (_, t)| *t > now);
        }
        map.insert(user.to_owned(), (code.to_owned(), now + self.ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_active_users_count() {
        let users = [json!({"Id": "005A", "IsActive": false}), json!({"Id": "005B", "IsActive": true})];
        assert_eq!(active_user(&users).as_deref(), Some("005B"));
        assert_eq!(active_user(&users[..1]), None);
        assert_eq!(active_user(&[]), None);
    }

    #[test]
    fn a_full_cache_drops_what_has_expired_not_what_is_live() {
        let owners = Owners::new(Duration::ZERO);
        for i in 0..MAX_ENTRIES {
            owners.remember(&format!("OLD{i}"), Some(format!("005{i}")));
        }
        let live = Owners::new(Duration::from_secs(60));
        *live.by_code.lock().unwrap() = std::mem::take(&mut *owners.by_code.lock().unwrap());
        *live.by_user.lock().unwrap() = std::mem::take(&mut *owners.by_user.lock().unwrap());
        live.remember("RM001", Some("005A".into()));
        assert_eq!(live.by_code.lock().unwrap().len(), 1, "the expired entries went");
        assert_eq!(live.by_user.lock().unwrap().len(), 1);
        assert_eq!(live.user_for("RM001"), Some(Some("005A".into())));
        assert_eq!(live.code_for("005A").as_deref(), Some("RM001"));
    }

    #[test]
    fn the_cache_expires() {
        let owners = Owners::new(Duration::from_millis(40));
        owners.remember("RM001", Some("005A".into()));
        owners.remember("RM404", None);
        assert_eq!(owners.user_for("RM001"), Some(Some("005A".into())));
        assert_eq!(owners.user_for("RM404"), Some(None));
        assert_eq!(owners.code_for("005A").as_deref(), Some("RM001"));
        assert_eq!(owners.user_for("RM002"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(owners.user_for("RM001"), None);
        assert_eq!(owners.code_for("005A"), None);
    }
}
