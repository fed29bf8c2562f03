//! OAuth tokens: the client-credentials and JWT-bearer flows, and a cache that fetches a new token only
//! once when several calls find the old one expired.
//!
//! Salesforce issues no refresh token and no `expires_in` in either flow: a session lives as long as the
//! org's session timeout, so the only signal that a token is stale is a 401 `INVALID_SESSION_ID`. The cache
//! numbers each token; a caller that saw token N refused asks for a new one, and only the first such caller
//! fetches it.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::{Auth, SalesforceConfig};
use crate::error::SfError;

/// An access token and its number in the cache.
#[derive(Clone)]
pub(crate) struct Token {
    pub value: SecretString,
    pub generation: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

#[derive(Deserialize)]
struct TokenError {
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
}

pub(crate) struct Tokens {
    current: Mutex<Option<Token>>,
}

impl Tokens {
    pub fn new() -> Self {
        Self { current: Mutex::new(None) }
    }

    /// The cached token, fetching one if there is none.
    pub async fn get(&self, http: &reqwest::Client, config: &SalesforceConfig) -> Result<Token, SfError> {
        let mut current = self.current.lock().await;
        if let Some(t) = current.as_ref() {
            return Ok(t.clone());
        }
        let token = Token { value: fetch(http, config).await?, generation: 1 };
        *current = Some(token.clone());
        Ok(token)
    }

    /// A token newer than `refused`: fetched now, unless another caller already did.
    pub async fn renew(
        &self,
        http: &reqwest::Client,
        config: &SalesforceConfig,
        refused: u64,
    ) -> Result<Token, SfError> {
        let mut current = self.current.lock().await;
        if let Some(t) = current.as_ref().filter(|t| t.generation > refused) {
            return Ok(t.clone());
        }
        let generation = current.as_ref().map_or(0, |t| t.generation) + 1;
        let token = Token { value: fetch(http, config).await?, generation };
        *current = Some(token.clone());
        tracing::info!(generation, "salesforce: new access token");
        Ok(token)
    }
}

fn form(config: &SalesforceConfig) -> Result<Vec<(&'static str, String)>, SfError> {
    match &config.auth {
        Auth::ClientCredentials { client_secret } => Ok(vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", config.client_id.clone()),
            ("client_secret", client_secret.expose_secret().to_owned()),
        ]),
        Auth::JwtBearer { username, private_key_pem, audience } => {
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes())
                .map_err(|e| SfError::Config(format!("the private key cannot sign: {e}")))?;
            // A short expiry: the assertion is used once, now.
            let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 180;
            let claims = Claims { iss: &config.client_id, sub: username, aud: audience, exp };
            let assertion =
                jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key)
                    .map_err(|e| SfError::Config(format!("cannot sign the JWT assertion: {e}")))?;
            Ok(vec![("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer".into()), ("assertion", assertion)])
        }
    }
}

async fn fetch(http: &reqwest::Client, config: &SalesforceConfig) -> Result<SecretString, SfError> {
    let response =
        http.post(&config.token_url).form(&form(config)?).timeout(config.timeout).send().await.map_err(|e| {
            SfError::Transport { sent: false, detail: format!("token request: {}", crate::error::without_url(&e)) }
        })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status.is_success() {
        let parsed: TokenResponse = serde_json::from_str(&text).map_err(|_| SfError::Unexpected {
            status: status.as_u16(),
            detail: "token response without access_token".into(),
        })?;
        return Ok(SecretString::from(parsed.access_token));
    }
    if status.is_server_error() {
        return Err(SfError::Server { status: status.as_u16(), retry_after: Duration::from_secs(5) });
    }
    // 400/401: the org refused our credentials or app settings: a configuration matter, never retried blindly.
    let why = serde_json::from_str::<TokenError>(&text)
        .map(|e| format!("{}: {}", e.error.unwrap_or_default(), e.error_description.unwrap_or_default()))
        .unwrap_or_else(|_| format!("HTTP {status}"));
    Err(SfError::Config(format!("the token endpoint refused the service's credentials ({why})")))
}
