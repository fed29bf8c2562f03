//! `POST /services/oauth2/token`: the client credentials and JWT bearer flows, with Salesforce's
//! token response (no refresh token, no `expires_in`) and OAuth error bodies; and the bearer-token
//! check every API call goes through.

use crate::state::State;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashSet;

/// The audiences Salesforce accepts in a JWT bearer assertion.
const AUDIENCES: [&str; 2] = ["https://login.salesforce.com", "https://test.salesforce.com"];
/// How far ahead `exp` may be (Salesforce wants a short-lived assertion).
const MAX_EXP_AHEAD_SECS: i64 = 300;

/// A token endpoint answer: status and JSON body.
pub(crate) type TokenAnswer = (u16, Value);

fn oauth_error(error: &str, description: &str) -> TokenAnswer {
    (400, json!({ "error": error, "error_description": description }))
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Value>,
    exp: Option<i64>,
}

fn issue(state: &mut State) -> TokenAnswer {
    let token = format!("{}!AQ{}", &state.org_id[..15], uuid::Uuid::new_v4().simple());
    let issued_at = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).to_string();
    let id = format!("{}/id/{}/{}", state.url, state.org_id, state.integration_user_id);
    // Salesforce signs id + issued_at with the client secret (HMAC-SHA256, base64).
    let signature = Hmac::<Sha256>::new_from_slice(state.client_secret.as_bytes())
        .map(|mut mac| {
            mac.update(id.as_bytes());
            mac.update(issued_at.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        })
        .unwrap_or_default();
    state.sessions.insert(token.clone());
    (
        200,
        json!({
            "access_token": token,
            "signature": signature,
            "scope": "api",
            "instance_url": state.url,
            "id": id,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }),
    )
}

fn basic_credentials(authorization: Option<&str>) -> Option<(String, String)> {
    let encoded = authorization?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

fn jwt_bearer(state: &mut State, assertion: Option<&str>) -> TokenAnswer {
    let Some(assertion) = assertion.filter(|a| !a.is_empty()) else {
        return oauth_error("invalid_grant", "invalid assertion");
    };
    let Some(key) = state.jwt_key.clone() else {
        return oauth_error("invalid_grant", "invalid assertion");
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::new();
    let claims = match jsonwebtoken::decode::<Claims>(assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(_) => return oauth_error("invalid_grant", "invalid assertion"),
    };
    if claims.iss.as_deref() != Some(state.client_id.as_str()) {
        return oauth_error("invalid_client", "client identifier invalid");
    }
    let aud_ok = match &claims.aud {
        Some(Value::String(a)) => AUDIENCES.contains(&a.trim_end_matches('/')),
        Some(Value::Array(list)) => {
            list.iter().filter_map(Value::as_str).any(|a| AUDIENCES.contains(&a.trim_end_matches('/')))
        }
        _ => false,
    };
    if !aud_ok {
        return oauth_error("invalid_grant", "audience is invalid");
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match claims.exp {
        Some(exp) if exp <= now => return oauth_error("invalid_grant", "expired authorization code"),
        Some(exp) if exp > now + MAX_EXP_AHEAD_SECS => return oauth_error("invalid_grant", "invalid assertion"),
        None => return oauth_error("invalid_grant", "invalid assertion"),
        _ => {}
    }
    if claims.sub.as_deref() != Some(state.jwt_username.as_str()) {
        return oauth_error("invalid_grant", "user hasn't approved this consumer");
    }
    issue(state)
}

/// Serves the token endpoint (not an API call: no fault, no usage).
pub(crate) fn token(state: &mut State, body: &[u8], authorization: Option<&str>) -> TokenAnswer {
    state.token_requests += 1;
    let form: Vec<(String, String)> =
        form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    match get("grant_type").as_deref() {
        Some("client_credentials") => {
            let (id, secret) = match (get("client_id"), get("client_secret")) {
                (Some(id), Some(secret)) => (id, secret),
                _ => match basic_credentials(authorization) {
                    Some(pair) => pair,
                    None => return oauth_error("invalid_client", "invalid client credentials"),
                },
            };
            if id != state.client_id || secret != state.client_secret {
                return oauth_error("invalid_client", "invalid client credentials");
            }
            issue(state)
        }
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => jwt_bearer(state, get("assertion").as_deref()),
        _ => oauth_error("unsupported_grant_type", "grant type not supported"),
    }
}

/// The token of an `Authorization: Bearer …` (or `OAuth …`) header.
pub(crate) fn bearer(authorization: Option<&str>) -> Option<&str> {
    let h = authorization?.trim();
    h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("OAuth ")).map(str::trim)
}
